"""``kubectl exec`` of a supernode pod that runs on another member: the WebSocket side.

The member that kubectl talks to answers the WebSocket upgrade (``v5.channel.k8s.io`` or
``v4.channel.k8s.io``, as :mod:`agent.api_exec` does for local pods), runs the command on the
pod's member over the mesh (:func:`supernode.proxy.remote_exec`: to completion, non-interactive)
and sends its output on channel 1 (stdout) and the ``Status`` on channel 3 (error), then closes.
``-i`` and ``-t`` are refused before the upgrade: interactive exec is served only by the agent
that runs the pod.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent.errors import BadRequestError, FloreteError
from agent.httproute import Request, Upgrade, UpgradedStream

__all__ = ["PROTOCOLS", "exec_upgrade"]

log = logging.getLogger(__name__)

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDOUT, ERROR = 1, 3
_MESSAGE_BYTES = 32 * 1024
_CLOSE_WAIT = 5.0  # seconds to wait for the client's close frame

Command = Callable[[], Awaitable[tuple[int, bytes]]]
"""Runs the command: ``() -> (exit code, output)``; raises :class:`FloreteError` on failure."""


def _status(exit_code: int | None, message: str = "") -> dict[str, Any]:
    """The error channel's ``Status`` (the kubelet's ``remotecommand`` conventions)."""
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


def _protocol(request: Request) -> str:
    upgrade = (request.header("upgrade") or "").lower()
    if upgrade != "websocket" or not request.header("sec-websocket-key"):
        raise BadRequestError(
            f"exec needs a WebSocket upgrade with subprotocol {PROTOCOLS[0]} (kubectl 1.30 "
            f"or newer); got Upgrade: {upgrade or 'none'} (SPDY is not supported)"
        )
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


def exec_upgrade(request: Request, command: Command, where: str) -> Upgrade:
    """Check an exec request and answer it with an upgrade that runs ``command``.

    Args:
        request: ``GET|POST .../pods/{name}/exec`` with ``command`` query parameters.
        command: runs the command (on the pod's member).
        where: ``namespace/pod/container`` for the log.

    Raises:
        BadRequestError: no command, ``stdin`` or ``tty`` asked for, or not a WebSocket upgrade
            offering a ``channel.k8s.io`` protocol.
    """
    if not request.query.get_all("command"):
        raise BadRequestError("you must specify at least one command for the container")
    if request.query.get_bool("stdin") or request.query.get_bool("tty"):
        raise BadRequestError(
            "interactive exec (-i, -t) of a pod on another member is not supported: run the "
            "command without -i and -t, or run kubectl exec against the agent of the member "
            "that runs the pod"
        )
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
        await _serve(stream, buffered, command, where)

    return Upgrade(headers, run)


async def _serve(stream: UpgradedStream, buffered: bytes, command: Command, where: str) -> None:
    from wsproto import ConnectionType
    from wsproto.connection import Connection, ConnectionState
    from wsproto.events import BytesMessage, CloseConnection, Ping

    ws = Connection(ConnectionType.SERVER)
    if buffered:
        ws.receive_data(buffered)
    closed = asyncio.Event()

    async def read_frames() -> None:
        try:
            while True:
                for event in ws.events():
                    if isinstance(event, Ping):
                        stream.write(ws.send(event.response()))
                    elif isinstance(event, CloseConnection):
                        if ws.state is ConnectionState.REMOTE_CLOSING:
                            stream.write(ws.send(event.response()))
                        closed.set()
                        return
                data = await stream.read()
                if not data:
                    closed.set()
                    return
                ws.receive_data(data)
        except OSError:
            closed.set()

    async def send(channel: int, data: bytes) -> None:
        if not closed.is_set():
            stream.write(ws.send(BytesMessage(data=bytes([channel]) + data)))
            await stream.drain()

    async def attempt() -> tuple[int | None, bytes, str]:
        try:
            exit_code, output = await command()
        except FloreteError as err:
            return None, b"", err.message
        return exit_code, output, ""

    async with asyncio.TaskGroup() as group:
        reader = group.create_task(read_frames())
        work = group.create_task(attempt())
        waiter = group.create_task(closed.wait())
        await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not work.done():  # the client left: stop waiting for the command
            work.cancel()
        else:
            waiter.cancel()
            exit_code, output, message = work.result()
            for start in range(0, len(output), _MESSAGE_BYTES):
                await send(STDOUT, output[start : start + _MESSAGE_BYTES])
            status = _status(exit_code, message)
            await send(ERROR, json.dumps(status).encode())
            if not closed.is_set():
                stream.write(ws.send(CloseConnection(code=1000)))
                with contextlib.suppress(OSError):
                    await stream.drain()
            log.info("exec in %s (another member): %s", where, status["status"])
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_CLOSE_WAIT):
                    await closed.wait()
        reader.cancel()
