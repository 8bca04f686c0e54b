"""HTTP/1.1 server of the local API: h11 (sans-IO) on asyncio streams.

It listens on a Unix socket (file mode and group set before ``listen()``, peer credentials read
with ``SO_PEERCRED``) and optionally on TCP with mutual TLS (TLS 1.3, client certificate
required). Requests go to a :class:`~agent.httproute.Router`; this module knows nothing about
pods. HTTP/1.1 framing follows RFC 9112: persistent connections and pipelining (§9.3), request
bodies by ``Content-Length`` or chunked coding (§6), chunked responses for streams (§7.1).

Every connection runs in a task tracked by the server, which :meth:`HttpServer.close` cancels.
Each request (head and body) must arrive within ``HttpLimits.request_timeout`` seconds of the
previous response, which closes idle keep-alive connections and slow-header clients alike.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import http
import logging
import os
import socket
import ssl
import stat
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast
from urllib.parse import urlsplit

import h11

from agent.errors import ConfigError
from agent.httproute import (
    Peer,
    PeerCredentials,
    Query,
    Request,
    Response,
    Router,
    StreamingResponse,
    Subject,
    TlsPeer,
    Upgrade,
    status_response,
)

logger = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024
_CLOSE_TIMEOUT = 1.0  # seconds to wait for a transport to close before aborting it
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_STATUS_REASONS = {408: "Timeout", 413: "RequestEntityTooLarge"}


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Per-connection limits against oversized and slow clients.

    Attributes:
        max_body_bytes: largest request body accepted; larger ones get 413 (default 8 MiB).
        max_header_bytes: largest request head (request line and headers) in bytes; larger
            ones get 431 from h11.
        request_timeout: seconds within which a whole request (head and body) must arrive,
            counted from the previous response; an idle keep-alive connection is closed after
            the same time. Also bounds the TLS handshake.
        write_timeout: seconds a single write may wait for the client to read.
    """

    max_body_bytes: int = 8 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    request_timeout: float = 30.0
    write_timeout: float = 30.0


