"""cgroup limits of the process runtime: translation and layout on a fake cgroup fs, then one real
OOM kill where this host lets the test write cgroups."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from wri_plugins.api import ResourceLimits, RuntimeContext, TaskHandle, TaskSpec
from wri_plugins.process import ProcessRuntime
from wri_plugins.process.cgroups import Cgroups, cpu_quota, own_cgroups, v1_settings, v2_settings

MiB = 1024 * 1024
SELF_V1 = "4:memory:/sessions/s1\n2:cpu,cpuacct:/\n0::/\n"


@pytest.mark.parametrize(
    ("millis", "expected"),
    [(1000, (100_000, 100_000)), (500, (50_000, 100_000)), (2500, (250_000, 100_000)),
     (1, (1_000, 100_000)), (10, (1_000, 100_000)), (15, (1_500, 100_000))],
)  # fmt: skip
def test_cpu_millis_become_cfs_quota(millis: int, expected: tuple[int, int]) -> None:
    assert cpu_quota(millis) == expected


def test_cpu_quota_rejects_zero() -> None:
    with pytest.raises(ValueError, match="positive"):
        cpu_quota(0)


def test_settings_per_version() -> None:
    limits = ResourceLimits(cpu_millis=250, memory_bytes=64 * MiB)
    assert v1_settings(limits) == [
        ("memory", "memory.limit_in_bytes", "67108864"),
        ("memory", "memory.memsw.limit_in_bytes", "67108864"),
        ("cpu", "cpu.cfs_period_us", "100000"),
        ("cpu", "cpu.cfs_quota_us", "25000"),
    ]
    assert v2_settings(limits) == [
        ("memory.max", "67108864"),
        ("memory.swap.max", "0"),
        ("cpu.max", "25000 100000"),
    ]
    assert v1_settings(ResourceLimits()) == []
    assert v2_settings(ResourceLimits()) == []


def test_own_cgroups_parses_proc_self_cgroup() -> None:
    assert own_cgroups(SELF_V1) == {"memory": "/sessions/s1", "cpu": "/", "cpuacct": "/", "": "/"}


def _fake_v1(root: Path) -> None:
    for controller, files in (("memory", ["memory.limit_in_bytes"]), ("cpu", [])):
        (root / controller).mkdir(parents=True)
        for name in files:
            (root / controller / name).write_text("9223372036854771712\n")


def test_v1_layout_absolute_parent(tmp_path: Path) -> None:
    _fake_v1(tmp_path)
    layout = Cgroups.probe("/florete", root=tmp_path, self_cgroup=SELF_V1)
    assert isinstance(layout, Cgroups)
    assert layout.description == "cgroup-v1"
    assert layout.parents == (tmp_path / "memory/florete", tmp_path / "cpu/florete")
    # the kernel creates control files on mkdir; the fake fs needs the memsw one by hand
    (tmp_path / "memory/florete/t1").mkdir()
    (tmp_path / "memory/florete/t1/memory.memsw.limit_in_bytes").write_text("max")
    dirs = layout.create("t1", ResourceLimits(cpu_millis=1500, memory_bytes=32 * MiB))
    assert dirs == [tmp_path / "memory/florete/t1", tmp_path / "cpu/florete/t1"]
    assert (dirs[0] / "memory.limit_in_bytes").read_text() == str(32 * MiB)
    assert (dirs[0] / "memory.memsw.limit_in_bytes").read_text() == str(32 * MiB)
    assert (dirs[1] / "cpu.cfs_period_us").read_text() == "100000"
    assert (dirs[1] / "cpu.cfs_quota_us").read_text() == "150000"


def test_v1_layout_relative_parent_follows_own_cgroup(tmp_path: Path) -> None:
    _fake_v1(tmp_path)
    layout = Cgroups.probe("florete", root=tmp_path, self_cgroup=SELF_V1)
    assert isinstance(layout, Cgroups)
    assert layout.parents == (tmp_path / "memory/sessions/s1/florete", tmp_path / "cpu/florete")
    dirs = layout.create("t2", ResourceLimits())  # no limits: cgroups for tracking only
    assert all(d.is_dir() and not any(d.iterdir()) for d in dirs)


def test_v2_layout_enables_controllers_down_to_parent(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (tmp_path / "cgroup.subtree_control").write_text("")
    (tmp_path / "florete").mkdir()
    (tmp_path / "florete/cgroup.subtree_control").write_text("")
    layout = Cgroups.probe("/florete", root=tmp_path, self_cgroup="0::/init.scope\n")
    assert isinstance(layout, Cgroups)
    assert (layout.version, layout.parents) == (2, (tmp_path / "florete",))
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+memory +cpu"
    assert (tmp_path / "florete/cgroup.subtree_control").read_text() == "+memory +cpu"
    (dirs := [tmp_path / "florete/t3"])[0].mkdir()
    (dirs[0] / "memory.swap.max").write_text("max")
    assert layout.create("t3", ResourceLimits(cpu_millis=100, memory_bytes=MiB)) == dirs
    assert (dirs[0] / "memory.max").read_text() == str(MiB)
    assert (dirs[0] / "memory.swap.max").read_text() == "0"
    assert (dirs[0] / "cpu.max").read_text() == "10000 100000"


def test_v2_without_memory_controller_says_why(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu io pids\n")
    reason = Cgroups.probe("/florete", root=tmp_path, self_cgroup="0::/\n")
    assert reason == "limits are not enforced: cgroup v2 lacks the memory controller"


def test_no_hierarchy_says_why(tmp_path: Path) -> None:
    reason = Cgroups.probe("/florete", root=tmp_path, self_cgroup="0::/\n")
    assert isinstance(reason, str)
    assert reason.startswith("limits are not enforced: no cgroup v2 or v1 memory hierarchy")


def test_unwritable_hierarchy_says_why(tmp_path: Path) -> None:
    _fake_v1(tmp_path)
    (tmp_path / "cpu").rmdir()
    (tmp_path / "cpu").write_text("not a directory")
    reason = Cgroups.probe("/florete", root=tmp_path, self_cgroup=SELF_V1)
    assert reason == f"limits are not enforced: no cgroup v1 cpu hierarchy in {tmp_path}"
    (tmp_path / "cpu").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "memory/florete").write_text("a file where the parent should be")
    reason = Cgroups.probe("/florete", root=tmp_path, self_cgroup=SELF_V1)
    assert isinstance(reason, str)
    assert reason.startswith("limits are not enforced: cannot create")


def _real_cgroups_unavailable() -> str | None:
    if sys.platform != "linux":
        return "cgroups are Linux only"
    layout = Cgroups.probe("florete-test")
    return layout if isinstance(layout, str) else None


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[ProcessRuntime]:
    reason = _real_cgroups_unavailable()
    if reason:
        pytest.skip(f"needs writable cgroups: {reason}")
    rt = ProcessRuntime(
        RuntimeContext(tmp_path / "state", "test", {"cgroup_parent": "florete-test"})
    )
    yield rt
    for task in (tmp_path / "state" / "tasks").glob("*"):
        state = json.loads((task / "task.json").read_text())["state"]
        await rt.destroy(TaskHandle("process", task.name, state), force=True)


def _spec(tmp_path: Path, argv: tuple[str, ...], limits: ResourceLimits) -> TaskSpec:
    task_id = f"oom{uuid.uuid4().hex[:10]}"
    return TaskSpec(task_id, "default", "p", "u", "c", None, argv, {"PATH": os.defpath}, None,
                    limits, tmp_path / f"{task_id}.log")  # fmt: skip


async def test_limits_are_written_and_cgroups_removed(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    limits = ResourceLimits(memory_bytes=32 * MiB, cpu_millis=250)
    handle = await runtime.start(_spec(tmp_path, ("sleep", "30"), limits))
    values = await asyncio.to_thread(_read_limits, handle.state["cgroups"])
    assert values["memory.limit_in_bytes"] == str(32 * MiB)
    assert values["cpu.cfs_quota_us"] == "25000"
    assert values["cpu.cfs_period_us"] == "100000"
    await runtime.destroy(handle, force=True)
    assert not await asyncio.to_thread(_any_exists, handle.state["cgroups"])


def _any_exists(dirs: list[str]) -> bool:
    return any(os.path.exists(d) for d in dirs)


def _read_limits(dirs: list[str]) -> dict[str, str]:
    names = ("memory.limit_in_bytes", "cpu.cfs_quota_us", "cpu.cfs_period_us")
    return {
        name: (Path(d) / name).read_text().strip()
        for d in dirs
        for name in names
        if (Path(d) / name).exists()
    }


async def test_memory_limited_workload_is_oom_killed(
    runtime: ProcessRuntime, tmp_path: Path
) -> None:
    hog = (sys.executable, "-c", "x = b'a' * (256 << 20)")  # touches 256 MiB
    limits = ResourceLimits(memory_bytes=32 * MiB, cpu_millis=1000)
    handle = await runtime.start(_spec(tmp_path, hog, limits))
    result = await asyncio.wait_for(runtime.wait(handle), 30)
    assert (result.exit_code, result.signal, result.oom_killed) == (137, 9, True)
    # the shim removed the cgroups once it had read their OOM counters
    assert not await asyncio.to_thread(_any_exists, handle.state["cgroups"])
    await runtime.destroy(handle)


async def test_workload_runs_inside_its_cgroups(runtime: ProcessRuntime, tmp_path: Path) -> None:
    handle = await runtime.start(_spec(tmp_path, ("cat", "/proc/self/cgroup"), ResourceLimits()))
    assert (await asyncio.wait_for(runtime.wait(handle), 10)).oom_killed is False
    paths = [r.text.decode().split(":", 2)[2] async for r in runtime.logs(handle)]
    for directory in handle.state["cgroups"]:
        assert any(directory.endswith(path) for path in paths if path != "/"), (directory, paths)
    await runtime.destroy(handle)
