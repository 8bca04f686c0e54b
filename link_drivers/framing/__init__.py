"""Byte-stream framing: COBS (Cheshire & Baker 1999) with a CRC-32 trailer, ``0x00``-delimited."""

from link_drivers.framing.cobs import cobs_decode, cobs_encode, cobs_max_encoded_size
from link_drivers.framing.codec import (
    CRC_SIZE,
    DELIMITER,
    DecoderStats,
    FrameDecoder,
    decode_frame,
    encode_frame,
    encoded_frame_size,
)

__all__ = [
    "CRC_SIZE",
    "DELIMITER",
    "DecoderStats",
    "FrameDecoder",
    "cobs_decode",
    "cobs_encode",
    "cobs_max_encoded_size",
    "decode_frame",
    "encode_frame",
    "encoded_frame_size",
]
