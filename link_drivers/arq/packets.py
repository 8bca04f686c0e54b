"""ARQ packet formats: encode to bytes, decode from bytes (raising only RemoteProtocolError).

Every packet starts with one byte: packet type in the high nibble, flags in the low nibble.
Multi-byte integers are big-endian. Sequence numbers are 16-bit and compared with serial-number
arithmetic (RFC 1982, section 3.2). Protocol version 2 (the HELLO's ``version``).

======  ==============================================================================  =======
type    layout after the first byte                                                      bytes
======  ==============================================================================  =======
HELLO   version(1) my_sid(4) your_sid(4) isn(2) window(1) mtu(2)                         15
DATA    tag(1) seq(2) [ack block] payload(...)                                           4 + n
ACK     tag(1) cum(2) rwnd(1) sack_bitmap(0..8)                                          5..13
PING    tag(1)                                                                           2
======  ==============================================================================  =======

Flags: HELLO ``ESTABLISHED`` (0x1, the sender already completed the handshake); DATA ``END``
(0x1, the payload's last segment ends a message), ``PACKED`` (0x4, the payload is a run of
segments, below) and ``ACK`` (0x8, an acknowledgement rides along); ACK ``DELAYED`` (0x1, sent by
the delayed-acknowledgement timer: no RTT sample from it); DATA/ACK/PING ``MORE`` (0x2,
half-duplex: the sender keeps the channel, another frame follows at once).

``tag`` is one byte derived from both session ids (:func:`session_tag`): frames of an earlier
session (before a peer restarted) carry another tag and are dropped. ``cum`` is the next sequence
number the receiver expects; bit ``i`` of the bitmap (least significant bit of the first byte
first) says that ``cum + 1 + i`` was received (a SACK, as in RFC 2018 but as a bitmap).

Ack block (DATA with ``ACK``): ``cum(2) rwnd(1) info(1) sack_bitmap(n)``, where ``info`` holds
``n`` (0..8, the bitmap's bytes, its last byte non-zero) in its low nibble and ``DELAYED`` in bit
0x80; the other bits are zero.

Payload: without ``PACKED``, one segment: a message, or a piece of one (the first piece of a
message follows the previous message's last). With ``PACKED``, one or more segments, each
``length`` (unsigned LEB128, 1..3 bytes, as protobuf's varint) followed by that many bytes, up to
the payload's end. Every segment but the last ends a message; the last does when ``END`` is set.
The first segment continues the message the receiver holds in part, if any. A frame that carries
one piece of a long message is therefore laid out as in version 1, byte for byte.
"""

from __future__ import annotations

import dataclasses
import zlib

from agent.errors import RemoteProtocolError

__all__ = [
    "ACK_BLOCK",
    "DATA_HEADER",
    "FLAG_ACK",
    "FLAG_DELAYED",
    "FLAG_END",
    "FLAG_ESTABLISHED",
    "FLAG_MORE",
    "FLAG_PACKED",
    "MAX_SACK_BITS",
    "PROTOCOL_VERSION",
    "SEQ_MOD",
    "Ack",
    "Data",
    "Hello",
    "Packet",
    "Ping",
    "ack_block_size",
    "decode_packet",
    "encode_packet",
    "pack_segments",
    "segment_header_size",
    "seq_add",
    "seq_diff",
    "session_tag",
    "split_segments",
]

PROTOCOL_VERSION = 2
SEQ_MOD = 1 << 16
MAX_SACK_BITS = 64
DATA_HEADER = 4
ACK_HEADER = 5
ACK_BLOCK = 4  # bytes of a piggybacked ack block without its bitmap
MAX_SEGMENT = (1 << 21) - 1  # three LEB128 bytes

T_HELLO, T_DATA, T_ACK, T_PING = 1, 2, 3, 4
FLAG_ESTABLISHED = 0x1
FLAG_END = 0x1
FLAG_DELAYED = 0x1
FLAG_MORE = 0x2
FLAG_PACKED = 0x4
FLAG_ACK = 0x8
_INFO_DELAYED = 0x80


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


def segment_header_size(length: int) -> int:
    """Bytes of the LEB128 length in front of a segment of ``length`` bytes (1..3)."""
    return 1 if length < 0x80 else 2 if length < 0x4000 else 3


def _leb128(length: int) -> bytes:
    if length < 0x80:
        return bytes((length,))
    if length < 0x4000:
        return bytes((0x80 | length & 0x7F, length >> 7))
    return bytes((0x80 | length & 0x7F, 0x80 | (length >> 7) & 0x7F, length >> 14))


def pack_segments(segments: list[bytes]) -> bytes:
    """Lay out segments for a ``PACKED`` payload (each one ``LEB128 length || bytes``).

    Args:
        segments: at least one, each at most 2**21 - 1 bytes.
    """
    return b"".join(_leb128(len(s)) + s for s in segments)


