"""Control groups of process-runtime tasks: one cgroup per task under a ``florete`` parent.

cgroup v2 (unified hierarchy: ``/sys/fs/cgroup/cgroup.controllers`` exists) gets one directory per
task with ``memory.max``, ``memory.swap.max`` and ``cpu.max`` (kernel
``Documentation/admin-guide/cgroup-v2.rst``). cgroup v1 (also the "hybrid" layout, where
``/sys/fs/cgroup`` is a tmpfs of per-controller mounts) gets one directory in the ``memory`` and one
in the ``cpu`` hierarchy, with ``memory.limit_in_bytes``, ``memory.memsw.limit_in_bytes`` and
``cpu.cfs_period_us`` / ``cpu.cfs_quota_us`` (kernel ``Documentation/admin-guide/cgroup-v1/`` and
``scheduler/sched-bwc.rst``).

The parent is a path inside each hierarchy: absolute (``/florete``, the default, beside podman's
``/libpod_parent`` and Nomad's ``/nomad``) or relative to the agent's own cgroup (``florete``, for a
delegated subtree or to keep a test's processes under the test's cgroup).

Nothing here runs in a task: the shim joins the directories :meth:`Cgroups.create` returns and reads
their OOM counters itself.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from wri_plugins.api import ResourceLimits

_log = logging.getLogger(__name__)

#: CFS bandwidth period in microseconds (the kernel's and the kubelet's default).
CPU_PERIOD_US = 100_000
#: Smallest quota the kernel accepts, microseconds (``sched-bwc.rst``: 1 ms).
CPU_MIN_QUOTA_US = 1_000
V1_CONTROLLERS = ("memory", "cpu")


def cpu_quota(cpu_millis: int, period_us: int = CPU_PERIOD_US) -> tuple[int, int]:
    """Translate a CPU limit into a CFS quota, as the kubelet does (``MilliCPUToQuota``).

    Args:
        cpu_millis: limit in millicores (1000 = one core); must be > 0.
        period_us: CFS period in microseconds.

    Returns:
        ``(quota_us, period_us)``: the task may run ``quota_us`` microseconds of CPU time per
        ``period_us`` (summed over all CPUs), at least 1 ms.

    Raises:
        ValueError: ``cpu_millis`` is not positive.
    """
    if cpu_millis <= 0:
        raise ValueError(f"cpu limit must be positive, got {cpu_millis} millicores")
    return max(cpu_millis * period_us // 1000, CPU_MIN_QUOTA_US), period_us


def v1_settings(limits: ResourceLimits) -> list[tuple[str, str, str]]:
    """Files to write for ``limits`` on cgroup v1, in order.

    Returns:
        ``(controller, file, value)`` triples; the memsw (memory + swap) limit equals the memory
        limit so the task cannot swap instead of being OOM killed (written only where swap
        accounting exists). Period before quota, as the kernel checks quota against the period.
    """
    settings = []
    if limits.memory_bytes is not None:
        value = str(limits.memory_bytes)
        settings.append(("memory", "memory.limit_in_bytes", value))
        settings.append(("memory", "memory.memsw.limit_in_bytes", value))
    if limits.cpu_millis is not None:
        quota, period = cpu_quota(limits.cpu_millis)
        settings.append(("cpu", "cpu.cfs_period_us", str(period)))
        settings.append(("cpu", "cpu.cfs_quota_us", str(quota)))
    return settings


def v2_settings(limits: ResourceLimits) -> list[tuple[str, str]]:
    """Files to write for ``limits`` on cgroup v2, in order.

    Returns:
        ``(file, value)`` pairs: ``memory.max`` in bytes, ``memory.swap.max`` 0 (no swap, as the
        kubelet's default NoSwap behaviour), ``cpu.max`` as ``"<quota> <period>"`` microseconds.
    """
    settings = []
    if limits.memory_bytes is not None:
        settings.append(("memory.max", str(limits.memory_bytes)))
        settings.append(("memory.swap.max", "0"))
    if limits.cpu_millis is not None:
        quota, period = cpu_quota(limits.cpu_millis)
        settings.append(("cpu.max", f"{quota} {period}"))
    return settings


def own_cgroups(text: str) -> dict[str, str]:
    """Parse ``/proc/<pid>/cgroup``.

    Args:
        text: lines ``<id>:<controllers>:<path>``.

    Returns:
        Controller name -> path; the v2 hierarchy (id 0, no controllers) is under key ``""``.
    """
    paths: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            for controller in parts[1].split(","):
                paths[controller] = parts[2]
    return paths


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@dataclass(frozen=True)
class Cgroups:
    """Where task cgroups go on this host, once :meth:`probe` found them writable.

    Attributes:
        version: 1 or 2.
        parents: v1: the parent in the memory and the cpu hierarchy; v2: the one parent.
    """

    version: int
    parents: tuple[Path, ...]

    @property
    def description(self) -> str:
        """``"cgroup-v1"`` or ``"cgroup-v2"`` (the fingerprint's ``limits`` attribute)."""
        return f"cgroup-v{self.version}"

    @classmethod
    def probe(
        cls,
        parent: str = "/florete",
        root: Path = Path("/sys/fs/cgroup"),
        self_cgroup: str | None = None,
    ) -> Cgroups | str:
        """Find the cgroup hierarchy and create the parent, to learn whether limits can work.

        Args:
            parent: absolute path inside each hierarchy, or relative to the agent's own cgroup.
            root: where the hierarchies are mounted.
            self_cgroup: content of ``/proc/self/cgroup`` (read when None).

        Returns:
            The layout, or one sentence saying why limits are not enforced.
        """
        if self_cgroup is None:
            try:
                self_cgroup = Path("/proc/self/cgroup").read_text()
            except OSError as err:
                return f"limits are not enforced: cannot read /proc/self/cgroup ({err.strerror})"
        own = own_cgroups(self_cgroup)
        if (root / "cgroup.controllers").exists():
            return cls._probe_v2(root, cls._resolve(root, parent, own.get("", "/")))
        if (root / "memory" / "memory.limit_in_bytes").exists():
            parents = []
            for controller in V1_CONTROLLERS:
                if not (root / controller).is_dir():
                    return f"limits are not enforced: no cgroup v1 {controller} hierarchy in {root}"
                parents.append(cls._resolve(root / controller, parent, own.get(controller, "/")))
            try:
                for directory in parents:
                    directory.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                return f"limits are not enforced: cannot create {err.filename} ({err.strerror})"
            return cls(1, tuple(parents))
        return f"limits are not enforced: no cgroup v2 or v1 memory hierarchy in {root}"

    @staticmethod
    def _resolve(hierarchy: Path, parent: str, own: str) -> Path:
        base = "/" if parent.startswith("/") else own
        return hierarchy / base.strip("/") / parent.strip("/")

    @classmethod
    def _probe_v2(cls, root: Path, directory: Path) -> Cgroups | str:
        try:
            available = (root / "cgroup.controllers").read_text().split()
            missing = [c for c in V1_CONTROLLERS if c not in available]
            if missing:
                return (
                    f"limits are not enforced: cgroup v2 lacks the {', '.join(missing)} controller"
                )
            directory.mkdir(parents=True, exist_ok=True)
            # enable memory and cpu for the children of every cgroup from the root down
            node = root
            for part in (*directory.relative_to(root).parts, None):
                enabled = (node / "cgroup.subtree_control").read_text().split()
                if not {"memory", "cpu"} <= set(enabled):
                    _write(node / "cgroup.subtree_control", "+memory +cpu")
                if part is not None:
                    node = node / part
        except OSError as err:
            where = err.filename or directory
            return f"limits are not enforced: cannot set up {where} ({err.strerror})"
        return cls(2, (directory,))

    def create(self, name: str, limits: ResourceLimits) -> list[Path]:
        """Create the task's cgroup(s) and write its limits.

        Args:
            name: directory name (the task id; no ``/``).
            limits: what to enforce; None fields stay unlimited.

        Returns:
            The task's cgroup directories (what the shim joins and :meth:`remove` removes).

        Raises:
            OSError: a directory or limit could not be written (the caller removes what exists).
        """
        dirs = [parent / name for parent in self.parents]
        for directory in dirs:
            directory.mkdir(exist_ok=True)
        if self.version == 2:
            for filename, value in v2_settings(limits):
                if filename == "memory.swap.max" and not (dirs[0] / filename).exists():
                    continue  # kernel without swap accounting
                _write(dirs[0] / filename, value)
        else:
            by_controller = dict(zip(V1_CONTROLLERS, dirs, strict=True))
            for controller, filename, value in v1_settings(limits):
                path = by_controller[controller] / filename
                if filename.startswith("memory.memsw.") and not path.exists():
                    continue  # kernel without swap accounting
                _write(path, value)
        return dirs

    @staticmethod
    def kill(dirs: list[Path]) -> int:
        """Send SIGKILL to every process in ``dirs``.

        Returns:
            How many processes were signalled.
        """
        count = 0
        for directory in dirs:
            try:
                pids = (directory / "cgroup.procs").read_text().split()
            except OSError:
                continue
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                    count += 1
                except ProcessLookupError:
                    pass
        return count

    @staticmethod
    def remove(dirs: list[Path]) -> bool:
        """Remove the task's cgroup directories (they must be empty of processes).

        Returns:
            True when none is left; False when one is still busy (processes not yet gone).

        Raises:
            OSError: removal failed for another reason than busy or already gone.
        """
        done = True
        for directory in dirs:
            try:
                directory.rmdir()
            except FileNotFoundError:
                pass
            except OSError as err:
                if err.errno != errno.EBUSY:
                    raise
                done = False
        return done


#: Seconds :func:`remove_cgroups` keeps retrying a busy cgroup.
REMOVE_PATIENCE = 5.0


async def remove_cgroups(dirs: list[Path] | tuple[Path, ...]) -> None:
    """Kill what is left in ``dirs`` and remove them, retrying while the kernel says busy.

    After :data:`REMOVE_PATIENCE` seconds a warning is logged and they stay.

    Args:
        dirs: a task's cgroup directories (may be empty or already gone).
    """
    dirs = list(dirs)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REMOVE_PATIENCE
    while dirs:
        Cgroups.kill(dirs)
        try:
            if Cgroups.remove(dirs):
                return
        except OSError as err:
            _log.warning("cannot remove cgroup %s: %s", err.filename, err.strerror)
            return
        if loop.time() > deadline:
            _log.warning("cgroups %s still busy after %ss", [str(d) for d in dirs], REMOVE_PATIENCE)
            return
        await asyncio.sleep(0.05)
