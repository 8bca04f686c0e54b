"""COBS + CRC-32 framing: known vectors, incremental decoding, resynchronisation, bounds."""

from __future__ import annotations

import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.errors import RemoteProtocolError
from link_drivers.framing import (
    FrameDecoder,
    cobs_decode,
    cobs_encode,
    cobs_max_encoded_size,
    decode_frame,
    encode_frame,
    encoded_frame_size,
)

SEQ_254 = bytes(range(1, 255))

# Cheshire & Baker (1999) encoding, as listed in Wikipedia's "Consistent Overhead Byte Stuffing"
# examples 1-11 (delimiter not included here).
VECTORS = [
    (b"\x00", b"\x01\x01"),
    (b"\x00\x00", b"\x01\x01\x01"),
    (b"\x00\x11\x00", b"\x01\x02\x11\x01"),
    (b"\x11\x22\x00\x33", b"\x03\x11\x22\x02\x33"),
    (b"\x11\x22\x33\x44", b"\x05\x11\x22\x33\x44"),
    (b"\x11\x00\x00\x00", b"\x02\x11\x01\x01\x01"),
    (SEQ_254, b"\xff" + SEQ_254),
    (b"\x00" + SEQ_254, b"\x01\xff" + SEQ_254),
    (SEQ_254 + b"\xff", b"\xff" + SEQ_254 + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
]


@pytest.mark.parametrize(("raw", "encoded"), VECTORS)
def test_cobs_known_vectors(raw: bytes, encoded: bytes) -> None:
    assert cobs_encode(raw) == encoded
    assert cobs_decode(encoded) == raw


def test_cobs_empty_input_encodes_to_one_code_byte() -> None:
    assert cobs_encode(b"") == b"\x01"
    assert cobs_decode(b"\x01") == b""


@pytest.mark.parametrize(
    ("block", "why"),
    [(b"", "empty"), (b"\x03\x11\x00", "zero byte"), (b"\x05\x11", "past the block end")],
)
def test_cobs_decode_rejects(block: bytes, why: str) -> None:
    with pytest.raises(RemoteProtocolError, match=why):
        cobs_decode(block)


@given(st.binary(max_size=2000))
def test_cobs_roundtrip_and_overhead_bound(data: bytes) -> None:
    enc = cobs_encode(data)
    assert b"\x00" not in enc
    assert len(enc) <= cobs_max_encoded_size(len(data))
    assert cobs_decode(enc) == data


def test_frame_layout_is_cobs_of_payload_and_little_endian_crc() -> None:
    frame = encode_frame(b"abc")
    assert frame[-1] == 0
    raw = cobs_decode(frame[:-1])
    assert raw == b"abc" + zlib.crc32(b"abc").to_bytes(4, "little")
    assert len(frame) == encoded_frame_size(3)


def test_decode_frame_rejects_bad_crc_and_short_frames() -> None:
    frame = bytearray(encode_frame(b"hello"))
    frame[2] ^= 0x01
    with pytest.raises(RemoteProtocolError, match="CRC"):
        decode_frame(bytes(frame[:-1]))
    with pytest.raises(RemoteProtocolError, match="shorter than its CRC"):
        decode_frame(cobs_encode(b"\x01\x02"))


def test_decoder_reassembles_across_any_chunking() -> None:
    payloads = [b"", b"x", bytes(range(256)) * 2, b"\x00" * 300]
    wire = b"".join(encode_frame(p) for p in payloads)
    for step in (1, 2, 7, 254, 1000):
        dec = FrameDecoder(max_payload=1024)
        out: list[bytes] = []
        for i in range(0, len(wire), step):
            out += dec.feed(wire[i : i + step])
        assert out == payloads
        assert dec.stats.frames == 4
        assert dec.stats.rejected == 0


def test_decoder_resynchronises_after_garbage_and_counts_rejections() -> None:
    dec = FrameDecoder(max_payload=64)
    bad = bytearray(encode_frame(b"corrupted"))
    bad[3] ^= 0x40
    wire = b"\x13\x37garbage\x00" + bytes(bad) + encode_frame(b"good") + b"\x05\x01\x00"
    assert dec.feed(wire) == [b"good"]
    assert dec.stats.crc_errors == 1  # the flipped frame
    assert dec.stats.cobs_errors == 2  # 0x13 and 0x05: codes that run past the block end
    assert dec.stats.frames == 1


def test_decoder_drops_oversize_runs_with_bounded_buffer() -> None:
    dec = FrameDecoder(max_payload=16)
    limit = encoded_frame_size(16) - 1
    for _ in range(100):
        assert dec.feed(b"\x55" * 1000) == []
        assert len(dec._buf) <= limit
    assert dec.feed(b"\x00" + encode_frame(b"after")) == [b"after"]
    assert dec.stats.oversize == 1
    too_big = encode_frame(b"z" * 17)
    assert dec.feed(too_big) == []
    assert dec.stats.oversize == 2


def test_decoder_reset_drops_partial_frame() -> None:
    dec = FrameDecoder(max_payload=64)
    frame = encode_frame(b"payload")
    dec.feed(frame[:4])
    dec.reset()
    assert dec.feed(frame[4:]) == []
    assert dec.stats.frames == 0


@settings(max_examples=300)
@given(st.binary(max_size=3000), st.integers(min_value=0, max_value=300))
def test_decoder_never_raises_on_garbage(garbage: bytes, mtu: int) -> None:
    dec = FrameDecoder(max_payload=mtu)
    for payload in dec.feed(garbage):
        assert len(payload) <= mtu
    assert len(dec._buf) <= encoded_frame_size(mtu)


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_decode_frame_raises_only_remote_protocol_error(block: bytes) -> None:
    try:
        payload = decode_frame(block)
    except RemoteProtocolError:
        return
    assert encode_frame(payload)[:-1] == block


@given(st.lists(st.binary(max_size=300), max_size=8), st.binary(max_size=50), st.data())
def test_frames_survive_leading_garbage_and_random_chunks(
    payloads: list[bytes], garbage: bytes, data: st.DataObject
) -> None:
    wire = garbage + b"\x00" + b"".join(encode_frame(p) for p in payloads)
    dec = FrameDecoder(max_payload=300)
    out: list[bytes] = []
    i = 0
    while i < len(wire):
        n = data.draw(st.integers(min_value=1, max_value=64))
        out += dec.feed(wire[i : i + n])
        i += n
    # Garbage can at worst decode as extra frames ahead of ours (CRC-32 collision aside).
    assert out[len(out) - len(payloads) :] == payloads