def make_server_ssl_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """Build the server context of the TCP API: TLS 1.3 only, client certificate required.

    Args:
        cert: PEM server certificate chain.
        key: PEM private key of ``cert``.
        client_ca: PEM bundle of the CAs that sign accepted client certificates.

    Raises:
        ConfigError: a file is missing or unreadable, or its contents are not valid PEM.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_cert_chain(cert, key)
    except OSError as err:  # ssl.SSLError is an OSError
        raise ConfigError(f"cannot load API TLS certificate {cert} with key {key}: {err}") from err
    try:
        context.load_verify_locations(cafile=client_ca)
    except OSError as err:
        raise ConfigError(f"cannot load API client CA {client_ca}: {err}") from err
    return context


class _ClientGone(Exception):
    """The client closed the connection or stopped reading; nothing more can be sent."""


class _PayloadTooLarge(Exception):
    """The request body exceeds ``HttpLimits.max_body_bytes``."""


class HttpServer:
    """Serve a :class:`~agent.httproute.Router` on Unix and mutual-TLS TCP sockets.

    Args:
        router: routes requests to handlers.
        limits: per-connection limits; defaults to :class:`HttpLimits`.
    """

    def __init__(self, router: Router, limits: HttpLimits | None = None) -> None:
        self._router = router
        self._limits = limits or HttpLimits()
        self._servers: list[asyncio.Server] = []
        self._unix_sockets: list[tuple[Path, int]] = []  # (path, inode) to unlink on close
        self._connections: set[asyncio.Task[Any]] = set()
        self._closing = False

    async def start_unix(self, path: Path, mode: int = 0o660, group: str | None = None) -> Path:
        """Listen on a Unix socket.

        A socket file left by a dead server is replaced; mode and group are applied before
        ``listen()``, so nobody can connect under looser permissions.

        Args:
            path: socket path; its directory must exist.
            mode: file mode of the socket, e.g. ``0o660``.
            group: group to own the socket, applied only when that group exists.

        Returns:
            ``path``, once the server accepts connections.

        Raises:
            ConfigError: another server is live on ``path``, ``path`` is not a socket, or
                binding, ``chmod`` or ``chgrp`` failed.
        """
        sock, inode = _bind_unix(path, mode, group)
        try:
            server = await asyncio.start_unix_server(
                partial(self._on_connection, _unix_peer), sock=sock
            )
        except OSError as err:
            sock.close()
            _unlink_if_ours(path, inode)
            raise ConfigError(f"cannot serve the API on {path}: {err}") from err
        self._servers.append(server)
        self._unix_sockets.append((path, inode))
        logger.info("API listening on %s (mode %o)", path, mode)
        return path

    async def start_tcp(
        self, host: str, port: int, ssl_context: ssl.SSLContext | None
    ) -> tuple[str, int]:
        """Listen on TCP with mutual TLS.

        Args:
            host: address to bind, e.g. ``"127.0.0.1"``.
            port: TCP port; 0 picks a free one.
            ssl_context: a server context that requires client certificates, e.g. from
                :func:`make_server_ssl_context`.

        Returns:
            The bound ``(host, port)`` of the first listening socket.

        Raises:
            ConfigError: ``ssl_context`` is None or does not require client certificates
                (the API is never reachable unauthenticated from the network), or binding failed.
        """
        if ssl_context is None or ssl_context.verify_mode != ssl.CERT_REQUIRED:
            raise ConfigError(
                "the TCP API requires mutual TLS: pass an SSLContext with "
                "verify_mode=CERT_REQUIRED (see make_server_ssl_context)"
            )
        try:
            server = await asyncio.start_server(
                partial(self._on_connection, _tls_peer),
                host,
                port,
                ssl=ssl_context,
                ssl_handshake_timeout=self._limits.request_timeout,
            )
        except OSError as err:
            raise ConfigError(f"cannot serve the API on {host}:{port}: {err}") from err
        self._servers.append(server)
        bound_host, bound_port = server.sockets[0].getsockname()[:2]
        logger.info("API listening on %s:%d (mutual TLS)", bound_host, bound_port)
        return bound_host, bound_port

    async def close(self, timeout: float = 5.0) -> None:  # noqa: ASYNC109 (grace after cancel)
        """Stop accepting, cancel every connection (and its streams), remove Unix sockets.

        Args:
            timeout: grace period in seconds for cancelled connections to run their cleanup
                (stream ``finally`` blocks, TLS close); stragglers are logged and left behind.
                Not an ``asyncio.timeout`` around the call: that would cut the cleanup short.
        """
        self._closing = True
        for server in self._servers:
            server.close()
        for task in self._connections:
            task.cancel()
        if self._connections:
            _, pending = await asyncio.wait(set(self._connections), timeout=timeout)
            if pending:
                logger.warning("%d API connections still open after %.1f s", len(pending), timeout)
        for path, inode in self._unix_sockets:
            _unlink_if_ours(path, inode)
        self._servers.clear()
        self._unix_sockets.clear()

    async def _on_connection(
        self,
        peer_of: Callable[[asyncio.StreamWriter], Peer],
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        task = asyncio.current_task()
        if task is None or self._closing:
            writer.transport.abort()
            return
        self._connections.add(task)
        try:
            try:
                await self._serve(_Connection(self._router, self._limits, reader, writer, peer_of))
            finally:
                await _close_writer(writer)
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # Cancelled by close(): end normally, since the done-callback asyncio 3.11 puts on
            # this task calls task.exception(), which raises for a cancelled task.
            task.uncancel()
        finally:
            self._connections.discard(task)

    @staticmethod
    async def _serve(connection: _Connection) -> None:
        try:
            await connection.serve()
        except* (_ClientGone, OSError) as group:
            logger.debug("API connection ended: %r", group.exceptions[0])
        except* Exception:
            logger.exception("API connection failed")


class _Connection:
    """One HTTP/1.1 connection: reads requests with h11, answers them in order."""

    def __init__(
        self,
        router: Router,
        limits: HttpLimits,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        peer_of: Callable[[asyncio.StreamWriter], Peer],
    ) -> None:
        self._router = router
        self._limits = limits
        self._reader = reader
        self._writer = writer
        self._peer_of = peer_of
        self._peer: Peer = None
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)

    async def serve(self) -> None:
        """Answer requests until the client closes, asks to close, or breaks the protocol."""
        self._peer = self._peer_of(self._writer)
        while (request := await self._read_request()) is not None:
            response = await self._router.dispatch(request)
            if isinstance(response, Upgrade):
                await self._switch(response)
                return
            if isinstance(response, StreamingResponse):
                await self._send_stream(response)
            else:
                await self._send_response(response)
            if self._h11.our_state is not h11.DONE or self._h11.their_state is not h11.DONE:
                return
            self._h11.start_next_cycle()

    async def _read_request(self) -> Request | None:
        """Read one request, or answer the error and return None when the connection must end."""
        try:
            async with asyncio.timeout(self._limits.request_timeout):
                return await self._receive_request()
        except TimeoutError:
            if self._h11.their_state is h11.IDLE and not self._h11.trailing_data[0]:
                return None  # idle keep-alive connection
            await self._send_error(408, "request not received in time")
        except h11.RemoteProtocolError as err:
            await self._send_error(err.error_status_hint, f"malformed HTTP request: {err}")
        except _PayloadTooLarge:
            limit = self._limits.max_body_bytes
            await self._send_error(413, f"request body is larger than {limit} bytes")
        return None

    async def _receive_request(self) -> Request | None:
        head = await self._next_event()
        if isinstance(head, h11.ConnectionClosed):
            return None
        assert isinstance(head, h11.Request)  # h11 yields nothing else to an idle server
        length = next((v for k, v in head.headers if k == b"content-length"), None)
        limit = self._limits.max_body_bytes
        if length is not None and int(length) > limit:  # h11 checked that it is digits
            raise _PayloadTooLarge
        body = bytearray()
        while isinstance(event := await self._next_event(), h11.Data):
            body += event.data
            if len(body) > limit:
                raise _PayloadTooLarge
        target = urlsplit(head.target.decode("ascii"))  # h11 checked the characters
        return Request(
            method=head.method.decode("ascii"),
            path=target.path,
            query=Query.parse(target.query),
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
            body=bytes(body),
            peer=self._peer,
        )

    async def _next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        while (event := self._h11.next_event()) is h11.NEED_DATA:
            if self._h11.they_are_waiting_for_100_continue:  # RFC 9110 §10.1.1
                self._emit(
                    h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
                )
                await self._drain()
            self._h11.receive_data(await self._reader.read(_READ_SIZE))
        return event

    async def _send_response(self, response: Response) -> None:
        headers = [("content-type", response.content_type), *response.headers]
        if response.status not in (204, 304):  # RFC 9110 §8.6: no Content-Length on these
            headers.append(("content-length", str(len(response.body))))
        self._emit(_head(response.status, headers))
        if response.body:
            self._emit(h11.Data(data=response.body))
        self._emit(h11.EndOfMessage())
        await self._drain()

    async def _send_stream(self, response: StreamingResponse) -> None:
        # No Content-Length: h11 picks chunked coding for HTTP/1.1 clients (RFC 9112 §7.1) and
        # a close-delimited body for HTTP/1.0 ones. A watcher reads the socket meanwhile, so a
        # client that disconnects cancels the stream at once, not at the next chunk.
        self._emit(
            _head(response.status, [("content-type", response.content_type), *response.headers])
        )
        await self._drain()
        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(self._watch_disconnect())
            try:
                async for chunk in response.chunks:
                    if chunk:
                        self._emit(h11.Data(data=chunk))
                        await self._drain()
            finally:
                watcher.cancel()
                if isinstance(response.chunks, AsyncGenerator):
                    await response.chunks.aclose()
        self._emit(h11.EndOfMessage())
        await self._drain()

    async def _switch(self, upgrade: Upgrade) -> None:
        """Answer ``101 Switching Protocols`` and hand the connection to ``upgrade.run``."""
        if self._h11.their_state is h11.DONE:  # not MIGHT_SWITCH_PROTOCOL: no upgrade asked
            await self._send_error(400, "this resource needs a connection upgrade (RFC 9110 §7.8)")
            return
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in upgrade.headers]
        self._emit(
            h11.InformationalResponse(
                status_code=101, headers=headers, reason=b"Switching Protocols"
            )
        )
        await self._drain()
        buffered = bytes(self._h11.trailing_data[0])
        await upgrade.run(buffered, _Upgraded(self._reader, self._writer, self._limits))

    async def _watch_disconnect(self) -> None:
        """Raise :class:`_ClientGone` when the client closes; keep pipelined bytes for h11."""
        while data := await self._reader.read(_READ_SIZE):
            self._h11.receive_data(data)
            if len(self._h11.trailing_data[0]) > self._limits.max_body_bytes:
                raise _ClientGone("client pipelined too much data during a stream")
        raise _ClientGone("client closed the connection during a stream")

    async def _send_error(self, status: int, message: str) -> None:
        """Answer a request that cannot be served, then let the connection close."""
        if self._h11.our_state not in {h11.IDLE, h11.SEND_RESPONSE}:
            return
        reason = _STATUS_REASONS.get(status, "BadRequest")
        await self._send_response(
            status_response(status, reason, message, headers=(("connection", "close"),))
        )

    def _emit(self, event: h11.Event) -> None:
        data = self._h11.send(event)
        if data:
            self._writer.write(data)

    async def _drain(self) -> None:
        try:
            async with asyncio.timeout(self._limits.write_timeout):
                await self._writer.drain()
        except TimeoutError as err:
            raise _ClientGone("client stopped reading") from err


class _Upgraded:
    """The raw stream of a switched connection (:class:`agent.httproute.UpgradedStream`)."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: HttpLimits
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._limits = limits

    async def read(self, n: int = -1) -> bytes:
        return await self._reader.read(n if n > 0 else _READ_SIZE)

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        try:
            async with asyncio.timeout(self._limits.write_timeout):
                await self._writer.drain()
        except TimeoutError as err:
            raise _ClientGone("client stopped reading") from err


