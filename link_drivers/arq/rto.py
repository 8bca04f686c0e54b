"""Retransmission timeout estimation per RFC 6298.

SRTT and RTTVAR are updated from round-trip samples (RFC 6298, section 2), samples of
retransmitted frames are refused (Karn's rule, section 3), the timeout doubles on every expiry
(section 5.5) and is clamped to ``[min_rto, max_rto]``.

The clamps differ from the RFC's Internet values on purpose: the RFC asks for ``min 1 s`` and
``max >= 60 s`` to protect shared Internet paths, whereas a point-to-point radio has a known air
time. The session sets ``min_rto`` to a few frame air times and ``max_rto`` to a bound suited to
the radio (see :class:`link_drivers.arq.config.ArqConfig`).
"""

from __future__ import annotations

__all__ = ["RtoEstimator"]

ALPHA = 1 / 8  # RFC 6298 (2.3)
BETA = 1 / 4
K = 4


class RtoEstimator:
    """SRTT/RTTVAR estimator with exponential backoff.

    Args:
        initial_rto: RTO before the first sample, in seconds (RFC 6298 (2.1) uses 1 s).
        min_rto: lower clamp, seconds.
        max_rto: upper clamp, seconds.
        granularity: clock granularity G in seconds (RFC 6298 (2.2)).
    """

    def __init__(
        self, initial_rto: float, min_rto: float, max_rto: float, granularity: float = 0.001
    ) -> None:
        if not 0 < min_rto <= max_rto:
            raise ValueError("need 0 < min_rto <= max_rto")
        self.min_rto = min_rto
        self.max_rto = max_rto
        self.granularity = granularity
        self.srtt: float | None = None
        self.rttvar: float = 0.0
        self.min_rtt: float | None = None
        """The smallest sample so far, seconds (RFC 8985 uses it to spot spurious
        retransmissions)."""
        self._base = self._clamp(initial_rto)
        self._backoff = 1

    def _clamp(self, value: float) -> float:
        return min(self.max_rto, max(self.min_rto, value))

    @property
    def rto(self) -> float:
        """The current timeout in seconds, backoff included."""
        return self._clamp(self._base * self._backoff)

    @property
    def backoff(self) -> int:
        """The current backoff factor (1, 2, 4, ...)."""
        return self._backoff

    def sample(self, rtt: float) -> None:
        """Feed one round-trip measurement from a frame sent only once (Karn's rule).

        RFC 6298 (2.2) for the first sample, (2.3) afterwards; a fresh sample ends the backoff.

        Args:
            rtt: seconds between sending a frame and receiving its acknowledgement (>= 0).
        """
        rtt = max(0.0, rtt)
        if self.min_rtt is None or rtt < self.min_rtt:
            self.min_rtt = rtt
        if self.srtt is None:
            self.srtt = rtt
            self.rttvar = rtt / 2
        else:
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - rtt)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * rtt
        self._base = self._clamp(self.srtt + max(self.granularity, K * self.rttvar))
        self._backoff = 1

    def on_timeout(self) -> None:
        """Double the timeout after an expiry (RFC 6298 (5.5)), up to ``max_rto``."""
        if self._base * self._backoff < self.max_rto:
            self._backoff *= 2

    def reset_backoff(self) -> None:
        """Return to the un-backed-off timeout (after the link came back up)."""
        self._backoff = 1
