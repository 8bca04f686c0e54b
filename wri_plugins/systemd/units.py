"""Pure translation between florete tasks and systemd units: names, properties, states.

Nothing here does I/O, so every rule is tested without a running systemd.

* :func:`unit_name` derives the unit of a task from its task id alone (a bare handle finds its
  unit after a crash in the middle of a start), and :func:`unit_path` derives the unit's D-Bus
  object path (``sd_bus_path_encode``), so both can be used before the unit exists.
* :func:`unit_properties` builds the ``a(sv)`` property list of ``StartTransientUnit``
  (org.freedesktop.systemd1(5); property names as in systemd.exec(5), systemd.service(5),
  systemd.kill(5) and systemd.resource-control(5)).
* :class:`UnitState` reads what ``org.freedesktop.DBus.Properties.GetAll`` returns for a unit
  and says whether the task runs and how it ended.
"""

from __future__ import annotations

import hashlib
import re
import signal as signal_module
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from wri_plugins.api import ExitResult, ResourceLimits
from wri_plugins.systemd.logpump import STATUS_PID_PREFIX

UNIT_PREFIX = "florete-"
UNIT_SUFFIX = ".service"
#: Longest unit name systemd accepts, suffix included (``UNIT_NAME_MAX``, src/basic/unit-name.h).
UNIT_NAME_MAX = 255
_BODY_MAX = UNIT_NAME_MAX - len(UNIT_PREFIX) - len(UNIT_SUFFIX)
#: Hex digits of the SHA-256 kept in a shortened name (128 bits).
_HASH_DIGITS = 32
_HASH_MARK = "_h"  # never produced by the escaping: "_" is always followed by two hex digits
_VERBATIM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.:-")
_VALID_NAME = re.compile(r"[A-Za-z0-9:_.\\-]+")

#: ``ExecMainCode`` values: ``si_code`` of the main process's ``SIGCHLD`` (waitid(2)).
CLD_EXITED, CLD_KILLED, CLD_DUMPED = 1, 2, 3
#: systemd's "unset" for 64-bit accounting properties (``MemoryCurrent`` and the like).
UINT64_MAX = (1 << 64) - 1
#: Exit code reported for a task whose unit vanished without a recorded end (as the process
#: runtime and the kubelet's ContainerStatusUnknown: 137).
LOST_EXIT_CODE = 137

#: ``TimeoutStartUSec``: the pump must report ``READY=1`` within 60 s (a slow board under load).
START_TIMEOUT_USEC = 60_000_000

MANAGER_PATH = "/org/freedesktop/systemd1"
_UNIT_PATH_PREFIX = MANAGER_PATH + "/unit/"


def unit_name(task_id: str) -> str:
    """The transient service unit of a task: ``florete-<escaped task id>.service``.

    The escaping keeps ``[A-Za-z0-9.:-]`` and writes every other UTF-8 byte as ``_XX`` (two
    lowercase hex digits), so typical ids (``<pod uid>-<container>-<attempt>``) stay readable
    and distinct ids give distinct names. Ids whose escaped form would exceed the 255-byte limit
    become ``<escaped prefix>_h<32 hex digits of SHA-256>``; ``_h`` never occurs in an escaped
    name, so a shortened name cannot equal an unshortened one. The result is always a valid unit
    name (systemd.unit(5), "unit_name_is_valid").

    Args:
        task_id: the ``TaskSpec.task_id``; any non-empty string.

    Returns:
        A unit name of at most 255 bytes.

    Raises:
        ValueError: ``task_id`` is empty.
    """
    if not task_id:
        raise ValueError("a task id must not be empty")
    body = "".join(c if c in _VERBATIM else _escape_char(c) for c in task_id)
    if len(body) > _BODY_MAX:
        digest = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()
        keep = _BODY_MAX - len(_HASH_MARK) - _HASH_DIGITS
        body = body[:keep] + _HASH_MARK + digest[:_HASH_DIGITS]
    return UNIT_PREFIX + body + UNIT_SUFFIX


def _escape_char(char: str) -> str:
    return "".join(f"_{byte:02x}" for byte in char.encode("utf-8", "surrogatepass"))


