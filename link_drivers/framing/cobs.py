"""Consistent Overhead Byte Stuffing (COBS).

COBS removes every ``0x00`` byte from a block so that ``0x00`` can delimit frames on a byte stream.
The worst-case overhead is one byte per 254 bytes of input (plus one), far below byte-stuffing
schemes such as HDLC/KISS whose worst case doubles the length.

Source: S. Cheshire and M. Baker, "Consistent Overhead Byte Stuffing", IEEE/ACM Transactions on
Networking 7(2), 1999, section 3 (the encoding) and section 4 (the overhead bound).
"""

from __future__ import annotations

from agent.errors import RemoteProtocolError

__all__ = ["cobs_decode", "cobs_encode", "cobs_max_encoded_size"]

_MAX_RUN = 254  # a code byte 0xFF means "254 data bytes follow, no implicit zero"


def cobs_max_encoded_size(n: int) -> int:
    """Return the largest COBS encoding of ``n`` input bytes (Cheshire & Baker 1999, section 4).

    Args:
        n: input length in bytes (>= 0).

    Returns:
        ``n + ceil(n / 254)``, at least ``n + 1`` bytes; the frame delimiter is not counted.
    """
    return n + max(1, (n + _MAX_RUN - 1) // _MAX_RUN)


def cobs_encode(data: bytes) -> bytes:
    """Encode ``data`` with COBS; the result contains no ``0x00`` byte.

    Args:
        data: any bytes, any length.

    Returns:
        The encoded block, ``len(data) + 1 <= len <= cobs_max_encoded_size(len(data))`` bytes.
    """
    out = bytearray()
    pieces = data.split(b"\x00")
    last = len(pieces) - 1
    for i, piece in enumerate(pieces):
        # Each zero-terminated piece becomes runs of at most 254 bytes; a full run (code 0xFF)
        # carries no implicit zero, so it is followed by a further code byte, except at the very
        # end of the data (the paper's encoding, also Wikipedia's examples 7 and 8).
        full = False
        while len(piece) >= _MAX_RUN:
            out.append(0xFF)
            out += piece[:_MAX_RUN]
            piece = piece[_MAX_RUN:]
            full = True
        if i == last and full and not piece:
            break
        out.append(len(piece) + 1)
        out += piece
    return bytes(out)


def cobs_decode(block: bytes) -> bytes:
    """Decode one COBS block (without its ``0x00`` delimiter).

    Args:
        block: the encoded bytes between two delimiters.

    Returns:
        The original bytes.

    Raises:
        RemoteProtocolError: the block is empty, holds a ``0x00`` byte or a code byte points past
            its end.
    """
    if not block:
        raise RemoteProtocolError("COBS: empty block")
    out = bytearray()
    i = 0
    n = len(block)
    while i < n:
        code = block[i]
        if code == 0:
            raise RemoteProtocolError(f"COBS: zero byte at offset {i}")
        end = i + code
        if end > n:
            raise RemoteProtocolError(f"COBS: code {code} at offset {i} runs past the block end")
        run = block[i + 1 : end]
        if 0 in run:
            raise RemoteProtocolError("COBS: zero byte inside a run")
        out += run
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)
