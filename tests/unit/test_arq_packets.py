"""ARQ packet codec: round trips, serial-number arithmetic, and garbage handling."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import RemoteProtocolError
from link_drivers.arq.packets import (
    Ack,
    Data,
    Hello,
    Packet,
    Ping,
    decode_packet,
    encode_packet,
    pack_segments,
    segment_header_size,
    seq_add,
    seq_diff,
    session_tag,
    split_segments,
)

u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
packets = st.one_of(
    st.builds(
        Hello,
        my_sid=st.integers(1, 2**32 - 1),
        your_sid=st.integers(0, 2**32 - 1),
        isn=u16,
        window=st.integers(1, 64),
        mtu=st.integers(5, 0xFFFF),
        established=st.booleans(),
    ),
    st.builds(
        Data,
        tag=u8,
        seq=u16,
        payload=st.binary(max_size=300),
        end=st.booleans(),
        more=st.booleans(),
    ),
    st.builds(
        Ack,
        tag=u8,
        cum=u16,
        rwnd=u8,
        sack=st.integers(0, 2**64 - 1),
        more=st.booleans(),
        delayed=st.booleans(),
    ),
    st.builds(Ping, tag=u8, more=st.booleans()),
)
segments = st.lists(st.binary(max_size=200), min_size=1, max_size=8)


@st.composite
def version_2_data(draw: st.DrawFn) -> Data:
    """DATA with packed segments and/or an ack block (whose tag is the frame's)."""
    tag = draw(u8)
    packed = draw(st.booleans())
    payload = pack_segments(draw(segments)) if packed else draw(st.binary(max_size=100))
    ack = draw(
        st.none()
        | st.builds(
            Ack,
            tag=st.just(tag),
            cum=u16,
            rwnd=u8,
            sack=st.integers(0, 2**64 - 1),
            delayed=st.booleans(),
        )
    )
    return Data(tag, draw(u16), payload, draw(st.booleans()), draw(st.booleans()), packed, ack)


@given(packets | version_2_data())
def test_roundtrip(p: Packet) -> None:
    assert decode_packet(encode_packet(p)) == p


@given(segments)
def test_segments_roundtrip(parts: list[bytes]) -> None:
    packed = pack_segments(parts)
    assert split_segments(packed) == parts
    assert len(packed) == sum(segment_header_size(len(p)) + len(p) for p in parts)


def test_version_2_layouts() -> None:
    assert pack_segments([b"ab", b"", bytes(200)])[:5] == b"\x02ab\x00\xc8"
    assert pack_segments([bytes(200)])[:2] == b"\xc8\x01"  # LEB128: 200 = 0x48 | 1 << 7
    packed = Data(7, 1, pack_segments([b"a", b"bc"]), end=False, packed=True)
    assert encode_packet(packed) == b"\x24\x07\x00\x01\x01a\x02bc"
    ack = Ack(7, 0x0203, 5, sack=0b11, delayed=True)
    assert encode_packet(Data(7, 1, b"x", ack=ack)) == (
        b"\x29\x07\x00\x01" + b"\x02\x03\x05\x81\x03" + b"x"
    )
    assert encode_packet(ack) == b"\x31\x07\x02\x03\x05\x03"


def test_layout_sizes() -> None:
    assert len(encode_packet(Hello(1, 2, 3, 4, 256))) == 15
    assert encode_packet(Data(7, 0x1234, b"xy", end=True, more=True)) == b"\x23\x07\x12\x34xy"
    assert encode_packet(Ack(7, 0x0102, 9, sack=0b101)) == b"\x30\x07\x01\x02\x09\x05"
    assert encode_packet(Ping(7)) == b"\x40\x07"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\x20\x01\x00",  # DATA shorter than its header
        b"\x24\x01\x00\x00",  # DATA with a reserved flag
        b"\x30\x01\x00\x00\x01" + b"\xff" * 9,  # SACK bitmap over 64 bits
        b"\x40\x01\x00",  # PING with a body
        b"\x10\x02" + b"\x00" * 13,  # HELLO of another version
        b"\x10\x01" + b"\x00" * 13,  # HELLO with session id 0
        b"\x10\x01\x00\x00\x00\x01" + b"\x00" * 6 + b"\x41\x01\x00",  # window 65
        b"\x90\x00",  # unknown type
        b"\x24\x01\x00\x00\x05abc",  # PACKED: a segment longer than the payload
        b"\x24\x01\x00\x00\xff\xff\xff\x01",  # PACKED: a length over three bytes
        b"\x28\x01\x00\x00\x00\x00",  # ACK block cut short
        b"\x28\x01\x00\x00\x00\x00\x01\x10",  # ACK block with a reserved info bit
        b"\x28\x01\x00\x00\x00\x00\x01\x09" + b"\x01" * 9,  # SACK over 8 bytes
        b"\x28\x01\x00\x00\x00\x00\x01\x02\x01\x00",  # SACK with a zero last byte
        b"\x32\x01\x00",  # ACK shorter than its header
        b"\x34\x01\x00\x00\x01",  # ACK with a reserved flag
    ],
)
def test_rejects_malformed(raw: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        decode_packet(raw)


@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_garbage_parses_or_raises_remote_protocol_error(raw: bytes) -> None:
    try:
        p = decode_packet(raw)
    except RemoteProtocolError:
        return
    assert encode_packet(p) == raw or isinstance(p, Ack)  # an ACK may carry bitmap zero padding


@settings(max_examples=300)
@given(st.binary(max_size=60))
def test_garbage_after_a_packed_data_header(body: bytes) -> None:
    for first in (0x24, 0x25, 0x2C, 0x2D):
        try:
            p = decode_packet(bytes((first, 1, 0, 0)) + body)
        except RemoteProtocolError:
            continue
        assert isinstance(p, Data)
        assert encode_packet(p) == bytes((first, 1, 0, 0)) + body


def test_serial_number_arithmetic_wraps() -> None:
    assert seq_add(0xFFFF, 1) == 0
    assert seq_diff(2, 0xFFFE) == 4
    assert seq_diff(0xFFFE, 2) == -4
    assert seq_diff(0x8000 + 5, 5) == -0x8000


def test_session_tag_depends_on_direction() -> None:
    assert session_tag(1, 2) != session_tag(2, 1)
    assert 0 <= session_tag(0xDEADBEEF, 0xCAFEBABE) <= 255
