"""Send and receive windows of selective-repeat ARQ: pure data structures, no timers.

:class:`SendWindow` fragments messages, tracks frames in flight with their transmission order
and applies cumulative + SACK acknowledgements; loss is detected the way RACK does it (RFC 8985,
section 6.2, with a packet-count threshold instead of a time window): a frame is lost once a frame
*transmitted after it* has been acknowledged. On a FIFO link such as a UART this is exact.

:class:`ReceiveWindow` accepts frames within the advertised window, suppresses duplicates,
buffers out-of-order frames, reassembles messages and builds the SACK bitmap.
"""

from __future__ import annotations

import collections
import dataclasses

from link_drivers.arq.packets import MAX_SACK_BITS, Ack, Data, seq_add, seq_diff

__all__ = ["ReceiveWindow", "RxVerdict", "SendWindow", "TxFrame"]


@dataclasses.dataclass(slots=True)
class TxFrame:
    """A fragment in flight.

    Attributes:
        seq: sequence number.
        payload: fragment bytes.
        end: last fragment of its message.
        sent_at: time of the latest transmission, seconds.
        order: transmission counter at the latest transmission (RACK ordering).
        retx: times retransmitted (Karn's rule: no RTT sample once > 0).
        sacked: acknowledged selectively (still in the window until the cumulative ack passes).
        lost: deemed lost and waiting for retransmission.
    """

    seq: int
    payload: bytes
    end: bool
    sent_at: float = 0.0
    order: int = 0
    retx: int = 0
    sacked: bool = False
    lost: bool = False


class SendWindow:
    """Sender half of selective repeat.

    Args:
        isn: first sequence number, 0..65535.
    """

    def __init__(self, isn: int) -> None:
        self.una = isn
        self.nxt = isn
        self.inflight: dict[int, TxFrame] = {}
        self._queue: collections.deque[bytes] = collections.deque()
        self._offset = 0
        self.queued_bytes = 0
        self._order = 0
        self.rack_order = 0

    @property
    def in_flight(self) -> int:
        """Frames between the window's edges (sent, not cumulatively acknowledged)."""
        return seq_diff(self.nxt, self.una)

    @property
    def unacked_bytes(self) -> int:
        """Payload bytes queued or in flight and not yet acknowledged."""
        return self.queued_bytes + sum(len(f.payload) for f in self.inflight.values())

    def enqueue(self, message: bytes) -> None:
        """Queue one message (fragmented when sent)."""
        self._queue.append(message)
        self.queued_bytes += len(message)

    def has_queued(self) -> bool:
        """True when a message fragment waits for its first transmission."""
        return bool(self._queue)

    def take_new(self, max_payload: int) -> TxFrame:
        """Cut the next fragment, give it the next sequence number and put it in flight.

        Args:
            max_payload: largest fragment, bytes (> 0).
        """
        msg = self._queue[0]
        chunk = msg[self._offset : self._offset + max_payload]
        self._offset += len(chunk)
        end = self._offset >= len(msg)
        if end:
            self._queue.popleft()
            self._offset = 0
        self.queued_bytes -= len(chunk)
        frame = TxFrame(self.nxt, chunk, end)
        self.inflight[self.nxt] = frame
        self.nxt = seq_add(self.nxt, 1)
        return frame

    def next_lost(self) -> TxFrame | None:
        """The lowest-numbered frame marked lost, or None."""
        best: TxFrame | None = None
        for f in self.inflight.values():
            if f.lost and (best is None or seq_diff(f.seq, best.seq) < 0):
                best = f
        return best

    def earliest_outstanding(self) -> TxFrame | None:
        """The lowest-numbered frame neither acknowledged nor SACKed, or None."""
        best: TxFrame | None = None
        for f in self.inflight.values():
            if not f.sacked and (best is None or seq_diff(f.seq, best.seq) < 0):
                best = f
        return best

    def has_outstanding(self) -> bool:
        """True while some frame in flight is not acknowledged."""
        return any(not f.sacked for f in self.inflight.values())

    def mark_sent(self, frame: TxFrame, now: float) -> None:
        """Record a (re)transmission of ``frame`` at ``now`` seconds."""
        self._order += 1
        frame.order = self._order
        frame.sent_at = now
        if frame.lost:
            frame.lost = False
            frame.retx += 1

    def on_ack(self, ack: Ack, dupthresh: int) -> list[TxFrame] | None:
        """Apply an acknowledgement.

        Args:
            ack: the ACK packet (tag already checked).
            dupthresh: transmissions after a frame that must be acknowledged to deem it lost.

        Returns:
            The frames newly acknowledged (possibly empty), or None for an ACK whose ``cum`` is
            outside ``[una, nxt]`` (stale or bogus; ignored).
        """
        if seq_diff(ack.cum, self.una) < 0 or seq_diff(ack.cum, self.nxt) > 0:
            return None
        newly: list[TxFrame] = []
        while self.una != ack.cum:
            f = self.inflight.pop(self.una)
            if not f.sacked:
                newly.append(f)
            self.una = seq_add(self.una, 1)
        sack = ack.sack
        i = 0
        while sack:
            if sack & 1:
                f_s = self.inflight.get(seq_add(ack.cum, 1 + i))
                if f_s is not None and not f_s.sacked:
                    f_s.sacked = True
                    f_s.lost = False
                    newly.append(f_s)
            sack >>= 1
            i += 1
        if newly:
            self.rack_order = max(self.rack_order, max(f.order for f in newly))
            for f in self.inflight.values():
                if not f.sacked and not f.lost and self.rack_order - f.order >= dupthresh:
                    f.lost = True
        return newly

    def mark_all_lost(self) -> None:
        """Deem every unacknowledged frame lost (after an outage)."""
        for f in self.inflight.values():
            if not f.sacked:
                f.lost = True


