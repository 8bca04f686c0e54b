"""ARQ packet formats: encode to bytes, decode from bytes (raising only RemoteProtocolError).

Every packet starts with one byte: packet type in the high nibble, flags in the low nibble.
Multi-byte integers are big-endian. Sequence numbers are 16-bit and compared with serial-number
arithmetic (RFC 1982, section 3.2).

======  ==============================================================================  =======
type    layout after the first byte                                                      bytes
======  ==============================================================================  =======
HELLO   version(1) my_sid(4) your_sid(4) isn(2) window(1) mtu(2)                         15
DATA    tag(1) seq(2) payload(...)                                                       4 + n
ACK     tag(1) cum(2) rwnd(1) sack_bitmap(0..8)                                          5..13
PING    tag(1)                                                                           2
======  ==============================================================================  =======

Flags: HELLO ``ESTABLISHED`` (0x1, the sender already completed the handshake); DATA ``END``
(0x1, last fragment of a message); DATA/ACK/PING ``MORE`` (0x2, half-duplex: the sender keeps the
channel, another frame follows at once).

``tag`` is one byte derived from both session ids (:func:`session_tag`): frames of an earlier
session (before a peer restarted) carry another tag and are dropped. ``cum`` is the next sequence
number the receiver expects; bit ``i`` of the bitmap (least significant bit of the first byte
first) says that ``cum + 1 + i`` was received (a SACK, as in RFC 2018 but as a bitmap).
"""

from __future__ import annotations

import dataclasses
import zlib

from agent.errors import RemoteProtocolError

__all__ = [
    "FLAG_END",
    "FLAG_ESTABLISHED",
    "FLAG_MORE",
    "MAX_SACK_BITS",
    "PROTOCOL_VERSION",
    "SEQ_MOD",
    "Ack",
    "Data",
    "Hello",
    "Packet",
    "Ping",
    "decode_packet",
    "encode_packet",
    "seq_add",
    "seq_diff",
    "session_tag",
]

PROTOCOL_VERSION = 1
SEQ_MOD = 1 << 16
MAX_SACK_BITS = 64
DATA_HEADER = 4
ACK_HEADER = 5

T_HELLO, T_DATA, T_ACK, T_PING = 1, 2, 3, 4
FLAG_ESTABLISHED = 0x1
FLAG_END = 0x1
FLAG_MORE = 0x2


def seq_add(seq: int, n: int) -> int:
    """Return ``seq + n`` modulo 2**16."""
    return (seq + n) % SEQ_MOD


def seq_diff(a: int, b: int) -> int:
    """Return the signed distance ``a - b`` in 16-bit serial arithmetic (RFC 1982), in
    ``[-32768, 32767]``."""
    d = (a - b) % SEQ_MOD
    return d - SEQ_MOD if d >= SEQ_MOD // 2 else d


def session_tag(sender_sid: int, receiver_sid: int) -> int:
    """Return the one-byte tag of frames sent from ``sender_sid`` to ``receiver_sid``.

    Args:
        sender_sid: 32-bit session id of the sending side.
        receiver_sid: 32-bit session id of the receiving side.

    Returns:
        The low byte of CRC-32 over both ids, 0..255.
    """
    return zlib.crc32(sender_sid.to_bytes(4, "big") + receiver_sid.to_bytes(4, "big")) & 0xFF


@dataclasses.dataclass(frozen=True, slots=True)
class Hello:
    """Handshake packet: announces this side's session and negotiates window and MTU.

    Attributes:
        my_sid: the sender's 32-bit session id (non-zero, new at every start or reset).
        your_sid: the peer session id the sender knows, 0 when none.
        isn: the sender's initial sequence number, 0..65535.
        window: frames the sender can buffer out of order (receive window), 1..64.
        mtu: the largest packet the sender accepts, in bytes.
        established: the sender already completed the handshake with ``your_sid``.
    """

    my_sid: int
    your_sid: int
    isn: int
    window: int
    mtu: int
    established: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Data:
    """One fragment of a message.

    Attributes:
        tag: session tag (:func:`session_tag`).
        seq: 16-bit sequence number.
        payload: fragment bytes.
        end: last fragment of its message.
        more: half-duplex: another frame follows at once.
    """

    tag: int
    seq: int
    payload: bytes
    end: bool = True
    more: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    """Cumulative plus selective acknowledgement.

    Attributes:
        tag: session tag.
        cum: next sequence number expected (everything before it was received).
        rwnd: frames the receiver accepts from ``cum`` on, 0..255 (flow control).
        sack: bitmap as an int: bit ``i`` set means ``cum + 1 + i`` was received (< 2**64).
        more: half-duplex: another frame follows at once.
    """

    tag: int
    cum: int
    rwnd: int
    sack: int = 0
    more: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    """Keepalive probe; the peer answers with an :class:`Ack`.

    Attributes:
        tag: session tag.
        more: half-duplex: another frame follows at once.
    """

    tag: int
    more: bool = False


