"""A small async client of the libpod REST API on a Unix socket: h11 on asyncio streams.

h11 (sans-IO) speaks HTTP/1.1; this module only moves its bytes over
``asyncio.open_unix_connection``, so nothing blocks the event loop and no thread is tied up by a
long poll (``containers/{name}/wait``) or a stream (``images/pull``, ``exec/{id}/start``). Every
request uses a fresh connection: on a Unix socket connecting costs microseconds, and an endpoint
that hijacks the connection (exec) or streams until close needs one of its own anyway.

Errors follow the libpod API (https://docs.podman.io/en/v4.3/_static/api.html): an answer with a
status >= 400 carries ``{"cause": str, "message": str, "response": int}`` and becomes
:class:`LibpodError`; a socket that does not answer becomes
:class:`agent.errors.RuntimeUnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import h11

from agent.errors import RemoteError, RemoteProtocolError, RuntimeUnavailableError

_log = logging.getLogger(__name__)

#: Path prefix of the libpod endpoints; 4.0.0 is the oldest version podman 4 and 5 accept.
API_PREFIX = "/v4.0.0/libpod"
READ_SIZE = 64 * 1024  # bytes per socket read

Query = Mapping[str, Any] | Iterable[tuple[str, Any]]


class ApiUnreachableError(RuntimeUnavailableError):
    """Connecting to the API socket failed: the request never reached podman (safe to retry)."""


class LibpodError(RemoteError):
    """The libpod API answered a request with an error status.

    Attributes:
        status: the HTTP status (404 no such object, 409 conflict, 500 server error, ...).
        cause: libpod's short cause (``"no such container"``), or "".
    """

    code = "libpod_error"
    reason = "InternalError"
    http_status = 502

    def __init__(self, message: str, status: int, cause: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.cause = cause

    @classmethod
    def from_body(cls, status: int, body: bytes) -> LibpodError:
        """Build the error from an error answer's body (JSON, or text from an older server)."""
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            message = str(data.get("message") or data.get("cause") or f"HTTP {status}")
            return cls(message, status, str(data.get("cause") or ""))
        text = body.decode("utf-8", "replace").strip()
        return cls(text or f"HTTP {status}", status)


@dataclass
class Response:
    """An answer whose body is read as it comes (see :meth:`LibpodClient.stream`).

    Attributes:
        status: HTTP status code.
        headers: header names (lower case) -> values.
    """

    status: int
    headers: dict[str, str]
    _conn: _Connection

    async def chunks(self) -> AsyncIterator[bytes]:
        """Yield the body's bytes as they arrive, until its end (or the connection's close).

        Raises:
            RemoteProtocolError: the server broke HTTP/1.1.
        """
        while True:
            event = await self._conn.next_event()
            if isinstance(event, h11.Data):
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return

    async def read(self) -> bytes:
        """The whole remaining body."""
        return b"".join([chunk async for chunk in self.chunks()])

    async def lines(self) -> AsyncIterator[bytes]:
        """Yield the body's lines (without ``b"\\n"``) as they arrive, a last unended one too."""
        rest = b""
        async for chunk in self.chunks():
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            for line in parts:
                yield line
        if rest:
            yield rest


