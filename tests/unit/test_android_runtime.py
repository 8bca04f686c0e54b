"""The android runtime against a real OpenSSH sshd standing in for the phone (tests/android_env):
configuration, host key and login checks, an unreachable phone, am, exec cancellation, log
rotation, and the phone's Node."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.errors import ConfigError, RuntimeUnavailableError, WorkloadError
from agent.remote_nodes import remote_nodes
from agent.runtimes import RuntimeRegistry
from tests import android_env
from wri_plugins.android import AndroidRuntime
from wri_plugins.android.runtime import NOT_CONFIGURED
from wri_plugins.api import ResourceLimits, RuntimeContext, TaskHandle, TaskSpec

READY = ("sh", "-c", "echo ready; while :; do sleep 0.1; done")


@pytest.fixture
def phone() -> android_env.PhoneEnv:
    reason = android_env.unavailable()
    if reason:
        pytest.skip(reason)
    return android_env.environment()


class Runtimes:
    """Creates runtimes on one state dir; closes them and destroys their tasks at teardown."""

    def __init__(self, tmp_path: Path, options: dict[str, Any]) -> None:
        self.tmp_path = tmp_path
        self.options = options
        self.events: list[tuple[str, str, str, str]] = []
        self.created: list[AndroidRuntime] = []
        self.handles: list[tuple[AndroidRuntime, TaskHandle]] = []

    def __call__(self, **changes: Any) -> AndroidRuntime:
        context = RuntimeContext(
            self.tmp_path, "node1", {**self.options, **changes}, lambda *e: self.events.append(e)
        )
        runtime = AndroidRuntime(context)
        self.created.append(runtime)
        return runtime

    def spec(self, argv: tuple[str, ...], **changes: Any) -> TaskSpec:
        task_id = f"pod{uuid.uuid4().hex[:12]}-c-0"
        fields: dict[str, Any] = {
            "task_id": task_id,
            "pod_namespace": "default",
            "pod_name": "p",
            "pod_uid": task_id[3:15],
            "container": "c",
            "image": None,
            "argv": argv,
            "env": {"PATH": "/usr/bin:/bin"},
            "working_dir": None,
            "limits": ResourceLimits(),
            "log_path": self.tmp_path / f"{task_id}.log",
        }
        fields.update(changes)
        return TaskSpec(**fields)

    async def start(self, runtime: AndroidRuntime, spec: TaskSpec) -> TaskHandle:
        handle = await runtime.start(spec)
        self.handles.append((runtime, handle))
        return handle

    async def close(self) -> None:
        for runtime, handle in self.handles:
            with contextlib.suppress(WorkloadError, RuntimeUnavailableError):
                await runtime.destroy(handle, force=True)
        for runtime in self.created:
            await runtime.close()


@pytest.fixture
async def runtimes(phone: android_env.PhoneEnv, tmp_path: Path) -> AsyncIterator[Runtimes]:
    made = Runtimes(tmp_path, phone.options())
    try:
        yield made
    finally:
        await made.close()


@contextlib.asynccontextmanager
async def phone_down(phone: android_env.PhoneEnv) -> AsyncIterator[None]:
    """sshd killed for the block (in a thread: the loop runs on meanwhile)."""
    outage = phone.outage()
    await asyncio.to_thread(outage.__enter__)
    try:
        yield
    finally:
        await asyncio.to_thread(outage.__exit__, None, None, None)


async def test_without_host_it_is_unhealthy_and_says_what_to_set(tmp_path: Path) -> None:
    runtime = AndroidRuntime(RuntimeContext(tmp_path, "node1", {}))
    fp = await runtime.fingerprint()
    assert (fp.healthy, fp.description) == (False, NOT_CONFIGURED)
    assert "host" not in fp.attributes
    handle = TaskHandle("android", "t-c-0", {})
    with pytest.raises(RuntimeUnavailableError, match=r"set host in \[runtimes.android\]"):
        await runtime.inspect(handle)
    assert await remote_nodes(_registry(tmp_path, {}), "node1", time.time()) == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hots": "x"}, "unknown option 'hots'"),
        ({"port": 0}, "port: want an integer 1..65535"),
        ({"port": "22"}, "port: want an integer"),
        ({"max_sessions": 11.5}, "max_sessions"),
        ({"connect_timeout": 0}, "connect_timeout: want seconds > 0"),
        ({"host": 5}, "host: want a string"),
        ({"remote_dir": "a\nb"}, "remote_dir: no newline"),
    ],
)
def test_bad_options_name_the_key(tmp_path: Path, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        AndroidRuntime(RuntimeContext(tmp_path, "node1", options))


async def test_an_untrusted_host_key_is_refused(runtimes: Runtimes, tmp_path: Path) -> None:
    other = tmp_path / "other_key"
    await _keygen(other)
    known = tmp_path / "known_hosts"
    port = runtimes.options["port"]
    known.write_text(f"[127.0.0.1]:{port} {other.with_suffix('.pub').read_text()}")
    fp = await runtimes(known_hosts=str(known)).fingerprint()
    assert not fp.healthy
    assert "host key of the phone at 127.0.0.1" in fp.description
    assert "not trusted" in fp.description
    known.write_text("")
    assert "not trusted" in (await runtimes(known_hosts=str(known)).fingerprint()).description
    missing = await runtimes(known_hosts=str(tmp_path / "nope")).fingerprint()
    assert not missing.healthy
    assert "unreachable" in missing.description or "not trusted" in missing.description


async def test_a_key_the_phone_does_not_know_is_refused(runtimes: Runtimes, tmp_path: Path) -> None:
    key = tmp_path / "stranger"
    await _keygen(key)
    fp = await runtimes(key_file=str(key)).fingerprint()
    assert not fp.healthy
    assert "refused the login" in fp.description
    gone = await runtimes(key_file=str(tmp_path / "no-such-key")).fingerprint()
    assert not gone.healthy
    assert "no-such-key" in gone.description


async def test_nothing_listening_is_unreachable(runtimes: Runtimes) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fp = await runtimes(port=port, connect_timeout=5).fingerprint()
    assert not fp.healthy
    assert f"phone at 127.0.0.1:{port} unreachable" in fp.description
    assert fp.attributes["reachable"] == "false"


async def test_phone_unreachable_mid_run_then_back(
    phone: android_env.PhoneEnv, runtimes: Runtimes
) -> None:
    """sshd stops under a running task: unhealthy, calls fail fast, the wait rides it out and
    the Node turns Unknown; sshd is back: healthy, Ready, and the exit is known."""
    rt = runtimes()
    assert (await rt.fingerprint()).healthy
    registry = _registry(runtimes.tmp_path, runtimes.options)
    try:
        script = 'trap "exit 3" TERM; echo ready; while :; do sleep 0.1; done'
        handle = await runtimes.start(rt, runtimes.spec(("sh", "-c", script)))
        pid = (await rt.inspect(handle)).pid
        assert pid is not None
        waiting = asyncio.create_task(rt.wait(handle))
        async with phone_down(phone):
            fp = await asyncio.wait_for(rt.fingerprint(), 15)
            assert not fp.healthy
            assert "unreachable" in fp.description
            assert fp.attributes["reachable"] == "false"
            assert fp.attributes["boot_id"]  # the last known facts stay
            began = time.monotonic()
            with pytest.raises(RuntimeUnavailableError):
                await rt.inspect(handle)
            assert time.monotonic() - began < 5
            [node] = await remote_nodes(registry, "node1", time.time())
            [ready] = node["status"]["conditions"]
            assert (ready["status"], ready["reason"]) == ("Unknown", "NodeStatusUnknown")
            assert node["spec"]["taints"][0]["key"] == "node.kubernetes.io/unreachable"
            os.kill(pid, 15)  # the task ends while nobody can see it
            await asyncio.sleep(1.0)
            assert not waiting.done()
        result = await asyncio.wait_for(waiting, 15)
        assert (result.exit_code, result.signal) == (3, None)
        assert [e[2] for e in runtimes.events].count("NodeNotReady") == 1
        assert (await rt.fingerprint()).healthy
        [node] = await remote_nodes(registry, "node1", time.time())
        assert node["status"]["conditions"][0]["status"] == "Unknown"  # cached for 10 s
        await registry.fingerprint("android", fresh=True)
        [node] = await remote_nodes(registry, "node1", time.time())
        assert node["status"]["conditions"][0]["status"] == "True"
    finally:
        await registry.close()


async def test_the_phone_node(runtimes: Runtimes) -> None:
    registry = _registry(runtimes.tmp_path, runtimes.options)
    try:
        [node] = await remote_nodes(registry, "node1", 1700000000.0)
    finally:
        await registry.close()
    assert node["metadata"]["name"] == "node1-android"
    labels = node["metadata"]["labels"]
    assert labels["florete.io/runtime"] == "android"
    assert labels["florete.io/bridge"] == "node1"
    assert labels["kubernetes.io/arch"] in ("amd64", "arm64", "arm")
    status = node["status"]
    assert status["conditions"][0]["status"] == "True"
    assert int(status["capacity"]["cpu"]) >= 1
    assert status["capacity"]["memory"].endswith("Ki")
    assert status["addresses"][0] == {"type": "InternalIP", "address": "127.0.0.1"}
    assert status["nodeInfo"]["bootID"]
    assert "taints" not in node["spec"]


async def test_am_start_without_am_is_a_clear_error(runtimes: Runtimes) -> None:
    if shutil.which("am"):
        pytest.skip("this host has an am")
    rt = runtimes()
    assert (await rt.fingerprint()).attributes["am"] == "false"
    spec = runtimes.spec(("am", "start", "-n", "com.example/.MainActivity"))
    with pytest.raises(WorkloadError, match=r"am not found.*termux-am.*Android phone"):
        await runtimes.start(rt, spec)


async def test_run_as_another_user_is_refused(runtimes: Runtimes) -> None:
    rt = runtimes()
    with pytest.raises(WorkloadError, match="run as its login"):
        await runtimes.start(rt, runtimes.spec(("true",), run_as_user=os.getuid() + 1))
    handle = await runtimes.start(rt, runtimes.spec(("true",), run_as_user=os.getuid()))
    assert (await asyncio.wait_for(rt.wait(handle), 10)).exit_code == 0


async def test_a_task_with_no_environment_at_all(runtimes: Runtimes) -> None:
    rt = runtimes()
    handle = await runtimes.start(rt, runtimes.spec(("sh", "-c", "exit 6"), env={}))
    assert (await asyncio.wait_for(rt.wait(handle), 10)).exit_code == 6


async def test_cancelled_exec_kills_the_command(runtimes: Runtimes, tmp_path: Path) -> None:
    rt = runtimes()
    handle = await runtimes.start(rt, runtimes.spec(READY, working_dir=str(tmp_path)))
    pid_file = tmp_path / "exec.pid"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.5):
            await rt.exec(handle, ("sh", "-c", f"echo $$ > {pid_file}; sleep 100"))
    pid = int(pid_file.read_text())
    assert await asyncio.to_thread(_gone, pid)


async def test_follow_reads_across_rotation(runtimes: Runtimes) -> None:
    rt = runtimes(log_max_bytes=400, log_max_files=50)
    script = 'i=0; while [ $i -lt 60 ]; do echo "line $i"; i=$((i+1)); sleep 0.01; done'
    handle = await runtimes.start(rt, runtimes.spec(("sh", "-c", script)))
    async with asyncio.timeout(30):
        texts = [r.text async for r in rt.logs(handle, follow=True)]
    assert texts == [f"line {i}".encode() for i in range(60)]
    tail = [r.text async for r in rt.logs(handle, tail=3)]
    assert tail == [b"line 57", b"line 58", b"line 59"]


async def test_the_phone_login_environment_is_kept(runtimes: Runtimes) -> None:
    rt = runtimes()
    spec = runtimes.spec(("sh", "-c", 'echo "$HOME|$PREFIX|$FOO"; pwd'), env={"FOO": "x"})
    handle = await runtimes.start(rt, spec)
    assert (await asyncio.wait_for(rt.wait(handle), 10)).exit_code == 0
    texts = [r.text async for r in rt.logs(handle)]
    home = str(android_env.environment().home)
    assert texts == [f"{home}|{Path(home).parent / 'usr'}|x".encode(), home.encode()]


async def _keygen(path: Path) -> None:
    keygen = await asyncio.create_subprocess_exec(
        "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)
    )
    assert await keygen.wait() == 0


def _registry(state_dir: Path, options: dict[str, Any]) -> RuntimeRegistry:
    return RuntimeRegistry(
        state_dir / "registry", "node1", {"android": options}, classes={"android": AndroidRuntime}
    )


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False
