"""The podman runtime against real podman (tests/podman_env.py): beyond the conformance suite.

Images are never pulled from a registry: the pull cases point at 127.0.0.1 to prove that a
missing image fails fast with ``ErrImagePull``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.errors import RuntimeUnavailableError, WorkloadError
from tests import podman_env
from wri_plugins.api import LogRecord, ResourceLimits, RuntimeContext, TaskHandle, TaskSpec
from wri_plugins.podman import PodmanRuntime
from wri_plugins.podman.images import ImageError
from wri_plugins.podman.service import MAX_SOCKET_PATH, SERVICE_PID, own_socket

READY = ("sh", "-c", "echo ready; while :; do sleep 0.1; done")


class Harness:
    """Runtimes on the session's podman service; removes every task it started at teardown."""

    def __init__(self, env: podman_env.PodmanEnv, tmp_path: Path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.state_dir = tmp_path / "state"
        self.state_dir.mkdir()
        self.started: list[tuple[PodmanRuntime, TaskHandle]] = []
        self.runtimes: list[PodmanRuntime] = []

    def runtime(self, **options: Any) -> PodmanRuntime:
        opts = {"socket": str(self.env.socket), "start_service": False, **options}
        rt = PodmanRuntime(RuntimeContext(self.state_dir, "test-node", opts))
        self.runtimes.append(rt)
        return rt

    def spec(
        self,
        argv: tuple[str, ...],
        *,
        uid: str = "",
        container: str = "c",
        image: str = podman_env.IMAGE,
        limits: ResourceLimits | None = None,
    ) -> TaskSpec:
        uid = uid or uuid.uuid4().hex[:12]
        return TaskSpec(
            task_id=f"{uid}-{container}-0",
            pod_namespace="default",
            pod_name="unit",
            pod_uid=uid,
            container=container,
            image=image,
            argv=argv,
            env={},
            working_dir=None,
            limits=limits or ResourceLimits(),
            log_path=self.tmp_path / "logs" / f"{uid}-{container}.log",
        )

    async def start(self, rt: PodmanRuntime, spec: TaskSpec) -> TaskHandle:
        handle = await rt.start(spec)
        self.started.append((rt, handle))
        return handle

    @staticmethod
    async def collect(rt: PodmanRuntime, handle: TaskHandle) -> list[LogRecord]:
        return [record async for record in rt.logs(handle)]

    def inspect(self, ref: str) -> dict[str, Any]:
        """``podman inspect`` of a container (through local storage, not the runtime)."""
        data: list[dict[str, Any]] = json.loads(self.env.podman("inspect", ref).stdout)
        return data[0]

    async def cleanup(self) -> None:
        for rt, handle in reversed(self.started):
            with contextlib.suppress(WorkloadError, RuntimeUnavailableError):
                await rt.destroy(handle, force=True)
        for rt in self.runtimes:
            await rt.close()


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[Harness]:
    reason = podman_env.unavailable()
    if reason:
        pytest.skip(reason)
    h = Harness(podman_env.environment(), tmp_path)
    try:
        yield h
    finally:
        await h.cleanup()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_image_from_a_refusing_registry_fails_fast(harness: Harness) -> None:
    rt = harness.runtime(pull_timeout=20.0)
    spec = harness.spec(("true",), image=f"127.0.0.1:{closed_port()}/florete/none:1")
    began = time.monotonic()
    with pytest.raises(ImageError, match=r"^ErrImagePull: pulling image .*connection refused"):
        await rt.start(spec)
    assert time.monotonic() - began < 10  # podman retries three times, one second apart


async def test_image_pull_from_a_silent_registry_is_bounded(harness: Harness) -> None:
    connections: list[asyncio.StreamWriter] = []
    ended = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # accept and never answer
        await reader.read()
        writer.close()
        ended.set()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        rt = harness.runtime(pull_timeout=1.0)
        began = time.monotonic()
        with pytest.raises(ImageError, match=r"^ErrImagePull: .* did not finish within 1s"):
            await rt.start(harness.spec(("true",), image=f"127.0.0.1:{port}/florete/none:1"))
        assert time.monotonic() - began < 3
        assert connections, "podman never reached the registry"
        for writer in connections:
            writer.close()
        await asyncio.wait_for(ended.wait(), 5)


async def test_missing_image_without_pull(harness: Harness) -> None:
    rt = harness.runtime(pull=False)
    with pytest.raises(ImageError, match=r'^ErrImageNeverPull: .*"localhost/florete-none:1"'):
        await rt.start(harness.spec(("true",), image="localhost/florete-none:1"))


async def test_pull_policy_never_and_its_event(harness: Harness) -> None:
    events: list[tuple[str, str, str, str]] = []
    rt = harness.runtime()
    rt.context = replace(rt.context, events=lambda *event: events.append(event))
    spec = harness.spec(("true",), image="localhost/florete-none:1")
    spec = replace(spec, image_pull_policy="Never")
    with pytest.raises(ImageError, match=r"^ErrImageNeverPull: .*pull policy of Never"):
        await rt.start(spec)
    assert [(e[0], e[1], e[2]) for e in events] == [(spec.task_id, "Warning", "ErrImageNeverPull")]
    present = replace(harness.spec(("true",)), image_pull_policy="Never")
    handle = await harness.start(rt, present)
    assert (await rt.wait(handle)).exit_code == 0


async def test_pull_policy_always_needs_the_registry_even_for_a_local_image(
    harness: Harness,
) -> None:
    """As the kubelet: Always asks the registry; one that cannot be reached is ErrImagePull."""
    events: list[tuple[str, str, str, str]] = []
    rt = harness.runtime(pull_timeout=20.0)
    rt.context = replace(rt.context, events=lambda *event: events.append(event))
    image = f"127.0.0.1:{closed_port()}/florete/local:1"
    harness.env.podman("tag", podman_env.IMAGE, image)
    try:
        spec = replace(harness.spec(("true",), image=image), image_pull_policy="Always")
        with pytest.raises(ImageError, match=r"^ErrImagePull: "):
            await rt.start(spec)
        assert [e[2] for e in events] == ["Pulling", "Failed"]
        assert events[0][3] == f'Pulling image "{image}"'
        assert events[1][3].startswith(f'Failed to pull image "{image}": ')
        events.clear()
        spec = replace(harness.spec(("true",), image=image), image_pull_policy="IfNotPresent")
        handle = await harness.start(rt, spec)
        assert (await rt.wait(handle)).exit_code == 0
        assert events == []  # present: no pull
    finally:
        harness.env.podman("untag", image, image)


async def test_containers_of_a_pod_share_its_network_namespace(harness: Harness) -> None:
    rt = harness.runtime()
    uid = uuid.uuid4().hex[:12]
    port = closed_port()  # free on the host, so that the host check below means something
    serve = f"while :; do echo hello from $(hostname) | nc -l -p {port}; done"

    def connect(tries: int) -> tuple[str, ...]:
        loop = f"for i in $(seq {tries}); do nc 127.0.0.1 {port} </dev/null && exit 0; sleep 0.1"
        return ("sh", "-c", f"{loop}; done; exit 1")

    server = await harness.start(rt, harness.spec(("sh", "-c", serve), uid=uid, container="srv"))
    client = await harness.start(rt, harness.spec(connect(50), uid=uid, container="cli"))
    assert (await asyncio.wait_for(rt.wait(client), 20)).exit_code == 0
    texts = [r.text for r in await harness.collect(rt, client)]
    assert texts == [b"hello from unit"]  # the pod's hostname is the Pod's name
    # while it listens, another pod has a loopback of its own and the host has nothing
    outsider = await harness.start(rt, harness.spec(connect(3)))
    assert (await asyncio.wait_for(rt.wait(outsider), 20)).exit_code == 1
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)
    assert (await rt.inspect(server)).running
    pods = {harness.inspect(h.state["id"])["Pod"] for h in (server, client)}
    assert len(pods) == 1
    await rt.destroy(client)
    assert harness.env.podman("pod", "exists", pods.pop(), check=False).returncode == 0
    await rt.destroy(server, force=True)  # the last container of the pod: the pod goes too
    assert harness.env.podman("pod", "exists", server.state["pod"], check=False).returncode == 1
    assert [r.text for r in await harness.collect(rt, client)] == texts  # logs stay


