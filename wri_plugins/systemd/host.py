"""What the host's cgroups say about a systemd manager: are limits enforced, and usage fallbacks.

systemd enforces ``MemoryMax`` / ``CPUQuota`` through the cgroup controllers it may use
(systemd.resource-control(5)):

* cgroup v2 ("unified"): the controllers enabled for the manager's own cgroup, listed in its
  ``cgroup.controllers``. The system manager sits at the root and has them all; a user manager
  has only what its ``user@.service`` delegates.
* cgroup v1 ("legacy", or "hybrid" with a controller-less v2 tree beside it): the system
  manager uses the v1 ``memory`` and ``cpu`` hierarchies (``MemoryMax`` is applied as
  ``memory.limit_in_bytes``). A user manager gets no v1 controllers at all, so its units run
  unlimited, and it cannot account memory or CPU either (``MemoryCurrent`` reads "not set").

For that last case :func:`usage` reads the unit's processes from its cgroup (the v2 tree or the
``name=systemd`` v1 hierarchy still list them) and adds up their usage with psutil.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

CGROUP_ROOT = Path("/sys/fs/cgroup")


def cgroup_layout(root: Path = CGROUP_ROOT) -> str:
    """The host's cgroup layout: ``"unified"``, ``"hybrid"``, ``"legacy"`` or ``"none"``."""
    if (root / "cgroup.controllers").exists():
        return "unified"
    if (root / "unified" / "cgroup.controllers").exists():
        return "hybrid"
    if (root / "systemd").is_dir() or (root / "memory").is_dir():
        return "legacy"
    return "none"


def limits_support(kind: str, manager_cgroup: str, root: Path = CGROUP_ROOT) -> tuple[bool, str]:
    """Whether the manager can enforce memory and CPU limits, and how (or why not).

    Args:
        kind: ``"system"`` or ``"user"``.
        manager_cgroup: the manager's ``ControlGroup`` property (``""`` or ``"/"`` for the root).
        root: where the cgroup file systems are mounted.

    Returns:
        ``(enforced, description)``: enforced only when both memory and CPU limits are; the
        description is ``"cgroup-v2"`` / ``"cgroup-v1"`` or a sentence saying what is missing.
    """
    layout = cgroup_layout(root)
    if layout == "unified":
        path = root / manager_cgroup.strip("/") / "cgroup.controllers"
        try:
            controllers = set(path.read_text().split())
        except OSError as err:
            return False, f"cgroup v2: cannot read {path}: {err.strerror}; limits not enforced"
        missing = [c for c in ("memory", "cpu") if c not in controllers]
        if missing:
            return False, (
                f"cgroup v2: the {kind} manager has no {' and no '.join(missing)} controller "
                f"(not delegated to {manager_cgroup or '/'}); those limits are not enforced"
            )
        return True, "cgroup-v2"
    if layout in ("hybrid", "legacy"):
        if kind == "user":
            return False, (
                f"cgroup v1 ({layout}): a user manager cannot use the v1 memory and cpu "
                "controllers; MemoryMax and CPUQuota are not enforced"
            )
        missing = [c for c in ("memory", "cpu") if not (root / c).is_dir()]
        if missing:
            return False, f"cgroup v1: no {' and no '.join(missing)} hierarchy mounted"
        return True, "cgroup-v1"
    return False, f"no cgroup file system at {root}; limits are not enforced"


def unit_pids(control_group: str, root: Path = CGROUP_ROOT) -> list[int]:
    """Pids in a unit's cgroup (v2 tree, hybrid v2 tree or the v1 ``name=systemd`` hierarchy).

    Args:
        control_group: the unit's ``ControlGroup`` property, e.g. ``"/system.slice/x.service"``.
        root: where the cgroup file systems are mounted.

    Returns:
        The pids, or ``[]`` when no hierarchy lists the cgroup.
    """
    if not control_group.strip("/"):
        return []  # never the root cgroup: that is every process of the host
    relative = control_group.strip("/")
    for base in (root, root / "unified", root / "systemd"):
        try:
            text = (base / relative / "cgroup.procs").read_text()
        except OSError:
            continue
        return [int(pid) for pid in text.split()]
    return []


def cpu_usage_usec(control_group: str, root: Path = CGROUP_ROOT) -> int | None:
    """``usage_usec`` of the cgroup's v2 ``cpu.stat`` (present without the cpu controller)."""
    if not control_group.strip("/"):
        return None
    relative = control_group.strip("/")
    for base in (root, root / "unified"):
        try:
            text = (base / relative / "cpu.stat").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "usage_usec":
                return int(value)
    return None


@dataclass(frozen=True)
class Usage:
    """Resource usage of a unit's processes, added up (see :func:`usage`).

    Attributes:
        cpu_seconds: CPU time in seconds (the cgroup's own counter when there is one, which
            includes processes that ended; else the living processes' user + system time).
        rss_bytes: resident memory in bytes.
        read_bytes: bytes read from storage (0 without permission).
        write_bytes: bytes written to storage (0 without permission).
    """

    cpu_seconds: float
    rss_bytes: int
    read_bytes: int
    write_bytes: int


def usage(control_group: str, root: Path = CGROUP_ROOT) -> Usage:
    """Usage of the processes in a unit's cgroup, for hosts where systemd cannot account it.

    Blocking (reads /proc and /sys); run it in a thread.
    """
    cpu = 0.0
    rss = read = write = 0
    for pid in unit_pids(control_group, root):
        try:
            proc = psutil.Process(pid)
            with proc.oneshot():
                times = proc.cpu_times()
                cpu += times.user + times.system
                rss += proc.memory_info().rss
                try:
                    io = proc.io_counters()
                    read, write = read + io.read_bytes, write + io.write_bytes
                except (psutil.AccessDenied, AttributeError):
                    pass
        except psutil.Error:
            continue  # ended meanwhile
    usec = cpu_usage_usec(control_group, root)
    return Usage(usec / 1e6 if usec is not None else cpu, rss, read, write)


def process_start_time(pid: int) -> float | None:
    """psutil's creation time of ``pid`` (seconds since the epoch), or None if it is gone."""
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def real_gid(pid: int) -> int | None:
    """The real group id of process ``pid``, or None if it is gone or not visible."""
    try:
        return int(psutil.Process(pid).gids().real)
    except psutil.Error:
        return None


def pump_running(unit: str, pid: int, start_time: float | None) -> bool:
    """Whether the log pump of ``unit`` still runs, without asking systemd.

    Blocking (may read every process's command line); run it in a thread.

    Args:
        unit: the task's unit name (the pump has ``--unit <unit>`` on its command line).
        pid: the pump's pid from the handle, or 0 when unknown.
        start_time: its psutil creation time, or None when unknown.

    Returns:
        True when ``pid`` is still that process, or (pid unknown) some process is a pump with
        ``--unit <unit>``.
    """
    if pid:
        return alive(pid, start_time)
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if any(pair == ("--unit", unit) for pair in itertools.pairwise(cmdline)):
            return True
    return False


def alive(pid: int, start_time: float | None) -> bool:
    """Whether ``pid`` still is the process that had ``start_time`` (guards against reuse)."""
    if pid <= 0 or start_time is None:
        return False
    now = process_start_time(pid)
    return now is not None and abs(now - start_time) < 0.01 and os.path.exists(f"/proc/{pid}")
