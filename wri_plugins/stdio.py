"""A local command's stdin, stdout and stderr wired to an :class:`~wri_plugins.api.ExecIO`.

For runtimes whose commands are children of a process on this host (process, systemd):
:meth:`ChildStdio.open` makes the descriptors the child gets, either

* pipes: stdin (or ``/dev/null`` when the caller sends none), stdout and stderr apart; or
* a pseudo-terminal (pty(7)): its slave end is the child's stdin, stdout and stderr; the child
  must make it its controlling terminal (``setsid`` + ``ioctl(0, TIOCSCTTY)``, as login_tty(3)
  does), so that ``^C`` typed by the caller signals its foreground process group. Terminal sizes
  are set on the master with ``TIOCSWINSZ``, which sends SIGWINCH to that group (tty_ioctl(4)).

:meth:`ChildStdio.attach` then copies bytes both ways on the event loop (non-blocking
descriptors, ``loop.add_reader``/``add_writer``; reading the next piece only once the caller took
the last, so a slow caller slows the command down) until the command ended and its output is
drained. On Linux a pty master reads ``EIO`` once every slave descriptor is closed: that is its
end of output.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import struct
import termios
from collections.abc import Awaitable, Callable

from wri_plugins.api import ExecIO, TerminalSize

#: Seconds to wait for more output once the command ended (processes it left behind may hold
#: its stdout open; their later output is given up).
DRAIN_SECONDS = 0.5
READ_SIZE = 64 * 1024  # bytes per read


def set_size(fd: int, size: TerminalSize) -> None:
    """Set the size of the terminal ``fd`` (a pty master or slave).

    Raises:
        OSError: ``fd`` is not a terminal.
    """
    rows, columns = min(max(size.rows, 1), 65535), min(max(size.columns, 1), 65535)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


class ChildStdio:
    """The descriptors of one command: the child's ends and the parent's.

    Attributes:
        child: ``(stdin, stdout, stderr)`` descriptors to give the child (inheritable); close
            them in the parent with :meth:`close_child` once it is spawned.
        tty: the child's three descriptors are one pty slave.
    """

    def __init__(
        self, child: tuple[int, int, int], parent: tuple[int, int, int], tty: bool
    ) -> None:
        self.child = child
        self._parent = parent  # stdin (-1: none), stdout, stderr (-1: none; a pty master: stdout)
        self.tty = tty

    @classmethod
    def open(cls, io: ExecIO) -> ChildStdio:
        """Make the descriptors for ``io`` (see the module docstring).

        Raises:
            OSError: out of descriptors or ptys.
        """
        made: list[int] = []
        try:
            if io.tty:
                master, slave = os.openpty()
                made += (master, slave)
                os.set_inheritable(slave, True)
                return cls((slave, slave, slave), (master, master, -1), True)
            if io.stdin:
                child_in, parent_in = os.pipe()
                made += (child_in, parent_in)
            else:
                child_in, parent_in = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC), -1
                made.append(child_in)
            out_r, out_w = os.pipe()
            made += (out_r, out_w)
            err_r, err_w = os.pipe()
            made += (err_r, err_w)
            for fd in (child_in, out_w, err_w):
                os.set_inheritable(fd, True)
            return cls((child_in, out_w, err_w), (parent_in, out_r, err_r), False)
        except OSError:
            for fd in made:
                os.close(fd)
            raise

    def close_child(self) -> None:
        """Close the parent's copies of the child's descriptors (after spawning it)."""
        for fd in set(self.child):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.child = (-1, -1, -1)

    def close(self) -> None:
        """Close every descriptor still open."""
        self.close_child()
        for fd in {fd for fd in self._parent if fd >= 0}:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._parent = (-1, -1, -1)

    async def attach(self, io: ExecIO, ended: Awaitable[int]) -> int:
        """Copy ``io``'s input and sizes in and the output out until ``ended`` and the output
        is drained; the descriptors are closed on return.

        Args:
            io: the caller's streams.
            ended: completes with the command's exit code when it ends.

        Returns:
            The exit code ``ended`` gave.

        Raises:
            asyncio.CancelledError: when cancelled; killing the command is the caller's job.
        """
        stdin, stdout, stderr = self._parent
        for fd in {fd for fd in self._parent if fd >= 0}:
            os.set_blocking(fd, False)
        finished = asyncio.Event()
        feeders: list[asyncio.Task[None]] = []
        if stdin >= 0 and io.stdin:
            feeders.append(asyncio.create_task(self._copy_in(io, stdin)))
        if self.tty:
            feeders.append(asyncio.create_task(_copy_sizes(io, stdout)))
        readers = [asyncio.create_task(_copy_out(io, "stdout", stdout, finished))]
        if stderr >= 0:
            readers.append(asyncio.create_task(_copy_out(io, "stderr", stderr, finished)))
        waiting = asyncio.ensure_future(ended)
        tasks = [waiting, *feeders, *readers]
        try:
            while not waiting.done():  # a copier that fails (the caller is gone) ends it all
                await asyncio.wait(
                    [t for t in tasks if not t.done()], return_when="FIRST_COMPLETED"
                )
                _raise_failure(feeders + readers)
            finished.set()
            for feeder in feeders:
                feeder.cancel()
            await asyncio.wait(readers)
            _raise_failure(readers)
            return waiting.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.wait(tasks)
            self.close()

    async def _copy_in(self, io: ExecIO, fd: int) -> None:
        """Input to the child; at its end the pipe is closed (a terminal stays open)."""
        while data := await io.read_stdin():
            view = memoryview(data)
            while view:
                try:
                    written = os.write(fd, view)
                except BlockingIOError:
                    await _ready(fd, writing=True)
                    continue
                except OSError as err:  # EPIPE: the command closed its stdin; EIO: pty gone
                    if err.errno in (errno.EPIPE, errno.EIO):
                        return
                    raise
                view = view[written:]
        if not self.tty:
            os.close(fd)
            self._parent = (-1, *self._parent[1:])


def _raise_failure(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]


async def _copy_sizes(io: ExecIO, master: int) -> None:
    while True:
        size = await io.next_size()
        with contextlib.suppress(OSError):
            set_size(master, size)


async def _copy_out(io: ExecIO, stream: str, fd: int, finished: asyncio.Event) -> None:
    """Output of the child until its end, or :data:`DRAIN_SECONDS` of silence after ``finished``."""
    while True:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            if finished.is_set():
                try:
                    async with asyncio.timeout(DRAIN_SECONDS):
                        await _ready(fd, writing=False)
                except TimeoutError:
                    return
            else:
                await _until_either(_ready(fd, writing=False), finished.wait())
            continue
        except OSError as err:
            if err.errno == errno.EIO:  # a pty whose slave ends are all closed
                return
            raise
        if not data:
            return
        await io.write(stream, data)


async def _ready(fd: int, *, writing: bool) -> None:
    """Wait until ``fd`` is readable (or writable)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    add: Callable[..., None] = loop.add_writer if writing else loop.add_reader
    remove: Callable[[int], bool] = loop.remove_writer if writing else loop.remove_reader
    add(fd, wake)
    try:
        await future
    finally:
        remove(fd)


async def _until_either(first: Awaitable[object], second: Awaitable[object]) -> None:
    tasks = {asyncio.ensure_future(first), asyncio.ensure_future(second)}
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