def _head(status: int, headers: list[tuple[str, str]]) -> h11.Response:
    headers.append(("date", _http_date(time.time())))
    return h11.Response(
        status_code=status,
        headers=[(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        reason=http.HTTPStatus(status).phrase.encode("ascii"),
    )


def _http_date(now: float) -> str:
    """Format ``now`` (seconds since the epoch) as an IMF-fixdate (RFC 9110 §5.6.7)."""
    t = time.gmtime(now)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    )


def _unix_peer(writer: asyncio.StreamWriter) -> Peer:
    return PeerCredentials.of_socket(writer.get_extra_info("socket"))


def _tls_peer(writer: asyncio.StreamWriter) -> Peer:
    ssl_object: ssl.SSLObject = writer.get_extra_info("ssl_object")
    der, decoded = ssl_object.getpeercert(binary_form=True), ssl_object.getpeercert()
    if der is None or decoded is None:  # cannot happen with CERT_REQUIRED
        return None
    subject = cast(Subject, decoded.get("subject", ()))
    return TlsPeer.of_certificate(der, subject, writer.get_extra_info("peername"))


def _bind_unix(path: Path, mode: int, group: str | None) -> tuple[socket.socket, int]:
    """Bind a Unix socket at ``path`` with ``mode`` and ``group``, not yet listening.

    Only local file-system metadata calls, so it runs on the event loop. A socket file that
    nobody listens on is replaced first.

    Returns:
        The bound socket and the inode of its file.

    Raises:
        ConfigError: ``path`` is not a socket, a server is live on it, or binding, ``chmod`` or
            ``chgrp`` failed.
    """
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    inode = None
    try:
        sock.bind(os.fspath(path))
        inode = os.stat(path).st_ino
        os.chmod(path, mode)
        _chgrp(path, group)
    except OSError as err:
        sock.close()
        if inode is not None:
            _unlink_if_ours(path, inode)
        raise ConfigError(f"cannot serve the API on {path}: {err}") from err
    return sock, inode


def _remove_stale_socket(path: Path) -> None:
    """Unlink ``path`` if it is a socket nobody listens on.

    Raises:
        ConfigError: ``path`` is not a socket, a server answers on it, or it cannot be probed.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ConfigError(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        # Non-blocking: a Unix connect completes at once, or fails with EAGAIN when the
        # listener's backlog is full (so it is alive).
        probe.setblocking(False)
        result = probe.connect_ex(os.fspath(path))
    if result == errno.ECONNREFUSED:
        os.unlink(path)
        logger.info("removed stale API socket %s", path)
        return
    if result not in (0, errno.EAGAIN):
        raise ConfigError(f"cannot check the existing API socket {path}: {os.strerror(result)}")
    raise ConfigError(
        f"another server is already listening on {path}; "
        "stop it (is `florete-agent run` already active?) or use another socket path"
    )


def _unlink_if_ours(path: Path, inode: int) -> None:
    """Remove the socket file at ``path`` unless it was replaced since it was bound."""
    try:
        if os.lstat(path).st_ino == inode:
            os.unlink(path)
    except FileNotFoundError:
        pass


def _chgrp(path: Path, group: str | None) -> None:
    """Give ``path`` to ``group`` if that group exists (raises OSError when not permitted)."""
    if group is None:
        return
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        logger.warning("group %r does not exist; %s keeps its current group", group, path)
        return
    os.chown(path, -1, gid)


async def _close_writer(writer: asyncio.StreamWriter) -> None:
    """Close a connection, aborting it when the close does not finish in time."""
    writer.close()
    try:
        async with asyncio.timeout(_CLOSE_TIMEOUT):
            await writer.wait_closed()
    except (TimeoutError, OSError):
        writer.transport.abort()
    except asyncio.CancelledError:
        writer.transport.abort()
        raise
