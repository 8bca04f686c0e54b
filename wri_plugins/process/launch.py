"""Starting a task: finding its executable, starting its shim and reading the shim's report."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import WorkloadError
from wri_plugins.api import ExecIO, ExecResult
from wri_plugins.stdio import ChildStdio

_log = logging.getLogger(__name__)
SHIM = Path(__file__).with_name("run_shim.py")
#: Seconds to wait for the shim's report (Python start-up on a slow ARM board under load).
REPORT_TIMEOUT = 30.0


def shim_command(command: str, *args: str) -> list[str]:
    """The command line that runs the shim's ``<command> <args>`` (isolated, no site-packages)."""
    return [sys.executable, "-I", "-S", str(SHIM), command, *args]


def resolve_executable(name: str, env: Mapping[str, str], cwd: str) -> str:
    """Find the file ``execvp`` would run for ``name``, before anything is spawned.

    Args:
        name: ``argv[0]``: a path (contains ``/``; relative to ``cwd``) or a name looked up in
            ``env["PATH"]`` (the agent's PATH when the task has none; empty and relative entries
            are relative to ``cwd``).
        env: the task's environment.
        cwd: the task's working directory.

    Returns:
        Absolute path of an executable regular file.

    Raises:
        WorkloadError: ``"<name>: executable not found"`` (with the PATH searched), or
            ``"<name>: permission denied"`` when only non-executable files match.
    """
    if "/" in name:
        candidates = [os.path.join(cwd, name)]
        where = ""
    else:
        search = env.get("PATH", os.environ.get("PATH", os.defpath))
        candidates = [os.path.join(cwd, entry or ".", name) for entry in search.split(os.pathsep)]
        where = f" in PATH={search}"
    denied = None
    for candidate in candidates:
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return os.path.abspath(candidate)
            denied = denied or candidate
    if denied:
        raise WorkloadError(f"{name}: permission denied ({denied} is not executable)")
    raise WorkloadError(f"{name}: executable not found{where}")


@dataclass(frozen=True)
class Report:
    """What the shim reported after starting the workload.

    Attributes:
        shim_pid: pid of the shim.
        shim_ctime: its creation time, seconds since the epoch (0 when unknown).
        pid: pid of the workload (its process group id too).
        pid_ctime: its creation time, seconds since the epoch (0 when unknown).
        failure: None when the workload exec'd; else ``(stage, errno)`` with stage ``"setup"``,
            ``"cgroup"`` or ``"exec"``.
    """

    shim_pid: int
    shim_ctime: float
    pid: int
    pid_ctime: float
    failure: tuple[str, int] | None

    @classmethod
    def parse(cls, line: bytes) -> Report:
        """Parse ``ok <pids>`` or ``error <stage> <errno> <pids>`` (see the shim's docstring).

        Raises:
            ValueError: not a report.
        """
        words = line.decode("ascii").split()
        failure = None
        if words[:1] == ["error"]:
            failure = (words[1], int(words[2]))
            words = words[3:]
        elif words[:1] == ["ok"]:
            words = words[1:]
        if len(words) != 4:
            raise ValueError(f"not a shim report: {line[:100]!r}")
        return cls(int(words[0]), float(words[1]), int(words[2]), float(words[3]), failure)

    def check(self, argv0: str) -> None:
        """Raise if the workload did not start.

        Raises:
            WorkloadError: ``"<argv0>: <reason>"``, e.g. ``"x: Permission denied"``.
        """
        if self.failure is None:
            return
        stage, errno = self.failure
        reason = os.strerror(errno) if errno else "failed"
        if stage == "cgroup":
            raise WorkloadError(f"{argv0}: cannot join its cgroup: {reason}")
        if stage == "user":
            raise WorkloadError(f"{argv0}: cannot switch to runAsUser/runAsGroup: {reason}")
        raise WorkloadError(f"{argv0}: {reason}")


