"""``kubectl exec`` over WebSocket: ``GET|POST /api/v1/namespaces/{ns}/pods/{name}/exec``.

kubectl 1.30+ opens exec as a WebSocket (RFC 6455) with the subprotocol ``v5.channel.k8s.io``
(or ``v4.channel.k8s.io``): every binary message starts with a channel byte, 0 stdin, 1 stdout,
2 stderr, 3 error (a ``Status`` JSON when the command ends), 4 terminal resize (JSON
``{"Width": W, "Height": H}``), and in v5, 255 for closing one stream: ``[255, 0]`` ends stdin
(``k8s.io/apimachinery/pkg/util/remotecommand/constants.go``; KEP-4006). SPDY, which older
kubectl versions use, is not served.

A runtime with the ``exec_interactive`` capability serves every form: ``kubectl exec POD --
CMD`` streams stdout and stderr apart as they come, ``-i`` adds stdin, ``-t`` a terminal
(``WorkloadRuntime.exec_interactive``). A runtime with ``exec`` alone runs the command to
completion and returns its exit code and combined output (cut at 10 KiB, as for probes); ``-i``
and ``-t`` are then refused with a message that names the runtime. Errors found before the
upgrade (no such pod or container, runtime without exec) are plain ``Status`` answers; errors of
the command itself arrive on the error channel, as from a kubelet.

WebSocket framing is wsproto's (sans-IO, by h11's authors), imported only when exec is used.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any

from agent.errors import BadRequestError, FloreteError
from agent.httproute import Request, Response, Upgrade, UpgradedStream
from agent.runtimes import RuntimeRegistry
from agent.store import Store
from wri_plugins.api import ExecStreams, TaskHandle, TerminalSize, WorkloadRuntime

if TYPE_CHECKING:
    from wsproto.connection import Connection

log = logging.getLogger(__name__)

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
#: Longest time a command may run, in seconds (the client closing the socket stops it sooner).
EXEC_TIMEOUT = 3600.0
_CLOSE_WAIT = 5.0  # seconds to wait for the client's close frame
_MESSAGE_BYTES = 32 * 1024

#: Runs the command with the session's output function; returns its exit code.
Work = Callable[["_Session"], Coroutine[Any, Any, int]]
#: Runs a command to completion: ``() -> (exit code, combined output)``.
Command = Callable[[], Awaitable[tuple[int, bytes]]]


def _status(exit_code: int | None, message: str = "") -> dict[str, Any]:
    """The error-channel ``Status`` (``remotecommand`` server conventions)."""
    if exit_code == 0:
        return {"metadata": {}, "status": "Success"}
    if exit_code is None:
        return {"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"}
    return {
        "metadata": {},
        "status": "Failure",
        "message": f"command terminated with non-zero exit code: exit status {exit_code}",
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": str(exit_code)}]},
    }


class ExecApi:
    """Handler of the exec subresource.

    Args:
        store: the agent's store (pods and their task records).
        runtimes: the runtimes, whose ``exec`` or ``exec_interactive`` runs the command.
    """

    def __init__(self, store: Store, runtimes: RuntimeRegistry) -> None:
        self.store = store
        self.runtimes = runtimes

    async def exec_pod(self, request: Request) -> Response | Upgrade:
        """Check the request, then upgrade to WebSocket and run the command.

        Query: ``command`` (repeated, the argv), ``container``, ``stdin``, ``stdout``,
        ``stderr``, ``tty`` as in Kubernetes ``PodExecOptions`` (``stderr`` is ignored with
        ``tty``, as by the kubelet: a terminal has one output).

        Raises:
            NotFoundError: no such pod.
            BadRequestError: no command; none of stdin, stdout, stderr; an unknown container; a
                container that never started; a runtime without exec, or ``stdin`` or ``tty``
                asked of a runtime without ``exec_interactive``; or a request that is not a
                WebSocket upgrade offering a ``channel.k8s.io`` protocol.
        """
        stored = self.store.get_pod(request.params["namespace"], request.params["name"])
        argv = tuple(request.query.get_all("command"))
        if not argv:
            raise BadRequestError("you must specify at least one command for the container")
        query = request.query
        stdin, tty = query.get_bool("stdin"), query.get_bool("tty")
        stdout, stderr = query.get_bool("stdout"), query.get_bool("stderr") and not tty
        if not (stdin or stdout or query.get_bool("stderr")):
            raise BadRequestError("you must specify at least 1 of stdin, stdout, stderr")
        spec = stored.manifest["spec"]
        names = [c["name"] for c in spec["containers"]]
        container = query.get("container") or names[0]
        if container not in names:
            raise BadRequestError(f"container {container} is not valid for pod {stored.name}")
        records = [r for r in self.store.tasks(stored.uid, container) if r.handle]
        if not records or records[-1].handle is None:
            raise BadRequestError(f'container "{container}" in pod "{stored.name}" is not running')
        runtime = self.runtimes.get(records[-1].runtime)
        if not (runtime.capabilities.exec or runtime.capabilities.exec_interactive):
            raise BadRequestError(f"runtime {runtime.name} cannot exec into a container")
        if (stdin or tty) and not runtime.capabilities.exec_interactive:
            raise BadRequestError(
                f"interactive exec (-i, -t) is not supported by runtime {runtime.name}: it runs "
                "the command to completion and returns its output; run kubectl exec without -i "
                "and -t"
            )
        handle = TaskHandle.from_json(records[-1].handle)
        if runtime.capabilities.exec_interactive:
            work = _attached(runtime, handle, argv, stdin=stdin, tty=tty)
        else:

            async def command() -> tuple[int, bytes]:
                result = await runtime.exec(handle, argv)
                return result.exit_code, result.output

            work = to_completion(command)
        where = f"{stored.namespace}/{stored.name}/{container}"
        return channel_upgrade(
            request, work, where=where, what=argv[0], stdout=stdout, stderr=stderr
        )


def channel_upgrade(
    request: Request, work: Work, *, where: str, what: str, stdout: bool, stderr: bool
) -> Upgrade:
    """Answer an exec request with a WebSocket upgrade whose session runs ``work``.

    The session copies the channels (module docstring), sends the ``Status`` on the error
    channel when ``work`` returns or raises :class:`FloreteError`, then closes; the client
    closing first cancels ``work``. Also serves :mod:`agent.api_supernode_exec`.

    Args:
        request: the exec request, already checked but for its upgrade headers.
        work: runs the command (:func:`to_completion`, or attached to the session's streams).
        where: ``namespace/pod/container`` for the log.
        what: the command's name for the log.
        stdout: send the command's stdout on channel 1 (else dropped).
        stderr: send the command's stderr on channel 2 (else dropped).

    Returns:
        The upgrade answering ``101 Switching Protocols`` with the chosen subprotocol.

    Raises:
        BadRequestError: not a WebSocket upgrade (with ``Sec-WebSocket-Key``) offering a
            ``channel.k8s.io`` protocol.
    """
    protocol = _protocol(request)
    from wsproto.utilities import generate_accept_token

    key = request.header("sec-websocket-key") or ""
    headers = (
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", generate_accept_token(key.encode("ascii")).decode("ascii")),
        ("Sec-WebSocket-Protocol", protocol),
    )

    async def run(buffered: bytes, stream: UpgradedStream) -> None:
        session = _Session(stream, buffered, where, stdout=stdout, stderr=stderr)
        await session.run(what, work)

    return Upgrade(headers, run)


def _protocol(request: Request) -> str:
    """The ``channel.k8s.io`` subprotocol to answer with, the newest the client offers."""
    upgrade = (request.header("upgrade") or "").lower()
    if upgrade != "websocket":
        raise BadRequestError(
            f"exec needs a WebSocket upgrade with subprotocol {PROTOCOLS[0]} (kubectl 1.30 "
            f"or newer); got Upgrade: {upgrade or 'none'} (SPDY is not supported)"
        )
    if not request.header("sec-websocket-key"):
        raise BadRequestError("WebSocket upgrade without Sec-WebSocket-Key")
    offered = [
        p.strip()
        for name, value in request.headers
        if name == "sec-websocket-protocol"
        for p in value.split(",")
    ]
    for protocol in PROTOCOLS:
        if protocol in offered:
            return protocol
    raise BadRequestError(
        f"exec needs WebSocket subprotocol {' or '.join(PROTOCOLS)}; offered: "
        f"{', '.join(offered) or 'none'}"
    )


def to_completion(command: Command) -> Work:
    """The command run to completion, then its combined output sent on stdout (``exec``).

    Input the client sends meanwhile is dropped.

    Args:
        command: runs the command: ``() -> (exit code, combined output)``; raises
            :class:`FloreteError` when it cannot.
    """

    async def work(session: _Session) -> int:
        session.input_ready.set()  # without streams: input is dropped
        exit_code, output = await command()
        await session.output("stdout", output)
        return exit_code

    return work


def _attached(
    runtime: WorkloadRuntime, handle: TaskHandle, argv: tuple[str, ...], *, stdin: bool, tty: bool
) -> Work:
    """The command attached to the session's streams (``exec_interactive``)."""

    async def work(session: _Session) -> int:
        streams = ExecStreams(session.output, tty=tty, stdin=stdin)
        session.streams = streams
        session.input_ready.set()
        try:
            return await runtime.exec_interactive(handle, argv, streams)
        finally:
            streams.close()  # input that still comes is dropped

    return work


class _Session:
    """One exec over an upgraded connection: run, copy the streams, send the status, close."""

    def __init__(
        self, stream: UpgradedStream, buffered: bytes, where: str, *, stdout: bool, stderr: bool
    ) -> None:
        from wsproto import ConnectionType
        from wsproto.connection import Connection

        self._stream = stream
        self._ws: Connection = Connection(ConnectionType.SERVER)
        if buffered:
            self._ws.receive_data(buffered)
        self._where = where
        self._channels = {
            "stdout": STDOUT if stdout else None,
            "stderr": STDERR if stderr else None,
        }
        self._closed = asyncio.Event()
        self._message_channel: int | None = None  # channel of the message being received
        #: The command's streams, once it runs attached; input arriving before waits for them.
        self.streams: ExecStreams | None = None
        self.input_ready = asyncio.Event()

    async def run(self, what: str, work: Work) -> None:
        code: int | None = None
        message = ""
        reader = asyncio.create_task(self._read_frames())
        try:
            try:
                async with asyncio.timeout(EXEC_TIMEOUT):
                    code = await self._until_closed(work(self))
            except TimeoutError:
                message = f"command did not finish within {EXEC_TIMEOUT:.0f} s"
            except FloreteError as err:
                message = str(err)
            if code is not None or message:
                status = _status(code, message)
                await self._send(ERROR, json.dumps(status).encode())
                await self._close()
                log.info("exec in %s: %s -> %s", self._where, what, status["status"])
            try:
                async with asyncio.timeout(_CLOSE_WAIT):
                    await self._closed.wait()
            except TimeoutError:
                pass
        finally:
            reader.cancel()
            await asyncio.wait({reader})

    async def output(self, stream: str, data: bytes) -> None:
        """Send the command's output on its channel (dropped when the client did not ask)."""
        channel = self._channels.get(stream)
        if channel is None:
            return
        for start in range(0, len(data), _MESSAGE_BYTES):
            await self._send(channel, data[start : start + _MESSAGE_BYTES])

    async def _until_closed(self, work: Coroutine[Any, Any, int]) -> int | None:
        """Run the command; None (and the command cancelled) when the client left."""
        task = asyncio.ensure_future(work)
        closed = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({task, closed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closed.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
            return None
        return task.result()

    async def _read_frames(self) -> None:
        """Answer pings and close frames, pass input and terminal sizes on; note when the
        client is gone."""
        from wsproto.connection import ConnectionState
        from wsproto.events import BytesMessage, CloseConnection, Ping

        try:
            while True:
                for event in self._ws.events():
                    if isinstance(event, Ping):
                        self._stream.write(self._ws.send(event.response()))
                    elif isinstance(event, BytesMessage):
                        await self._message(event.data, event.message_finished)
                    elif isinstance(event, CloseConnection):
                        if self._ws.state is ConnectionState.REMOTE_CLOSING:
                            self._stream.write(self._ws.send(event.response()))
                        self._closed.set()
                        return
                data = await self._stream.read()
                if not data:
                    self._closed.set()
                    return
                self._ws.receive_data(data)
        except OSError:
            self._closed.set()

    async def _message(self, data: bytes | bytearray, finished: bool) -> None:
        """One piece of a binary message: its first byte is the channel."""
        if self._message_channel is None:
            if not data:
                return
            self._message_channel, data = data[0], data[1:]
        channel = self._message_channel
        if finished:
            self._message_channel = None
        if channel not in (STDIN, RESIZE, CLOSE):
            return
        await self.input_ready.wait()
        streams = self.streams
        if streams is None:  # not attached: input is dropped
            return
        if channel == STDIN and data:
            await streams.feed_stdin(bytes(data))
        elif channel == CLOSE and data[:1] == bytes([STDIN]):
            await streams.feed_stdin(b"")
        elif channel == RESIZE:
            size = _terminal_size(bytes(data))
            if size is not None:
                streams.resize(size)

    async def _send(self, channel: int, data: bytes) -> None:
        from wsproto.events import BytesMessage

        if self._closed.is_set():
            return
        self._stream.write(self._ws.send(BytesMessage(data=bytes([channel]) + data)))
        await self._stream.drain()

    async def _close(self) -> None:
        from wsproto.events import CloseConnection

        if self._closed.is_set():
            return
        self._stream.write(self._ws.send(CloseConnection(code=1000)))
        await self._stream.drain()


def _terminal_size(data: bytes) -> TerminalSize | None:
    """``{"Width": W, "Height": H}`` (``remotecommand.TerminalSize``), or None if malformed."""
    try:
        size = json.loads(data)
        width, height = size["Width"], size["Height"]
    except (ValueError, TypeError, KeyError):
        return None
    if not all(isinstance(v, int) and 0 < v < 65536 for v in (width, height)):
        return None
    return TerminalSize(columns=width, rows=height)
