"""The ``process`` runtime: tasks are host processes, each watched by its own shim.

A task outlives the agent: its shim (``shim.py``, one small Python process per task, like podman's
conmon) holds the output pipes, writes the CRI log and records the exit status in the task dir,
so a new :class:`ProcessRuntime` on the same state dir re-attaches with :meth:`recover` and learns
exit codes of tasks that ended while no agent ran. Limits use a cgroup per task (see
``cgroups``); where cgroups cannot be written, tasks run unlimited and the fingerprint says why.

A task without limits gets no cgroup unless the option ``cgroup_always`` is set: joining a cgroup
v1 hierarchy waits for an RCU grace period (about 10 ms measured here, most of a pod's start), and
the process group already bounds what ``stop`` kills. With ``cgroup_always`` even children that
leave the process group are found and killed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import shutil
import signal as signal_module
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import psutil

from agent.errors import ConfigError, WorkloadError
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
from wri_plugins.process import launch
from wri_plugins.process.cgroups import Cgroups, remove_cgroups
from wri_plugins.process.logreader import read_logs
from wri_plugins.process.procs import signal_group, task_stats, wait_for_exit
from wri_plugins.process.state import (
    ENV_FILE,
    SHIM_LOG,
    TASK_FILE,
    TaskState,
    encode_env,
    write_atomic,
)

_log = logging.getLogger(__name__)

MiB = 1024 * 1024
EXEC_OUTPUT_LIMIT = 10 * 1024  # bytes of exec output kept (the kubelet's probe limit)
KILL_TIMEOUT = 10.0  # seconds a task may take to end after SIGKILL before stop() gives up
#: What a task whose exit status is lost reports: the shim and the workload are gone without an
#: exit record (host rebooted, shim killed). Exit code 137 as the kubelet's ContainerStatusUnknown.
LOST_EXIT_CODE = 137


@dataclass(frozen=True)
class _Prepared:
    task_dir: Path
    cwd: str
    executable: str
    cgroups: list[Path]
    user_args: tuple[str, ...] = ()


def _user_args(spec: TaskSpec) -> tuple[str, ...]:
    """Shim arguments for ``run_as_user``/``run_as_group``.

    As root the workload child switches to them (``--uid``/``--gid``); otherwise it can only run
    as the agent's own uid and gid, so any other value is refused.

    Raises:
        WorkloadError: not root and the spec asks for another uid or gid.
    """
    uid, gid = spec.run_as_user, spec.run_as_group
    if os.geteuid() != 0:
        if (uid is not None and uid != os.geteuid()) or (gid is not None and gid != os.getegid()):
            raise WorkloadError(
                f"runAsUser {uid} / runAsGroup {gid}: the agent runs as uid {os.geteuid()} "
                f"gid {os.getegid()} and can start host processes only as itself"
            )
        return ()
    args: tuple[str, ...] = ()
    if uid is not None:
        args += ("--uid", str(uid))
    if gid is not None:
        args += ("--gid", str(gid))
    return args


_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm", "i686": "386"}


class ProcessRuntime(WorkloadRuntime):
    """Runs each task as a host process under a detached shim. See the module docstring.

    Options (``runtimes.process``): ``log_max_bytes`` (rotate the CRI log above this size,
    bytes), ``log_max_files`` (rotated files kept), ``cgroup_parent`` (parent of the task
    cgroups: absolute in each hierarchy, or relative to the agent's own cgroup).
    """

    name: ClassVar[str] = "process"
    capabilities: ClassVar[Capabilities] = Capabilities(
        send_signals=True, exec=True, exec_interactive=True, resource_limits=True
    )
    OPTIONS: ClassVar[dict[str, Any]] = {
        "log_max_bytes": 10 * MiB,
        "log_max_files": 5,
        "cgroup_parent": "/florete",
        "cgroup_always": False,
    }

    def __init__(self, context: RuntimeContext) -> None:
        """Create the runtime; touches nothing on disk.

        Raises:
            ConfigError: an option is unknown or has a bad value (the message names it).
        """
        super().__init__(context)
        unknown = sorted(set(context.options) - set(self.OPTIONS))
        if unknown:
            raise ConfigError(f"runtimes.process: unknown option {unknown[0]!r}")
        options = {**self.OPTIONS, **context.options}
        for key in ("log_max_bytes", "log_max_files"):
            value = options[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"runtimes.process.{key}: want an integer >= 0, got {value!r}")
        if not isinstance(options["cgroup_parent"], str) or not options["cgroup_parent"]:
            raise ConfigError("runtimes.process.cgroup_parent: want a non-empty path")
        self._log_max_bytes: int = max(options["log_max_bytes"], 1)
        self._log_max_files: int = options["log_max_files"]
        if not isinstance(options["cgroup_always"], bool):
            raise ConfigError("runtimes.process.cgroup_always: want true or false")
        self._cgroup_parent: str = options["cgroup_parent"]
        self._cgroup_always: bool = options["cgroup_always"]
        self._tasks_dir = context.state_dir / "tasks"
        self._forkserver = launch.ForkServer(context.state_dir / "forkserver.log")
        self._cgroups: Cgroups | str | None = None
        self._lost_tasks: set[str] = set()  # warned about once each

    def _limits(self) -> Cgroups | str:
        """The cgroup layout, or why limits are not enforced (probed once)."""
        if self._cgroups is None:
            self._cgroups = Cgroups.probe(self._cgroup_parent)
            if isinstance(self._cgroups, str):
                _log.warning("process runtime: %s", self._cgroups)
        return self._cgroups

    async def fingerprint(self) -> Fingerprint:
        """Report health: always healthy on Linux; never raises.

        Returns:
            Attributes ``version`` (kernel release), ``arch`` (Go-style: ``amd64``, ``arm64``,
            ``arm``), ``limits`` (``cgroup-v1``/``cgroup-v2``, or the sentence saying why limits
            are not enforced), ``limits_enforced`` (``true``/``false``) and ``python`` (the
            version shims run with).
        """
        if sys.platform != "linux":
            return Fingerprint(False, f"the process runtime needs Linux, not {sys.platform}")
        uname = os.uname()
        layout = self._limits()
        limits = layout if isinstance(layout, str) else layout.description
        return Fingerprint(
            healthy=True,
            description=f"host processes on Linux {uname.release} ({limits})",
            attributes={
                "version": uname.release,
                "arch": _ARCH.get(uname.machine, uname.machine),
                "limits": limits,
                "limits_enforced": str(not isinstance(layout, str)).lower(),
                "python": platform.python_version(),
            },
        )

    async def start(self, spec: TaskSpec) -> TaskHandle:
        """Start ``spec.argv`` with exactly ``spec.env`` in ``spec.working_dir`` (default ``/``).

        Returns once the workload has exec'd and the task dir holds its pids.

        Raises:
            WorkloadError: empty argv, an image was given, bad task id, missing working dir,
                executable not found or not executable, task already exists, cgroup or shim
                failure, or ``run_as_user``/``run_as_group`` other than the agent's when the
                agent is not root (as root the workload switches to them before exec).
        """
        prep = await asyncio.to_thread(self._prepare, spec)
        task_dir, cgroups = prep.task_dir, prep.cgroups
        started: launch.Launch | None = None
        try:
            shim_args = [
                "--task-dir", str(task_dir),
                "--env-file", str(task_dir / ENV_FILE),
                "--log", str(spec.log_path),
                "--log-max-bytes", str(self._log_max_bytes),
                "--log-max-files", str(self._log_max_files),
                *(arg for d in cgroups for arg in ("--cgroup", str(d))),
                *prep.user_args,
                "--", prep.executable, *spec.argv,
            ]  # fmt: skip
            started_at = time.time()
            started = await launch.spawn_shim(
                prep.cwd, shim_args, task_dir / SHIM_LOG, self._forkserver
            )
            report = started.report
            report.check(spec.argv[0])
            state = TaskState(
                task_dir=task_dir,
                shim_pid=report.shim_pid,
                shim_ctime=report.shim_ctime,
                pid=report.pid,
                pid_ctime=report.pid_ctime,
                started_at=started_at,
                cgroups=tuple(cgroups),
                log_path=spec.log_path,
            )
            record = {
                "working_dir": prep.cwd,
                "argv": list(spec.argv),
                "user_args": list(prep.user_args),  # exec commands run as the workload's user
                "state": state.to_state(),
            }
            await asyncio.to_thread(
                write_atomic, task_dir / TASK_FILE, json.dumps(record).encode(), durable=False
            )
            await started.confirm()
        except BaseException as err:
            # without the ack the shim kills the workload and exits; then nothing is left
            if started is not None:
                started.abandon()
            await self._discard(task_dir, cgroups, started)
            if isinstance(err, OSError):
                raise WorkloadError(f"cannot start task {spec.task_id}: {err}") from err
            raise
        _log.info("task %s: started %s as pid %d", spec.task_id, prep.executable, state.pid)
        return TaskHandle(self.name, spec.task_id, state.to_state())

    def _prepare(self, spec: TaskSpec) -> _Prepared:
        """Check ``spec`` and lay out the task on disk (blocking: run in a thread).

        Raises:
            WorkloadError: see :meth:`start`; nothing is left behind then.
        """
        if not spec.argv:
            raise WorkloadError("process runtime needs a command (argv is empty)")
        if spec.image:
            raise WorkloadError(f"process runtime runs host commands, not images ({spec.image})")
        if not spec.task_id or "/" in spec.task_id or spec.task_id in (".", ".."):
            raise WorkloadError(f"task id {spec.task_id!r} is not a file name")
        user_args = _user_args(spec)
        cwd = spec.working_dir or "/"
        if not os.path.isdir(cwd):
            raise WorkloadError(f"working directory {cwd} does not exist")
        executable = launch.resolve_executable(spec.argv[0], spec.env, cwd)
        env = encode_env(spec.env)
        task_dir = self._tasks_dir / spec.task_id
        try:
            self._tasks_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            task_dir.mkdir(mode=0o700)
        except FileExistsError:
            raise WorkloadError(f"task {spec.task_id} already exists ({task_dir})") from None
        except OSError as err:
            raise WorkloadError(f"cannot create task dir {task_dir}: {err.strerror}") from err
        cgroups: list[Path] = []
        try:
            write_atomic(task_dir / ENV_FILE, env, durable=False)
            spec.log_path.parent.mkdir(parents=True, exist_ok=True)
            layout = self._limits()
            limited = spec.limits.cpu_millis is not None or spec.limits.memory_bytes is not None
            if isinstance(layout, Cgroups) and (limited or self._cgroup_always):
                cgroups = [parent / spec.task_id for parent in layout.parents]
                layout.create(spec.task_id, spec.limits)
        except (OSError, ValueError) as err:
            Cgroups.remove([d for d in cgroups if d.exists()])
            shutil.rmtree(task_dir, ignore_errors=True)
            raise WorkloadError(f"cannot prepare task {spec.task_id}: {err}") from err
        return _Prepared(task_dir, cwd, executable, cgroups, user_args)

    async def _discard(
        self, task_dir: Path, cgroups: list[Path], started: launch.Launch | None
    ) -> None:
        """Undo a failed start once the shim (told nothing) has ended; remove its files."""
        if started is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KILL_TIMEOUT):
                    await wait_for_exit(started.report.shim_pid, started.report.shim_ctime)
        await remove_cgroups(cgroups)
        await asyncio.to_thread(shutil.rmtree, task_dir, True)

    def _state(self, handle: TaskHandle) -> TaskState:
        """The handle's state; for a handle with only a task id, the state from its task file."""
        if handle.runtime != self.name:
            raise WorkloadError(f"handle of runtime {handle.runtime!r}, not {self.name!r}")
        if handle.state:
            return TaskState.from_state(handle.state)
        task_file = self._tasks_dir / handle.task_id / TASK_FILE
        try:
            record = json.loads(task_file.read_bytes())
        except FileNotFoundError:
            raise WorkloadError(f"task {handle.task_id} is unknown (no {task_file})") from None
        except (OSError, ValueError) as err:
            raise WorkloadError(f"task {handle.task_id}: cannot read {task_file}: {err}") from err
        return TaskState.from_state(record.get("state") or {})

    def _lost(self, handle: TaskHandle) -> ExitResult:
        if handle.task_id in self._lost_tasks:
            return ExitResult(exit_code=LOST_EXIT_CODE)
        self._lost_tasks.add(handle.task_id)
        _log.warning(
            "task %s: shim and workload are gone without an exit record (host rebooted or shim "
            "killed); reporting exit code %d",
            handle.task_id,
            LOST_EXIT_CODE,
        )
        return ExitResult(exit_code=LOST_EXIT_CODE)

    async def wait(self, handle: TaskHandle) -> ExitResult:
        """Wait for the task's end and return its exit record (see :data:`LOST_EXIT_CODE`).

        Watches a pidfd of the shim (no polling; a 0.5 s poll on kernels without pidfds).

        Raises:
            WorkloadError: the handle is not this runtime's.
        """
        st = self._state(handle)
        while True:
            result = st.exit_result()
            if result is not None:
                return result
            if st.shim_alive():
                await wait_for_exit(st.shim_pid, st.shim_ctime)
            elif st.workload_alive():  # the shim died: wait for the orphan itself
                await wait_for_exit(st.pid, st.pid_ctime)
            else:
                return st.exit_result() or self._lost(handle)

    async def stop(
        self, handle: TaskHandle, grace: float, signal: int = signal_module.SIGTERM
    ) -> None:
        """Signal the workload's process group; SIGKILL it and its cgroups after ``grace`` s.

        Returns once the task has ended (at once if it already had).

        Raises:
            WorkloadError: the task did not end within 10 s after SIGKILL.
        """
        st = self._state(handle)
        if st.exit_result() is not None:
            return
        if st.workload_alive():
            signal_group(st.pid, signal)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(grace, 0.0)):
                await self.wait(handle)
                return
        _log.info(
            "task %s: still running %.1fs after signal %d; killing it",
            handle.task_id,
            grace,
            signal,
        )
        if st.workload_alive():
            signal_group(st.pid, signal_module.SIGKILL)
        Cgroups.kill(list(st.cgroups))
        try:
            async with asyncio.timeout(KILL_TIMEOUT):
                await self.wait(handle)
        except TimeoutError:
            raise WorkloadError(
                f"task {handle.task_id} did not end {KILL_TIMEOUT}s after SIGKILL"
            ) from None

    def _running(self, st: TaskState) -> bool:
        return st.exit_result() is None and (st.workload_alive() or st.shim_alive())

    async def destroy(self, handle: TaskHandle, force: bool = False) -> None:
        """Remove the task dir and cgroups (log files stay: the agent owns them).

        Raises:
            WorkloadError: the task still runs and ``force`` is False, or it would not die.
        """
        st = self._state(handle)
        if self._running(st):
            if not force:
                raise WorkloadError(f"task {handle.task_id} is still running; stop it first")
            await self.stop(handle, 0.0, signal_module.SIGKILL)
        await remove_cgroups(st.cgroups)
        await asyncio.to_thread(shutil.rmtree, st.task_dir, True)

    async def inspect(self, handle: TaskHandle) -> TaskStatus:
        """Running or not, workload pid, start time and, once ended, the exit record."""
        st = self._state(handle)
        result = st.exit_result()
        if result is None and (st.workload_alive() or st.shim_alive()):
            return TaskStatus(running=True, pid=st.pid, started_at=st.started_at)
        result = result or st.exit_result() or self._lost(handle)
        return TaskStatus(running=False, pid=st.pid, started_at=st.started_at, exit=result)

    async def stats(self, handle: TaskHandle) -> TaskStats:
        """CPU seconds, RSS bytes and storage I/O bytes of the workload and its descendants.

        I/O counters need the same user as the task (or root); they read 0 otherwise.

        Raises:
            WorkloadError: the task is not running.
        """
        st = self._state(handle)
        if not st.workload_alive():
            raise WorkloadError(f"task {handle.task_id} is not running")
        try:
            return task_stats(st.pid)
        except psutil.Error as err:
            raise WorkloadError(f"task {handle.task_id} is not running") from err

    async def logs(
        self,
        handle: TaskHandle,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
    ) -> AsyncIterator[LogRecord]:
        """Records of the task's CRI log and its rotated files, oldest first (see ``logreader``)."""
        st = self._state(handle)
        async for record in read_logs(
            st.log_path, lambda: not self._running(st), follow=follow, tail=tail, since=since
        ):
            yield record

    async def exec(self, handle: TaskHandle, argv: tuple[str, ...]) -> ExecResult:
        """Run ``argv`` with the task's environment, working dir, cgroups and user.

        Returns:
            Exit code (128 + N if killed by signal N; 127 not found, 126 not executable) and
            stdout+stderr combined, cut at 10 KiB.

        Raises:
            WorkloadError: empty argv, or the task is not running.
        """
        cwd, shim_args = self._exec_args(handle, argv)
        return await launch.run_exec(cwd, shim_args, EXEC_OUTPUT_LIMIT)

    async def exec_interactive(self, handle: TaskHandle, argv: tuple[str, ...], io: ExecIO) -> int:
        """Run ``argv`` as :meth:`exec` does, attached to ``io`` (pipes, or a pty with a tty).

        Returns:
            Exit code (128 + N if killed by signal N; 127 not found, 126 not executable).

        Raises:
            WorkloadError: empty argv, or the task is not running.
        """
        cwd, shim_args = self._exec_args(handle, argv)
        return await launch.run_attached(cwd, shim_args, io)

    def _exec_args(self, handle: TaskHandle, argv: tuple[str, ...]) -> tuple[str, list[str]]:
        """The working dir and the shim's ``exec`` arguments for ``argv`` in the task."""
        if not argv:
            raise WorkloadError("exec needs a command (argv is empty)")
        st = self._state(handle)
        if not self._running(st):
            raise WorkloadError(f"task {handle.task_id} is not running")
        try:
            record = json.loads((st.task_dir / TASK_FILE).read_bytes())
            cwd = str(record["working_dir"])
            user_args = [str(arg) for arg in record.get("user_args", ())]  # older agents: none
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise WorkloadError(f"task {handle.task_id}: cannot read its task file: {err}") from err
        cgroup_args = [arg for d in st.cgroups for arg in ("--cgroup", str(d))]
        env_args = ["--env-file", str(st.task_dir / ENV_FILE)]
        return cwd, [*cgroup_args, *user_args, *env_args, "--", *argv]

    async def close(self) -> None:
        """Stop the shim fork server; every task and its shim keep running."""
        await asyncio.to_thread(self._forkserver.close_now)

    async def recover(self, handle: TaskHandle) -> bool:
        """True when the task runs or its end is recorded; False when it is gone or lost.

        A lost task (shim and workload gone without an exit record: the host rebooted or the
        shim was killed) keeps its task dir until :meth:`destroy`, and :meth:`wait` reports it
        with exit code 137, but the agent is told it is gone so it records the kubelet's
        ``ContainerStatusUnknown``.
        """
        try:
            st = self._state(handle)
        except WorkloadError as err:
            _log.info("cannot recover task %s: %s", handle.task_id, err)
            return False
        if not st.task_dir.is_dir():
            return False
        if st.exit_result() is None and not (st.shim_alive() or st.workload_alive()):
            self._lost(handle)
            return False
        return True
