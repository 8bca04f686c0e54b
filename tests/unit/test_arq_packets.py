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
    seq_add,
    seq_diff,
    session_tag,
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
    st.builds(Ack, tag=u8, cum=u16, rwnd=u8, sack=st.integers(0, 2**64 - 1), more=st.booleans()),
    st.builds(Ping, tag=u8, more=st.booleans()),
)


@given(packets)
def test_roundtrip(p: Packet) -> None:
    assert decode_packet(encode_packet(p)) == p


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


def test_serial_number_arithmetic_wraps() -> None:
    assert seq_add(0xFFFF, 1) == 0
    assert seq_diff(2, 0xFFFE) == 4
    assert seq_diff(0xFFFE, 2) == -4
    assert seq_diff(0x8000 + 5, 5) == -0x8000


def test_session_tag_depends_on_direction() -> None:
    assert session_tag(1, 2) != session_tag(2, 1)
    assert 0 <= session_tag(0xDEADBEEF, 0xCAFEBABE) <= 255
