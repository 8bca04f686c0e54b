"""ARQ parameters, and the ones derived from a link's bit rate and MTU.

Window sizing: a selective-repeat sender keeps the line busy when its window covers the time from
sending a frame until its loss can be repaired: about ``k`` round trips (Bertsekas & Gallager,
*Data Networks*, 2nd ed., section 2.4.3 on go-back-n/selective-repeat window sizing). Here

``rtt_est = 2 * airtime(mtu) + airtime(ack) + 2 * turnaround + processing``

and ``window = ceil(4 * rtt_est / airtime(mtu)) + lead frames``, clamped to 4..64 frames (64 is
the SACK bitmap size). Both sides announce their receive window in HELLO; each sends with the
smaller of its own and the peer's.
"""

from __future__ import annotations

import dataclasses
import math

from agent.errors import ConfigError
from link_drivers.api import LinkInfo
from link_drivers.arq.packets import ACK_HEADER, DATA_HEADER, MAX_SACK_BITS

__all__ = ["ACK_DELAY", "ArqConfig", "ack_delay_for_link", "window_for_link"]

MIN_WINDOW = 4
ACK_DELAY = 0.005  # seconds: the delayed-acknowledgement bound on fast links
ACK_TYPICAL = ACK_HEADER + 2  # an ACK with a short SACK bitmap, in bytes


def ack_delay_for_link(byte_rate: float | None, mtu: int, frame_overhead: int = 0) -> float:
    """Return the delayed-acknowledgement time for a link, seconds.

    :data:`ACK_DELAY` (5 ms) when a full frame takes at most a quarter of it on the line
    (``airtime(mtu) <= 1.25 ms``: about 8 Mbit/s for 1200-byte frames), so that the next frame
    of a stream arrives while the acknowledgement waits and a request's answer can carry it
    (RFC 9000 13.2.1 acknowledges every second packet with a 25 ms bound; RFC 5681 4.2 says
    at most 500 ms). 0 (acknowledge every frame at once) on slower links: there the next frame
    comes too late to share an acknowledgement, and delayed ones would only hold the sender
    back and spoil its RTT samples.

    Args:
        byte_rate: line bytes per second, or None for an unpaced link.
        mtu: packet size in bytes.
        frame_overhead: line bytes framing adds per packet.
    """
    if byte_rate and (mtu + frame_overhead) / byte_rate > ACK_DELAY / 4:
        return 0.0
    return ACK_DELAY


def window_for_link(
    byte_rate: float | None,
    mtu: int,
    frame_overhead: int = 0,
    turnaround: float = 0.0,
    processing: float = 0.1,
) -> int:
    """Return a receive window, in frames, for a link (module docstring gives the formula).

    Args:
        byte_rate: line bytes per second, or None for an unpaced link (gives the maximum).
        mtu: packet size in bytes.
        frame_overhead: line bytes added per packet by framing.
        turnaround: half-duplex turnaround, seconds.
        processing: allowance for host and device latency in one round trip, seconds.

    Returns:
        Frames, 4..64.
    """
    if not byte_rate:
        return MAX_SACK_BITS
    air = (mtu + frame_overhead) / byte_rate
    ack_air = (ACK_TYPICAL + frame_overhead) / byte_rate
    rtt = 2 * air + ack_air + 2 * turnaround + processing
    return max(MIN_WINDOW, min(MAX_SACK_BITS, math.ceil(4 * rtt / air) + 2))


