"""Typed neighbour messages and their CBOR encoding (RFC 8949), compact enough for a radio.

Every message is one CBOR array: ``[type, field, ...]``, the type a small unsigned integer and the
fields in the order of the dataclass below. Keys are never sent, so a message costs its values
plus a byte or two of CBOR headers. Encoding is canonical (RFC 8949 §4.2.1: shortest integers and
floats, sorted map keys).

* ``0x00`` :class:`Goodbye` ``[0, reason]``: 3 bytes with an empty reason.
* ``0x01`` :class:`Request` ``[1, id, method, body]``: ``[1, 7, "ping", null]`` is 9 bytes.
* ``0x02`` :class:`Response` ``[2, id, status, body]``: ``[2, 7, 200, null]`` is 6 bytes.
* ``0x03`` :class:`Publish` ``[3, topic, body]``: topic ``"a/b"`` with a 20-byte byte-string
  body is 27 bytes.
* ``0x04`` :class:`Subscribe` and ``0x05`` :class:`Unsubscribe` ``[type, pattern]``:
  ``[4, "a/#"]`` is 6 bytes.
* ``0x40``..``0x4f`` :class:`PairingMessage` ``[kind, body]``: reserved for pairing.

Inside a secure session each message adds 2 bytes of length prefix and TLS 1.3 adds 22 bytes per
record (5 header, 1 inner content type, 16 AEAD tag: RFC 8446 §5.2), so the 20-byte Publish above
is 51 bytes on the reliable stream.

Before any of these, each side of a session sends one plaintext :class:`Preamble`, a CBOR map
``{"v": 1, "id": <node ID>, "name": <name>, "fp": <certificate fingerprint>}`` (about 200
bytes; see :mod:`agent.session`).

Bodies are plain data only: None, bool, 64-bit int, float, str, bytes, lists, and maps keyed by
str or int, nested at most :data:`MAX_DEPTH` deep. CBOR tags (dates, sets, shared references) are
refused, so what a peer sends is what the receiver sees.
"""

from __future__ import annotations

import dataclasses
import io
import operator
import re
from collections.abc import Callable
from typing import Any, ClassVar

import cbor2

from agent.errors import LocalProtocolError, RemoteProtocolError
from agent.identity import parse_node_id

__all__ = [
    "MAX_DEPTH",
    "MAX_MESSAGE_SIZE",
    "MAX_METHOD",
    "MAX_NAME",
    "MAX_PREAMBLE",
    "MAX_REASON",
    "MAX_TOPIC",
    "PAIRING_TYPES",
    "PROTOCOL_VERSION",
    "Goodbye",
    "Message",
    "PairingMessage",
    "Preamble",
    "Publish",
    "Request",
    "Response",
    "Subscribe",
    "UnknownMessageTypeError",
    "Unsubscribe",
    "decode",
    "decode_preamble",
    "encode",
    "encode_preamble",
    "topic_matches",
    "validate_pattern",
    "validate_topic",
]

MAX_MESSAGE_SIZE = 65535
"""Largest encoded message, bytes (it must fit the session's 2-byte length prefix)."""
MAX_DEPTH = 32
"""Deepest nesting of lists and maps in a body."""
MAX_METHOD = 64
"""Longest request method name, characters."""
MAX_TOPIC = 256
"""Longest topic or pattern, bytes of UTF-8 (MQTT allows 65535; a radio does not)."""
MAX_REASON = 256
"""Longest goodbye reason, characters."""
PAIRING_TYPES = range(0x40, 0x50)
"""Message types reserved for pairing: the only ones an untrusted peer may exchange."""
PROTOCOL_VERSION = 1
"""The session protocol version, the ``v`` of the preamble."""
MAX_PREAMBLE = 512
"""Largest preamble accepted, bytes (a typical one is about 200)."""
MAX_NAME = 253
"""Longest node name in a preamble, bytes of UTF-8 (a DNS name's length)."""

_FINGERPRINT = re.compile(r"^[0-9A-F]{2}(:[0-9A-F]{2}){31}$")

_UINT32 = 0xFFFFFFFF
_INT64 = range(-(2**64), 2**64)  # the integers CBOR major types 0 and 1 carry


class UnknownMessageTypeError(RemoteProtocolError):
    """A well-formed message of a type this node does not know (a newer peer, say).

    Attributes:
        type: the message type received.
    """

    code = "unknown_message_type"

    def __init__(self, message: str, type_: int) -> None:
        super().__init__(message)
        self.type = type_


