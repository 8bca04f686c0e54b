"""The systemd runtime against a real systemd user manager (tests/systemd_env.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.errors import WorkloadError
from tests import systemd_env
from wri_plugins.api import LogRecord, ResourceLimits, RuntimeContext, TaskHandle, TaskSpec
from wri_plugins.systemd import SystemdRuntime, host
from wri_plugins.systemd.units import unit_name, unit_path

PATH = "/usr/local/bin:/usr/bin:/bin"
LOOP = ("sh", "-c", "echo ready; while :; do sleep 0.05; done")


@pytest.fixture
def manager() -> systemd_env.SystemdManager:
    return systemd_env.require_manager()


def _runtime(manager: systemd_env.SystemdManager, state_dir: Path) -> SystemdRuntime:
    state_dir.mkdir(exist_ok=True, mode=0o700)
    options = {"bus": "user", "bus_address": manager.bus_address}
    return SystemdRuntime(RuntimeContext(state_dir, "node", options))


def _spec(
    tmp_path: Path,
    argv: tuple[str, ...],
    task_id: str = "",
    limits: ResourceLimits | None = None,
    **fields: Any,
) -> TaskSpec:
    task_id = task_id or f"u{uuid.uuid4().hex[:12]}-c-0"
    return TaskSpec(
        task_id=task_id,
        pod_namespace="default",
        pod_name="unit",
        pod_uid="uid",
        container="c",
        image=None,
        argv=argv,
        env={"PATH": PATH},
        working_dir=str(tmp_path),
        limits=limits or ResourceLimits(),
        log_path=tmp_path / "logs" / f"{uuid.uuid4().hex}.log",
        **fields,
    )


async def _ready(rt: SystemdRuntime, handle: TaskHandle) -> None:
    async with asyncio.timeout(10):
        async for record in rt.logs(handle, follow=True):
            if record.text == b"ready":
                return
    raise AssertionError("no ready line")


def _show(manager: systemd_env.SystemdManager, unit: str, *props: str) -> dict[str, str]:
    out = manager.systemctl("show", unit, *(f"--property={p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


async def test_fingerprint_describes_the_real_manager(
    manager: systemd_env.SystemdManager, tmp_path: Path
) -> None:
    fp = await _runtime(manager, tmp_path / "state").fingerprint()
    assert fp.healthy, fp.description
    version = manager.systemctl("show", "--property=Version", "--value").strip()
    assert fp.attributes["version"] == version
    assert fp.attributes["manager"] == "user"
    enforced, limits = host.limits_support("user", f"/{manager.name}")
    assert (fp.attributes["limits_enforced"], fp.attributes["limits"]) == (
        str(enforced).lower(),
        limits,
    )


async def test_the_unit_systemd_sees(manager: systemd_env.SystemdManager, tmp_path: Path) -> None:
    rt = _runtime(manager, tmp_path / "state")
    limits = ResourceLimits(cpu_millis=500, memory_bytes=64 << 20)
    handle = await rt.start(_spec(tmp_path, LOOP, limits=limits))
    try:
        unit = handle.state["unit"]
        wanted = ("MemoryMax", "CPUQuotaPerSecUSec", "KillMode", "Type", "RemainAfterExit")
        props = _show(manager, unit, *wanted, "Slice", "WorkingDirectory", "MainPID")
        assert props["MemoryMax"] == str(64 << 20)
        assert props["CPUQuotaPerSecUSec"] == "500ms"
        assert (props["KillMode"], props["Type"], props["RemainAfterExit"]) == (
            "mixed",
            "notify",
            "yes",
        )
        assert (props["Slice"], props["WorkingDirectory"]) == ("florete.slice", str(tmp_path))
        assert props["MainPID"] == str(handle.state["pump_pid"])
        status = await rt.inspect(handle)
        assert status.running
        assert status.pid != handle.state["pump_pid"]
    finally:
        await rt.destroy(handle, force=True)
    assert _show(manager, unit, "LoadState")["LoadState"] == "not-found"


async def test_object_paths_match_systemd(manager: systemd_env.SystemdManager) -> None:
    name = unit_name("path check")
    out = await asyncio.to_thread(
        subprocess.run,
        ["busctl", "--user", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
         "org.freedesktop.systemd1.Manager", "LoadUnit", "s", name],
        env=manager.env(), capture_output=True, check=True, timeout=10,
    )  # fmt: skip
    assert out.stdout.decode().split() == ["o", f'"{unit_path(name)}"']


@pytest.mark.parametrize("task_id", ["ü and spaces", "x" * 300, "under_score:colon-0"])
async def test_odd_task_ids_get_units_systemd_accepts(
    manager: systemd_env.SystemdManager, tmp_path: Path, task_id: str
) -> None:
    rt = _runtime(manager, tmp_path / "state")
    handle = await rt.start(_spec(tmp_path, ("true",), task_id=task_id))
    assert (await asyncio.wait_for(rt.wait(handle), 10)).exit_code == 0
    await rt.destroy(handle)
    assert not await rt.recover(handle)


async def test_a_new_runtime_instance_recovers_running_and_ended_tasks(
    manager: systemd_env.SystemdManager, tmp_path: Path
) -> None:
    first = _runtime(manager, tmp_path / "state")
    handle = await first.start(_spec(tmp_path, LOOP))
    await _ready(first, handle)
    pid = (await first.inspect(handle)).pid
    await first.close()
    stored = handle.to_json()

    second = _runtime(manager, tmp_path / "state")
    again = TaskHandle.from_json(stored)
    assert await second.recover(again)
    assert (await second.inspect(again)).pid == pid
    await asyncio.wait_for(second.stop(again, grace=5), 10)
    result = await second.wait(again)
    assert (result.exit_code, result.signal) == (143, signal.SIGTERM)
    await second.close()

    third = _runtime(manager, tmp_path / "state")
    bare = TaskHandle(handle.runtime, handle.task_id, {})
    assert await third.recover(bare)  # the ended unit stays loaded with its exit status
    assert await third.wait(bare) == result
    assert next(r.text for r in await _collect(third, bare)) == b"ready"
    await third.destroy(bare)
    assert not await third.recover(bare)
    assert not (tmp_path / "state" / "tasks" / unit_name(handle.task_id)).exists()


async def _collect(rt: SystemdRuntime, handle: TaskHandle) -> list[LogRecord]:
    return [record async for record in rt.logs(handle)]


async def test_a_start_that_cannot_exec_fails_and_leaves_nothing(
    manager: systemd_env.SystemdManager, tmp_path: Path
) -> None:
    bogus = tmp_path / "bogus"
    bogus.write_bytes(b"\x7fELF not really")
    bogus.chmod(0o755)
    rt = _runtime(manager, tmp_path / "state")
    spec = _spec(tmp_path, (str(bogus),))
    with pytest.raises(WorkloadError, match="Exec format error"):
        await rt.start(spec)
    name = unit_name(spec.task_id)
    assert _show(manager, name, "LoadState")["LoadState"] == "not-found"
    assert not (tmp_path / "state" / "tasks" / name).exists()


async def test_the_same_task_cannot_start_twice(
    manager: systemd_env.SystemdManager, tmp_path: Path
) -> None:
    spec = _spec(tmp_path, LOOP)
    rt = _runtime(manager, tmp_path / "state")
    other = _runtime(manager, tmp_path / "other-state")
    handle = await rt.start(spec)
    try:
        with pytest.raises(WorkloadError, match="already exists"):
            await other.start(spec)
        assert (await rt.inspect(handle)).running  # the first one is untouched
    finally:
        await rt.destroy(handle, force=True)


async def test_signals_the_pump_does_not_forward_reach_every_process(
    manager: systemd_env.SystemdManager, tmp_path: Path
) -> None:
    rt = _runtime(manager, tmp_path / "state")
    handle = await rt.start(_spec(tmp_path, LOOP))
    await _ready(rt, handle)
    began = time.monotonic()
    await asyncio.wait_for(rt.stop(handle, grace=30, signal=signal.SIGKILL), 10)
    assert time.monotonic() - began < 5  # no grace waited: SIGKILL went to all at once
    assert (await rt.wait(handle)).signal == signal.SIGKILL
    await rt.destroy(handle)


async def test_leftovers_outside_the_process_group_die_with_the_task(
    manager: systemd_env.SystemdManager, tmp_path: Path
) -> None:
    rt = _runtime(manager, tmp_path / "state")
    pid_file = tmp_path / "daemon.pid"
    script = f"setsid sleep 100 & echo $! > {pid_file}; sleep 0.2; exit 0"
    handle = await rt.start(_spec(tmp_path, ("sh", "-c", script)))
    assert (await asyncio.wait_for(rt.wait(handle), 10)).exit_code == 0
    await asyncio.to_thread(_wait_gone, int(pid_file.read_text()), 5)
    await rt.destroy(handle)


def _wait_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"process {pid} survived its task"
        time.sleep(0.02)


def _ps_ids(pid: int) -> tuple[int, int]:
    out = subprocess.run(
        ["ps", "-o", "uid=,gid=", "-p", str(pid)], capture_output=True, check=True, timeout=10
    )
    uid, gid = out.stdout.split()
    return int(uid), int(gid)


@pytest.mark.skipif(os.geteuid() != 0, reason="the test's manager runs units as root only then")
async def test_run_as_user_for_the_workload_and_exec_the_pump_stays_root(
    manager: systemd_env.SystemdManager, tmp_path: Path
) -> None:
    rt = _runtime(manager, tmp_path / "state")
    fp = await rt.fingerprint()
    assert (fp.attributes["manager_uid"], fp.attributes["run_as"]) == ("0", "any uid and gid")
    ignoring = 'trap "" TERM; echo ready; while :; do sleep 0.05; done'
    handle = await rt.start(
        _spec(tmp_path, ("sh", "-c", ignoring), run_as_user=65534, run_as_group=65533)
    )
    try:
        await _ready(rt, handle)
        workload = (await rt.inspect(handle)).pid
        assert workload is not None
        assert await asyncio.to_thread(_ps_ids, workload) == (65534, 65533)
        assert await asyncio.to_thread(_ps_ids, handle.state["pump_pid"]) == (0, 0)
        done = await asyncio.wait_for(rt.exec(handle, ("sh", "-c", "id -u; id -G")), 10)
        assert (done.exit_code, done.output) == (0, b"65534\n65533\n")
        began = time.monotonic()
        await asyncio.wait_for(rt.stop(handle, grace=0.5), 10)  # TERM ignored: KILL after 0.5 s
        assert time.monotonic() - began >= 0.5
        assert (await rt.wait(handle)).signal == signal.SIGKILL
    finally:
        await rt.destroy(handle, force=True)
    trapping = 'trap "echo bye; exit 0" TERM; echo ready; while :; do sleep 0.05; done'
    handle = await rt.start(_spec(tmp_path, ("sh", "-c", trapping), run_as_user=65534))
    try:
        await _ready(rt, handle)
        await asyncio.wait_for(rt.stop(handle, grace=5), 10)  # the root pump forwards SIGTERM
        assert (await rt.wait(handle)).exit_code == 0
        texts = [r.text for r in await _collect(rt, handle)]
        assert texts[0] == b"ready"
        assert b"bye" in texts  # the group got it: sh may also report its `sleep` as Terminated
    finally:
        await rt.destroy(handle, force=True)