async def test_host_network_pod_listens_on_the_host(harness: Harness) -> None:
    rt = harness.runtime()
    port = closed_port()
    serve = f"echo ready; echo hello | nc -l -p {port}"
    spec = replace(harness.spec(("sh", "-c", serve)), host_network=True)
    handle = await harness.start(rt, spec)
    async with asyncio.timeout(10):
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                break
            except ConnectionRefusedError:
                await asyncio.sleep(0.05)
    assert await reader.read() == b"hello\n"
    writer.close()
    assert (await rt.wait(handle)).exit_code == 0  # the host reached it: no port mapping


async def test_exited_without_agent_is_reported_not_restarted(harness: Harness) -> None:
    first = harness.runtime()
    handle = await harness.start(first, harness.spec(("sh", "-c", "exit 5")))
    await first.close()
    harness.env.podman("wait", handle.state["id"])  # it ends while no runtime exists
    before = harness.inspect(handle.state["id"])["State"]
    again = harness.runtime()
    stored = TaskHandle.from_json(handle.to_json())
    assert await again.recover(stored)
    assert await again.recover(stored)
    assert (await again.wait(stored)).exit_code == 5
    after = harness.inspect(handle.state["id"])
    assert after["State"]["StartedAt"] == before["StartedAt"]
    assert (after["State"]["Status"], after["RestartCount"]) == ("exited", 0)


