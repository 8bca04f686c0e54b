"""Raft heartbeat, election and failover timeouts derived from the links in use.

Raft is safe with any timeouts but live only when ``broadcastTime << electionTimeout << MTBF``
(Ongaro and Ousterhout, "In Search of an Understandable Consensus Algorithm", §5.6); etcd's
tuning guide puts the heartbeat near the round-trip time and the election timeout at ten
times it. Over this mesh a message also waits for ARQ retransmissions when a frame is lost
(RTO at least 0.2 s, doubling on each expiry, RFC 6298 §5.5), so the election timeout must
outlast the retransmissions a lossy link needs with high probability, or a radio link flaps.

:func:`derive` maps the worst link to one :class:`Timing`:

* ``heartbeat = max(0.1 s, 2 RTT)`` (pysyncobj ``appendEntriesPeriod``);
* ``rto = max(0.2 s, 3 RTT)``; ``n`` consecutive losses of one frame are tolerated, the
  smallest ``n`` with ``loss^n <= 1e-4`` (at most 5); they delay a message by
  ``rto (2^n - 1)``;
* ``election_min = max(0.6 s, 10 RTT, 4 heartbeat, heartbeat + RTT + rto (2^n - 1))``,
  ``election_max = 2 election_min`` (pysyncobj picks each timeout uniformly in between);
* ``failover_after = election_max + max(1 s, 2 heartbeat)``: a member silent this long is lost
  and its pods move (longer than an election, so a leader change alone never moves pods);
* ``report_interval = max(0.5 s, 2 heartbeat)``, ``tick = min(0.05 s, heartbeat / 2)``.

The loss is the link's share of retransmitted frames over its last window of frames
(:class:`LossWindow`), not since the session began. On a LAN (RTT below 1 ms, no loss) that is
heartbeat 0.1 s, elections in 0.6-1.2 s, failover after 2.2 s. :class:`TimingTracker`
applies new figures at once when they grow by a quarter and only after :data:`SHRINK_AFTER`
consistent samples when they shrink, so a short good spell on a radio does not make the
timeouts tight again.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable

__all__ = ["SHRINK_AFTER", "LossWindow", "Timing", "TimingTracker", "derive", "worst"]

HEARTBEAT_FLOOR = 0.1
ELECTION_FLOOR = 0.6
MIN_RTO = 0.2
TARGET_MISS = 1e-4
MAX_LOSSES = 5
SHRINK_AFTER = 20
"""Samples in a row that must ask for shorter timeouts before they shrink."""
WINDOW_FRAMES = 50
"""Frames a loss window spans (see :class:`LossWindow`)."""


@dataclasses.dataclass(frozen=True)
class Timing:
    """The supernode's timeouts, all in seconds.

    Attributes:
        rtt: the round-trip time they were derived from.
        loss: the loss share they were derived from (0.0 to 1.0).
        heartbeat: the leader's AppendEntries period.
        election_min: shortest election timeout.
        election_max: longest election timeout.
        failover_after: silence after which a member is lost and its pods move.
        report_interval: period of member reports (capacity, health).
        tick: period of the Raft driver's ticks.
    """

    rtt: float
    loss: float
    heartbeat: float
    election_min: float
    election_max: float
    failover_after: float
    report_interval: float
    tick: float

    def describe(self) -> str:
        """One line for ``supernode status``."""
        return (
            f"heartbeat {self.heartbeat:.2f} s, election {self.election_min:.2f}-"
            f"{self.election_max:.2f} s, failover after {self.failover_after:.2f} s "
            f"(RTT {self.rtt * 1000:.1f} ms, loss {self.loss * 100:.1f} %)"
        )


def derive(rtt: float | None, loss: float = 0.0) -> Timing:
    """Timeouts for a supernode whose worst link has this RTT and loss (see the module doc).

    Args:
        rtt: round-trip time, seconds; None (not measured yet) counts as 1 ms.
        loss: share of frames needing a retransmission, 0.0 to 1.0 (clamped).

    Returns:
        The timing.
    """
    r = 0.001 if rtt is None or not math.isfinite(rtt) or rtt < 0 else rtt
    p = min(max(loss if math.isfinite(loss) else 0.0, 0.0), 0.9)
    heartbeat = max(HEARTBEAT_FLOOR, 2 * r)
    rto = max(MIN_RTO, 3 * r)
    losses = 0 if p <= 0.0 else min(MAX_LOSSES, math.ceil(math.log(TARGET_MISS) / math.log(p)))
    tail = rto * (2**losses - 1)
    election_min = max(ELECTION_FLOOR, 10 * r, 4 * heartbeat, heartbeat + r + tail)
    election_max = 2 * election_min
    return Timing(
        rtt=r,
        loss=p,
        heartbeat=heartbeat,
        election_min=election_min,
        election_max=election_max,
        failover_after=election_max + max(1.0, 2 * heartbeat),
        report_interval=max(0.5, 2 * heartbeat),
        tick=min(0.05, heartbeat / 2),
    )


def worst(samples: Iterable[tuple[float | None, float]]) -> tuple[float | None, float]:
    """The largest RTT and the largest loss among ``(rtt, loss)`` samples of the links in use
    (``(None, 0.0)`` when there are none)."""
    rtts = [r for r, _ in samples if r is not None]
    losses = [loss for _, loss in samples]
    return (max(rtts) if rtts else None), (max(losses) if losses else 0.0)


class LossWindow:
    """Loss share of a link over recent frames, from its cumulative ARQ counters.

    The ARQ reports ``loss = retransmissions / frames sent`` since the session began, so a burst
    at start-up (handshakes, a loaded machine) would weigh on it for ever. This reports the share
    over the last window of at least :data:`WINDOW_FRAMES` frames instead (frames sent are
    ``retransmissions / loss``). Retransmissions before the first one seen here, or before the
    window the first retransmission opened, are not counted.
    """

    def __init__(self) -> None:
        self._base: tuple[int, float] | None = None
        self.loss = 0.0

    def update(self, retransmissions: int, loss: float) -> float:
        """Feed the link's cumulative counters; returns the loss share of the last window."""
        if retransmissions <= 0 or loss <= 0:
            self._base, self.loss = None, 0.0  # nothing lost yet (or a new session)
            return self.loss
        sent = retransmissions / loss
        if self._base is None or retransmissions < self._base[0]:
            self._base = (retransmissions, sent)
            return self.loss
        base_retx, base_sent = self._base
        if sent - base_sent >= WINDOW_FRAMES:
            self.loss = min(1.0, (retransmissions - base_retx) / (sent - base_sent))
            self._base = (retransmissions, sent)
        return self.loss


class TimingTracker:
    """The timing in force: grows at once, shrinks only after :data:`SHRINK_AFTER` samples.

    Args:
        initial: the timing to start with (``derive(None)`` for a LAN).
    """

    def __init__(self, initial: Timing) -> None:
        self.current = initial
        self._shrinking = 0

    def update(self, rtt: float | None, loss: float) -> bool:
        """Feed one sample of the worst link; returns True when :attr:`current` changed."""
        wanted = derive(rtt, loss)
        if wanted.election_min > self.current.election_min * 1.25:
            self.current, self._shrinking = wanted, 0
            return True
        if wanted.election_min < self.current.election_min / 1.25:
            self._shrinking += 1
            if self._shrinking >= SHRINK_AFTER:
                self.current, self._shrinking = wanted, 0
                return True
            return False
        self._shrinking = 0
        return False