def is_valid_unit_name(name: str) -> bool:
    """Whether systemd accepts ``name`` as a plain (non-template) service unit name.

    The rules of ``unit_name_is_valid(name, UNIT_NAME_PLAIN)`` (src/basic/unit-name.c): at most
    255 bytes, only ``[A-Za-z0-9:_.\\-]``, a non-empty prefix, a known suffix (here
    ``.service``), no ``@``.
    """
    return (
        len(name.encode()) <= UNIT_NAME_MAX
        and name.endswith(UNIT_SUFFIX)
        and len(name) > len(UNIT_SUFFIX)
        and _VALID_NAME.fullmatch(name) is not None
    )


def unit_path(name: str) -> str:
    """The D-Bus object path of a unit (``sd_bus_path_encode`` of org.freedesktop.systemd1(5)).

    Every byte outside ``[A-Za-z0-9]`` becomes ``_XX`` (two lowercase hex digits).

    Args:
        name: a unit name, e.g. ``"florete-x.service"``.

    Returns:
        e.g. ``"/org/freedesktop/systemd1/unit/florete_2dx_2eservice"``.
    """
    label = "".join(
        chr(byte) if chr(byte).isascii() and chr(byte).isalnum() else f"_{byte:02x}"
        for byte in name.encode()
    )
    return _UNIT_PATH_PREFIX + (label or "_")


def exec_socket_name(task_dir: str) -> str:
    """The abstract socket name on which a task's pump takes exec requests (see ``execserver``).

    Derived from the task dir, so a new runtime instance on the same state dir finds it.

    Args:
        task_dir: absolute path of the task's directory.

    Returns:
        ``"florete-exec-<32 hex digits>"`` (without the abstract namespace's leading NUL).
    """
    return "florete-exec-" + hashlib.sha256(task_dir.encode()).hexdigest()[:32]


def cpu_quota_per_sec_usec(cpu_millis: int | None) -> int | None:
    """``CPUQuotaPerSecUSec`` for a CPU limit (systemd.resource-control(5), ``CPUQuota=``).

    One core (1000 millicores) is 1 s of CPU time per second. As the kubelet
    (``MilliCPUToQuota`` in pkg/kubelet/cm/helpers_linux.go), 0 means no limit and a limit
    below 10 millicores is raised to 10: the kernel's smallest CFS quota is 1 ms per 100 ms
    period.

    Args:
        cpu_millis: the limit in millicores, or None.

    Returns:
        Microseconds of CPU time per second, or None for no limit.
    """
    if cpu_millis is None or cpu_millis <= 0:
        return None
    return max(cpu_millis, 10) * 1000


def memory_max(memory_bytes: int | None) -> int | None:
    """``MemoryMax`` in bytes for a memory limit; 0 or None means no limit (as the kubelet)."""
    if memory_bytes is None or memory_bytes <= 0:
        return None
    return memory_bytes


Property = tuple[str, str, Any]
"""One transient unit property: ``(name, D-Bus signature, value)``."""