@dataclasses.dataclass(frozen=True)
class ArqConfig:
    """Parameters of one ARQ session. Derived values are filled in by ``__post_init__``.

    Attributes:
        mtu: largest packet sent or accepted, bytes (fragment payload is ``mtu - 4``).
        byte_rate: line bytes per second for pacing and air-time estimates; None means unpaced
            (packet links such as UDP).
        frame_overhead: line bytes the channel adds per packet (framing, CRC, delimiter).
        half_duplex: only one side may transmit at a time.
        turnaround: receive-to-transmit switch time of a half-duplex radio, seconds.
        duty_cycle: largest share of time this side transmits, 0 < duty_cycle <= 1.
        window: receive window in frames, 1..64; 0 derives it with :func:`window_for_link`.
        initial_rto: RTO before the first RTT sample, seconds; 0 derives
            ``max(1.0, 3 * (2 * airtime(mtu) + 2 * turnaround))`` (RFC 6298 (2.1) uses 1 s).
        min_rto: lower RTO clamp, seconds; 0 derives ``max(0.2, 2 * airtime(mtu) + 2 *
            turnaround + lead)``.
        max_rto: upper RTO clamp, seconds (point-to-point radio, not the Internet's 60 s).
        tx_lead: how far ahead of the line, in seconds, packets are released so the device never
            idles; 0 derives ``max(0.02, 2 * airtime(mtu))``.
        max_burst: half-duplex: longest transmission burst before handing the channel over,
            seconds; 0 derives ``max(0.25, 4 * airtime(mtu))``.
        keepalive_interval: send a PING after this many seconds without hearing the peer.
        dead_interval: report the link down after this many seconds of silence.
        max_message: largest message accepted from the user or reassembled from the peer, bytes.
        rx_buffer: delivered bytes not yet released with ``ArqSession.consumed`` at which the
            receive window closes, bytes.
        dupthresh: a frame is lost once a frame sent this many transmissions after it is acked
            (1 on a FIFO link such as a UART; raise it for links that reorder).
        processing: round-trip allowance for host and device latency, seconds (window sizing).
        ack_every: acknowledge at once when this many DATA frames arrived since the last
            acknowledgement, 1..64 (1: every frame).
        ack_delay: otherwise hold the acknowledgement at most this long, seconds, waiting for
            another frame or for reverse data to ride on (0: at once); must stay under
            ``min_rto / 2``. :meth:`for_link` sets both from :func:`ack_delay_for_link`.
    """

    mtu: int = 256
    byte_rate: float | None = None
    frame_overhead: int = 0
    half_duplex: bool = False
    turnaround: float = 0.0
    duty_cycle: float = 1.0
    window: int = 0
    initial_rto: float = 0.0
    min_rto: float = 0.0
    max_rto: float = 10.0
    tx_lead: float = 0.0
    max_burst: float = 0.0
    keepalive_interval: float = 5.0
    dead_interval: float = 15.0
    max_message: int = 65536
    rx_buffer: int = 65536
    dupthresh: int = 1
    processing: float = 0.1
    ack_every: int = 1
    ack_delay: float = 0.0

    def __post_init__(self) -> None:
        if self.mtu <= DATA_HEADER or self.mtu > 0xFFFF:
            raise ConfigError(f"ARQ mtu must be in {DATA_HEADER + 1}..65535 bytes, got {self.mtu}")
        if not 0 < self.duty_cycle <= 1:
            raise ConfigError(f"duty_cycle must be in (0, 1], got {self.duty_cycle}")
        if not 0 <= self.window <= MAX_SACK_BITS:
            raise ConfigError(f"window must be 0..{MAX_SACK_BITS} frames, got {self.window}")
        if self.byte_rate is not None and self.byte_rate <= 0:
            raise ConfigError("byte_rate must be > 0 bytes/s or None")
        if self.dead_interval <= self.keepalive_interval or self.keepalive_interval <= 0:
            raise ConfigError("need 0 < keepalive_interval < dead_interval")
        air = self.airtime(self.mtu)
        set_ = object.__setattr__
        if not self.window:
            set_(
                self,
                "window",
                window_for_link(
                    self.byte_rate, self.mtu, self.frame_overhead, self.turnaround, self.processing
                ),
            )
        if not self.tx_lead:
            set_(self, "tx_lead", max(0.02, 2 * air))
        if not self.initial_rto:
            set_(self, "initial_rto", max(1.0, 3 * (2 * air + 2 * self.turnaround)))
        if not self.min_rto:
            set_(self, "min_rto", max(0.2, 2 * air + 2 * self.turnaround + self.tx_lead))
        if not self.max_burst:
            set_(self, "max_burst", max(0.25, 4 * air))
        if self.min_rto > self.max_rto:
            set_(self, "max_rto", self.min_rto)
        if not 1 <= self.ack_every <= MAX_SACK_BITS:
            raise ConfigError(f"ack_every must be 1..{MAX_SACK_BITS} frames, got {self.ack_every}")
        if not 0 <= self.ack_delay < self.min_rto / 2:
            raise ConfigError(
                f"ack_delay must be in [0, min_rto / 2 = {self.min_rto / 2:g}) s, "
                f"got {self.ack_delay}"
            )

    @classmethod
    def for_link(cls, info: LinkInfo, **overrides: float | int | bool | None) -> ArqConfig:
        """Build a config from a driver's :class:`LinkInfo`.

        Args:
            info: the link (mtu, bitrate in bit/s, half_duplex, turnaround, duty_cycle,
                frame_overhead).
            **overrides: any :class:`ArqConfig` field.

        Returns:
            The config; ``byte_rate = info.bitrate / 8``, ``ack_every = 2`` and ``ack_delay``
            from :func:`ack_delay_for_link`.

        Raises:
            ConfigError: a value is out of range.
        """
        base: dict[str, float | int | bool | None] = {
            "mtu": min(info.mtu, 0xFFFF),
            "byte_rate": info.bitrate / 8,
            "frame_overhead": info.frame_overhead,
            "half_duplex": info.half_duplex,
            "turnaround": info.turnaround,
            "duty_cycle": info.duty_cycle,
            "ack_every": 2,
            "ack_delay": ack_delay_for_link(info.bitrate / 8, info.mtu, info.frame_overhead),
        }
        base.update(overrides)
        return cls(**base)  # type: ignore[arg-type]

    def airtime(self, nbytes: int) -> float:
        """Seconds a packet of ``nbytes`` occupies the line (0 when unpaced)."""
        if self.byte_rate is None:
            return 0.0
        return (nbytes + self.frame_overhead) / self.byte_rate
