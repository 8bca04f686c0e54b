"""Frames on a byte stream: COBS-encoded payload plus CRC-32, delimited by ``0x00``.

Wire format of one frame::

    COBS( payload || CRC-32(payload) as 4 bytes little-endian ) || 0x00

The CRC is the IEEE 802.3 CRC-32 (``zlib.crc32``: reflected polynomial 0xEDB88320, initial value
and final XOR 0xFFFFFFFF), the same checksum as PPP's 32-bit FCS, sent least significant octet
first as PPP does (RFC 1662, section C.3 and appendix C). COBS follows Cheshire & Baker (1999).

:class:`FrameDecoder` is incremental and sans-IO: feed it bytes as they arrive, in chunks of any
size, and it returns whole payloads. Garbage, truncated frames, bad CRCs and oversize runs are
counted and skipped; the decoder resynchronises at the next ``0x00`` and its buffer never exceeds
the largest legal frame.
"""

from __future__ import annotations

import dataclasses
import zlib

from agent.errors import RemoteProtocolError
from link_drivers.framing.cobs import cobs_decode, cobs_encode, cobs_max_encoded_size

__all__ = [
    "CRC_SIZE",
    "DELIMITER",
    "DecoderStats",
    "FrameDecoder",
    "decode_frame",
    "encode_frame",
    "encoded_frame_size",
]

DELIMITER = 0x00
"""The frame delimiter byte."""
CRC_SIZE = 4
"""Bytes of CRC-32 appended to every payload."""


def encoded_frame_size(payload_len: int) -> int:
    """Return the worst-case bytes on the wire for a payload of ``payload_len`` bytes.

    Args:
        payload_len: payload length in bytes.

    Returns:
        COBS-encoded length of payload + CRC, plus the delimiter, in bytes.
    """
    return cobs_max_encoded_size(payload_len + CRC_SIZE) + 1


def encode_frame(payload: bytes) -> bytes:
    """Frame one payload for a byte stream.

    Args:
        payload: the datagram, any length (callers bound it by the link MTU).

    Returns:
        The bytes to write, ending with the ``0x00`` delimiter;
        at most ``encoded_frame_size(len(payload))`` bytes.
    """
    crc = zlib.crc32(payload).to_bytes(CRC_SIZE, "little")
    return cobs_encode(payload + crc) + b"\x00"


def decode_frame(block: bytes) -> bytes:
    """Decode one frame body (the bytes between two delimiters) and check its CRC.

    Args:
        block: COBS-encoded payload + CRC, without the delimiter.

    Returns:
        The payload (may be empty).

    Raises:
        RemoteProtocolError: bad COBS, shorter than the CRC, or CRC mismatch.
    """
    raw = cobs_decode(block)
    if len(raw) < CRC_SIZE:
        raise RemoteProtocolError(f"frame of {len(raw)} bytes is shorter than its CRC")
    payload, crc = raw[:-CRC_SIZE], raw[-CRC_SIZE:]
    if zlib.crc32(payload) != int.from_bytes(crc, "little"):
        raise RemoteProtocolError("frame CRC-32 mismatch")
    return payload


@dataclasses.dataclass
class DecoderStats:
    """Counters of a :class:`FrameDecoder` (all monotonic).

    Attributes:
        frames: payloads returned.
        crc_errors: frames dropped for a CRC mismatch.
        cobs_errors: frames dropped for invalid COBS or a length below the CRC size.
        oversize: runs longer than the largest legal frame, dropped up to the next delimiter.
        bytes_in: bytes fed.
    """

    frames: int = 0
    crc_errors: int = 0
    cobs_errors: int = 0
    oversize: int = 0
    bytes_in: int = 0

    @property
    def rejected(self) -> int:
        """Frames rejected for any reason."""
        return self.crc_errors + self.cobs_errors + self.oversize


class FrameDecoder:
    """Incremental decoder: bytes in, payloads out, garbage skipped.

    Memory is bounded: at most ``encoded_frame_size(max_payload)`` bytes are buffered; a longer run
    without a delimiter is discarded (counted in ``stats.oversize``) up to the next ``0x00``.

    Args:
        max_payload: the largest payload accepted, in bytes (the link MTU).
    """

    def __init__(self, max_payload: int) -> None:
        if max_payload < 0:
            raise ValueError("max_payload must be >= 0")
        self.max_payload = max_payload
        self._limit = encoded_frame_size(max_payload) - 1  # body bytes, delimiter excluded
        self._buf = bytearray()
        self._skipping = False
        self.stats = DecoderStats()

    def feed(self, data: bytes) -> list[bytes]:
        """Consume bytes from the line.

        Args:
            data: any bytes, any chunk size (a partial frame is kept for the next call).

        Returns:
            The payloads completed by ``data``, in order; rejected frames are counted in
            :attr:`stats`, never raised.
        """
        self.stats.bytes_in += len(data)
        out: list[bytes] = []
        parts = data.split(b"\x00")
        last = len(parts) - 1
        for i, part in enumerate(parts):
            if not self._skipping:
                if len(self._buf) + len(part) > self._limit:
                    self._buf.clear()
                    self._skipping = True
                    self.stats.oversize += 1
                else:
                    self._buf += part
            if i == last:
                break  # no delimiter after the last part: keep it buffered
            # A delimiter ends the current frame.
            if self._skipping:
                self._skipping = False
            elif self._buf:
                self._finish(bytes(self._buf), out)
            self._buf.clear()
        return out

    def _finish(self, block: bytes, out: list[bytes]) -> None:
        try:
            raw = cobs_decode(block)
        except RemoteProtocolError:
            self.stats.cobs_errors += 1
            return
        if len(raw) < CRC_SIZE:
            self.stats.cobs_errors += 1
            return
        payload = raw[:-CRC_SIZE]
        if zlib.crc32(payload) != int.from_bytes(raw[-CRC_SIZE:], "little"):
            self.stats.crc_errors += 1
            return
        if len(payload) > self.max_payload:
            self.stats.oversize += 1
            return
        self.stats.frames += 1
        out.append(payload)

    def reset(self) -> None:
        """Drop any partial frame (for example after the device was reopened)."""
        self._buf.clear()
        self._skipping = False