def unit_properties(
    *,
    description: str,
    exec_start: tuple[str, ...],
    working_dir: str,
    pump_log: str,
    limits: ResourceLimits,
    stop_timeout: float,
    slice_name: str | None,
) -> list[Property]:
    """The properties of a task's transient service unit.

    The unit runs the log pump (``logpump``) as its main process, which starts the workload.

    * ``Type=notify`` with ``NotifyAccess=main``: the start job finishes once the pump reports
      the workload's ``execve`` succeeded, so a start that cannot exec fails the job.
    * ``RemainAfterExit=yes``: a unit whose main process exited 0 stays loaded (active, exited)
      until :meth:`destroy`, so its exit status can be read after an agent restart; units that
      failed stay loaded as ``failed`` (the default ``CollectMode=inactive``).
    * ``KillMode=mixed``, ``KillSignal=SIGTERM``, ``TimeoutStopUSec``: ``systemctl stop`` and
      shutdown signal the pump, which forwards to the workload, and SIGKILL everything left
      after the timeout (systemd.kill(5)).
    * ``OOMPolicy=stop``: an OOM kill of any process of the task ends the whole task, as
      Kubernetes does on cgroup v2 (``memory.oom.group``); ``Result`` then reads ``oom-kill``.
    * ``MemoryMax`` and ``MemorySwapMax=0`` (the kubelet gives containers no swap) and
      ``CPUQuotaPerSecUSec`` from ``limits``; accounting on, so ``stats`` has numbers where the
      host provides them.
    * The pump's own diagnostics go to ``pump_log`` (``StandardOutput=append:``); the
      workload's output goes through the pump to the CRI log.

    Args:
        description: the unit's description (shown by ``systemctl status``).
        exec_start: the pump's command line, absolute path first.
        working_dir: absolute working directory of the workload.
        pump_log: absolute path of the pump's diagnostics file.
        limits: the task's resource limits.
        stop_timeout: ``TimeoutStopUSec`` in seconds.
        slice_name: the slice to run in, or None for the manager's default.

    Returns:
        ``(name, signature, value)`` triples, ready to wrap in D-Bus variants.
    """
    props: list[Property] = [
        ("Description", "s", description),
        ("ExecStart", "a(sasb)", [[exec_start[0], list(exec_start), False]]),
        ("WorkingDirectory", "s", working_dir),
        ("Type", "s", "notify"),
        ("NotifyAccess", "s", "main"),
        ("RemainAfterExit", "b", True),
        ("KillMode", "s", "mixed"),
        ("KillSignal", "i", int(signal_module.SIGTERM)),
        ("SendSIGKILL", "b", True),
        ("TimeoutStopUSec", "t", max(int(stop_timeout * 1_000_000), 1)),
        ("TimeoutStartUSec", "t", START_TIMEOUT_USEC),
        ("OOMPolicy", "s", "stop"),
        ("StandardOutputFileToAppend", "s", pump_log),
        ("StandardErrorFileToAppend", "s", pump_log),
        ("MemoryAccounting", "b", True),
        ("CPUAccounting", "b", True),
        ("IOAccounting", "b", True),
    ]
    memory = memory_max(limits.memory_bytes)
    if memory is not None:
        props += [("MemoryMax", "t", memory), ("MemorySwapMax", "t", 0)]
    quota = cpu_quota_per_sec_usec(limits.cpu_millis)
    if quota is not None:
        props.append(("CPUQuotaPerSecUSec", "t", quota))
    if slice_name:
        props.append(("Slice", "s", slice_name))
    return props


def exit_result(code: int, status: int, result: str, exit_usec: int) -> ExitResult | None:
    """How a unit's main process ended, from its ``ExecMain*`` and ``Result`` properties.

    Args:
        code: ``ExecMainCode``: 0 while running or never started, else a ``CLD_*`` value.
        status: ``ExecMainStatus``: the exit code (``CLD_EXITED``) or the signal number.
        result: the service's ``Result`` (``"success"``, ``"exit-code"``, ``"signal"``,
            ``"core-dump"``, ``"oom-kill"``, ...; systemd.service(5)).
        exit_usec: ``ExecMainExitTimestamp``, microseconds since the epoch.

    Returns:
        The exit result (``128 + N`` and ``signal=N`` when killed by signal N), or None when
        the main process has not ended.
    """
    if code == CLD_EXITED:
        exit_code, signum = status, None
    elif code in (CLD_KILLED, CLD_DUMPED):
        exit_code, signum = 128 + status, status
    else:
        return None
    return ExitResult(
        exit_code=exit_code,
        signal=signum,
        oom_killed=result == "oom-kill",
        finished_at=exit_usec / 1_000_000,
    )


