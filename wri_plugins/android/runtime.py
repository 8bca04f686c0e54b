"""The ``android`` runtime: workloads on a paired phone, through SSH to Termux's sshd.

Nothing but a POSIX shell and the usual tools runs on the phone. A helper script (``helper.sh``,
installed on connect) starts each task detached in a session of its own (``setsid``), under a
watcher shell that writes the workload's pid files, stamps each output line into per-stream CRI
log files and records the exit status, so a task outlives both the agent and the SSH
connection. Pids are always compared with their start time from ``/proc/<pid>/stat`` (and the
phone's boot id), so a reused pid is never taken for the task. See docs/android.md.

While the phone cannot be reached the runtime is unhealthy and every call raises
``RuntimeUnavailableError`` at once, except :meth:`AndroidRuntime.wait`: the workloads do not
need the agent, so it keeps waiting and learns the exit once the phone answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as signal_module
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

from agent.errors import ConfigError, RuntimeUnavailableError, WorkloadError
from wri_plugins.android import commands
from wri_plugins.android.attach import run_attached, started_pid
from wri_plugins.android.batch import Batcher
from wri_plugins.android.commands import RemoteState
from wri_plugins.android.connection import Completed, PhoneLink, Target
from wri_plugins.android.logs import LogCursor
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

_log = logging.getLogger(__name__)

MiB = 1024 * 1024
EXEC_OUTPUT_LIMIT = 10 * 1024  # bytes of exec output kept (the kubelet's probe limit)
KILL_TIMEOUT = 10.0  # seconds a task may take to end after SIGKILL before stop() gives up
STOP_POLL = 0.1  # seconds between looks at a task that was just signalled
FOLLOW_POLL = 0.5  # seconds between fetches of a followed log
LIMITS = (
    "not enforced: workloads run as the Termux app's user, which has no cgroup of its own to limit"
)
NOT_CONFIGURED = (
    "the android runtime is not configured: set host in [runtimes.android] (see docs/android.md)"
)
_TOOLS_ADVICE = "pkg install coreutils util-linux procps"


def _options(context: RuntimeContext, defaults: dict[str, Any]) -> dict[str, Any]:
    """Check the ``runtimes.android`` options.

    Raises:
        ConfigError: an unknown option or a bad value (the message names it).
    """
    unknown = sorted(set(context.options) - set(defaults))
    if unknown:
        raise ConfigError(f"runtimes.android: unknown option {unknown[0]!r}")
    opts = {**defaults, **context.options}
    for key in ("host", "user", "key_file", "known_hosts", "remote_dir", "node_name"):
        if not isinstance(opts[key], str):
            raise ConfigError(f"runtimes.android.{key}: want a string")
    for key, low, high in (
        ("port", 1, 65535),
        ("max_sessions", 1, 64),
        ("log_max_bytes", 1, 1 << 40),
        ("log_max_files", 0, 1000),
    ):
        value = opts[key]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(f"runtimes.android.{key}: want an integer {low}..{high}")
    for key in ("connect_timeout", "command_timeout", "probe_timeout", "poll_interval"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise ConfigError(f"runtimes.android.{key}: want seconds > 0")
    if "\n" in opts["remote_dir"] or "\0" in opts["remote_dir"]:
        raise ConfigError("runtimes.android.remote_dir: no newline or NUL byte allowed")
    return opts


class AndroidRuntime(WorkloadRuntime):
    """Runs each task as a process on a phone, over SSH to Termux. See the module docstring.

    Options (``runtimes.android``): ``host`` (the phone; empty: not configured, unhealthy),
    ``port`` (8022, Termux's sshd), ``user``, ``key_file``, ``known_hosts`` (see
    ``connection.Target``), ``remote_dir`` (the runtime's directory on the phone; default
    ``$HOME/.florete-agent``), ``node_name`` (the phone's node name; default
    ``<agent node>-android``), ``connect_timeout`` / ``command_timeout`` (seconds),
    ``probe_timeout`` (seconds a fingerprint waits, connecting included: the agent fingerprints
    every runtime at start, and a phone out of reach must not hold that up for long),
    ``max_sessions`` (SSH sessions at once, below sshd's MaxSessions of 10), ``log_max_bytes``
    / ``log_max_files`` (rotation of each output stream on the phone), ``poll_interval``
    (seconds between looks at waited-for tasks).
    """

    name: ClassVar[str] = "android"
    capabilities: ClassVar[Capabilities] = Capabilities(
        send_signals=True, exec=True, exec_interactive=True, remote=True
    )
    OPTIONS: ClassVar[dict[str, Any]] = {
        "host": "",
        "port": 8022,
        "user": "",
        "key_file": "",
        "known_hosts": "",
        "remote_dir": "",
        "node_name": "",
        "connect_timeout": 10.0,
        "command_timeout": 30.0,
        "probe_timeout": 5.0,
        "max_sessions": 8,
        "log_max_bytes": 10 * MiB,
        "log_max_files": 5,
        "poll_interval": 1.0,
    }

    def __init__(self, context: RuntimeContext) -> None:
        """Create the runtime; connects to nothing yet.

        Raises:
            ConfigError: an option is unknown or has a bad value (the message names it).
        """
        super().__init__(context)
        opts = _options(context, self.OPTIONS)
        self._base = commands.base_expr(opts["remote_dir"])
        self._node_name: str = opts["node_name"] or f"{context.node_name}-android"
        self._log_max_bytes: int = opts["log_max_bytes"]
        self._log_max_files: int = opts["log_max_files"]
        self._poll = float(opts["poll_interval"])
        self._probe_timeout = float(opts["probe_timeout"])
        self._link: PhoneLink | None = None
        if opts["host"]:
            self._link = PhoneLink(
                Target(
                    host=opts["host"],
                    port=opts["port"],
                    user=opts["user"],
                    key_file=opts["key_file"],
                    known_hosts=opts["known_hosts"],
                    connect_timeout=float(opts["connect_timeout"]),
                    command_timeout=float(opts["command_timeout"]),
                    max_sessions=opts["max_sessions"],
                    base=self._base,
                )
            )
        self._facts: dict[str, str] = {}  # the last probe's answer
        self._states: Batcher[RemoteState] = Batcher(self._query_states)
        self._lost_tasks: set[str] = set()  # warned about once each

    # --- the phone ----------------------------------------------------------------------------

    def _require(self) -> PhoneLink:
        if self._link is None:
            raise RuntimeUnavailableError(NOT_CONFIGURED)
        return self._link

    async def _helper(self, command: str, *args: str, stdin: bytes | None = None) -> Completed:
        link = self._require()
        return await link.run(commands.helper_command(self._base, command, *args), stdin)

    async def _query_states(self, task_ids: Sequence[str]) -> dict[str, RemoteState]:
        done = await self._helper("status", *task_ids)
        if done.exit_status != 0:
            raise RuntimeUnavailableError(f"status of tasks on the phone: {done.message}")
        try:
            return commands.parse_states(done.stdout, task_ids)
        except ValueError as err:
            raise RuntimeUnavailableError(f"status of tasks on the phone: {err}") from err

    async def _state(self, handle: TaskHandle) -> RemoteState:
        return await self._states.get(self._task_id(handle))

    def _task_id(self, handle: TaskHandle) -> str:
        if handle.runtime != self.name:
            raise WorkloadError(f"handle of runtime {handle.runtime!r}, not {self.name!r}")
        return commands.check_task_id(handle.task_id)

    def _where(self) -> str:
        return self._link.target.where if self._link else "(not configured)"

    # --- WRI ----------------------------------------------------------------------------------

    async def fingerprint(self) -> Fingerprint:
        """Probe the phone over SSH (at most ``probe_timeout`` s); never raises.

        Returns:
            Healthy when the phone answers and has the tools the helper needs. Attributes
            ``version`` (Android release, or the kernel's where there is no Android), ``arch``
            (Go-style), ``limits`` / ``limits_enforced`` (never enforced), ``node_name``,
            ``host``, ``reachable``, and the phone's last known ``kernel``, ``android``,
            ``model``, ``cpus``, ``memory_bytes``, ``boot_id``, ``uid`` and ``am`` (``"true"``
            when ``am start`` can launch activities).
        """
        attrs = {"limits": LIMITS, "limits_enforced": "false", "node_name": self._node_name}
        if self._link is None:
            return Fingerprint(False, NOT_CONFIGURED, attrs)
        attrs["host"] = self._where()
        unreachable = {**self._node_attrs(), **attrs, "reachable": "false"}
        try:
            async with asyncio.timeout(self._probe_timeout):
                done = await self._helper("probe")
        except RuntimeUnavailableError as err:
            return Fingerprint(False, err.message, unreachable)
        except TimeoutError:
            why = f"phone at {self._where()} did not answer within {self._probe_timeout:g}s"
            return Fingerprint(False, why, unreachable)
        if done.exit_status != 0:
            return Fingerprint(False, f"probe of the phone failed: {done.message}", unreachable)
        self._facts = commands.parse_probe(done.stdout)
        attrs = {**self._node_attrs(), **attrs, "reachable": "true"}
        facts = self._facts
        if facts.get("missing"):
            why = f"the phone lacks {facts['missing']} ({_TOOLS_ADVICE})"
            return Fingerprint(False, why, attrs)
        if facts.get("nanoseconds") != "yes":
            why = f"date on the phone cannot print nanoseconds (+%N) ({_TOOLS_ADVICE})"
            return Fingerprint(False, why, attrs)
        what = (
            f"Android {facts['android']} phone {facts.get('model', '')}".rstrip()
            if facts.get("android")
            else f"Linux {facts.get('kernel', '')} host without Android (no am start)"
        )
        return Fingerprint(
            True, f"{what} at {self._where()} over SSH, uid {facts.get('uid')}", attrs
        )

    def _node_attrs(self) -> dict[str, str]:
        f = self._facts
        attrs = {
            "version": f.get("android") or f.get("kernel", ""),
            "arch": commands.go_arch(f.get("machine", "")),
            "kernel": f.get("kernel", ""),
            "android": f.get("android", ""),
            "model": f.get("model", ""),
            "cpus": f.get("cpus", ""),
            "memory_bytes": str(int(f["memory_kib"]) * 1024)
            if f.get("memory_kib", "").isdigit()
            else "",
            "boot_id": f.get("boot_id", ""),
            "uid": f.get("uid", ""),
            "am": str(f.get("am") == "yes").lower() if f else "",
        }
        return {k: v for k, v in attrs.items() if v}

    async def _phone_uid(self) -> tuple[int | None, int | None]:
        if "uid" not in self._facts:
            await self.fingerprint()
        uid, gid = self._facts.get("uid", ""), self._facts.get("gid", "")
        return (int(uid) if uid.isdigit() else None, int(gid) if gid.isdigit() else None)

    async def start(self, spec: TaskSpec) -> TaskHandle:
        """Start ``spec.argv`` on the phone; returns once the workload is about to exec.

        The workload gets the phone's login environment with ``spec.env`` on top, and runs in
        ``spec.working_dir`` (default: the login's home). An Android activity is launched by a
        container whose command is Termux's ``am`` (``am start -n PACKAGE/ACTIVITY``).

        Raises:
            WorkloadError: empty argv, an image, a bad task id or environment name, working
                dir missing on the phone, executable not found (for ``am``: Termux's am is
                not installed, or this is no Android), the task exists, ``run_as_user`` /
                ``run_as_group`` other than the phone login's, or the helper failed.
            RuntimeUnavailableError: the phone cannot be reached.
        """
        args = commands.start_args(spec, spec.working_dir or "", self._log_max_bytes,
                                   self._log_max_files)  # fmt: skip
        env = commands.env_file(spec.env)
        self._require()
        if spec.run_as_user is not None or spec.run_as_group is not None:
            uid, gid = await self._phone_uid()
            if spec.run_as_user not in (None, uid) or spec.run_as_group not in (None, gid):
                raise WorkloadError(
                    f"runAsUser {spec.run_as_user} / runAsGroup {spec.run_as_group}: workloads "
                    f"on the phone run as its login (uid {uid} gid {gid}) and cannot switch"
                )
        done = await self._helper("start", *args, stdin=env)
        if done.exit_status == commands.NOT_FOUND and spec.argv[0].rsplit("/", 1)[-1] == "am":
            raise WorkloadError(
                f"cannot start task {spec.task_id}: {done.message}; launching an Android "
                "activity needs Termux's am (pkg install termux-am) on an Android phone"
            )
        if done.exit_status != 0:
            raise WorkloadError(f"cannot start task {spec.task_id}: {done.message}")
        try:
            started = commands.parse_started(done.stdout)
        except ValueError as err:
            raise WorkloadError(f"cannot start task {spec.task_id}: {err}") from err
        _log.info(
            "task %s: started %s on the phone at %s as pid %d",
            spec.task_id, spec.argv[0], self._where(), started.wpid,
        )  # fmt: skip
        return TaskHandle(
            self.name,
            spec.task_id,
            {
                "host": self._where(),
                "pid": started.pid,
                "pid_start": started.pid_start,
                "wpid": started.wpid,
                "wpid_start": started.wpid_start,
                "boot_id": started.boot_id,
                "started_at": started.started_at,
            },
        )

    def _lost(self, handle: TaskHandle) -> ExitResult:
        if handle.task_id not in self._lost_tasks:
            self._lost_tasks.add(handle.task_id)
            _log.warning(
                "task %s: gone from the phone without an exit record (the phone rebooted, or "
                "its watcher was killed); reporting exit code %d",
                handle.task_id,
                commands.LOST_EXIT_CODE,
            )
        return ExitResult(exit_code=commands.LOST_EXIT_CODE)

    def _result(self, handle: TaskHandle, state: RemoteState) -> ExitResult:
        return state.exit or self._lost(handle)

    async def _tick(self) -> None:
        """Sleep to the next multiple of ``poll_interval`` on the loop's clock, so waiters of
        different tasks wake together and share one status query."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self._poll - loop.time() % self._poll)

    async def wait(self, handle: TaskHandle) -> ExitResult:
        """Poll the task every ``poll_interval`` s until it ends; return how it ended.

        A task gone without an exit record reports exit code 137. While the phone cannot be
        reached it keeps waiting (the workload does not need the agent) and records a
        ``NodeNotReady`` warning event once per outage.

        Raises:
            WorkloadError: the handle is not this runtime's.
        """
        task_id = self._task_id(handle)
        outage = False
        while True:
            try:
                state = await self._state(handle)
            except RuntimeUnavailableError as err:
                if not outage:
                    _log.warning("task %s: waiting on; %s", task_id, err.message)
                    if self.context.events is not None:
                        self.context.events(task_id, "Warning", "NodeNotReady", err.message)
                outage = True
            else:
                if outage:
                    _log.info("task %s: the phone answers again", task_id)
                    outage = False
                if state.ended:
                    return self._result(handle, state)
            await self._tick()

    async def _until_ended(self, handle: TaskHandle, seconds: float) -> bool:
        """Look at the task every :data:`STOP_POLL` s for ``seconds``; True once it ended."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(seconds, 0.0)
        while True:
            if (await self._state(handle)).ended:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            await asyncio.sleep(min(STOP_POLL, left))

    async def stop(
        self, handle: TaskHandle, grace: float, signal: int = signal_module.SIGTERM
    ) -> None:
        """Send ``signal`` to the workload's process group; SIGKILL it after ``grace`` s.

        Returns once the task has ended (at once if it already had).

        Raises:
            WorkloadError: not a signal number, or the task did not end 10 s after SIGKILL.
            RuntimeUnavailableError: the phone cannot be reached.
        """
        task_id = self._task_id(handle)
        name = commands.signal_name(signal)
        if (await self._state(handle)).ended:
            return
        done = await self._helper("signal", task_id, name)
        if done.exit_status not in (0, commands.NO_TASK):
            raise WorkloadError(f"cannot signal task {task_id}: {done.message}")
        if await self._until_ended(handle, grace):
            return
        _log.info("task %s: still running %.1fs after signal %s; killing it", task_id, grace, name)
        await self._helper("signal", task_id, "KILL")
        if not await self._until_ended(handle, KILL_TIMEOUT):
            raise WorkloadError(f"task {task_id} did not end {KILL_TIMEOUT}s after SIGKILL")

    async def destroy(self, handle: TaskHandle, force: bool = False) -> None:
        """Remove the task's directory (its logs with it) from the phone.

        Raises:
            WorkloadError: the task still runs and ``force`` is False, or it would not die.
            RuntimeUnavailableError: the phone cannot be reached.
        """
        task_id = self._task_id(handle)
        if (await self._state(handle)).state == "running":
            if not force:
                raise WorkloadError(f"task {task_id} is still running; stop it first")
            await self.stop(handle, 0.0, signal_module.SIGKILL)
        done = await self._helper("destroy", task_id)
        if done.exit_status != 0:
            raise WorkloadError(f"cannot destroy task {task_id}: {done.message}")

    async def inspect(self, handle: TaskHandle) -> TaskStatus:
        """Running or not, the workload's pid on the phone, start time and exit result.

        Raises:
            RuntimeUnavailableError: the phone cannot be reached.
        """
        state = await self._state(handle)
        started = state.started_at or float(handle.state.get("started_at") or 0.0)
        if not state.ended:
            return TaskStatus(True, state.pid, started)
        return TaskStatus(False, state.pid, started, self._result(handle, state))

    async def stats(self, handle: TaskHandle) -> TaskStats:
        """CPU seconds, resident bytes and storage I/O of the workload's process group, from
        ``/proc/<pid>/stat`` and ``/proc/<pid>/io`` on the phone (I/O reads 0 where Android
        hides it).

        Raises:
            WorkloadError: the task is not running.
            RuntimeUnavailableError: the phone cannot be reached.
        """
        task_id = self._task_id(handle)
        done = await self._helper("stats", task_id)
        if done.exit_status in (commands.NOT_RUNNING, commands.NO_TASK):
            raise WorkloadError(f"task {task_id} is not running")
        if done.exit_status != 0:
            raise WorkloadError(f"stats of task {task_id}: {done.message}")
        try:
            return commands.parse_stats(done.stdout)
        except ValueError as err:
            raise WorkloadError(f"stats of task {task_id}: {err}") from err

    async def logs(
        self,
        handle: TaskHandle,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
    ) -> AsyncIterator[LogRecord]:
        """Records of the task's output on the phone, both streams merged by time.

        A follower fetches new records every 0.5 s and stops once the task has ended and its
        output is read. A task whose directory is gone has no records.

        Raises:
            RuntimeUnavailableError: the phone cannot be reached.
        """
        task_id = self._task_id(handle)
        if tail == 0 and not follow:
            return
        cursor = LogCursor()
        first = True
        while True:
            if not first:
                await asyncio.sleep(FOLLOW_POLL)
            first_fetch, first = first, False
            done = await self._helper(
                "fetch", *cursor.fetch_args(task_id, tail if first_fetch else None)
            )
            if done.exit_status == commands.NO_TASK:
                return
            if done.exit_status != 0:
                raise WorkloadError(f"logs of task {task_id}: {done.message}")
            try:
                fetched = cursor.feed(done.stdout)
            except ValueError as err:
                raise WorkloadError(f"logs of task {task_id}: {err}") from err
            records = fetched.records
            if tail is not None and first_fetch:
                records = records[len(records) - tail :] if tail > 0 else []
            for record in records:
                if since is None or record.time >= since:
                    yield record
            if not follow or fetched.state.ended:
                return

    async def exec(self, handle: TaskHandle, argv: tuple[str, ...]) -> ExecResult:
        """Run ``argv`` on the phone with the task's environment and working dir.

        On cancellation the command's process group is killed before the cancellation
        propagates.

        Returns:
            Exit code (128 + N if killed by signal N; 127 not found, 126 not executable) and
            stdout+stderr combined, cut at 10 KiB.

        Raises:
            WorkloadError: empty argv, a NUL byte in it, or the task is not running.
            RuntimeUnavailableError: the phone cannot be reached.
        """
        task_id, link = self._exec_target(handle, argv)
        pid = ""
        try:
            async with link.process(
                commands.helper_command(self._base, "exec", task_id, *argv)
            ) as proc:
                pid = await started_pid(proc, link, task_id)
                output = bytearray()
                while chunk := await proc.stdout.read(65536):
                    output += chunk[: EXEC_OUTPUT_LIMIT - len(output)]
                done = await proc.wait()
        except asyncio.CancelledError:
            if pid:  # the session is closed by now: its slot is free for the kill
                with contextlib.suppress(RuntimeUnavailableError):
                    await self._helper("kill", pid)
            raise
        return ExecResult(link.exit_code(done.exit_status, done.exit_signal), bytes(output))

    async def exec_interactive(self, handle: TaskHandle, argv: tuple[str, ...], io: ExecIO) -> int:
        """Run ``argv`` on the phone as :meth:`exec` does, attached to ``io`` over an SSH
        session of its own (a pseudo-terminal with ``io.tty``; see ``attach``).

        Returns:
            Exit code (128 + N if killed by signal N; 127 not found, 126 not executable).

        Raises:
            WorkloadError: empty argv, a NUL byte in it, or the task is not running.
            RuntimeUnavailableError: the phone cannot be reached.
        """
        task_id, link = self._exec_target(handle, argv)
        return await run_attached(
            link, self._base, task_id, argv, io, lambda pid: self._helper("kill", pid)
        )

    def _exec_target(self, handle: TaskHandle, argv: tuple[str, ...]) -> tuple[str, PhoneLink]:
        """The task id and the phone's link, to run ``argv`` in the task.

        Raises:
            WorkloadError: a handle of another runtime or with a bad task id, empty argv, or a
                NUL byte in it.
            RuntimeUnavailableError: no phone is configured.
        """
        task_id = self._task_id(handle)
        if not argv:
            raise WorkloadError("exec needs a command (argv is empty)")
        if any("\0" in a for a in argv):
            raise WorkloadError("an exec argument holds a NUL byte")
        return task_id, self._require()

    async def recover(self, handle: TaskHandle) -> bool:
        """True when the task runs on the phone or its end is recorded; False when it is gone
        or lost (the phone rebooted, or its watcher was killed: :meth:`wait` then reports exit
        code 137 and :meth:`destroy` removes what is left).

        Raises:
            RuntimeUnavailableError: the phone cannot be reached (nothing can be said then).
        """
        try:
            state = await self._state(handle)
        except WorkloadError as err:
            _log.info("cannot recover task %s: %s", handle.task_id, err)
            return False
        if state.state == "lost":
            self._lost(handle)
        return state.state in ("running", "exited")

    async def close(self) -> None:
        """Close the SSH connection; tasks on the phone keep running."""
        if self._link is not None:
            await self._link.close()
