"""Decoder of the multiplexed stdout/stderr stream of the libpod (and Docker) API, without I/O.

Attach, logs and exec-start answers of a container without a TTY carry frames
(Docker Engine API, "Attach to a container", section "Stream format"; libpod's
``pkg/api/handlers/compat`` writes the same)::

    [stream: 1 byte][0, 0, 0][size: uint32 big-endian][payload: size bytes]

with stream 0 = stdin, 1 = stdout, 2 = stderr and 3 = an error message of the server.
Bytes go in with :meth:`FrameDecoder.feed`; complete frames come out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from agent.errors import RemoteProtocolError

HEADER = struct.Struct(">BxxxI")
STREAM_NAMES = {0: "stdin", 1: "stdout", 2: "stderr", 3: "error"}
#: Largest payload accepted (bytes); a bigger size means the stream is not framed at all.
MAX_FRAME = 16 * 1024 * 1024


@dataclass(frozen=True)
class Frame:
    """One frame of a multiplexed stream.

    Attributes:
        stream: ``"stdin"``, ``"stdout"``, ``"stderr"`` or ``"error"``.
        payload: its bytes.
    """

    stream: str
    payload: bytes


class FrameDecoder:
    """Splits a multiplexed stream into frames; bytes may arrive in any pieces."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[Frame]:
        """Add received bytes and return the frames they complete, in order.

        Raises:
            RemoteProtocolError: a header with an unknown stream, non-zero padding or a size
                above :data:`MAX_FRAME` (the decoder is then unusable).
        """
        self._buffer += data
        frames: list[Frame] = []
        while len(self._buffer) >= HEADER.size:
            header = bytes(self._buffer[: HEADER.size])
            if header[1:4] != b"\0\0\0":
                raise RemoteProtocolError(f"not a stream frame header: {header!r}")
            stream, size = HEADER.unpack(header)
            if stream not in STREAM_NAMES or size > MAX_FRAME:
                raise RemoteProtocolError(f"bad stream frame header: {header!r}")
            end = HEADER.size + size
            if len(self._buffer) < end:
                break
            frames.append(Frame(STREAM_NAMES[stream], bytes(self._buffer[HEADER.size : end])))
            del self._buffer[:end]
        return frames

    def close(self) -> None:
        """Check that the stream ended on a frame boundary.

        Raises:
            RemoteProtocolError: a frame was cut off.
        """
        if self._buffer:
            raise RemoteProtocolError(f"stream ended inside a frame ({len(self._buffer)} bytes)")