@dataclass(frozen=True)
class UnitState:
    """The properties of a task's unit that the runtime reads, from one ``GetAll``.

    Attributes:
        load_state: ``LoadState``; anything but ``"loaded"`` means the unit is gone.
        job_id: id of the unit's pending job (``Job``), 0 when none.
        active_state: ``ActiveState`` (``activating``, ``active``, ``failed``, ...).
        active_enter_usec: ``ActiveEnterTimestamp``, 0 if the unit never became active (the
            pump never reported ``READY=1``).
        main_pid: ``MainPID`` (the pump), 0 once it ended.
        exec_code: ``ExecMainCode`` (see :func:`exit_result`).
        exec_status: ``ExecMainStatus``.
        start_usec: ``ExecMainStartTimestamp``, microseconds since the epoch.
        exit_usec: ``ExecMainExitTimestamp``, microseconds since the epoch.
        result: ``Result``.
        status_text: ``StatusText`` (``"workload pid N"`` once the pump started it).
        control_group: ``ControlGroup``, e.g. ``"/system.slice/florete-x.service"``.
        memory_bytes: ``MemoryCurrent``, or None where the host does not account memory.
        cpu_nsec: ``CPUUsageNSec``, or None where unavailable.
        io_read_bytes: ``IOReadBytes``, or None.
        io_write_bytes: ``IOWriteBytes``, or None.
    """

    load_state: str
    job_id: int
    active_state: str
    active_enter_usec: int
    main_pid: int
    exec_code: int
    exec_status: int
    start_usec: int
    exit_usec: int
    result: str
    status_text: str
    control_group: str
    memory_bytes: int | None
    cpu_nsec: int | None
    io_read_bytes: int | None
    io_write_bytes: int | None

    @classmethod
    def from_properties(cls, props: Mapping[str, Any]) -> UnitState:
        """Build from ``GetAll`` values (variants already unwrapped; missing keys default)."""

        def counter(key: str) -> int | None:
            value = props.get(key, UINT64_MAX)
            return None if value == UINT64_MAX else int(value)

        return cls(
            load_state=str(props.get("LoadState", "not-found")),
            job_id=int(props.get("Job", (0, "/"))[0]),
            active_state=str(props.get("ActiveState", "inactive")),
            active_enter_usec=int(props.get("ActiveEnterTimestamp", 0)),
            main_pid=int(props.get("MainPID", 0)),
            exec_code=int(props.get("ExecMainCode", 0)),
            exec_status=int(props.get("ExecMainStatus", 0)),
            start_usec=int(props.get("ExecMainStartTimestamp", 0)),
            exit_usec=int(props.get("ExecMainExitTimestamp", 0)),
            result=str(props.get("Result", "")),
            status_text=str(props.get("StatusText", "")),
            control_group=str(props.get("ControlGroup", "")),
            memory_bytes=counter("MemoryCurrent"),
            cpu_nsec=counter("CPUUsageNSec"),
            io_read_bytes=counter("IOReadBytes"),
            io_write_bytes=counter("IOWriteBytes"),
        )

    @property
    def gone(self) -> bool:
        """The unit is not loaded (destroyed, collected, or lost in a reboot)."""
        return self.load_state != "loaded"

    @property
    def settled(self) -> bool:
        """No job is pending and the unit is not starting or stopping."""
        return self.job_id == 0 and self.active_state not in ("activating", "deactivating")

    @property
    def exit(self) -> ExitResult | None:
        """How the pump (and so the workload: it exits with the workload's status) ended."""
        return exit_result(self.exec_code, self.exec_status, self.result, self.exit_usec)

    @property
    def running(self) -> bool:
        """The pump (main process) is alive; it outlives the workload only to drain its output."""
        return not self.gone and self.main_pid != 0 and self.exec_code == 0

    @property
    def never_ran(self) -> bool:
        """The unit is loaded but ended without a main process status (spawn failed)."""
        return (
            not self.gone
            and not self.running
            and self.exec_code == 0
            and self.active_state in ("failed", "inactive")
        )

    @property
    def workload_pid(self) -> int | None:
        """The workload's pid as the pump announced it, or None."""
        if self.status_text.startswith(STATUS_PID_PREFIX):
            text = self.status_text[len(STATUS_PID_PREFIX) :]
            if text.isdigit():
                return int(text)
        return None

    @property
    def started_at(self) -> float:
        """``ExecMainStartTimestamp`` in seconds since the epoch (0.0 if unknown)."""
        return self.start_usec / 1_000_000