def _last_line(path: Path) -> str:
    """Last line of a small file (the shim's error output), or ``"no output"``."""
    try:
        return path.read_text(errors="replace").strip().splitlines()[-1]
    except (OSError, IndexError):
        return "no output"


async def _read_report(sock: socket.socket) -> bytes:
    """Read the shim's report line (up to a newline or EOF) without blocking the loop."""
    loop = asyncio.get_running_loop()
    data = b""
    while b"\n" not in data:
        chunk = await loop.sock_recv(sock, 512)
        if not chunk:
            break
        data += chunk
    return data


@dataclass
class Launch:
    """A shim that reported and waits for :meth:`confirm`.

    Attributes:
        report: what the shim said; check ``report.failure``.
    """

    report: Report
    _sock: socket.socket

    async def confirm(self) -> None:
        """Tell the shim the task is persisted: from now on it outlives this agent.

        Raises:
            WorkloadError: the shim is gone (it killed the workload; the task is over).
        """
        try:
            await asyncio.get_running_loop().sock_sendall(self._sock, b"1")
        except OSError as err:
            raise WorkloadError(f"process shim went away during start: {err}") from err
        finally:
            self._sock.close()

    def abandon(self) -> None:
        """Close the report socket without ack: the shim kills the workload and records 137."""
        self._sock.close()


