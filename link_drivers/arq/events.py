"""Events an :class:`~link_drivers.arq.session.ArqSession` hands to its user.

The user drains them with ``next_event()`` after feeding input, as with h11 and aioquic.
"""

from __future__ import annotations

import dataclasses

__all__ = [
    "ArqEvent",
    "Connected",
    "LinkDown",
    "LinkUp",
    "MessageReceived",
    "SessionReset",
]


@dataclasses.dataclass(frozen=True, slots=True)
class Connected:
    """The handshake completed with a peer session.

    Attributes:
        peer_sid: the peer's 32-bit session id.
        window: frames in flight allowed towards the peer (negotiated).
        max_payload: largest fragment payload towards the peer, in bytes.
    """

    peer_sid: int
    window: int
    max_payload: int


@dataclasses.dataclass(frozen=True, slots=True)
class MessageReceived:
    """One whole message, in order, delivered once.

    Attributes:
        data: the message bytes.
    """

    data: bytes


@dataclasses.dataclass(frozen=True, slots=True)
class LinkDown:
    """Nothing valid was heard from the peer for ``silent_for`` seconds; data stays queued.

    Attributes:
        silent_for: seconds since the last valid frame from the peer.
    """

    silent_for: float


@dataclasses.dataclass(frozen=True, slots=True)
class LinkUp:
    """The peer was heard again after a :class:`LinkDown`, same sessions on both sides.

    Attributes:
        outage: seconds between the last frame before the outage and the first one after.
    """

    outage: float


@dataclasses.dataclass(frozen=True, slots=True)
class SessionReset:
    """The session restarted: queued and unacknowledged data was dropped.

    Raised when the peer restarted (a HELLO with a new session id), or when the peer broke the
    protocol (a message over the size limit). A new handshake follows by itself.

    Attributes:
        reason: ``"peer_restarted"`` or ``"protocol_violation"``.
        dropped_bytes: bytes of messages queued or in flight that will not be delivered.
    """

    reason: str
    dropped_bytes: int


ArqEvent = Connected | MessageReceived | LinkDown | LinkUp | SessionReset
