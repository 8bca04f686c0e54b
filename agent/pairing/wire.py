"""Pairing messages on the wire: :class:`~agent.messages.PairingMessage` kinds 0x40-0x45.

Each body is a CBOR map (the session layer checks it is plain data; this module checks its keys,
types and sizes, and turns anything else into :class:`~agent.errors.RemoteProtocolError`):

=====  ========  =========================================  ===================
kind   name      body                                       direction
=====  ========  =========================================  ===================
0x40   START     ``{"v": 1, "pake": bytes(33)}``            joiner -> shower
0x41   REPLY     ``{"pake": bytes(33), "mac": bytes(32)}``  shower -> joiner
0x42   CONFIRM   ``{"mac": bytes(32), "box": bytes}``       joiner -> shower
0x43   IDENTITY  ``{"box": bytes}``                         shower -> joiner
0x44   DONE      ``{}`` or ``{"supernode": str}``           joiner -> shower
0x45   ABORT     ``{"code": str, "message": str}``          either way
=====  ========  =========================================  ===================

A box (:mod:`agent.pairing.crypto`) holds the CBOR map ``{"cert": <DER>, "name": <str>}``: the
sender's node certificate and name. The shower's box (IDENTITY) may add ``"supernode": <name>``,
an invitation into that supernode (:mod:`agent.pairing.invite`), which the joiner answers in
DONE (``"supernode"``: one of :data:`~agent.pairing.invite.ANSWERS`; only when invited, so a
shower that never invites never sees the key). The whole exchange is about 1.3 KiB, a second on
a 9600-baud radio.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cbor2

from agent.errors import RemoteProtocolError
from agent.messages import MAX_NAME, PairingMessage
from agent.pairing.invite import ANSWERS, valid_name

__all__ = [
    "ABORT",
    "ABORT_CODES",
    "CONFIRM",
    "DONE",
    "IDENTITY",
    "MAC_SIZE",
    "PAKE_MESSAGE_SIZE",
    "REPLY",
    "START",
    "VERSION",
    "Abort",
    "Confirm",
    "Done",
    "Identity",
    "Reply",
    "Sealed",
    "Start",
    "WireMessage",
    "decode_sealed",
    "encode",
    "encode_sealed",
    "parse",
]

START, REPLY, CONFIRM, IDENTITY, DONE, ABORT = 0x40, 0x41, 0x42, 0x43, 0x44, 0x45
PAKE_MESSAGE_SIZE = 33
"""Bytes of a SPAKE2 message on the Ed25519 group: one side byte and one point."""
MAC_SIZE = 32
"""Bytes of a key confirmation (HMAC-SHA256)."""
VERSION = 1
"""The pairing protocol version (``v`` of START)."""
MAX_BOX = 4096
"""Largest sealed identity accepted, bytes (a node certificate is about 400)."""
MAX_TEXT = 256
"""Longest abort code or message, characters."""

ABORT_CODES = (
    "wrong_code",
    "no_code",
    "used",
    "expired",
    "burned",
    "busy",
    "rate_limited",
    "timeout",
    "protocol",
    "cancelled",
    "version",
)
"""Why an attempt was aborted; an unknown code from a newer peer is read as ``protocol``."""


@dataclasses.dataclass(frozen=True)
class Start:
    """START: the joiner's SPAKE2 message."""

    pake: bytes
    version: int = VERSION


@dataclasses.dataclass(frozen=True)
class Reply:
    """REPLY: the shower's SPAKE2 message and key confirmation."""

    pake: bytes
    mac: bytes


@dataclasses.dataclass(frozen=True)
class Confirm:
    """CONFIRM: the joiner's key confirmation and sealed identity."""

    mac: bytes
    box: bytes


@dataclasses.dataclass(frozen=True)
class Identity:
    """IDENTITY: the shower's sealed identity."""

    box: bytes


@dataclasses.dataclass(frozen=True)
class Done:
    """DONE: the joiner stored the shower's identity; ``supernode`` is its answer to an
    invitation (one of :data:`~agent.pairing.invite.ANSWERS`), None when it was not invited."""

    supernode: str | None = None


@dataclasses.dataclass(frozen=True)
class Abort:
    """ABORT: the sender gives up this attempt; ``code`` is one of :data:`ABORT_CODES`."""

    code: str
    message: str = ""


WireMessage = Start | Reply | Confirm | Identity | Done | Abort


@dataclasses.dataclass(frozen=True)
class Sealed:
    """What a box holds: a node certificate (DER), the sender's node name and, in the shower's
    box only, the supernode it invites the joiner into (None: no invitation)."""

    certificate: bytes
    name: str
    supernode: str | None = None


