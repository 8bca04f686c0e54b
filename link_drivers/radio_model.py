"""Impairments of a radio channel, byte by byte, sans-IO and seedable.

One :class:`ChannelModel` per direction takes the bytes that finished their air time and returns
the bytes the receiver gets. It can

* drop whole frames (bytes up to a delimiter: ``0x00`` for COBS, ``0x7E`` for HDLC as Reticulum
  uses, ``0xC0`` for KISS) with a fixed probability, or in bursts with the two-state
  Gilbert-Elliott model (E. N. Gilbert, "Capacity of a burst-noise channel", Bell System Technical
  Journal 39, 1960; E. O. Elliott, BSTJ 42, 1963): a good state losing ``frame_loss`` of the
  frames and a bad state losing ``burst_loss``, entered with probability ``burst_enter`` and left
  with ``burst_exit`` per frame (mean burst length ``1 / burst_exit`` frames);
* drop single bytes (``byte_loss``) and flip single bits (``bit_error_rate``).

Lone delimiters (HDLC sends a flag before and after every frame) travel with the next frame and
share its fate, and never count as frames, so the frame loss rate means the same thing for every
framing.
"""

from __future__ import annotations

import dataclasses
import math
import random

from agent.errors import ConfigError

__all__ = ["ChannelModel", "ChannelStats", "Impairments"]


@dataclasses.dataclass(frozen=True)
class Impairments:
    """What the channel does to the bytes of one direction.

    Attributes:
        frame_loss: probability that a frame is dropped (good state), 0..1.
        byte_loss: probability that a byte is dropped, 0..1.
        bit_error_rate: probability that a bit is flipped, 0..1.
        burst_enter: Gilbert-Elliott good -> bad transition probability per frame (0: no bursts).
        burst_exit: bad -> good transition probability per frame, 0 < burst_exit <= 1.
        burst_loss: frame loss probability in the bad state.
        delimiter: the frame delimiter byte, or None to treat the stream as bytes only
            (frame loss and bursts then do nothing). Bytes are held until their frame's
            delimiter only while frame loss or bursts are configured.
        max_frame: bytes held while waiting for a delimiter before they are passed on as they
            are (bounds memory on unframed traffic).
    """

    frame_loss: float = 0.0
    byte_loss: float = 0.0
    bit_error_rate: float = 0.0
    burst_enter: float = 0.0
    burst_exit: float = 0.25
    burst_loss: float = 1.0
    delimiter: int | None = 0x00
    max_frame: int = 4096

    def __post_init__(self) -> None:
        for name in ("frame_loss", "byte_loss", "bit_error_rate", "burst_enter", "burst_loss"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise ConfigError(f"radio channel: {name} must be within 0..1, got {v}")
        if not 0.0 < self.burst_exit <= 1.0:
            raise ConfigError(
                f"radio channel: burst_exit must be within (0, 1], got {self.burst_exit}"
            )
        if self.delimiter is not None and not 0 <= self.delimiter <= 255:
            raise ConfigError(f"radio channel: delimiter must be a byte, got {self.delimiter}")


@dataclasses.dataclass
class ChannelStats:
    """Counters of one direction.

    Attributes:
        bytes_in: bytes that went on air.
        bytes_out: bytes delivered.
        frames: frames seen (non-empty, delimiter-terminated).
        frames_lost: frames dropped.
        bytes_lost: single bytes dropped.
        bits_flipped: bits inverted.
    """

    bytes_in: int = 0
    bytes_out: int = 0
    frames: int = 0
    frames_lost: int = 0
    bytes_lost: int = 0
    bits_flipped: int = 0


class ChannelModel:
    """One direction of the channel.

    Args:
        impairments: what to do to the bytes.
        rng: the random source (seed it for reproducible runs).
    """

    def __init__(self, impairments: Impairments, rng: random.Random) -> None:
        self.imp = impairments
        self.rng = rng
        self.stats = ChannelStats()
        self._frame = bytearray()
        self._flags = 0
        self._bad = False

    def process(self, data: bytes) -> bytes:
        """Pass bytes through the channel.

        Args:
            data: bytes whose air time is over, in order.

        Returns:
            The bytes the receiver gets now (a frame is released when its delimiter passes).
        """
        self.stats.bytes_in += len(data)
        imp = self.imp
        out = bytearray()
        if imp.delimiter is None or (imp.frame_loss == 0 and imp.burst_enter == 0):
            out += self._bytes(data)  # no frame-level decision: pass bytes on at once
        else:
            self._frame += data
            delim = bytes((imp.delimiter,))
            while (i := self._frame.find(delim)) >= 0:
                frame = bytes(self._frame[: i + 1])
                del self._frame[: i + 1]
                if len(frame) == 1:
                    # A lone delimiter (HDLC's opening flag) shares the fate of the next frame:
                    # a radio loses the frame with its flags, not between them.
                    self._flags += 1
                    continue
                self.stats.frames += 1
                flags, self._flags = self._flags, 0
                if self._drop_frame():
                    self.stats.frames_lost += 1
                    continue
                out += self._bytes(delim * flags + frame)
            if len(self._frame) > imp.max_frame:
                out += self._bytes(bytes(self._frame))
                self._frame.clear()
        self.stats.bytes_out += len(out)
        return bytes(out)

    def _drop_frame(self) -> bool:
        imp = self.imp
        if imp.burst_enter > 0:
            if self._bad:
                self._bad = self.rng.random() >= imp.burst_exit
            else:
                self._bad = self.rng.random() < imp.burst_enter
        p = imp.burst_loss if self._bad else imp.frame_loss
        return p > 0 and self.rng.random() < p

    def _bytes(self, data: bytes) -> bytes:
        imp = self.imp
        if not data or (imp.byte_loss == 0 and imp.bit_error_rate == 0):
            return data
        buf = bytearray(data)
        if imp.bit_error_rate > 0:
            nbits = 8 * len(buf)
            pos = self._gap(imp.bit_error_rate)
            while pos < nbits:
                buf[pos // 8] ^= 1 << (pos % 8)
                self.stats.bits_flipped += 1
                pos += 1 + self._gap(imp.bit_error_rate)
        if imp.byte_loss > 0:
            keep = bytearray()
            for b in buf:
                if self.rng.random() < imp.byte_loss:
                    self.stats.bytes_lost += 1
                else:
                    keep.append(b)
            buf = keep
        return bytes(buf)

    def _gap(self, p: float) -> int:
        """Trials before the next success of a Bernoulli(p) process (geometric variate)."""
        if p >= 1.0:
            return 0
        u = 1.0 - self.rng.random()  # in (0, 1]
        return int(math.log(u) / math.log1p(-p))
