"""The ``systemd`` runtime: each task is a transient service unit started over D-Bus.

A unit outlives the agent: systemd owns it. Its main process is a small log pump (``logpump``)
that starts the workload, writes its output to ``TaskSpec.log_path`` in CRI format and exits with
the workload's status, so ``ExecMainCode``/``ExecMainStatus`` are the workload's and the agent's
``logs`` works on hosts without journald (see ``logpump`` for why the pump stays the main
process).

Unit lifetime: ``RemainAfterExit=yes`` keeps a unit whose task exited 0 loaded as
``active (exited)``, and a task that failed leaves its unit ``failed`` (systemd keeps failed
units), so :meth:`SystemdRuntime.wait` can read the exit status after an agent restart. Only
:meth:`SystemdRuntime.destroy` releases the unit (``StopUnit`` + ``ResetFailedUnit``), which
also kills whatever the workload left behind. :meth:`SystemdRuntime.stop` therefore signals with
``KillUnit`` instead of ``StopUnit``: a stopped unit that ended cleanly would be unloaded at once,
its exit status with it.

``exec`` runs the command as a child of the pump (``execserver``): inside the unit's cgroup,
with the task's environment and working dir. Each task also has a small directory in the state
dir (``tasks``). D-Bus connections live only while an operation runs (``bus``).

``run_as_user`` / ``run_as_group``: the pump (root under a root manager) switches the workload,
and exec commands, to them before exec; a user manager of another user refuses them
(``tasks.user_args``). Not ``User=`` on the unit: the pump must stay able to write the agent's
log files, and systemd refuses a numeric ``User=`` with no passwd entry (status 217/USER),
which Kubernetes' runAsUser allows.

A task does not need systemd or the bus to run: while they cannot be reached, :meth:`wait`
keeps waiting as long as the task's pump runs, and every other call raises
``RuntimeUnavailableError`` at once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal as signal_module
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

from agent.errors import ConfigError, RuntimeUnavailableError, WorkloadError
from wri_plugins.api import (
    Capabilities,
    ExecIO,
    ExecResult,
    ExitResult,
    Fingerprint,
    LogRecord,
    RuntimeContext,
    TaskHandle,
    TaskSpec,
    TaskStats,
    TaskStatus,
    WorkloadRuntime,
)
from wri_plugins.process.logreader import read_logs
from wri_plugins.systemd import control, host, tasks
from wri_plugins.systemd.bus import (
    UNIT_EXISTS,
    SystemdBus,
    SystemdCallError,
    booted,
    resolve_address,
)
from wri_plugins.systemd.execclient import NotStartedError, run_attached, run_exec
from wri_plugins.systemd.logpump import FORWARDED
from wri_plugins.systemd.units import (
    LOST_EXIT_CODE,
    MANAGER_PATH,
    UnitState,
    exec_socket_name,
    unit_name,
    unit_path,
    unit_properties,
)

_log = logging.getLogger(__name__)

MiB = 1024 * 1024
RUN_PUMP = Path(__file__).with_name("run_pump.py")
EXEC_OUTPUT_LIMIT = 10 * 1024  # bytes of exec output kept (the kubelet's probe limit)
START_TIMEOUT = 70.0  # seconds start() waits for the unit (systemd gives the pump 60 s)
OUTAGE_POLL = 1.0  # seconds between looks at the pump and the bus while systemd is unreachable
#: Oldest systemd with every unit property the runtime sets (``OOMPolicy=`` came in 243,
#: ``StandardOutput=append:`` in 240).
MIN_SYSTEMD = 243
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386"}


class SystemdRuntime(WorkloadRuntime):
    """Runs each task as a transient systemd service. See the module docstring.

    Options (``runtimes.systemd``): ``bus`` (``"system"``, ``"user"`` or ``"auto"``: the system
    bus when systemd is PID 1 and the agent is root, else the user bus of
    ``$XDG_RUNTIME_DIR/bus``), ``bus_address`` (a D-Bus address that overrides the socket),
    ``slice`` (the units' slice; empty for the manager's default), ``stop_timeout`` (seconds
    systemd gives a unit to stop before SIGKILL when stopped outside the agent),
    ``log_max_bytes`` / ``log_max_files`` (CRI log rotation), ``python`` (interpreter of the
    log pump; default: the agent's).
    """

    name: ClassVar[str] = "systemd"
    capabilities: ClassVar[Capabilities] = Capabilities(
        send_signals=True,
        exec=True,
        exec_interactive=True,
        fs_isolation=False,
        resource_limits=True,
    )
    OPTIONS: ClassVar[dict[str, Any]] = {
        "bus": "auto",
        "bus_address": "",
        "slice": "florete.slice",
        "stop_timeout": 30.0,
        "log_max_bytes": 10 * MiB,
        "log_max_files": 5,
        "python": "",
    }

    def __init__(self, context: RuntimeContext) -> None:
        """Create the runtime; connects to nothing yet.

        Raises:
            ConfigError: an option is unknown or has a bad value (the message names it).
        """
        super().__init__(context)
        unknown = sorted(set(context.options) - set(self.OPTIONS))
        if unknown:
            raise ConfigError(f"runtimes.systemd: unknown option {unknown[0]!r}")
        opts = {**self.OPTIONS, **context.options}
        if opts["bus"] not in ("system", "user", "auto"):
            raise ConfigError("runtimes.systemd.bus: want system, user or auto")
        for key in ("bus_address", "slice", "python"):
            if not isinstance(opts[key], str):
                raise ConfigError(f"runtimes.systemd.{key}: want a string")
        for key in ("log_max_bytes", "log_max_files"):
            value = opts[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"runtimes.systemd.{key}: want an integer >= 0, got {value!r}")
        if opts["slice"] and not opts["slice"].endswith(".slice"):
            raise ConfigError("runtimes.systemd.slice: want a slice unit name (x.slice) or ''")
        timeout = opts["stop_timeout"]
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ConfigError("runtimes.systemd.stop_timeout: want seconds > 0")
        self._address, self._kind = resolve_address(
            opts["bus"], opts["bus_address"] or None, os.environ, booted=booted(), uid=os.getuid()
        )
        self._bus = SystemdBus(self._address)
        self._slice: str = opts["slice"]
        self._stop_timeout = float(timeout)
        self._log_max_bytes: int = max(opts["log_max_bytes"], 1)
        self._log_max_files: int = opts["log_max_files"]
        self._python: str = opts["python"] or sys.executable
        self._tasks_dir = context.state_dir / "tasks"
        self._lost_tasks: set[str] = set()  # warned about once each

    async def fingerprint(self) -> Fingerprint:
        """Ask the manager for its version and judge the limits; never raises.

        Returns:
            Healthy when the manager answers on the bus. Attributes ``version`` (systemd's
            ``Version``), ``arch`` (Go-style), ``limits`` / ``limits_enforced`` (see
            ``host.limits_support``), ``bus`` (the address), ``manager`` (system or user),
            ``manager_uid`` and ``run_as`` (``"any uid and gid"`` under a root manager, else
            the only uid the units can run as).
        """
        uname = os.uname()
        attrs = {"arch": _ARCH.get(uname.machine, uname.machine), "bus": self._address}
        attrs["manager"] = self._kind
        where = f"{self._kind} manager on {self._address.removeprefix('unix:path=')}"
        if not os.access(self._python, os.X_OK):
            return Fingerprint(False, f"the log pump's interpreter {self._python} is missing")
        try:
            async with self._bus.session() as conn:
                props = await conn.properties(MANAGER_PATH, "org.freedesktop.systemd1.Manager")
                manager_uid, _ = await conn.manager_credentials()
        except (RuntimeUnavailableError, WorkloadError) as err:
            why = f"no systemd {where}: {err}"
            return Fingerprint(False, why, {**attrs, "limits": why, "limits_enforced": "false"})
        attrs["manager_uid"] = str(manager_uid)
        attrs["run_as"] = (
            "any uid and gid"
            if manager_uid == 0
            else f"uid {manager_uid} only (a user manager cannot switch users)"
        )
        version = str(props.get("Version", "")) or "unknown"
        enforced, limits = host.limits_support(self._kind, str(props.get("ControlGroup", "")))
        attrs.update(version=version, limits=limits, limits_enforced=str(enforced).lower())
        major = version.split(".", 1)[0].split("-", 1)[0]
        if major.isdigit() and int(major) < MIN_SYSTEMD:
            why = f"systemd {version} is too old: the runtime needs {MIN_SYSTEMD} or newer"
            return Fingerprint(False, why, attrs)
        state = str(props.get("SystemState", ""))
        if state == "stopping":
            return Fingerprint(False, f"systemd {version} ({where}) is shutting down", attrs)
        return Fingerprint(True, f"systemd {version}, {where} ({limits})", attrs)

    async def start(self, spec: TaskSpec) -> TaskHandle:
        """Start ``spec.argv`` as a transient unit; returns once the workload has exec'd.

        Raises:
            WorkloadError: empty argv, an image was given, bad task id, missing working dir,
                executable not found, task or unit already exists, ``run_as_user`` /
                ``run_as_group`` the manager cannot switch to (see ``tasks.user_args``), or
                systemd or the pump failed (the message says why).
            RuntimeUnavailableError: the bus or systemd is not reachable.
        """
        try:
            name = unit_name(spec.task_id)
        except ValueError as err:
            raise WorkloadError(f"bad task id: {err}") from err
        user: tuple[str, ...] = ()
        if spec.run_as_user is not None or spec.run_as_group is not None:
            user = await self._user_args(spec)
        prep = await asyncio.to_thread(tasks.prepare, spec, self._tasks_dir, name)
        pump = [
            self._python, "-I", "-S", str(RUN_PUMP),
            "--unit", name,
            "--log", str(spec.log_path),
            "--log-max-bytes", str(self._log_max_bytes),
            "--log-max-files", str(self._log_max_files),
            "--env-file", str(prep.task_dir / tasks.ENV_FILE),
            "--exec-socket", exec_socket_name(str(prep.task_dir)),
            *user,
            "--", prep.executable, *spec.argv,
        ]  # fmt: skip
        props = unit_properties(
            description=f"florete {spec.pod_namespace}/{spec.pod_name} {spec.container} "
            f"({spec.task_id})",
            exec_start=tuple(pump),
            working_dir=prep.cwd,
            pump_log=str(prep.task_dir / tasks.PUMP_LOG),
            limits=spec.limits,
            stop_timeout=self._stop_timeout,
            slice_name=self._slice or None,
        )
        path = unit_path(name)
        sent = False
        try:
            async with self._bus.session() as conn, conn.watch(path) as watch:
                sent = True  # from here on the unit may exist, even if the reply gets lost
                await conn.start_transient(name, props)
                state = await control.settle(conn, path, watch, START_TIMEOUT)
            failure = ""
            if state.active_enter_usec == 0:  # the pump never reported READY=1
                failure = await asyncio.to_thread(tasks.pump_message, prep.task_dir)
                failure = failure or _describe_failure(name, state)
        except BaseException as err:
            if isinstance(err, SystemdCallError) and err.name == UNIT_EXISTS:
                sent = False  # not ours: leave it alone
            await self._discard(name, prep.task_dir, sent)
            if isinstance(err, SystemdCallError):
                if err.name == UNIT_EXISTS:
                    raise WorkloadError(f"task {spec.task_id} already exists ({name})") from err
                raise WorkloadError(f"cannot start task {spec.task_id}: {err}") from err
            raise
        if failure:
            await self._discard(name, prep.task_dir, True)
            raise WorkloadError(f"cannot start task {spec.task_id}: {failure}")
        pid = state.main_pid
        _log.info("task %s: started %s as unit %s", spec.task_id, prep.executable, name)
        return TaskHandle(
            self.name,
            spec.task_id,
            {
                "unit": name,
                "log_path": str(spec.log_path),
                "started_at": state.started_at,
                "pump_pid": pid,
                "pump_start_time": host.process_start_time(pid) if pid else None,
            },
        )

    async def _user_args(self, spec: TaskSpec) -> tuple[str, ...]:
        """The pump's user arguments, after asking the bus which user runs systemd."""
        async with self._bus.session() as conn:
            manager_uid, manager_pid = await conn.manager_credentials()
        gid = None
        if manager_uid != 0 and manager_pid is not None:
            gid = await asyncio.to_thread(host.real_gid, manager_pid)
        return tasks.user_args(spec, manager_uid, gid)

    async def _discard(self, name: str, task_dir: Path, unit_sent: bool) -> None:
        """Undo a failed or cancelled start: the unit (if we may have made it) and the task dir."""
        if unit_sent:
            try:
                await asyncio.shield(control.release(self._bus, name, self._stop_timeout))
            except (WorkloadError, RuntimeUnavailableError) as err:
                _log.warning("cannot remove unit %s of a failed start: %s", name, err)
        await asyncio.to_thread(shutil.rmtree, task_dir, True)

    def _unit(self, handle: TaskHandle) -> str:
        if handle.runtime != self.name:
            raise WorkloadError(f"handle of runtime {handle.runtime!r}, not {self.name!r}")
        return str(handle.state.get("unit") or unit_name(handle.task_id))

    def _task_dir(self, handle: TaskHandle) -> Path:
        return self._tasks_dir / self._unit(handle)

    def _lost(self, handle: TaskHandle) -> ExitResult:
        if handle.task_id not in self._lost_tasks:
            self._lost_tasks.add(handle.task_id)
            _log.warning(
                "task %s: its unit is gone without a recorded exit (host rebooted, or the unit "
                "was stopped or reset outside the agent); reporting exit code %d",
                handle.task_id,
                LOST_EXIT_CODE,
            )
        return ExitResult(exit_code=LOST_EXIT_CODE)

    async def _state(self, handle: TaskHandle) -> UnitState:
        name = self._unit(handle)
        async with self._bus.session() as conn:
            return await control.query(conn, unit_path(name))

    async def wait(self, handle: TaskHandle) -> ExitResult:
        """Wait for the unit's main process to end (``PropertiesChanged`` signals, with a 5 s
        poll as safety net) and return its exit result (see ``units.exit_result``).

        A unit that is gone without a recorded end reports ``LOST_EXIT_CODE`` (137). While the
        bus or systemd cannot be reached, it keeps waiting as long as the task's pump runs (the
        workload needs neither), looking again every :data:`OUTAGE_POLL` seconds.

        Raises:
            WorkloadError: the handle is not this runtime's.
            RuntimeUnavailableError: the bus or systemd is unreachable and the pump has ended
                (or cannot be found): the task ended, and its exit status is known only once
                systemd answers again.
        """
        name = self._unit(handle)
        path = unit_path(name)
        outage = False
        while True:
            try:
                async with self._bus.session() as conn, conn.watch(path) as watch:
                    state = await control.until_ended(conn, path, watch, None)
                assert state is not None
                return state.exit or self._lost(handle)
            except RuntimeUnavailableError as err:
                pid = int(handle.state.get("pump_pid") or 0)
                since = handle.state.get("pump_start_time")
                if not await asyncio.to_thread(host.pump_running, name, pid, since):
                    raise RuntimeUnavailableError(
                        f"task {handle.task_id} ended while systemd was unreachable ({err}); "
                        "its exit status is known once systemd answers again"
                    ) from err
                level = logging.DEBUG if outage else logging.WARNING
                _log.log(level, "task %s runs on; systemd is unreachable: %s", handle.task_id, err)
                outage = True
            await asyncio.sleep(OUTAGE_POLL)

    async def stop(
        self, handle: TaskHandle, grace: float, signal: int = signal_module.SIGTERM
    ) -> None:
        """Send ``signal`` with ``KillUnit``; after ``grace`` s SIGKILL every process of the unit.

        Signals the pump forwards (``logpump.FORWARDED``: SIGTERM, SIGINT, SIGHUP, ...) go to the
        main process, which passes them to the workload's process group; others (SIGKILL,
        SIGSTOP, ...) go to every process of the unit. Returns once the task has ended (at once
        if it already had).

        Raises:
            WorkloadError: the task did not end within 10 s after SIGKILL.
            RuntimeUnavailableError: the bus or systemd is gone.
        """
        name = self._unit(handle)
        path = unit_path(name)
        async with self._bus.session() as conn, conn.watch(path) as watch:
            if not (await control.query(conn, path)).running:
                return
            await control.kill(conn, name, "main" if signal in FORWARDED else "all", signal)
            if await control.until_ended(conn, path, watch, max(grace, 0.0)) is not None:
                return
            _log.info(
                "task %s: still running %.1fs after signal %d; killing it",
                handle.task_id,
                grace,
                signal,
            )
            await control.kill(conn, name, "all", signal_module.SIGKILL)
            if await control.until_ended(conn, path, watch, control.KILL_TIMEOUT) is None:
                raise WorkloadError(
                    f"task {handle.task_id} did not end {control.KILL_TIMEOUT}s after SIGKILL"
                )

    async def destroy(self, handle: TaskHandle, force: bool = False) -> None:
        """Stop and unload the unit (killing what the workload left) and remove the task dir.

        Log files stay: the agent owns them.

        Raises:
            WorkloadError: the task still runs and ``force`` is False, or it would not die.
            RuntimeUnavailableError: the bus or systemd is gone.
        """
        name = self._unit(handle)
        state = await self._state(handle)
        if state.running:
            if not force:
                raise WorkloadError(f"task {handle.task_id} is still running; stop it first")
            await self.stop(handle, 0.0, signal_module.SIGKILL)
        if not state.gone:
            await control.release(self._bus, name, self._stop_timeout)
        await asyncio.to_thread(shutil.rmtree, self._task_dir(handle), True)

    async def inspect(self, handle: TaskHandle) -> TaskStatus:
        """Running or not, the workload's pid, start time and, once ended, the exit result."""
        state = await self._state(handle)
        started_at = state.started_at or float(handle.state.get("started_at") or 0.0)
        if state.running:
            return TaskStatus(True, state.workload_pid or state.main_pid, started_at)
        return TaskStatus(False, state.workload_pid, started_at, state.exit or self._lost(handle))

    async def stats(self, handle: TaskHandle) -> TaskStats:
        """CPU seconds, memory and storage I/O bytes of the unit (the pump included).

        From the unit's ``CPUUsageNSec``, ``MemoryCurrent``, ``IOReadBytes`` and ``IOWriteBytes``;
        where systemd cannot account them (a user manager on cgroup v1) from the processes of
        the unit's cgroup (``host.usage``; resident memory instead of the cgroup's charge).

        Raises:
            WorkloadError: the task is not running.
        """
        state = await self._state(handle)
        if not state.running:
            raise WorkloadError(f"task {handle.task_id} is not running")
        counters = (state.cpu_nsec, state.memory_bytes, state.io_read_bytes, state.io_write_bytes)
        if None not in counters:
            cpu, rss, read, write = (int(c or 0) for c in counters)
            return TaskStats(cpu / 1e9, rss, read, write)
        used = await asyncio.to_thread(host.usage, state.control_group)
        return TaskStats(
            cpu_seconds=used.cpu_seconds if state.cpu_nsec is None else state.cpu_nsec / 1e9,
            rss_bytes=used.rss_bytes if state.memory_bytes is None else state.memory_bytes,
            read_bytes=used.read_bytes if state.io_read_bytes is None else state.io_read_bytes,
            write_bytes=used.write_bytes if state.io_write_bytes is None else state.io_write_bytes,
        )

    async def logs(
        self,
        handle: TaskHandle,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
    ) -> AsyncIterator[LogRecord]:
        """Records of the task's CRI log and its rotated files, oldest first.

        Reads as the process runtime does (``wri_plugins.process.logreader``); a follower stops
        once the pump, which writes the log, has exited.
        """
        log_path, ended = await self._log_source(handle)
        async for record in read_logs(log_path, ended, follow=follow, tail=tail, since=since):
            yield record

    async def _log_source(self, handle: TaskHandle) -> tuple[Path, Callable[[], bool]]:
        state: dict[str, Any] = dict(handle.state)
        if "log_path" not in state:
            task_dir = self._task_dir(handle)
            state.update(await asyncio.to_thread(tasks.read_record, task_dir))
        if "pump_pid" not in state:
            unit = await self._state(handle)
            pid = unit.main_pid if unit.running else 0
            state.update(pump_pid=pid, pump_start_time=host.process_start_time(pid))
        pid, start_time = int(state["pump_pid"] or 0), state.get("pump_start_time")
        return Path(state["log_path"]), lambda: not host.alive(pid, start_time)

    async def exec(self, handle: TaskHandle, argv: tuple[str, ...]) -> ExecResult:
        """Run ``argv`` in the task: a child of its pump, so in the unit's cgroup, with the
        task's environment and working dir (see ``execserver``).

        Returns:
            Exit code (128 + N if killed by signal N; 127 not found, 126 not executable) and
            stdout+stderr combined, cut at 10 KiB.

        Raises:
            WorkloadError: empty argv, or the task is not running.
        """
        name = await self._exec_socket(handle, argv)
        return await run_exec(name, argv, EXEC_OUTPUT_LIMIT)

    async def exec_interactive(self, handle: TaskHandle, argv: tuple[str, ...], io: ExecIO) -> int:
        """Run ``argv`` as :meth:`exec` does, attached to ``io``: the pump gets the command's
        stdin, stdout and stderr (pipes, or a pty with ``io.tty``; see ``execserver``). A pump
        started by an older agent runs only ``exec``: without stdin and terminal the command
        then runs that way (output combined, cut at 10 KiB); with them it is refused.

        Returns:
            Exit code (128 + N if killed by signal N; 127 not found, 126 not executable).

        Raises:
            WorkloadError: empty argv, or the task is not running.
        """
        name = await self._exec_socket(handle, argv)
        try:
            return await run_attached(name, argv, io)
        except NotStartedError:
            if io.stdin or io.tty:
                raise
        # a pump older than attached exec (the agent was upgraded under the task): run to
        # completion as exec does, output combined and cut
        result = await run_exec(name, argv, EXEC_OUTPUT_LIMIT)
        if result.output:
            await io.write("stdout", result.output)
        return result.exit_code

    async def _exec_socket(self, handle: TaskHandle, argv: tuple[str, ...]) -> str:
        """The abstract socket name of the running task's exec server, to run ``argv`` there.

        Raises:
            WorkloadError: empty argv, or the task is not running.
        """
        if not argv:
            raise WorkloadError("exec needs a command (argv is empty)")
        if not (await self._state(handle)).running:
            raise WorkloadError(f"task {handle.task_id} is not running")
        return exec_socket_name(str(self._task_dir(handle)))

    async def recover(self, handle: TaskHandle) -> bool:
        """True while the unit exists with a running task or a recorded exit; False when gone.

        A unit that vanished (reboot, or stopped and unloaded outside the agent) is lost:
        :meth:`wait` then reports exit code 137 and :meth:`destroy` removes the task dir.

        Raises:
            RuntimeUnavailableError: the bus or systemd is gone (nothing can be said then).
        """
        try:
            state = await self._state(handle)
        except WorkloadError as err:
            _log.info("cannot recover task %s: %s", handle.task_id, err)
            return False
        if state.running or state.exit is not None:
            return True
        if state.gone and (self._task_dir(handle)).is_dir():  # not destroyed
            self._lost(handle)
        return False


def _describe_failure(name: str, state: UnitState) -> str:
    result = state.exit
    status = f"exit code {result.exit_code}" if result else "no exit status"
    return f"unit {name} failed ({state.result or state.active_state}, {status})"