class _FieldError(ValueError):
    """A field value is invalid; the message says why (wrapped by encode and decode)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    """Base of every message; subclasses set ``TYPE`` and list their fields in wire order."""

    TYPE: ClassVar[int] = -1


@dataclasses.dataclass(frozen=True, slots=True)
class Goodbye(Message):
    """The sender is closing the session; the receiver marks it down at once.

    Attributes:
        reason: why, for the receiver's log (at most :data:`MAX_REASON` characters).
    """

    TYPE: ClassVar[int] = 0x00
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Request(Message):
    """A remote procedure call; answered by one :class:`Response` with the same ``id``.

    Attributes:
        id: chosen by the caller, unique among its pending requests, 0..2**32-1.
        method: e.g. ``"raft.append"``, 1..:data:`MAX_METHOD` characters.
        body: plain data (see the module docstring).
    """

    TYPE: ClassVar[int] = 0x01
    id: int
    method: str
    body: Any = None


@dataclasses.dataclass(frozen=True, slots=True)
class Response(Message):
    """The answer to a :class:`Request`.

    Attributes:
        id: the request's id.
        status: HTTP-like, 0..999: 200 ok, 400 bad request, 404 unknown method, 500 handler
            failed, 503 busy. Any status other than 2xx carries an error text as ``body``.
        body: the result (plain data) or the error text.
    """

    TYPE: ClassVar[int] = 0x02
    id: int
    status: int
    body: Any = None


@dataclasses.dataclass(frozen=True, slots=True)
class Publish(Message):
    """One value published on a topic (sent only to peers that subscribed to a matching pattern).

    Attributes:
        topic: levels separated by ``/``, no wildcards (see :func:`validate_topic`).
        body: plain data.
    """

    TYPE: ClassVar[int] = 0x03
    topic: str
    body: Any = None


@dataclasses.dataclass(frozen=True, slots=True)
class Subscribe(Message):
    """Ask the peer to send us what it publishes on topics matching ``pattern``.

    Attributes:
        pattern: an MQTT topic filter (MQTT 3.1.1 §4.7): ``+`` matches one level, a final ``#``
            any number of levels.
    """

    TYPE: ClassVar[int] = 0x04
    pattern: str


@dataclasses.dataclass(frozen=True, slots=True)
class Unsubscribe(Message):
    """Withdraw a :class:`Subscribe` with the same ``pattern``."""

    TYPE: ClassVar[int] = 0x05
    pattern: str


@dataclasses.dataclass(frozen=True, slots=True)
class PairingMessage(Message):
    """A pairing message; its ``kind`` is its wire type, one of :data:`PAIRING_TYPES`.

    The pairing protocol gives the kinds their meaning; the session layer only lets these (and
    nothing else) through to and from a peer that is not trusted.

    Attributes:
        kind: 0x40..0x4f.
        body: plain data.
    """

    kind: int
    body: Any = None


# --- field checks -------------------------------------------------------------------------------


def _uint32(value: object) -> None:
    if type(value) is not int or not 0 <= value <= _UINT32:
        raise _FieldError(f"expected an integer 0..{_UINT32}, got {_describe(value)}")


def _status(value: object) -> None:
    if type(value) is not int or not 0 <= value <= 999:
        raise _FieldError(f"expected a status 0..999, got {_describe(value)}")


def _text(limit: int, *, empty: bool) -> Callable[[object], None]:
    def check(value: object) -> None:
        if not isinstance(value, str):
            raise _FieldError(f"expected text, got {_describe(value)}")
        if len(value) > limit or (not empty and not value):
            raise _FieldError(f"expected {0 if empty else 1}..{limit} characters, got {len(value)}")

    return check


def _topic(value: object) -> None:
    if not isinstance(value, str):
        raise _FieldError(f"expected a topic (text), got {_describe(value)}")
    validate_topic(value)


def _pattern(value: object) -> None:
    if not isinstance(value, str):
        raise _FieldError(f"expected a topic pattern (text), got {_describe(value)}")
    validate_pattern(value)


def _body(value: object) -> None:
    _check_plain(value, 0)


def _check_plain(value: object, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise _FieldError(f"body nests deeper than {MAX_DEPTH} levels")
    if value is None or type(value) in (bool, float, str, bytes):
        return
    if type(value) is int:
        if value not in _INT64:
            raise _FieldError("body integer does not fit 64 bits")
        return
    if type(value) is list:
        for item in value:
            _check_plain(item, depth + 1)
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) not in (str, int):
                raise _FieldError(f"body map key is {_describe(key)}, not text or integer")
            _check_plain(item, depth + 1)
        return
    raise _FieldError(f"body holds {_describe(value)}, which is not plain data")


def _describe(value: object) -> str:
    return type(value).__name__


_Check = Callable[[object], None]
_SCHEMAS: dict[type[Message], tuple[tuple[str, _Check], ...]] = {
    Goodbye: (("reason", _text(MAX_REASON, empty=True)),),
    Request: (("id", _uint32), ("method", _text(MAX_METHOD, empty=False)), ("body", _body)),
    Response: (("id", _uint32), ("status", _status), ("body", _body)),
    Publish: (("topic", _topic), ("body", _body)),
    Subscribe: (("pattern", _pattern),),
    Unsubscribe: (("pattern", _pattern),),
}
_BY_TYPE: dict[int, type[Message]] = {cls.TYPE: cls for cls in _SCHEMAS}


def _getter(names: tuple[str, ...]) -> Callable[[Message], tuple[object, ...]]:
    """The field values of a message, in wire order, as a tuple (C speed)."""
    get = operator.attrgetter(*names)
    if len(names) > 1:
        return get  # attrgetter of several names gives a tuple
    return lambda msg: (get(msg),)


_GETTERS = {cls: _getter(tuple(name for name, _ in schema)) for cls, schema in _SCHEMAS.items()}
_PAIRING_SCHEMA: tuple[tuple[str, _Check], ...] = (("body", _body),)


# --- topics -------------------------------------------------------------------------------------


def validate_topic(topic: str) -> None:
    """Check a topic name (MQTT 3.1.1 §4.7.3): 1..:data:`MAX_TOPIC` bytes, no wildcard, no NUL.

    Raises:
        ValueError: the topic breaks a rule (the message says which).
    """
    _check_topic_text(topic, "topic")
    if "+" in topic or "#" in topic:
        raise _FieldError(f"topic {topic!r} holds a wildcard; only patterns may")


def validate_pattern(pattern: str) -> None:
    """Check a topic filter (MQTT 3.1.1 §4.7.1): ``#`` only as the whole last level, ``+`` only
    as a whole level.

    Raises:
        ValueError: the pattern breaks a rule (the message says which).
    """
    _check_topic_text(pattern, "pattern")
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise _FieldError(f"pattern {pattern!r}: '#' must be the whole last level")
        if "+" in level and level != "+":
            raise _FieldError(f"pattern {pattern!r}: '+' must be a whole level")


def _check_topic_text(text: str, what: str) -> None:
    size = len(text) if text.isascii() else len(text.encode("utf-8"))
    if not 0 < size <= MAX_TOPIC:
        raise _FieldError(f"{what} must be 1..{MAX_TOPIC} bytes of UTF-8, got {size}")
    if "\0" in text:
        raise _FieldError(f"{what} holds a NUL character")


def topic_matches(pattern: str, topic: str) -> bool:
    """Return True when ``topic`` matches the MQTT topic filter ``pattern`` (MQTT 3.1.1 §4.7).

    ``+`` matches exactly one level, a final ``#`` matches the parent level and any number of
    levels below it (``a/#`` matches ``a``, ``a/b`` and ``a/b/c``), and topics starting with
    ``$`` are not matched by a pattern whose first level is a wildcard (§4.7.2).

    Args:
        pattern: a valid pattern (see :func:`validate_pattern`).
        topic: a valid topic (see :func:`validate_topic`).
    """
    if "+" not in pattern and "#" not in pattern:
        return pattern == topic
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    want = pattern.split("/")
    have = topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)


# --- encode / decode ----------------------------------------------------------------------------


def _fields(msg: Message) -> tuple[int, tuple[tuple[str, _Check], ...], list[object]]:
    schema = _SCHEMAS.get(type(msg))
    if schema is not None:
        return msg.TYPE, schema, list(_GETTERS[type(msg)](msg))
    if isinstance(msg, PairingMessage):
        return msg.kind, _PAIRING_SCHEMA, [msg.body]
    raise LocalProtocolError(f"{type(msg).__name__} is not a registered message type")


def encode(msg: Message) -> bytes:
    """Encode a message as one canonical CBOR array.

    Args:
        msg: any message of this module.

    Returns:
        At most :data:`MAX_MESSAGE_SIZE` bytes.

    Raises:
        LocalProtocolError: a field is invalid (the message names it), a pairing kind is outside
            :data:`PAIRING_TYPES`, or the encoding is longer than :data:`MAX_MESSAGE_SIZE`.
    """
    type_, schema, values = _fields(msg)
    if schema is _PAIRING_SCHEMA and type_ not in PAIRING_TYPES:
        raise LocalProtocolError(f"PairingMessage.kind {type_!r} is outside 0x40..0x4f")
    for (field, check), value in zip(schema, values, strict=True):
        try:
            check(value)
        except ValueError as err:
            raise LocalProtocolError(f"{type(msg).__name__}.{field}: {err}") from None
    name = type(msg).__name__
    try:
        data: bytes = cbor2.dumps([type_, *values], canonical=True)
    except (cbor2.CBOREncodeError, ValueError) as err:  # e.g. a lone surrogate in a str
        raise LocalProtocolError(f"{name} cannot be encoded: {err}") from err
    if len(data) > MAX_MESSAGE_SIZE:
        raise LocalProtocolError(
            f"{name} encodes to {len(data)} bytes, more than {MAX_MESSAGE_SIZE}"
        )
    return data


def decode(data: bytes) -> Message:
    """Decode one message received from a peer.

    Args:
        data: exactly one CBOR array, at most :data:`MAX_MESSAGE_SIZE` bytes.

    Returns:
        The message.

    Raises:
        UnknownMessageTypeError: the array is well formed but its type is not known.
        RemoteProtocolError: oversize input, bytes that are not one CBOR item, an item that is not
            an array starting with a type, a wrong number of fields, or a field of the wrong
            type or range (the message names the field).
    """
    if len(data) > MAX_MESSAGE_SIZE:
        raise RemoteProtocolError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_SIZE}")
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as err:
        raise RemoteProtocolError(f"message is not valid CBOR: {err}") from err
    if stream.tell() != len(data):
        raise RemoteProtocolError(f"{len(data) - stream.tell()} bytes follow the message")
    if type(item) is not list or not item or type(item[0]) is not int:
        raise RemoteProtocolError(f"message is a {_describe(item)}, not an array [type, ...]")
    type_, values = item[0], item[1:]
    cls: type[Message]
    if type_ in PAIRING_TYPES:
        cls, schema = PairingMessage, _PAIRING_SCHEMA
    elif type_ in _BY_TYPE:
        cls = _BY_TYPE[type_]
        schema = _SCHEMAS[cls]
    else:
        raise UnknownMessageTypeError(f"unknown message type {type_:#x}", type_)
    if len(values) != len(schema):
        raise RemoteProtocolError(
            f"{cls.__name__} (type {type_:#x}) has {len(schema)} fields, got {len(values)}"
        )
    for (field, check), value in zip(schema, values, strict=True):
        try:
            check(value)
        except ValueError as err:
            raise RemoteProtocolError(f"{cls.__name__}.{field}: {err}") from None
    if cls is PairingMessage:
        return PairingMessage(type_, values[0])
    return cls(*values)


# --- session preamble ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Preamble:
    """What a node claims about itself before TLS proves it (see :mod:`agent.session`).

    Attributes:
        node_id: node ID in display form.
        name: human name, at most :data:`MAX_NAME` bytes of UTF-8 (longer ones are cut when
            encoding, so a preamble is at most about 420 bytes).
        fingerprint: certificate fingerprint as ``agent.identity.certificate_fingerprint`` formats
            it.
    """

    node_id: str
    name: str
    fingerprint: str


def encode_preamble(preamble: Preamble) -> bytes:
    """Encode a preamble as the CBOR map ``{"v", "id", "name", "fp"}`` (canonical)."""
    data: bytes = cbor2.dumps(
        {
            "v": PROTOCOL_VERSION,
            "id": preamble.node_id,
            "name": preamble.name.encode()[:MAX_NAME].decode("utf-8", "ignore"),
            "fp": preamble.fingerprint,
        },
        canonical=True,
    )
    return data


def decode_preamble(data: bytes) -> Preamble:
    """Decode a peer's preamble; other keys in the map are ignored.

    Raises:
        RemoteProtocolError: more than :data:`MAX_PREAMBLE` bytes, not exactly one CBOR map,
            another version, a field missing or not text, an invalid node ID or one not in
            display form, a name over :data:`MAX_NAME` bytes, or a malformed fingerprint.
    """
    if len(data) > MAX_PREAMBLE:
        raise RemoteProtocolError(f"preamble of {len(data)} bytes exceeds {MAX_PREAMBLE}")
    stream = io.BytesIO(data)
    try:
        item = cbor2.CBORDecoder(stream).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as err:
        raise RemoteProtocolError(f"preamble is not valid CBOR: {err}") from err
    if stream.tell() != len(data) or type(item) is not dict:
        raise RemoteProtocolError("preamble is not exactly one CBOR map")
    version = item.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise RemoteProtocolError(
            f"unsupported session protocol version {version!r} (this node speaks "
            f"{PROTOCOL_VERSION})"
        )
    node_id, name, fp = item.get("id"), item.get("name"), item.get("fp")
    if not isinstance(node_id, str) or not isinstance(name, str) or not isinstance(fp, str):
        raise RemoteProtocolError("preamble fields id, name and fp must all be text")
    try:
        canonical = parse_node_id(node_id)
    except ValueError as err:
        raise RemoteProtocolError(f"preamble id: {err}") from err
    if canonical != node_id:
        raise RemoteProtocolError("preamble id is not in display form")
    if len(name.encode()) > MAX_NAME:
        raise RemoteProtocolError(f"preamble name is over {MAX_NAME} bytes of UTF-8")
    if not _FINGERPRINT.match(fp):
        raise RemoteProtocolError(
            "preamble fp is not a SHA-256 fingerprint (32 hex pairs with ':')"
        )
    return Preamble(node_id, name, fp)