class ForkServer:
    """The shim fork server (``shim.py serve``), started on first use, one per runtime.

    Args:
        log_path: file that receives the server's own stderr.
    """

    def __init__(self, log_path: Path) -> None:
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    def _ensure(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        self.close_now()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        errors = os.open(self._log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self._proc = subprocess.Popen(
                shim_command("serve"),
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                stderr=errors,
                env={},
                cwd="/",
                start_new_session=True,
            )
        except OSError:
            ours.close()
            raise
        finally:
            os.close(errors)
            theirs.close()
        self._sock = ours
        # a runtime dropped without close() (tests, a failed start-up) still ends its server
        self._finalizer = weakref.finalize(self, _stop_server, ours, self._proc)
        return ours

    def request(self, cwd: str, shim_args: Sequence[str], report: int, errors: int) -> bool:
        """Ask the server to start a shim; False when it cannot take the request.

        Args:
            cwd: working directory of the shim and its workload.
            shim_args: ``run`` options and ``-- EXECUTABLE ARGV...`` (without ``--report-fd``).
            report: the shim's end of the report socket (the server receives a copy).
            errors: the shim's stderr (the server receives a copy).
        """
        payload = "\0".join([cwd, *shim_args]).encode("utf-8", "surrogateescape")
        try:
            sock = self._ensure()
            socket.send_fds(sock, [payload], [report, errors])
        except OSError as err:  # gone, or a request larger than the socket buffer
            _log.info("shim fork server unavailable (%s); starting the shim directly", err)
            self.close_now()
            return False
        return True

    def close_now(self) -> None:
        """Close the socket: the server exits (its shims live on) and is reaped."""
        if self._finalizer is not None:
            self._finalizer()
        self._finalizer = None
        self._sock = None
        self._proc = None


def _stop_server(sock: socket.socket, proc: subprocess.Popen[bytes]) -> None:
    """Close the fork server's socket and reap it (it exits on end of file at once)."""
    sock.close()
    try:
        proc.wait(timeout=1.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def spawn_shim(
    cwd: str, shim_args: Sequence[str], shim_log: Path, server: ForkServer | None = None
) -> Launch:
    """Start a shim for one task and wait for its report.

    The caller must :meth:`Launch.confirm` (the task is persisted) or :meth:`Launch.abandon`.

    Args:
        cwd: working directory of the workload (the shim runs there; the workload inherits it).
        shim_args: options and ``-- EXECUTABLE ARGV...`` for ``shim.py run`` (without
            ``--report-fd``).
        shim_log: file that receives the shim's own stderr.
        server: a fork server to start the shim with; a new interpreter is started when it is
            None or cannot take the request.

    Returns:
        The report and the channel for the ack.

    Raises:
        WorkloadError: the shim could not be started, failed, or did not report within
            :data:`REPORT_TIMEOUT` seconds (it then kills its workload itself, if it has one).
    """
    ours, theirs = socket.socketpair()
    try:
        first: asyncio.subprocess.Process | None = None
        try:
            errors = os.open(shim_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        except OSError:
            theirs.close()
            raise
        try:
            if server is None or not server.request(cwd, shim_args, theirs.fileno(), errors):
                first = await asyncio.create_subprocess_exec(
                    *shim_command("run", "--report-fd", str(theirs.fileno()), *shim_args),
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    env={},  # the shim reads the task's environment from its env file
                    cwd=cwd,
                    start_new_session=True,
                    pass_fds=(theirs.fileno(),),
                )
        except OSError as err:
            raise WorkloadError(f"cannot start the process shim in {cwd}: {err}") from err
        finally:
            os.close(errors)
            theirs.close()
        ours.setblocking(False)
        try:
            async with asyncio.timeout(REPORT_TIMEOUT):
                line = await _read_report(ours)
                if first is not None:
                    await first.wait()  # it exits as soon as it has forked the shim proper
        except TimeoutError:
            raise WorkloadError(f"process shim did not report within {REPORT_TIMEOUT}s") from None
        try:
            return Launch(Report.parse(line), ours)
        except (ValueError, IndexError) as err:
            raise WorkloadError(f"process shim failed: {_last_line(shim_log)}") from err
    except BaseException:
        ours.close()
        raise


async def run_exec(cwd: str, shim_args: Sequence[str], limit: int) -> ExecResult:
    """Run ``shim.py exec <shim_args>`` and collect its combined output.

    Args:
        cwd: working directory of the command.
        shim_args: ``[--cgroup DIR]... --env-file FILE -- ARGV...``.
        limit: bytes of output kept; the rest is read and dropped.

    Returns:
        Exit code (128 + N when killed by signal N) and output.

    Raises:
        WorkloadError: the command could not be spawned (``cwd`` is gone).
        asyncio.CancelledError: after killing the command's session.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *shim_command("exec", *shim_args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env={},
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as err:
        raise WorkloadError(f"cannot exec in {cwd}: {err}") from err
    assert proc.stdout is not None
    output = bytearray()
    try:
        while chunk := await proc.stdout.read(65536):
            output += chunk[: max(limit - len(output), 0)]
        code = await proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    return ExecResult(exit_code=128 - code if code < 0 else code, output=bytes(output))


async def run_attached(cwd: str, shim_args: Sequence[str], io: ExecIO) -> int:
    """Run ``shim.py exec <shim_args>`` attached to ``io`` (pipes, or a pty with ``io.tty``).

    With a terminal the command leads a new session and takes the pty as its controlling
    terminal (the shim's ``--tty``).

    Args:
        cwd: working directory of the command.
        shim_args: ``[--cgroup DIR]... --env-file FILE -- ARGV...``.
        io: the caller's streams.

    Returns:
        Exit code (128 + N when killed by signal N).

    Raises:
        WorkloadError: the command could not be spawned (``cwd`` is gone, out of ptys).
        asyncio.CancelledError: after killing the command's session.
    """
    try:
        stdio = ChildStdio.open(io)
    except OSError as err:
        raise WorkloadError(f"cannot make the exec's stdio: {err}") from err
    tty = ("--tty", "1") if io.tty else ()
    try:
        proc = await asyncio.create_subprocess_exec(
            *shim_command("exec", *tty, *shim_args),
            stdin=stdio.child[0],
            stdout=stdio.child[1],
            stderr=stdio.child[2],
            env={},
            cwd=cwd,
            start_new_session=True,
        )
    except OSError as err:
        stdio.close()
        raise WorkloadError(f"cannot exec in {cwd}: {err}") from err
    stdio.close_child()
    try:
        code = await stdio.attach(io, proc.wait())
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        raise
    return 128 - code if code < 0 else code
