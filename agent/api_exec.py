"""``kubectl exec`` over WebSocket: ``GET|POST /api/v1/namespaces/{ns}/pods/{name}/exec``.

kubectl 1.30+ opens exec as a WebSocket (RFC 6455) with the subprotocol ``v5.channel.k8s.io``
(or ``v4.channel.k8s.io``): every binary message starts with a channel byte, 0 stdin, 1 stdout,
2 stderr, 3 error (a ``Status`` JSON when the command ends), 4 terminal resize, and in v5, 255
for closing one stream (``k8s.io/apimachinery/pkg/util/remotecommand/constants.go``; KEP-4006).
SPDY, which older kubectl versions use, is not served.

The runtimes' exec (``WorkloadRuntime.exec``) runs a command to completion and returns its exit
code and its combined stdout and stderr (cut at 10 KiB, as for probes). So this endpoint serves
non-interactive exec: ``kubectl exec POD -- CMD ARGS`` prints the output and exits with the
command's exit code; ``-i`` and ``-t`` are refused with a message that says so. Errors found
before the upgrade (no such pod or container, runtime without exec) are plain ``Status``
answers; errors of the command itself arrive on the error channel, as from a kubelet.

WebSocket framing is wsproto's (sans-IO, by h11's authors), imported only when exec is used.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from agent.errors import BadRequestError, FloreteError
from agent.httproute import Request, Response, Upgrade, UpgradedStream
from agent.runtimes import RuntimeRegistry
from agent.store import Store
from wri_plugins.api import ExecResult, TaskHandle, WorkloadRuntime

if TYPE_CHECKING:
    from wsproto.connection import Connection

log = logging.getLogger(__name__)

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDOUT, ERROR = 1, 3
#: Longest time a command may run, in seconds (the client closing the socket stops it sooner).
EXEC_TIMEOUT = 3600.0
_CLOSE_WAIT = 5.0  # seconds to wait for the client's close frame
_MESSAGE_BYTES = 32 * 1024


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
        runtimes: the runtimes, whose ``exec`` runs the command.
    """

    def __init__(self, store: Store, runtimes: RuntimeRegistry) -> None:
        self.store = store
        self.runtimes = runtimes

    async def exec_pod(self, request: Request) -> Response | Upgrade:
        """Check the request, then upgrade to WebSocket and run the command.

        Query: ``command`` (repeated, the argv), ``container``, ``stdin``, ``stdout``,
        ``stderr``, ``tty`` as in Kubernetes ``PodExecOptions``.

        Raises:
            NotFoundError: no such pod.
            BadRequestError: no command; an unknown or ambiguous container; ``stdin`` or
                ``tty`` asked for; a container that never started; a runtime without exec; or a
                request that is not a WebSocket upgrade offering a ``channel.k8s.io`` protocol.
        """
        stored = self.store.get_pod(request.params["namespace"], request.params["name"])
        argv = tuple(request.query.get_all("command"))
        if not argv:
            raise BadRequestError("you must specify at least one command for the container")
        if request.query.get_bool("stdin") or request.query.get_bool("tty"):
            raise BadRequestError(
                "interactive exec (-i, -t) is not supported: florete-agent runs the command to "
                "completion and returns its output; run kubectl exec without -i and -t"
            )
        spec = stored.manifest["spec"]
        names = [c["name"] for c in spec["containers"]]
        container = request.query.get("container") or names[0]
        if container not in names:
            raise BadRequestError(f"container {container} is not valid for pod {stored.name}")
        records = [r for r in self.store.tasks(stored.uid, container) if r.handle]
        if not records or records[-1].handle is None:
            raise BadRequestError(f'container "{container}" in pod "{stored.name}" is not running')
        runtime = self.runtimes.get(records[-1].runtime)
        if not runtime.capabilities.exec:
            raise BadRequestError(f"runtime {runtime.name} cannot exec into a container")
        handle = TaskHandle.from_json(records[-1].handle)
        protocol = self._protocol(request)
        from wsproto.utilities import generate_accept_token

        key = request.header("sec-websocket-key") or ""
        headers = (
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", generate_accept_token(key.encode("ascii")).decode("ascii")),
            ("Sec-WebSocket-Protocol", protocol),
        )
        where = f"{stored.namespace}/{stored.name}/{container}"

        async def run(buffered: bytes, stream: UpgradedStream) -> None:
            await _Session(stream, buffered, where).run(runtime, handle, argv)

        return Upgrade(headers, run)

    @staticmethod
    def _protocol(request: Request) -> str:
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


class _Session:
    """One exec over an upgraded connection: run, send output and status, close."""

    def __init__(self, stream: UpgradedStream, buffered: bytes, where: str) -> None:
        from wsproto import ConnectionType
        from wsproto.connection import Connection

        self._stream = stream
        self._ws: Connection = Connection(ConnectionType.SERVER)
        if buffered:
            self._ws.receive_data(buffered)
        self._where = where
        self._closed = asyncio.Event()

    async def run(
        self, runtime: WorkloadRuntime, handle: TaskHandle, argv: tuple[str, ...]
    ) -> None:
        result: ExecResult | None = None
        message = ""
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(self._read_frames())
            try:
                async with asyncio.timeout(EXEC_TIMEOUT):
                    result = await self._until_closed(runtime.exec(handle, argv))
            except TimeoutError:
                message = f"command did not finish within {EXEC_TIMEOUT:.0f} s"
            except FloreteError as err:
                message = str(err)
            if result is not None or message:
                if result is not None:
                    for start in range(0, len(result.output), _MESSAGE_BYTES):
                        await self._send(STDOUT, result.output[start : start + _MESSAGE_BYTES])
                status = _status(None if result is None else result.exit_code, message)
                await self._send(ERROR, json.dumps(status).encode())
                await self._close()
                log.info("exec in %s: %s -> %s", self._where, argv[0], status["status"])
            try:
                async with asyncio.timeout(_CLOSE_WAIT):
                    await self._closed.wait()
            except TimeoutError:
                pass
            reader.cancel()

    async def _until_closed(self, work: Coroutine[Any, Any, ExecResult]) -> ExecResult | None:
        """Run the exec coroutine; None (and the command cancelled) when the client left."""
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
        """Answer pings and close frames; note when the client is gone. Input is ignored."""
        from wsproto.connection import ConnectionState
        from wsproto.events import CloseConnection, Ping

        try:
            while True:
                for event in self._ws.events():
                    if isinstance(event, Ping):
                        self._stream.write(self._ws.send(event.response()))
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
