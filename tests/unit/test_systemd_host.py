"""How the systemd runtime judges limits from the cgroup layout, and its usage fallback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from wri_plugins.systemd import host


def _unified(root: Path, controllers: str, manager: str = "") -> Path:
    root.mkdir(exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    where = root / manager.strip("/")
    where.mkdir(parents=True, exist_ok=True)
    (where / "cgroup.controllers").write_text(controllers + "\n")
    return root


def _hybrid(root: Path, v1: tuple[str, ...] = ("memory", "cpu")) -> Path:
    (root / "unified").mkdir(parents=True)
    (root / "unified" / "cgroup.controllers").write_text("\n")
    for name in ("systemd", *v1):
        (root / name).mkdir()
    return root


def test_layouts(tmp_path: Path) -> None:
    assert host.cgroup_layout(tmp_path) == "none"
    assert host.cgroup_layout(_hybrid(tmp_path / "h")) == "hybrid"
    assert host.cgroup_layout(_unified(tmp_path / "u", "memory")) == "unified"
    (tmp_path / "l" / "systemd").mkdir(parents=True)
    assert host.cgroup_layout(tmp_path / "l") == "legacy"


def test_unified_limits_need_memory_and_cpu_delegated(tmp_path: Path) -> None:
    user = "/user.slice/user-1000.slice/user@1000.service"
    root = _unified(tmp_path / "full", "cpu memory pids", user)
    assert host.limits_support("user", user, root) == (True, "cgroup-v2")
    root = _unified(tmp_path / "partial", "memory pids", user)
    enforced, why = host.limits_support("user", user, root)
    assert not enforced
    assert "no cpu controller" in why
    assert user in why
    assert host.limits_support("system", "/", _unified(tmp_path / "sys", "cpu memory")) == (
        True,
        "cgroup-v2",
    )


def test_hybrid_limits_depend_on_the_manager(tmp_path: Path) -> None:
    root = _hybrid(tmp_path / "h")
    assert host.limits_support("system", "/", root) == (True, "cgroup-v1")
    enforced, why = host.limits_support("user", "/florete-test", root)
    assert not enforced
    assert "user manager cannot use the v1 memory and cpu controllers" in why
    enforced, why = host.limits_support("system", "/", _hybrid(tmp_path / "nomem", ("cpu",)))
    assert not enforced
    assert "no memory hierarchy" in why
    assert host.limits_support("system", "/", tmp_path / "empty")[0] is False


def test_unit_pids_never_read_the_root_cgroup(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("1\n2\n")
    assert host.unit_pids("/", tmp_path) == []
    assert host.unit_pids("", tmp_path) == []
    assert host.cpu_usage_usec("/", tmp_path) is None


def test_unit_pids_and_cpu_from_the_first_hierarchy_that_has_them(tmp_path: Path) -> None:
    unit = "/app.slice/x.service"
    (tmp_path / "systemd" / unit.strip("/")).mkdir(parents=True)
    (tmp_path / "systemd" / unit.strip("/") / "cgroup.procs").write_text("7\n8\n")
    assert host.unit_pids(unit, tmp_path) == [7, 8]
    assert host.cpu_usage_usec(unit, tmp_path) is None
    stat = tmp_path / "unified" / unit.strip("/")
    stat.mkdir(parents=True)
    (stat / "cpu.stat").write_text("usage_usec 1500000\nuser_usec 1\n")
    assert host.cpu_usage_usec(unit, tmp_path) == 1_500_000


def test_usage_adds_up_the_processes(tmp_path: Path) -> None:
    unit = "/x.service"
    (tmp_path / "unified" / "x.service").mkdir(parents=True)
    (tmp_path / "unified" / "x.service" / "cgroup.procs").write_text(f"{os.getpid()}\n999999999\n")
    used = host.usage(unit, tmp_path)
    assert used.rss_bytes > 0  # ours; the missing pid is skipped
    assert used.cpu_seconds > 0


@pytest.mark.parametrize("pid", [0, -1, 999999999])
def test_alive_is_false_for_no_process(pid: int) -> None:
    assert not host.alive(pid, 0.0)


def test_alive_checks_the_start_time() -> None:
    me = os.getpid()
    started = host.process_start_time(me)
    assert host.alive(me, started)
    assert not host.alive(me, (started or 0) - 100)  # a reused pid
    assert not host.alive(me, None)