class _Connection:
    """One HTTP/1.1 exchange: an h11 client state machine on an asyncio stream pair."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    async def send(self, event: h11.Event) -> None:
        data = self.h11.send(event)
        if data:
            self.writer.write(data)
            await self.writer.drain()

    async def next_event(self) -> h11.Event:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as err:
                raise RemoteProtocolError(f"podman API broke HTTP/1.1: {err}") from err
            if event is h11.NEED_DATA:
                data = await self.reader.read(READ_SIZE)
                if not data and self.h11.their_state is h11.SEND_RESPONSE:
                    raise EOFError("closed before answering")
                self.h11.receive_data(data)
            elif isinstance(event, h11.Event):
                return event
            else:  # PAUSED: only after a second request on the connection, which we never send
                raise RemoteProtocolError(f"h11 paused after {self.h11.their_state}")

    def close(self) -> None:
        self.writer.close()


def build_target(path: str, query: Query | None = None) -> str:
    """The request target of a libpod endpoint.

    Args:
        path: the endpoint below the API prefix, e.g. ``/containers/abc/json``; names in it must
            already be quoted (see :func:`quote_name`).
        query: parameters; a sequence of pairs may repeat a key (``condition=a&condition=b``).
            Booleans become ``true``/``false``.

    Returns:
        e.g. ``/v4.0.0/libpod/containers/abc/wait?condition=exited``.
    """
    pairs = query.items() if isinstance(query, Mapping) else (query or ())
    encoded = urlencode([(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in pairs])
    return f"{API_PREFIX}{path}" + (f"?{encoded}" if encoded else "")


def quote_name(name: str) -> str:
    """Quote a container, pod or image name for a URL path (``/`` and ``:`` included)."""
    return quote(name, safe="")


class LibpodClient:
    """Requests to one libpod API socket.

    Args:
        socket_path: the API's Unix socket, e.g. ``/run/podman/podman.sock``.
    """

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path

    async def _open(self) -> _Connection:
        try:
            reader, writer = await asyncio.open_unix_connection(str(self.socket_path))
        except OSError as err:
            raise ApiUnreachableError(
                f"podman API at {self.socket_path} does not answer: {err.strerror or err}"
            ) from err
        return _Connection(reader, writer)

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
    ) -> AsyncIterator[Response]:
        """Send a request and yield its answer with the body still unread.

        Closing the context closes the connection, which makes podman cancel what the request
        started (a pull, a long poll).

        Args:
            method: ``GET``, ``POST``, ``DELETE``.
            path: endpoint below :data:`API_PREFIX`; see :func:`build_target`.
            query: query parameters.
            body: a JSON-serialisable request body, or None for none.

        Raises:
            ApiUnreachableError: the socket does not accept a connection.
            RuntimeUnavailableError: the API closed the connection before answering.
            LibpodError: the answer's status is >= 400 (its body is read for the message).
            RemoteProtocolError: the answer is not HTTP/1.1.
        """
        target = build_target(path, query)
        headers = [] if body is None else [("Content-Type", "application/json")]
        async with self._exchange(method, path, target, headers, body) as (conn, event):
            if not isinstance(event, h11.Response):
                raise RemoteProtocolError(f"podman API answered {type(event).__name__}")
            response = Response(
                event.status_code,
                {k.decode().lower(): v.decode("latin-1") for k, v in event.headers},
                conn,
            )
            if response.status >= 400:
                raise LibpodError.from_body(response.status, await response.read())
            _log.debug("%s %s -> %d", method, target, response.status)
            yield response

    @contextlib.asynccontextmanager
    async def hijack(
        self, method: str, path: str, *, body: Any = None
    ) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]]:
        """Send a request that takes the connection over (``exec/{id}/start`` attached).

        Asks for ``Upgrade: tcp``, as the Docker CLI does ("Hijacking" in the Docker Engine
        API); podman answers ``101 UPGRADED`` and from then on the connection carries the raw
        streams both ways: the command's stdin to podman, its output back (multiplexed frames
        without a terminal, see :mod:`.frames`; raw bytes with one). Half-closing the writer
        ends the command's stdin. Closing the context closes the connection.

        Yields:
            ``(reader, writer, buffered)``: the connection and the stream bytes that arrived
            with the answer's head.

        Raises:
            ApiUnreachableError: the socket does not accept a connection.
            RuntimeUnavailableError: the API closed the connection before answering.
            LibpodError: the answer's status is >= 400.
            RemoteProtocolError: the answer is neither an error nor ``101``.
        """
        target = build_target(path)
        headers = [
            ("Content-Type", "application/json"),
            ("Connection", "Upgrade"),
            ("Upgrade", "tcp"),
        ]
        async with self._exchange(method, path, target, headers, body) as (conn, event):
            if isinstance(event, h11.Response) and event.status_code >= 400:
                answer = Response(event.status_code, {}, conn)
                raise LibpodError.from_body(answer.status, await answer.read())
            if not (isinstance(event, h11.InformationalResponse) and event.status_code == 101):
                raise RemoteProtocolError(f"podman API did not take over the connection: {event}")
            _log.debug("%s %s -> 101", method, target)
            buffered, _closed = conn.h11.trailing_data
            yield conn.reader, conn.writer, bytes(buffered)

    @contextlib.asynccontextmanager
    async def _exchange(
        self, method: str, path: str, target: str, headers: list[tuple[str, str]], body: Any
    ) -> AsyncIterator[tuple[_Connection, h11.Event]]:
        """Open a connection, send one request on it and yield it with the answer's first event.

        ``Host`` and ``Content-Length`` come before ``headers``; ``body`` goes as JSON (no
        bytes when None). Closing the context closes the connection.

        Raises:
            ApiUnreachableError: the socket does not accept a connection.
            RuntimeUnavailableError: the API closed the connection before answering.
        """
        payload = b"" if body is None else json.dumps(body).encode()
        head = [("Host", "podman"), ("Content-Length", str(len(payload))), *headers]
        conn = await self._open()
        try:
            try:
                await conn.send(h11.Request(method=method, target=target, headers=head))
                await conn.send(h11.Data(data=payload))
                await conn.send(h11.EndOfMessage())
                event = await conn.next_event()
            except (OSError, EOFError) as err:
                raise RuntimeUnavailableError(
                    f"podman API at {self.socket_path} closed the connection on {method} {path}: "
                    f"{err}"
                ) from err
            yield conn, event
        finally:
            conn.close()

    async def request(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
    ) -> tuple[int, bytes]:
        """Send a request and read the whole answer (callers bound it with ``asyncio.timeout``).

        Returns:
            ``(status, body)``.

        Raises:
            See :meth:`stream`.
        """
        async with self.stream(method, path, query=query, body=body) as response:
            return response.status, await response.read()

    async def json(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
    ) -> Any:
        """Like :meth:`request`, returning the body parsed as JSON (None when empty).

        Raises:
            RemoteProtocolError: the body is not JSON.
        """
        _, data = await self.request(method, path, query=query, body=body)
        if not data.strip():
            return None
        try:
            return json.loads(data)
        except ValueError as err:
            raise RemoteProtocolError(f"podman API sent no JSON for {path}: {data[:80]!r}") from err

    async def ping(self, seconds: float = 2.0) -> bool:
        """Whether the API answers ``GET /_ping`` with 200 within ``seconds``."""
        try:
            async with asyncio.timeout(seconds):
                status, _ = await self.request("GET", "/_ping")
        except (RuntimeUnavailableError, RemoteError, TimeoutError):
            return False
        return status == 200
