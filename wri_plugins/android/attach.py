"""Commands on the phone attached to the caller's streams: ``exec`` and interactive exec.

Both run the helper's ``exec`` (output merged) or ``attach`` (stderr apart) command over an SSH
session of their own; the helper prints ``pid PID`` and becomes the command, which leads the
session sshd made, so its process group can be killed through the helper's ``kill``. An
interactive exec with a terminal asks sshd for a pseudo-terminal (RFC 4254 §6.2, ``pty-req``)
and passes sizes on as ``window-change`` requests (§6.7); sshd makes the pty the command's
controlling terminal. Without a terminal the end of the caller's input is an SSH EOF (§5.3),
which closes the command's stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from agent.errors import RuntimeUnavailableError, WorkloadError
from wri_plugins.android import commands
from wri_plugins.android.connection import PhoneLink, output_text
from wri_plugins.api import ExecIO

if TYPE_CHECKING:
    import asyncssh

#: Terminal size asked for until the caller sends one: (columns, rows).
DEFAULT_TERMINAL = (80, 24)
READ_SIZE = 64 * 1024  # bytes per read


class _CallerFailed(Exception):
    """An exception of the caller's streams, carried out of the phone link's block unchanged
    (an ``OSError`` of the caller must not read as the phone's loss)."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


async def started_pid(proc: asyncssh.SSHClientProcess[bytes], link: PhoneLink, task_id: str) -> str:
    """Read the helper's ``pid PID`` line; the command runs once it came.

    Returns:
        The command's pid on the phone.

    Raises:
        WorkloadError: the task is not running, or the helper failed (its message).
    """
    first = await proc.stdout.readline()
    if not first.startswith(b"pid "):
        done = await proc.wait()
        code = link.exit_code(done.exit_status, done.exit_signal)
        if code in (commands.NOT_RUNNING, commands.NO_TASK):
            raise WorkloadError(f"task {task_id} is not running")
        message = output_text(done.stderr) or "no message"
        raise WorkloadError(f"exec in task {task_id}: {message}")
    return first[4:].strip().decode(errors="replace")


async def run_attached(
    link: PhoneLink,
    base: str,
    task_id: str,
    argv: tuple[str, ...],
    io: ExecIO,
    kill: Callable[[str], Awaitable[object]],
) -> int:
    """Run ``argv`` in the task on the phone attached to ``io`` (see the module docstring).

    Args:
        link: the phone.
        base: the helper's base directory expression (``commands.base_expr``).
        task_id: the task.
        argv: the command.
        io: the caller's streams.
        kill: kills a command's process group by pid (the helper's ``kill``).

    Returns:
        Exit code (128 + N if killed by signal N; 127 not found, 126 not executable).

    Raises:
        WorkloadError: the task is not running.
        RuntimeUnavailableError: the phone cannot be reached.
    """
    command = commands.helper_command(base, "attach", task_id, *argv)
    pid = ""
    try:
        async with link.process(command, DEFAULT_TERMINAL if io.tty else None) as proc:
            pid = await started_pid(proc, link, task_id)
            await _copy(proc, io)
            done = await proc.wait()
    except _CallerFailed as failed:
        await _kill(kill, pid)
        raise failed.error from None
    except asyncio.CancelledError:
        await _kill(kill, pid)
        raise
    return link.exit_code(done.exit_status, done.exit_signal)


async def _kill(kill: Callable[[str], Awaitable[object]], pid: str) -> None:
    if pid:  # the session is closed by now: its slot is free for the kill
        with contextlib.suppress(RuntimeUnavailableError):
            await kill(pid)


async def _copy(proc: asyncssh.SSHClientProcess[bytes], io: ExecIO) -> None:
    """Copy input and sizes in and output out until the output ends."""
    feeders: list[asyncio.Task[None]] = []
    if io.stdin:
        feeders.append(asyncio.create_task(_copy_in(proc, io)))
    elif not io.tty:
        proc.stdin.write_eof()  # no input: an empty stdin, as /dev/null
    if io.tty:
        feeders.append(asyncio.create_task(_copy_sizes(proc, io)))
    readers = [
        asyncio.create_task(_copy_out(proc.stdout, "stdout", io)),
        asyncio.create_task(_copy_out(proc.stderr, "stderr", io)),
    ]
    tasks = feeders + readers
    try:
        while not all(reader.done() for reader in readers):
            await asyncio.wait([t for t in tasks if not t.done()], return_when="FIRST_COMPLETED")
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)


async def _copy_in(proc: asyncssh.SSHClientProcess[bytes], io: ExecIO) -> None:
    try:
        data = await io.read_stdin()
    except Exception as err:  # whatever the caller's streams raise
        raise _CallerFailed(err) from err
    try:
        while data:
            proc.stdin.write(data)
            await proc.stdin.drain()
            try:
                data = await io.read_stdin()
            except Exception as err:  # whatever the caller's streams raise
                raise _CallerFailed(err) from err
        if not io.tty:
            proc.stdin.write_eof()
    except (BrokenPipeError, ConnectionError):  # the command ended: its channel is closed
        return


async def _copy_sizes(proc: asyncssh.SSHClientProcess[bytes], io: ExecIO) -> None:
    while True:
        try:
            size = await io.next_size()
        except Exception as err:  # whatever the caller's streams raise
            raise _CallerFailed(err) from err
        with contextlib.suppress(OSError):
            proc.change_terminal_size(size.columns, size.rows)


async def _copy_out(stream: asyncssh.SSHReader[bytes], name: str, io: ExecIO) -> None:
    while data := await stream.read(READ_SIZE):
        try:
            await io.write(name, data)
        except Exception as err:  # whatever the caller's streams raise
            raise _CallerFailed(err) from err
