"""Requests, responses, peers and routing of the local API, independent of the HTTP framing.

A :class:`Router` maps ``(method, path)`` to an async handler through path templates such as
``/api/v1/namespaces/{namespace}/pods/{name}/log`` and turns every failure into a Kubernetes
``Status`` object (``k8s.io/apimachinery/pkg/apis/meta/v1`` ``Status``), so handlers only raise
:class:`~agent.errors.FloreteError`. :mod:`agent.httpserver` feeds it requests read off the wire;
each request names its peer (Unix socket credentials or TLS client certificate).
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import struct
import sys
from asyncio.trsock import TransportSocket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeAlias
from urllib.parse import parse_qs, unquote

from agent.errors import BadRequestError, FloreteError, ManifestError

logger = logging.getLogger(__name__)

_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
# A manifest error message that starts with a field path, e.g. "spec.volumes[0].nfs: not supported".
_FIELD_PREFIX = re.compile(r"^([A-Za-z0-9_$.\[\]-]+): ")
_PARAM = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_UCRED = struct.Struct("3i")  # struct ucred of socket(7): pid, uid, gid
# Short attribute names of RFC 4514 §3 for the subject string of a TLS peer.
_RDN_NAMES = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "domainComponent": "DC",
    "userId": "UID",
}


class Query:
    """Query parameters of a request target (RFC 3986 §3.4, ``application/x-www-form-urlencoded``).

    Args:
        params: parameter name to its values, in the order they appeared.
    """

    __slots__ = ("_params",)

    def __init__(self, params: Mapping[str, list[str]] | None = None) -> None:
        self._params: Mapping[str, list[str]] = params or {}

    @classmethod
    def parse(cls, raw: str) -> Query:
        """Decode a raw query string such as ``watch=true&labelSelector=app%3Dweb``.

        Blank values are kept (``?follow`` gives ``follow=""``); malformed pairs are skipped.
        """
        return cls(parse_qs(raw, keep_blank_values=True))

    @property
    def params(self) -> Mapping[str, list[str]]:
        """All parameters: name to its values."""
        return self._params

    def __contains__(self, name: object) -> bool:
        return name in self._params

    def get(self, name: str, default: str | None = None) -> str | None:
        """Return the first value of ``name``, or ``default`` when it is absent."""
        values = self._params.get(name)
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """Return every value of ``name`` (an empty list when it is absent)."""
        return list(self._params.get(name, ()))

    def get_bool(self, name: str, default: bool = False) -> bool:
        """Return ``name`` as a boolean, spelled as Go's ``strconv.ParseBool`` accepts.

        Raises:
            BadRequestError: the value is not one of ``1 t T TRUE true True 0 f F FALSE false
                False``.
        """
        value = self.get(name)
        if value is None:
            return default
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise BadRequestError(f"query parameter {name}={value!r} is not a boolean")

    def get_int(self, name: str) -> int | None:
        """Return ``name`` as a decimal integer, or None when it is absent.

        Raises:
            BadRequestError: the value is not a decimal integer.
        """
        value = self.get(name)
        if value is None:
            return None
        try:
            return int(value, 10)
        except ValueError:
            raise BadRequestError(f"query parameter {name}={value!r} is not an integer") from None


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """Credentials of the process at the other end of a Unix socket (Linux ``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int

    @classmethod
    def of_socket(cls, sock: socket.socket | TransportSocket) -> PeerCredentials | None:
        """Read the peer's credentials from a connected Unix socket; None off Linux.

        Raises:
            OSError: the socket is not a connected Unix socket.
        """
        if sys.platform != "linux":
            return None
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        pid, uid, gid = _UCRED.unpack(raw)
        return cls(pid=pid, uid=uid, gid=gid)


Subject: TypeAlias = Sequence[Sequence[tuple[str, str]]]
"""A certificate subject as :meth:`ssl.SSLSocket.getpeercert` decodes it."""


@dataclass(frozen=True, slots=True)
class TlsPeer:
    """The verified client certificate of a mutual-TLS connection.

    Attributes:
        address: remote ``(host, port)``.
        subject: the certificate subject as an RFC 4514 string, e.g. ``"CN=ops,O=florete"``.
        common_name: the subject's last ``CN`` value, or None when it has none.
        fingerprint_sha256: lowercase hex SHA-256 of the DER certificate (64 characters).
    """

    address: tuple[str, int]
    subject: str
    common_name: str | None
    fingerprint_sha256: str

    @classmethod
    def of_certificate(cls, der: bytes, subject: Subject, address: Sequence[Any]) -> TlsPeer:
        """Describe a verified client certificate.

        Args:
            der: the certificate in DER form.
            subject: its subject as :meth:`ssl.SSLSocket.getpeercert` decodes it: RDNs, each a
                sequence of ``(attribute long name, value)`` pairs, most significant first.
            address: the socket's peer name; its first two items are host and port.
        """
        pairs = [pair for rdn in subject for pair in rdn]
        text = ",".join(f"{_RDN_NAMES.get(k, k)}={_escape_rdn(v)}" for k, v in reversed(pairs))
        common_names = [value for key, value in pairs if key == "commonName"]
        return cls(
            address=(str(address[0]), int(address[1])),
            subject=text,
            common_name=common_names[-1] if common_names else None,
            fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        )


def _escape_rdn(value: str) -> str:
    """Escape an attribute value for an RFC 4514 string (§2.4)."""
    chars = [f"\\{c}" if c in ',+"\\<>;' else c for c in value]
    if chars and chars[0] in (" ", "#"):
        chars[0] = "\\" + chars[0]
    if chars and chars[-1] == " ":
        chars[-1] = "\\ "
    return "".join(chars)


Peer: TypeAlias = PeerCredentials | TlsPeer | None


@dataclass(frozen=True, slots=True)
class Request:
    """One HTTP request, body fully read.

    Attributes:
        method: upper-case method, e.g. ``"GET"``.
        path: the target's path as sent, still percent-encoded, without the query.
        query: decoded query parameters.
        headers: ``(name, value)`` pairs in arrival order, names lower-case, decoded as Latin-1.
        body: the request body (``b""`` when there is none).
        params: path parameters bound by the route template, percent-decoded.
        peer: who is connected: Unix socket credentials, TLS client certificate, or None.
    """

    method: str
    path: str
    query: Query = field(default_factory=Query)
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    params: Mapping[str, str] = field(default_factory=dict)
    peer: Peer = None

    def header(self, name: str) -> str | None:
        """Return the first value of header ``name`` (case-insensitive), or None."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key == wanted), None)

    def json(self) -> Any:
        """Decode the body as JSON (RFC 8259).

        Raises:
            BadRequestError: the body is not valid UTF-8 JSON.
        """
        try:
            return json.loads(self.body)
        except ValueError as err:
            raise BadRequestError(f"request body is not valid JSON: {err}") from err


@dataclass(frozen=True, slots=True)
class Response:
    """A complete response sent with ``Content-Length``.

    Attributes:
        status: HTTP status code.
        body: the body bytes.
        content_type: the ``Content-Type`` header value.
        headers: extra ``(name, value)`` header pairs.
    """

    status: int
    body: bytes
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, obj: Any, status: int = 200) -> Response:
        """Build an ``application/json`` response from a JSON-serialisable object."""
        return cls(status, json.dumps(obj, separators=(",", ":")).encode())


@dataclass(frozen=True, slots=True)
class StreamingResponse:
    """A response whose body is produced over time (``logs -f``, ``?watch=true``).

    The server sends it with chunked transfer coding (RFC 9112 §7.1), one chunk per non-empty
    item, flushed as soon as it is produced. When the client disconnects or the server closes,
    the server stops iterating and calls ``aclose()`` if ``chunks`` is an async generator, so its
    ``finally`` blocks run.
    """

    status: int
    content_type: str
    chunks: AsyncIterator[bytes]
    headers: tuple[tuple[str, str], ...] = ()


class UpgradedStream(Protocol):
    """The raw byte stream of a connection after ``101 Switching Protocols``."""

    async def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes; ``b""`` at end of stream."""
        ...

    def write(self, data: bytes) -> None:
        """Queue ``data`` for sending."""
        ...

    async def drain(self) -> None:
        """Wait until the queued data may grow again."""
        ...


@dataclass(frozen=True, slots=True)
class Upgrade:
    """Switch the connection to another protocol (RFC 9110 §7.8, §15.2.2), e.g. WebSocket.

    The server answers ``101 Switching Protocols`` with ``headers`` and then calls
    ``run(buffered, stream)``: ``buffered`` holds bytes the client sent after its request, and
    the connection ends when ``run`` returns. Only valid for a request that asked to upgrade
    (``Connection: Upgrade`` and an ``Upgrade`` header); otherwise the client gets a 400.
    """

    headers: tuple[tuple[str, str], ...]
    run: Callable[[bytes, UpgradedStream], Awaitable[None]]


Handler: TypeAlias = Callable[[Request], Awaitable[Response | StreamingResponse | Upgrade]]


def status_object(
    code: int, reason: str, message: str, causes: Sequence[Mapping[str, str]] = ()
) -> dict[str, Any]:
    """Build a failed Kubernetes ``Status`` object (also the payload of a watch ``ERROR`` event).

    Args:
        code: HTTP status code, copied into ``code``.
        reason: a ``metav1.StatusReason`` such as ``"NotFound"``.
        message: human-readable description.
        causes: ``StatusCause`` entries (``message``, optional ``field``) for ``details.causes``.
    """
    status: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if causes:
        status["details"] = {"causes": [dict(cause) for cause in causes]}
    status["code"] = code
    return status


def status_response(
    code: int,
    reason: str,
    message: str,
    *,
    causes: Sequence[Mapping[str, str]] = (),
    headers: tuple[tuple[str, str], ...] = (),
) -> Response:
    """Build a response carrying a failed ``Status`` object (see :func:`status_object`)."""
    body = json.dumps(status_object(code, reason, message, causes), separators=(",", ":"))
    return Response(code, body.encode(), headers=headers)


def error_response(err: FloreteError) -> Response:
    """Map an error of the project's tree to its ``Status`` response.

    A :class:`~agent.errors.ManifestError` lists each of its messages in ``details.causes``, with
    ``field`` set to the field path that starts the message, if any.
    """
    causes: list[dict[str, str]] = []
    if isinstance(err, ManifestError):
        for message in err.errors:
            cause = {"message": message}
            if match := _FIELD_PREFIX.match(message):
                cause["field"] = match.group(1)
            causes.append(cause)
    return status_response(err.http_status, err.reason, err.message, causes=causes)


@dataclass(frozen=True, slots=True)
class _Template:
    """A parsed path template: literal segments and ``{name}`` parameters."""

    text: str
    segments: tuple[str, ...]
    names: tuple[str | None, ...]  # parameter name per segment, None for a literal

    @classmethod
    def parse(cls, text: str) -> _Template:
        if not text.startswith("/"):
            raise ValueError(f"route template {text!r} must start with '/'")
        segments = tuple(text[1:].split("/"))
        names: list[str | None] = []
        for segment in segments:
            match = _PARAM.match(segment)
            if match is None and ("{" in segment or "}" in segment):
                raise ValueError(f"route template {text!r}: bad parameter segment {segment!r}")
            names.append(match.group(1) if match else None)
        declared = [name for name in names if name]
        if len(declared) != len(set(declared)):
            raise ValueError(f"route template {text!r} repeats a parameter name")
        return cls(text, segments, tuple(names))

    @property
    def specificity(self) -> tuple[bool, ...]:
        """Sort key: literal segments (False) sort before parameters, position by position."""
        return tuple(name is not None for name in self.names)

    def match(self, parts: Sequence[str]) -> dict[str, str] | None:
        """Bind the percent-decoded path segments ``parts``, or None when they do not fit."""
        if len(parts) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for part, segment, name in zip(parts, self.segments, self.names, strict=True):
            if name is None:
                if part != segment:
                    return None
            elif not part:
                return None
            else:
                params[name] = part
        return params


class Router:
    """Dispatch requests to handlers by method and path template.

    Templates are matched segment by segment; a ``{name}`` segment binds one non-empty segment.
    When several templates match a path, the most specific one (literal segments first, from
    left to right) that accepts the method wins.
    """

    def __init__(self) -> None:
        self._routes: list[tuple[_Template, dict[str, Handler]]] = []
        self._logged: set[tuple[str, str, type[BaseException]]] = set()

    def add(self, method: str, template: str, handler: Handler) -> None:
        """Register ``handler`` for ``method`` on ``template``.

        Args:
            method: upper-case HTTP method, e.g. ``"GET"``.
            template: path template, e.g. ``/api/v1/namespaces/{namespace}/pods/{name}``.
            handler: ``async (Request) -> Response | StreamingResponse``.

        Raises:
            ValueError: a programming error: malformed template or method, or the pair is
                already registered.
        """
        if not method.isalpha() or not method.isupper():
            raise ValueError(f"HTTP method {method!r} must be upper-case letters")
        parsed = _Template.parse(template)
        for existing, handlers in self._routes:
            if existing.text == template:
                if method in handlers:
                    raise ValueError(f"route {method} {template} is already registered")
                handlers[method] = handler
                return
        self._routes.append((parsed, {method: handler}))
        self._routes.sort(key=lambda route: route[0].specificity)

    async def dispatch(self, request: Request) -> Response | StreamingResponse | Upgrade:
        """Run the handler for ``request`` and map failures to ``Status`` responses.

        Returns:
            The handler's response; 404 ``NotFound`` when no template matches the path; 405
            ``MethodNotAllowed`` with an ``Allow`` header when templates match but none accepts
            the method; the error's status for a :class:`~agent.errors.FloreteError`; 500
            ``InternalError`` for any other exception, which is logged with its traceback and
            never shown to the client.
        """
        # Every template has at least one segment, so a target not starting with "/" matches none.
        path = request.path
        parts = [unquote(part) for part in path[1:].split("/")] if path.startswith("/") else []
        allowed: set[str] = set()
        for template, handlers in self._routes:
            params = template.match(parts)
            if params is None:
                continue
            handler = handlers.get(request.method)
            if handler is not None:
                return await self._call(handler, template.text, replace(request, params=params))
            allowed.update(handlers)
        if allowed:
            return status_response(
                405,
                "MethodNotAllowed",
                f"the server does not allow method {request.method} on {request.path}",
                headers=(("Allow", ", ".join(sorted(allowed))),),
            )
        return status_response(404, "NotFound", "the server could not find the requested resource")

    async def _call(
        self, handler: Handler, template: str, request: Request
    ) -> Response | StreamingResponse | Upgrade:
        try:
            return await handler(request)
        except FloreteError as err:
            return error_response(err)
        except Exception as err:
            # The first failure of a kind is an ERROR with traceback, repeats are DEBUG.
            key = (request.method, template, type(err))
            level = logging.DEBUG if key in self._logged else logging.ERROR
            self._logged.add(key)
            logger.log(level, "handler for %s %s failed", request.method, template, exc_info=True)
            return status_response(500, "InternalError", "internal error")
