"""Send and receive windows of selective-repeat ARQ: pure data structures, no timers.

:class:`SendWindow` cuts queued messages into frames (pieces of a long message, or several short
messages packed into one frame: see :mod:`~link_drivers.arq.packets`), tracks frames in flight
with their transmission order and applies cumulative + SACK acknowledgements; loss is detected
the way RACK does it (RFC 8985, section 6.2, with a packet-count threshold instead of a time
window): a frame is lost once a frame *transmitted after it* has been acknowledged. On a FIFO
link such as a UART this is exact.

:class:`ReceiveWindow` accepts frames within the advertised window, suppresses duplicates,
buffers out-of-order frames, reassembles messages and builds the SACK bitmap.
"""

from __future__ import annotations

import collections
import dataclasses

from link_drivers.arq.packets import (
    MAX_SACK_BITS,
    Ack,
    Data,
    pack_segments,
    segment_header_size,
    seq_add,
    seq_diff,
    split_segments,
)

__all__ = ["ReceiveWindow", "RxVerdict", "SendWindow", "TxFrame"]


@dataclasses.dataclass(slots=True)
class TxFrame:
    """A frame in flight.

    Attributes:
        seq: sequence number.
        payload: payload bytes (segments with their lengths when ``packed``).
        end: the payload's last segment ends a message.
        packed: the payload is a run of segments with LEB128 lengths.
        data: bytes of messages carried, without the segment lengths (for goodput).
        sent_at: time of the latest transmission, seconds.
        order: transmission counter at the latest transmission (RACK ordering).
        retx: times retransmitted (Karn's rule: no RTT sample once > 0).
        sacked: acknowledged selectively (still in the window until the cumulative ack passes).
        lost: deemed lost and waiting for retransmission.
    """

    seq: int
    payload: bytes
    end: bool
    packed: bool = False
    data: int = 0
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
        self.inflight: dict[int, TxFrame] = {}  # in sequence order (insertion order)
        self._queue: collections.deque[bytes] = collections.deque()
        self._offset = 0
        self.queued_bytes = 0
        self.inflight_bytes = 0
        self._lost = 0  # frames in flight marked lost
        self._sacked = 0  # frames in flight SACKed
        self._order = 0
        self.rack_order = 0
        self.acked_data = 0
        """Message bytes of the frames cumulatively acknowledged so far (no segment lengths,
        each frame once however often it was sent): RFC 4898's ``HCThruOctetsAcked``."""

    @property
    def in_flight(self) -> int:
        """Frames between the window's edges (sent, not cumulatively acknowledged)."""
        return seq_diff(self.nxt, self.una)

    @property
    def unacked_bytes(self) -> int:
        """Payload bytes queued or in flight and not yet acknowledged."""
        return self.queued_bytes + self.inflight_bytes

    def enqueue(self, message: bytes) -> None:
        """Queue one message (fragmented when sent)."""
        self._queue.append(message)
        self.queued_bytes += len(message)

    def has_queued(self) -> bool:
        """True when a message fragment waits for its first transmission."""
        return bool(self._queue)

    def take_new(self, max_payload: int) -> TxFrame:
        """Cut the next frame, give it the next sequence number and put it in flight.

        A frame carries the next piece of the first queued message when that fills it or no
        other message waits (the version 1 layout); otherwise it packs what is left of that
        message and as many of the following ones as fit, the last possibly in part.

        Args:
            max_payload: largest payload, bytes (> 0).
        """
        queue = self._queue
        msg, off = queue[0], self._offset
        rest = len(msg) - off
        room = max_payload - segment_header_size(rest) - rest
        if rest >= max_payload or len(queue) == 1 or room < 2:
            chunk = msg[off : off + max_payload] if off or rest > max_payload else msg
            self._offset += len(chunk)
            end = self._offset >= len(msg)
            if end:
                queue.popleft()
                self._offset = 0
            self.queued_bytes -= len(chunk)
            return self._put(chunk, end, len(chunk), packed=False)
        segments = [msg[off:] if off else msg]
        queue.popleft()
        taken, end = rest, True
        self._offset = 0
        while queue and room >= 2:
            msg = queue[0]
            size = len(msg)
            need = segment_header_size(size) + size
            if need <= room:
                segments.append(msg)
                queue.popleft()
                room -= need
                taken += size
                continue
            part = room - segment_header_size(room)
            segments.append(msg[:part])
            self._offset, taken, end = part, taken + part, False
            break
        self.queued_bytes -= taken
        return self._put(pack_segments(segments), end, taken, packed=True)

    def _put(self, payload: bytes, end: bool, data: int, *, packed: bool) -> TxFrame:
        frame = TxFrame(self.nxt, payload, end, packed, data)
        self.inflight[self.nxt] = frame
        self.inflight_bytes += len(payload)
        self.nxt = seq_add(self.nxt, 1)
        return frame

    def next_lost(self) -> TxFrame | None:
        """The lowest-numbered frame marked lost, or None."""
        if self._lost:
            for f in self.inflight.values():
                if f.lost:
                    return f
        return None

    def earliest_outstanding(self) -> TxFrame | None:
        """The lowest-numbered frame neither acknowledged nor SACKed, or None."""
        for f in self.inflight.values():
            if not f.sacked:
                return f
        return None

    def has_outstanding(self) -> bool:
        """True while some frame in flight is not acknowledged."""
        return len(self.inflight) > self._sacked

    def mark_lost(self, frame: TxFrame) -> None:
        """Deem ``frame`` (in flight, not SACKed) lost: it is sent again next."""
        if not frame.lost:
            frame.lost = True
            self._lost += 1

    def mark_sent(self, frame: TxFrame, now: float) -> None:
        """Record a (re)transmission of ``frame`` at ``now`` seconds."""
        self._order += 1
        frame.order = self._order
        frame.sent_at = now
        if frame.lost:
            frame.lost = False
            self._lost -= 1
            frame.retx += 1

    def on_ack(
        self, ack: Ack, dupthresh: int, now: float = 0.0, min_rtt: float | None = None
    ) -> list[TxFrame] | None:
        """Apply an acknowledgement.

        A retransmitted frame acknowledged sooner than ``min_rtt`` after its retransmission was
        acknowledged for its first copy: it does not advance the RACK order (RFC 8985 section
        6.2, step 2), so a spurious timeout does not make every frame in flight look lost.

        Args:
            ack: the ACK packet or ack block (tag already checked).
            dupthresh: transmissions after a frame that must be acknowledged to deem it lost.
            now: arrival time of the acknowledgement, seconds.
            min_rtt: the smallest RTT sample so far, seconds, or None.

        Returns:
            The frames newly acknowledged (possibly empty), or None for an ACK whose ``cum`` is
            outside ``[una, nxt]`` (stale or bogus; ignored).
        """
        if seq_diff(ack.cum, self.una) < 0 or seq_diff(ack.cum, self.nxt) > 0:
            return None
        newly: list[TxFrame] = []
        inflight = self.inflight
        while self.una != ack.cum:
            f = inflight.pop(self.una)
            self.inflight_bytes -= len(f.payload)
            self.acked_data += f.data
            if f.sacked:
                self._sacked -= 1
            else:
                newly.append(f)
                if f.lost:
                    f.lost = False
                    self._lost -= 1
            self.una = seq_add(self.una, 1)
        sack = ack.sack
        i = 0
        while sack:
            if sack & 1:
                f_s = inflight.get(seq_add(ack.cum, 1 + i))
                if f_s is not None and not f_s.sacked:
                    f_s.sacked = True
                    self._sacked += 1
                    if f_s.lost:
                        f_s.lost = False
                        self._lost -= 1
                    newly.append(f_s)
            sack >>= 1
            i += 1
        orders = [
            f.order for f in newly if not f.retx or min_rtt is None or now - f.sent_at >= min_rtt
        ]
        if orders:
            self.rack_order = max(self.rack_order, max(orders))
            if len(inflight) > self._sacked + self._lost:
                limit = self.rack_order - dupthresh
                for f in inflight.values():
                    if not f.sacked and not f.lost and f.order <= limit:
                        f.lost = True
                        self._lost += 1
        return newly

    def mark_all_lost(self) -> None:
        """Deem every unacknowledged frame lost (after an outage)."""
        for f in self.inflight.values():
            if not f.sacked:
                self.mark_lost(f)


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

    def has_gap(self) -> bool:
        """True while frames beyond a missing one are held."""
        return bool(self._ooo)

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
            if cur.packed:
                segments = split_segments(cur.payload)
                last = len(segments) - 1
                for i, seg in enumerate(segments):
                    if not self._append(seg, i < last or cur.end, out):
                        return RxVerdict.TOO_LONG
            elif not self._append(cur.payload, cur.end, out):
                return RxVerdict.TOO_LONG
            self.next = seq_add(self.next, 1)
            cur = self._ooo.pop(self.next, None)
        return RxVerdict.ACCEPTED

    def _append(self, piece: bytes, end: bool, out: list[bytes]) -> bool:
        """Add one segment to the message being reassembled; False when it grew too long."""
        self._partial += len(piece)
        if self._partial > self.max_message:
            return False
        if end:
            if self._parts:
                self._parts.append(piece)
                out.append(b"".join(self._parts))
                self._parts.clear()
            else:
                out.append(piece)
            self._partial = 0
        else:
            self._parts.append(piece)
        return True

    def sack_bitmap(self) -> int:
        """Bitmap of out-of-order frames held: bit ``i`` is ``next + 1 + i``."""
        bits = 0
        for seq in self._ooo:
            bits |= 1 << (seq_diff(seq, self.next) - 1)
        return bits