def encode(message: WireMessage) -> PairingMessage:
    """The :class:`PairingMessage` for ``message``."""
    if isinstance(message, Start):
        return PairingMessage(START, {"v": message.version, "pake": message.pake})
    if isinstance(message, Reply):
        return PairingMessage(REPLY, {"pake": message.pake, "mac": message.mac})
    if isinstance(message, Confirm):
        return PairingMessage(CONFIRM, {"mac": message.mac, "box": message.box})
    if isinstance(message, Identity):
        return PairingMessage(IDENTITY, {"box": message.box})
    if isinstance(message, Done):
        answer = {} if message.supernode is None else {"supernode": message.supernode}
        return PairingMessage(DONE, answer)
    return PairingMessage(ABORT, {"code": message.code, "message": message.message[:MAX_TEXT]})


def _bytes(body: dict[Any, Any], key: str, size: int | None, limit: int = MAX_BOX) -> bytes:
    value = body.get(key)
    if type(value) is not bytes:
        raise RemoteProtocolError(f"pairing message field {key!r} must be bytes")
    if (size is not None and len(value) != size) or len(value) > limit:
        want = f"{size}" if size is not None else f"at most {limit}"
        raise RemoteProtocolError(f"pairing field {key!r} has {len(value)} bytes, expected {want}")
    return value


def _text(body: dict[Any, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise RemoteProtocolError(f"pairing field {key!r} must be text of at most {MAX_TEXT}")
    return value


_KEYS = {
    START: {"v", "pake"},
    REPLY: {"pake", "mac"},
    CONFIRM: {"mac", "box"},
    IDENTITY: {"box"},
    DONE: set(),
    ABORT: {"code", "message"},
}


def parse(message: PairingMessage) -> WireMessage:
    """Check a received pairing message and return it typed.

    Raises:
        RemoteProtocolError: an unknown kind, a body that is not a map with exactly the keys of
            its kind (DONE: ``{}``, or ``{"supernode"}`` with a known answer), or a field of
            the wrong type or size. A START of another version is returned as is (the caller
            answers it with a ``version`` abort).
    """
    body = message.body
    keys = _KEYS.get(message.kind)
    if keys is None:
        raise RemoteProtocolError(f"unknown pairing message kind {message.kind:#x}")
    if message.kind == DONE and type(body) is dict and set(body) == {"supernode"}:
        return _done(body)
    if type(body) is not dict or set(body) != keys:
        raise RemoteProtocolError(
            f"pairing message {message.kind:#x} must be a map with keys {sorted(keys)}"
        )
    if message.kind == START:
        version = body["v"]
        if type(version) is not int:
            raise RemoteProtocolError("pairing START field 'v' must be an integer")
        return Start(_bytes(body, "pake", None, 64), version)
    if message.kind == REPLY:
        return Reply(_bytes(body, "pake", PAKE_MESSAGE_SIZE), _bytes(body, "mac", MAC_SIZE))
    if message.kind == CONFIRM:
        return Confirm(_bytes(body, "mac", MAC_SIZE), _bytes(body, "box", None))
    if message.kind == IDENTITY:
        return Identity(_bytes(body, "box", None))
    if message.kind == DONE:
        return Done()
    code = _text(body, "code")
    return Abort(code if code in ABORT_CODES else "protocol", _text(body, "message"))


def _done(body: dict[Any, Any]) -> Done:
    """A DONE that answers an invitation."""
    answer = _text(body, "supernode")
    if answer not in ANSWERS:
        raise RemoteProtocolError(f"pairing DONE: unknown answer {answer[:32]!r} to an invitation")
    return Done(answer)


def encode_sealed(sealed: Sealed) -> bytes:
    """CBOR of a box's contents."""
    name = sealed.name.encode()[:MAX_NAME].decode(errors="ignore")
    item: dict[str, Any] = {"cert": sealed.certificate, "name": name}
    if sealed.supernode is not None:
        item["supernode"] = sealed.supernode
    data: bytes = cbor2.dumps(item, canonical=True)
    return data


def decode_sealed(data: bytes) -> Sealed:
    """Read a box's contents (after it authenticated).

    Raises:
        RemoteProtocolError: not one CBOR map ``{"cert": bytes, "name": str}`` within limits,
            with at most the key ``"supernode"`` more, a supernode name (a DNS label).
    """
    try:
        item = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as err:
        raise RemoteProtocolError(f"sealed identity is not valid CBOR: {err}") from err
    if type(item) is not dict or set(item) - {"supernode"} != {"cert", "name"}:
        raise RemoteProtocolError(
            "sealed identity must be a map with keys cert and name (and maybe supernode)"
        )
    cert, name, supernode = item["cert"], item["name"], item.get("supernode")
    if type(cert) is not bytes or not isinstance(name, str) or len(name.encode()) > MAX_NAME:
        raise RemoteProtocolError("sealed identity: cert must be bytes and name short text")
    if supernode is not None and not (isinstance(supernode, str) and valid_name(supernode)):
        raise RemoteProtocolError("sealed identity: supernode must be a supernode name")
    return Sealed(cert, name, supernode)