class RxVerdict:
    """What :meth:`ReceiveWindow.on_data` did with a frame."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    BEYOND_WINDOW = "beyond_window"
    TOO_LONG = "too_long"


class ReceiveWindow:
    """Receiver half of selective repeat.

    Args:
        isn: the peer's initial sequence number.
        max_message: largest message reassembled, bytes.
    """

    def __init__(self, isn: int, max_message: int) -> None:
        self.next = isn
        self.max_message = max_message
        self._ooo: dict[int, Data] = {}
        self._parts: list[bytes] = []
        self._partial = 0

    @property
    def buffered_bytes(self) -> int:
        """Bytes held out of order or in a partial message."""
        return self._partial + sum(len(d.payload) for d in self._ooo.values())

    def on_data(self, d: Data, rwnd: int, out: list[bytes]) -> str:
        """Accept one DATA frame.

        Args:
            d: the frame (tag already checked).
            rwnd: frames accepted from ``next`` on (the window advertised now), <= 64.
            out: whole messages completed by this frame are appended here, in order.

        Returns:
            One of the :class:`RxVerdict` values; ``TOO_LONG`` means a message exceeded
            ``max_message`` (a protocol violation; the window is left unusable and must be
            replaced).
        """
        off = seq_diff(d.seq, self.next)
        if off < 0 or d.seq in self._ooo:
            return RxVerdict.DUPLICATE
        if off >= min(rwnd, MAX_SACK_BITS + 1):
            return RxVerdict.BEYOND_WINDOW
        if off > 0:
            self._ooo[d.seq] = d
            return RxVerdict.ACCEPTED
        cur: Data | None = d
        while cur is not None:
            self._parts.append(cur.payload)
            self._partial += len(cur.payload)
            if self._partial > self.max_message:
                return RxVerdict.TOO_LONG
            if cur.end:
                out.append(b"".join(self._parts))
                self._parts.clear()
                self._partial = 0
            self.next = seq_add(self.next, 1)
            cur = self._ooo.pop(self.next, None)
        return RxVerdict.ACCEPTED

    def sack_bitmap(self) -> int:
        """Bitmap of out-of-order frames held: bit ``i`` is ``next + 1 + i``."""
        bits = 0
        for seq in self._ooo:
            bits |= 1 << (seq_diff(seq, self.next) - 1)
        return bits