def split_segments(payload: bytes) -> list[bytes]:
    """Split a ``PACKED`` payload into its segments.

    Raises:
        RemoteProtocolError: no segment, a length over three bytes, or a segment that runs past
            the end of the payload.
    """
    out: list[bytes] = []
    i, n = 0, len(payload)
    if not n:
        raise RemoteProtocolError("PACKED DATA without a segment")
    while i < n:
        b = payload[i]
        length, i = b & 0x7F, i + 1
        shift = 7
        while b & 0x80:
            if shift > 14 or i >= n:
                raise RemoteProtocolError("bad segment length in a PACKED DATA payload")
            b = payload[i]
            length, i, shift = length | (b & 0x7F) << shift, i + 1, shift + 7
        if i + length > n:
            raise RemoteProtocolError("segment runs past the end of a PACKED DATA payload")
        out.append(payload[i : i + length])
        i += length
    return out


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
class Ack:
    """Cumulative plus selective acknowledgement (a packet, or a block riding on DATA).

    Attributes:
        tag: session tag.
        cum: next sequence number expected (everything before it was received).
        rwnd: frames the receiver accepts from ``cum`` on, 0..255 (flow control).
        sack: bitmap as an int: bit ``i`` set means ``cum + 1 + i`` was received (< 2**64).
        more: half-duplex: another frame follows at once (always False in a block).
        delayed: held back by the delayed-acknowledgement timer; the sender takes no RTT sample.
    """

    tag: int
    cum: int
    rwnd: int
    sack: int = 0
    more: bool = False
    delayed: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class Data:
    """A frame of message data: one piece of a message, or (``packed``) several segments.

    Attributes:
        tag: session tag (:func:`session_tag`).
        seq: 16-bit sequence number.
        payload: the payload bytes as sent (segments with their lengths when ``packed``).
        end: the last segment ends a message.
        more: half-duplex: another frame follows at once.
        packed: the payload is a run of length-prefixed segments (:func:`split_segments`).
        ack: an acknowledgement riding along (its ``tag`` is this frame's), or None.
    """

    tag: int
    seq: int
    payload: bytes
    end: bool = True
    more: bool = False
    packed: bool = False
    ack: Ack | None = None


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


def _sack_bytes(sack: int) -> bytes:
    return sack.to_bytes((sack.bit_length() + 7) // 8, "little")


def ack_block_size(sack: int) -> int:
    """Bytes an ack block with bitmap ``sack`` adds to a DATA frame (4..12)."""
    return ACK_BLOCK + (sack.bit_length() + 7) // 8


def encode_packet(p: Packet) -> bytes:
    """Serialise a packet (see the module table for the layouts).

    Args:
        p: the packet; field ranges are the caller's duty (the session builds only valid ones).

    Returns:
        The packet bytes, ready for a datagram channel or for framing.
    """
    if isinstance(p, Data):
        flags = (
            (FLAG_END if p.end else 0)
            | (FLAG_MORE if p.more else 0)
            | (FLAG_PACKED if p.packed else 0)
        )
        head = p.seq.to_bytes(2, "big")
        a = p.ack
        if a is not None:
            sack = _sack_bytes(a.sack)
            info = len(sack) | (_INFO_DELAYED if a.delayed else 0)
            head += a.cum.to_bytes(2, "big") + bytes((a.rwnd, info)) + sack
            flags |= FLAG_ACK
        return bytes((T_DATA << 4 | flags, p.tag)) + head + p.payload
    if isinstance(p, Ack):
        flags = (FLAG_MORE if p.more else 0) | (FLAG_DELAYED if p.delayed else 0)
        body = p.cum.to_bytes(2, "big") + bytes((p.rwnd,)) + _sack_bytes(p.sack)
        return bytes((T_ACK << 4 | flags, p.tag)) + body
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


def _decode_data(data: bytes, flags: int) -> Data:
    n = len(data)
    if n < DATA_HEADER:
        raise RemoteProtocolError(f"bad DATA packet ({n} bytes, flags {flags:#x})")
    tag = data[1]
    ack = None
    start = DATA_HEADER
    if flags & FLAG_ACK:
        if n < DATA_HEADER + ACK_BLOCK:
            raise RemoteProtocolError(f"DATA too short for its ack block ({n} bytes)")
        info = data[7]
        nsack = info & 0x0F
        if info & ~(_INFO_DELAYED | 0x0F) or nsack > MAX_SACK_BITS // 8:
            raise RemoteProtocolError(f"bad ack block in DATA (info {info:#x})")
        start = DATA_HEADER + ACK_BLOCK + nsack
        if n < start or (nsack and not data[start - 1]):
            raise RemoteProtocolError("bad SACK bitmap in the ack block of a DATA packet")
        ack = Ack(
            tag=tag,
            cum=int.from_bytes(data[4:6], "big"),
            rwnd=data[6],
            sack=int.from_bytes(data[8:start], "little"),
            delayed=bool(info & _INFO_DELAYED),
        )
    payload = bytes(data[start:])
    packed = bool(flags & FLAG_PACKED)
    if packed:
        split_segments(payload)
    return Data(
        tag=tag,
        seq=int.from_bytes(data[2:4], "big"),
        payload=payload,
        end=bool(flags & FLAG_END),
        more=bool(flags & FLAG_MORE),
        packed=packed,
        ack=ack,
    )


def decode_packet(data: bytes) -> Packet:
    """Parse one packet.

    Args:
        data: the bytes of one datagram (after framing and CRC were checked).

    Returns:
        The packet.

    Raises:
        RemoteProtocolError: empty, unknown type, wrong version, wrong length, reserved flags set,
            zero session id, window out of 1..64, a SACK bitmap over 8 bytes, or a malformed
            ack block or segment run in a DATA packet.
    """
    if not data:
        raise RemoteProtocolError("empty ARQ packet")
    ptype, flags = data[0] >> 4, data[0] & 0x0F
    n = len(data)
    if ptype == T_DATA:
        return _decode_data(data, flags)
    if ptype == T_ACK:
        if not ACK_HEADER <= n <= ACK_HEADER + MAX_SACK_BITS // 8 or flags & ~(
            FLAG_MORE | FLAG_DELAYED
        ):
            raise RemoteProtocolError(f"bad ACK packet ({n} bytes, flags {flags:#x})")
        return Ack(
            tag=data[1],
            cum=int.from_bytes(data[2:4], "big"),
            rwnd=data[4],
            sack=int.from_bytes(data[5:], "little"),
            more=bool(flags & FLAG_MORE),
            delayed=bool(flags & FLAG_DELAYED),
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
