"""Synchronous client of the local API, used by the CLI, the TUI and tests.

It speaks HTTP/1.1 through :mod:`http.client`, over the agent's Unix socket or over TCP with
mutual TLS, decodes JSON answers and turns Kubernetes ``Status`` failures into
:class:`~agent.errors.ApiError`. One connection is kept alive between requests with idempotent
methods; streams (``logs -f``, ``?watch=true``) each use a connection of their own.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Callable, Generator, Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from agent.errors import ApiError

QueryParams = Mapping[str, str | list[str]]

_CHUNK = 64 * 1024
# Methods a client may retry on a fresh connection when a kept-alive one was closed under it
# (RFC 9110 §9.2.2, RFC 9112 §9.3.1). Others always get a fresh connection.
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})


class _UnixHTTPConnection(http.client.HTTPConnection):
    """An :class:`http.client.HTTPConnection` to a Unix stream socket."""

    def __init__(self, path: Path, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


class ApiClient:
    """Client of the agent's local API.

    Args:
        socket_path: the agent's Unix socket.
        timeout: seconds allowed for connecting and for each read of an answer; streams wait
            without limit once their headers have arrived.

    Use as a context manager, or call :meth:`close`, to release the kept-alive connection. Not
    thread-safe: give each thread its own client (streams are independent of it).
    """

    def __init__(self, socket_path: Path, *, timeout: float = 30.0) -> None:
        self._init(
            str(socket_path),
            partial(_UnixHTTPConnection, socket_path, timeout),
            timeout,
            hint="is `florete-agent run` running?",
        )

    @classmethod
    def tcp(
        cls, host: str, port: int, ssl_context: ssl.SSLContext, *, timeout: float = 30.0
    ) -> ApiClient:
        """Build a client for the TCP API.

        Args:
            host: the agent's host name or address (checked against its certificate when
                ``ssl_context.check_hostname`` is set).
            port: the agent's API port.
            ssl_context: a client context that trusts the agent's CA and carries this
                client's certificate and key.
            timeout: as for the constructor.
        """
        client = cls.__new__(cls)
        client._init(
            f"{host}:{port}",
            partial(http.client.HTTPSConnection, host, port, timeout=timeout, context=ssl_context),
            timeout,
            # asyncio servers drop a rejected TLS 1.3 client without sending the alert, so the
            # client sees a bare disconnect: name the likely cause.
            hint="is its TCP API on, and does it trust this client's certificate?",
        )
        return client

    def _init(
        self,
        address: str,
        connect: Callable[[], http.client.HTTPConnection],
        timeout: float,
        hint: str,
    ) -> None:
        self._address = address
        self._connect = connect
        self._timeout = timeout
        self._hint = hint
        self._conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the kept-alive connection, if any."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        method: str,
        path: str,
        *,
        query: QueryParams | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        """Send one request and return its decoded answer.

        Args:
            method: HTTP method, e.g. ``"GET"``.
            path: absolute path, e.g. ``/api/v1/namespaces/default/pods``.
            query: query parameters; a list value repeats the parameter.
            body: ``bytes`` are sent as they are; anything else but None is JSON-encoded.
            content_type: ``Content-Type`` of the body.

        Returns:
            The decoded JSON for a JSON answer, the raw ``bytes`` for any other content type,
            None for an empty body.

        Raises:
            ApiError: the agent answered with a non-2xx status (``status`` and ``api_reason``
                from its ``Status`` body), sent an invalid answer, or cannot be reached
                (``status`` 0).
        """
        payload: bytes | None
        if body is None or isinstance(body, bytes):
            payload = body
        else:
            payload = json.dumps(body).encode()
        headers = {"Accept": "application/json"}
        if payload is not None:
            headers["Content-Type"] = content_type
        target = _target(path, query)
        reused = self._conn is not None
        if method not in _IDEMPOTENT:
            self.close()
        try:
            try:
                status, ctype, data = self._exchange(method, target, payload, headers)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if not (reused and method in _IDEMPOTENT):
                    raise
                self.close()  # the agent closed the idle connection: retry once on a new one
                status, ctype, data = self._exchange(method, target, payload, headers)
        except (OSError, http.client.HTTPException) as err:
            self.close()
            raise self._unreachable(err) from err
        if not 200 <= status < 300:
            raise _status_error(status, ctype, data)
        if not data:
            return None
        if not _is_json(ctype):
            return data
        try:
            return json.loads(data)
        except ValueError as err:
            raise ApiError(f"the agent sent invalid JSON: {err}", status, "") from err

    def stream(
        self,
        path: str,
        query: QueryParams | None = None,
        on_connect: Callable[[socket.socket], None] | None = None,
    ) -> Generator[bytes, None, None]:
        """GET ``path`` and yield body chunks as they arrive (chunked answers).

        The request is sent on the first ``next()``, on a connection of its own; closing the
        iterator (or leaving a ``for`` loop over it) closes that connection.

        Args:
            path: as for :meth:`request`.
            query: as for :meth:`request`.
            on_connect: called with the connected socket before the request is sent, so that
                another thread can end a quiet stream with ``sock.shutdown(SHUT_RDWR)`` (the
                iterator then ends or raises ApiError, as when the agent closes it).

        Raises:
            ApiError: as for :meth:`request`, and when the stream breaks off mid-way.
        """
        conn = self._connect()
        try:
            try:
                if on_connect is not None:
                    conn.connect()
                    if conn.sock is not None:
                        on_connect(conn.sock)
                conn.request("GET", _target(path, query))
                response = conn.getresponse()
                if not 200 <= response.status < 300:
                    ctype = response.getheader("Content-Type", "")
                    raise _status_error(response.status, ctype, response.read())
                if conn.sock is not None:
                    conn.sock.settimeout(None)  # a watch may stay quiet for hours
            except (OSError, http.client.HTTPException) as err:
                raise self._unreachable(err) from err
            try:
                while chunk := response.read1(_CHUNK):
                    yield chunk
            except (OSError, http.client.HTTPException) as err:
                message = f"the stream from the agent at {self._address} broke off: {err!r}"
                raise ApiError(message, status=0, api_reason="ServiceUnavailable") from err
        finally:
            conn.close()

    def stream_lines(
        self,
        path: str,
        query: QueryParams | None = None,
        on_connect: Callable[[socket.socket], None] | None = None,
    ) -> Generator[bytes, None, None]:
        """Like :meth:`stream`, but yield complete lines without their ``b"\\n"``.

        A last line without a newline is yielded when the stream ends.
        """
        pending = b""
        chunks = self.stream(path, query, on_connect)
        try:
            for chunk in chunks:
                *lines, pending = (pending + chunk).split(b"\n")
                yield from lines
            if pending:
                yield pending
        finally:
            chunks.close()

    def _exchange(
        self, method: str, target: str, payload: bytes | None, headers: Mapping[str, str]
    ) -> tuple[int, str, bytes]:
        """Send one request on the kept-alive connection; return status, content type, body."""
        if self._conn is None:
            self._conn = self._connect()
        try:
            self._conn.request(method, target, body=payload, headers=dict(headers))
        except (BrokenPipeError, ConnectionResetError):
            if payload is None:
                raise
            # The agent may have answered early (413) and closed: read that (RFC 9112 §9.5).
        response = self._conn.getresponse()
        data = response.read()
        if response.will_close:
            self.close()
        return response.status, response.getheader("Content-Type", ""), data

    def _unreachable(self, err: Exception) -> ApiError:
        if isinstance(err, TimeoutError):
            message = f"the agent at {self._address} did not answer within {self._timeout} s"
            return ApiError(message, status=0, api_reason="Timeout")
        hint = self._hint
        if isinstance(err, PermissionError):
            hint = "does your user belong to the socket's group (usually `florete`)?"
        reason = (
            err.strerror if isinstance(err, OSError) and err.strerror else str(err) or repr(err)
        )
        return ApiError(
            f"cannot reach the agent at {self._address}: {reason}; {hint}",
            status=0,
            api_reason="ServiceUnavailable",
        )


def _target(path: str, query: QueryParams | None) -> str:
    return f"{path}?{urlencode(query, doseq=True)}" if query else path


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or media_type.endswith("+json")


def _status_error(status: int, content_type: str, data: bytes) -> ApiError:
    """Build the error for a non-2xx answer, from its ``Status`` body when it has one."""
    if _is_json(content_type):
        try:
            obj = json.loads(data)
        except ValueError:
            obj = None
        if isinstance(obj, dict) and obj.get("kind") == "Status":
            return ApiError(str(obj.get("message", "")), status, str(obj.get("reason", "")))
    message = f"the agent answered {status} {http.client.responses.get(status, '')}"
    if text := data[:200].decode("utf-8", "replace").strip():
        message = f"{message}: {text}"
    return ApiError(message, status, "")