async def test_empty_argv_runs_the_image_default(harness: Harness) -> None:
    rt = harness.runtime()
    handle = await harness.start(rt, harness.spec(()))
    assert (await asyncio.wait_for(rt.wait(handle), 10)).exit_code == 0  # sh without stdin
    assert harness.inspect(handle.state["id"])["Path"] == "/bin/sh"


async def test_limits_reach_the_container(harness: Harness) -> None:
    rt = harness.runtime()
    limits = ResourceLimits(cpu_millis=500, memory_bytes=32 << 20)
    handle = await harness.start(rt, harness.spec(READY, limits=limits))
    host = harness.inspect(handle.state["id"])["HostConfig"]
    assert (host["Memory"], host["CpuQuota"], host["CpuPeriod"]) == (32 << 20, 50_000, 100_000)


async def test_cancelled_exec_is_killed(harness: Harness) -> None:
    rt = harness.runtime()
    handle = await harness.start(rt, harness.spec(READY))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.5):
            await rt.exec(handle, ("sleep", "31"))
    result = await rt.exec(handle, ("ps",))
    assert b"sleep 31" not in result.output, result.output


async def test_start_of_a_duplicate_task_fails(harness: Harness) -> None:
    rt = harness.runtime()
    spec = harness.spec(READY)
    await harness.start(rt, spec)
    with pytest.raises(WorkloadError, match="already exists"):
        await rt.start(spec)


async def test_missing_podman_is_unhealthy_not_a_crash(harness: Harness) -> None:
    rt = harness.runtime(
        socket=str(harness.tmp_path / "none.sock"), podman="florete-no-podman", start_service=True
    )
    fp = await rt.fingerprint()
    assert not fp.healthy
    assert "podman is not installed" in fp.description
    with pytest.raises(RuntimeUnavailableError, match="not installed"):
        await rt.start(harness.spec(READY))


async def test_service_that_dies_mid_run(harness: Harness) -> None:
    """Own service: started by the first container (not by a fingerprint) and again after it
    died; a fixed socket without the right to start a service: unhealthy."""
    owner = harness.runtime(
        socket=str(harness.tmp_path / "own.sock"),
        start_service=True,
        containers_conf=str(harness.env.containers_conf),
    )
    fp = await owner.fingerprint()
    assert fp.healthy, fp.description
    assert "starts with the first container" in fp.description
    assert not (harness.state_dir / SERVICE_PID).exists()
    warm = await harness.start(owner, harness.spec(("true",)))
    assert (await asyncio.wait_for(owner.wait(warm), 10)).exit_code == 0
    fp = await owner.fingerprint()
    assert fp.healthy, fp.description
    user = harness.runtime(socket=fp.attributes["socket"])
    assert (await user.fingerprint()).healthy
    # outlives the outage: wait rides one out only while the container's conmon runs
    handle = await harness.start(user, harness.spec(("sh", "-c", "sleep 3; exit 3")))
    pid = json.loads((harness.state_dir / SERVICE_PID).read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    psutil.wait_procs([psutil.Process(pid)], timeout=5)
    fp = await user.fingerprint()
    assert not fp.healthy
    assert "no libpod API answers" in fp.description
    with pytest.raises(RuntimeUnavailableError):
        await user.start(harness.spec(READY))
    waiting = asyncio.create_task(user.wait(handle))  # the container runs on without the API
    await asyncio.sleep(0.2)
    assert not waiting.done()
    assert (await owner.fingerprint()).healthy  # podman is installed: it can start again
    again = await harness.start(owner, harness.spec(("true",)))  # and does, for a container
    assert (await asyncio.wait_for(waiting, 10)).exit_code == 3
    restarted = json.loads((harness.state_dir / SERVICE_PID).read_text())["pid"]
    assert restarted != pid
    await user.destroy(handle)
    for done in (warm, again):
        await owner.destroy(done, force=True)
    await owner.close()
    assert not psutil.pid_exists(restarted) or psutil.Process(restarted).status() == "zombie"


def test_own_socket_fits_a_unix_address(tmp_path: Path) -> None:
    assert own_socket(tmp_path) == tmp_path / "podman.sock"
    deep = tmp_path / ("d" * 120)
    path = own_socket(deep)
    assert len(str(path)) <= MAX_SOCKET_PATH
    assert path == own_socket(deep) != own_socket(tmp_path / ("e" * 120))


async def test_security_context_user_and_read_only_root(harness: Harness) -> None:
    rt = harness.runtime()
    argv = ("sh", "-c", "id -u; id -g; touch /x 2>/dev/null || echo read-only")
    spec = replace(harness.spec(argv), run_as_user=1000, run_as_group=1001, read_only_root_fs=True)
    handle = await harness.start(rt, spec)
    assert (await rt.wait(handle)).exit_code == 0
    assert [r.text for r in await harness.collect(rt, handle)] == [b"1000", b"1001", b"read-only"]