Packet = Hello | Data | Ack | Ping


def encode_packet(p: Packet) -> bytes:
    """Serialise a packet (see the module table for the layouts).

    Args:
        p: the packet; field ranges are the caller's duty (the session builds only valid ones).

    Returns:
        The packet bytes, ready for a datagram channel or for framing.
    """
    if isinstance(p, Data):
        flags = (FLAG_END if p.end else 0) | (FLAG_MORE if p.more else 0)
        return bytes((T_DATA << 4 | flags, p.tag)) + p.seq.to_bytes(2, "big") + p.payload
    if isinstance(p, Ack):
        nbytes = (p.sack.bit_length() + 7) // 8
        head = bytes((T_ACK << 4 | (FLAG_MORE if p.more else 0), p.tag))
        body = p.cum.to_bytes(2, "big") + bytes((p.rwnd,)) + p.sack.to_bytes(nbytes, "little")
        return head + body
    if isinstance(p, Ping):
        return bytes((T_PING << 4 | (FLAG_MORE if p.more else 0), p.tag))
    return (
        bytes((T_HELLO << 4 | (FLAG_ESTABLISHED if p.established else 0), PROTOCOL_VERSION))
        + p.my_sid.to_bytes(4, "big")
        + p.your_sid.to_bytes(4, "big")
        + p.isn.to_bytes(2, "big")
        + bytes((p.window,))
        + p.mtu.to_bytes(2, "big")
    )


def decode_packet(data: bytes) -> Packet:
    """Parse one packet.

    Args:
        data: the bytes of one datagram (after framing and CRC were checked).

    Returns:
        The packet.

    Raises:
        RemoteProtocolError: empty, unknown type, wrong version, wrong length, reserved flags set,
            zero session id, window out of 1..64 or a SACK bitmap over 8 bytes.
    """
    if not data:
        raise RemoteProtocolError("empty ARQ packet")
    ptype, flags = data[0] >> 4, data[0] & 0x0F
    n = len(data)
    if ptype == T_DATA:
        if n < DATA_HEADER or flags & ~(FLAG_END | FLAG_MORE):
            raise RemoteProtocolError(f"bad DATA packet ({n} bytes, flags {flags:#x})")
        return Data(
            tag=data[1],
            seq=int.from_bytes(data[2:4], "big"),
            payload=bytes(data[4:]),
            end=bool(flags & FLAG_END),
            more=bool(flags & FLAG_MORE),
        )
    if ptype == T_ACK:
        if not ACK_HEADER <= n <= ACK_HEADER + MAX_SACK_BITS // 8 or flags & ~FLAG_MORE:
            raise RemoteProtocolError(f"bad ACK packet ({n} bytes, flags {flags:#x})")
        return Ack(
            tag=data[1],
            cum=int.from_bytes(data[2:4], "big"),
            rwnd=data[4],
            sack=int.from_bytes(data[5:], "little"),
            more=bool(flags & FLAG_MORE),
        )
    if ptype == T_PING:
        if n != 2 or flags & ~FLAG_MORE:
            raise RemoteProtocolError(f"bad PING packet ({n} bytes, flags {flags:#x})")
        return Ping(tag=data[1], more=bool(flags & FLAG_MORE))
    if ptype == T_HELLO:
        if n != 15 or flags & ~FLAG_ESTABLISHED:
            raise RemoteProtocolError(f"bad HELLO packet ({n} bytes, flags {flags:#x})")
        if data[1] != PROTOCOL_VERSION:
            raise RemoteProtocolError(f"unsupported ARQ protocol version {data[1]}")
        hello = Hello(
            my_sid=int.from_bytes(data[2:6], "big"),
            your_sid=int.from_bytes(data[6:10], "big"),
            isn=int.from_bytes(data[10:12], "big"),
            window=data[12],
            mtu=int.from_bytes(data[13:15], "big"),
            established=bool(flags & FLAG_ESTABLISHED),
        )
        if hello.my_sid == 0 or not 1 <= hello.window <= MAX_SACK_BITS or hello.mtu <= DATA_HEADER:
            raise RemoteProtocolError(f"HELLO out of range: {hello}")
        return hello
    raise RemoteProtocolError(f"unknown ARQ packet type {ptype}")
