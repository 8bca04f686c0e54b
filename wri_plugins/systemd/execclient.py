"""The runtime's side of ``exec``: ask a task's log pump to run a command (see ``execserver``).

:func:`run_exec` hands the pump one pipe for the combined output; :func:`run_attached` hands it
the command's stdin, stdout and stderr (pipes, or one pty slave) made by
:class:`wri_plugins.stdio.ChildStdio` and copies them to the caller's streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator

from agent.errors import WorkloadError
from wri_plugins.api import ExecIO, ExecResult
from wri_plugins.stdio import ChildStdio
from wri_plugins.systemd.execserver import STARTED, encode_request


class NotStartedError(WorkloadError):
    """The pump closed an attached exec's connection before running the command."""


#: Seconds to keep reading output after the exit code came (a process the command left behind
#: may hold the pipe; the kubelet's probes do not wait for it either).
DRAIN_SECONDS = 0.5


class _Collect(asyncio.Protocol):
    """Keeps the first ``limit`` bytes read from a pipe and drops the rest."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.closed = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data[: max(self.limit - len(self.data), 0)]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def run_exec(socket_name: str, argv: tuple[str, ...], limit: int) -> ExecResult:
    """Run ``argv`` in a task through its pump's exec socket and wait for it.

    Args:
        socket_name: the pump's abstract socket name (``units.exec_socket_name``).
        argv: the command; ``argv[0]`` is looked up in the task's ``PATH``.
        limit: bytes of combined stdout and stderr kept; the rest is read and dropped.

    Returns:
        Exit code (128 + N when killed by signal N; 127 not found, 126 not executable) and
        output.

    Raises:
        WorkloadError: bad argv, no exec server (the task ended), or the task ended while the
            command ran.
        asyncio.CancelledError: after closing the connection, which makes the pump SIGKILL the
            command's process group.
    """
    loop = asyncio.get_running_loop()
    async with _connection(socket_name, argv) as (sock, request):
        read_end, write_end = os.pipe()
        transport: asyncio.BaseTransport | None = None
        try:
            pipe = os.fdopen(read_end, "rb", buffering=0)
            read_end = -1
            collect = _Collect(limit)
            transport, _ = await loop.connect_read_pipe(lambda: collect, pipe)
            try:
                socket.send_fds(sock, [request], [write_end])
            except OSError as err:
                raise WorkloadError(f"cannot send the exec request: {err}") from err
            os.close(write_end)
            write_end = -1
            reply = await loop.sock_recv(sock, 64)
            if not reply.isdigit():
                raise WorkloadError("the task ended while the exec command ran")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(DRAIN_SECONDS):
                    await collect.closed
            return ExecResult(exit_code=int(reply), output=bytes(collect.data))
        finally:
            if transport is not None:
                transport.close()
            for fd in (read_end, write_end):
                if fd >= 0:
                    os.close(fd)


async def run_attached(socket_name: str, argv: tuple[str, ...], io: ExecIO) -> int:
    """Run ``argv`` in a task through its pump's exec socket, attached to ``io``.

    Args:
        socket_name: the pump's abstract socket name (``units.exec_socket_name``).
        argv: the command; ``argv[0]`` is looked up in the task's ``PATH``.
        io: the caller's streams (a pty with ``io.tty``).

    Returns:
        Exit code (128 + N when killed by signal N; 127 not found, 126 not executable).

    Raises:
        NotStartedError: the pump ran nothing (the task ended, or its pump predates requests
            with three descriptors).
        WorkloadError: bad argv, no exec server (the task ended), or the task ended while the
            command ran.
        asyncio.CancelledError: after closing the connection, which makes the pump SIGKILL the
            command's process group.
    """
    loop = asyncio.get_running_loop()
    async with _connection(socket_name, argv) as (sock, request):
        stdio: ChildStdio | None = None
        try:
            try:
                stdio = ChildStdio.open(io)
                socket.send_fds(sock, [request], list(stdio.child))
            except OSError as err:
                raise WorkloadError(f"cannot send the exec request: {err}") from err
            stdio.close_child()
            if await loop.sock_recv(sock, 64) != STARTED:
                raise NotStartedError(
                    "the task's exec server ran nothing: the task ended, or its log pump was "
                    "started by an agent without interactive exec (restart the pod)"
                )

            async def ended() -> int:
                reply = await loop.sock_recv(sock, 64)
                if not reply.isdigit():
                    raise WorkloadError("the task ended while the exec command ran")
                return int(reply)

            return await stdio.attach(io, ended())
        finally:
            if stdio is not None:
                stdio.close()


@contextlib.asynccontextmanager
async def _connection(
    socket_name: str, argv: tuple[str, ...]
) -> AsyncIterator[tuple[socket.socket, bytes]]:
    """A connection to the pump's exec socket, non-blocking, with the request packet for
    ``argv``; closing the context closes the connection (which makes the pump SIGKILL a command
    still running).

    Raises:
        WorkloadError: bad argv, or no exec server (the task ended).
    """
    try:
        request = encode_request(argv)
    except ValueError as err:
        raise WorkloadError(str(err)) from err
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC) as sock:
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, "\0" + socket_name)
        except OSError as err:
            raise WorkloadError(f"the task takes no exec requests ({err.strerror})") from err
        yield sock, request
