"""Discrete-event simulation of two ARQ sessions on a serial line, with a fake clock.

The wire is controlled by the caller: every transmission is recorded in :attr:`LinkSim.log` and
passed to :attr:`LinkSim.fate`, which returns what the receiver gets (nothing, the frame, a
corrupted copy, a duplicate, a late copy). Each direction is a FIFO line of ``byte_rate`` bytes per
second (None: instantaneous) followed by ``latency`` seconds. With ``half_duplex=True`` two frames
on the air at the same time collide and both are lost, which is what a half-duplex radio does.

Nothing here sleeps or reads a clock: time jumps from event to event, so a transfer of minutes of
air time runs in milliseconds and every retransmission time is exact. Tests and the benchmark's
model figures use it; it is also the reference for what the asyncio adapter must do (feed input,
call ``frames_to_send``, arm one timer at ``get_timer``).
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable

from link_drivers.arq.events import ArqEvent, MessageReceived
from link_drivers.arq.packets import Packet, decode_packet
from link_drivers.arq.session import ArqSession
from link_drivers.framing import encode_frame

__all__ = ["Delivery", "Fate", "LinkSim", "TxRecord", "deliver"]

Side = str  # "a" or "b"


@dataclasses.dataclass
class TxRecord:
    """One packet put on the wire.

    Attributes:
        time: when its first byte went on the line, seconds.
        end: when its last byte left, seconds.
        src: ``"a"`` or ``"b"``.
        raw: the packet bytes (unframed).
        packet: the decoded packet.
        collided: half-duplex: it overlapped a frame from the other side and was lost.
    """

    time: float
    end: float
    src: Side
    raw: bytes
    packet: Packet
    collided: bool = False


@dataclasses.dataclass(frozen=True)
class Delivery:
    """What the receiver gets for one transmission: ``data`` after ``delay`` extra seconds.

    Attributes:
        data: the bytes delivered (framed bytes when the simulation is framed).
        delay: extra seconds after the normal arrival time (reordering).
    """

    data: bytes
    delay: float = 0.0


Fate = Callable[[TxRecord, bytes], list[Delivery]]


def deliver(_rec: TxRecord, wire: bytes) -> list[Delivery]:
    """The default fate: deliver every frame intact."""
    return [Delivery(wire)]


class LinkSim:
    """Two sessions ``a`` and ``b`` joined by a simulated line.

    Attributes:
        log: every transmission (:class:`TxRecord`), in order.
        events: events per side not yet taken with :meth:`drain`.
        timeline: ``(time, side, event)`` for every event, for assertions on when things happen.

    Args:
        a: first session.
        b: second session.
        byte_rate: line bytes per second in each direction, or None for instantaneous lines.
        latency: one-way delay after the last byte, seconds.
        start: the clock's initial value, seconds.
        framed: carry COBS/CRC-32 framed bytes (``receive_bytes``) instead of datagrams.
        half_duplex: frames of both sides overlapping in time destroy each other.
    """

    def __init__(
        self,
        a: ArqSession,
        b: ArqSession,
        *,
        byte_rate: float | None = None,
        latency: float = 0.0,
        start: float = 0.0,
        framed: bool = True,
        half_duplex: bool = False,
    ) -> None:
        self.sessions: dict[Side, ArqSession] = {"a": a, "b": b}
        self.byte_rate = byte_rate
        self.latency = latency
        self.framed = framed
        self.half_duplex = half_duplex
        self.now = start
        self.fate: Fate = deliver
        self.log: list[TxRecord] = []
        self.events: dict[Side, list[ArqEvent]] = {"a": [], "b": []}
        self.timeline: list[tuple[float, Side, ArqEvent]] = []
        self.auto_drain: dict[Side, bool] = {"a": True, "b": True}
        self.steps = 0
        self._heap: list[tuple[float, int, str, Side, object]] = []
        self._n = 0
        self._line_busy: dict[Side, float] = {"a": start, "b": start}
        self._timer_at: dict[Side, float | None] = {"a": None, "b": None}
        for side in ("a", "b"):
            self._pump(side)

    # ----------------------------------------------------------------- control

    def send(self, side: Side, data: bytes) -> None:
        """Queue a message at ``side`` now and let it transmit."""
        self.sessions[side].send(data)
        self._pump(side)

    def drain(self, side: Side) -> list[ArqEvent]:
        """Take ``side``'s pending events; releases (``consumed``) the messages not yet released."""
        s = self.sessions[side]
        fresh: list[ArqEvent] = []
        while (ev := s.next_event()) is not None:
            fresh.append(ev)
            self.timeline.append((self.now, side, ev))
        s.consumed(sum(len(ev.data) for ev in fresh if isinstance(ev, MessageReceived)))
        out, self.events[side] = self.events[side] + fresh, []
        self._pump(side)
        return out

    def replace(self, side: Side, session: ArqSession) -> None:
        """Swap ``side``'s session for a fresh one (a restart of that node)."""
        self.sessions[side] = session
        self._timer_at[side] = None
        self._pump(side)

    def run(
        self,
        until: float | None = None,
        stop: Callable[[], bool] | None = None,
        max_steps: int = 1_000_000,
    ) -> None:
        """Process events in time order.

        Args:
            until: stop before the first event later than this time (the clock is set to it).
            stop: stop as soon as this returns True (checked after every event).
            max_steps: guard against a session that never goes quiet.

        Raises:
            RuntimeError: ``max_steps`` events were processed without stopping.
        """
        for _ in range(max_steps):
            if stop is not None and stop():
                return
            if not self._heap or (until is not None and self._heap[0][0] > until):
                if until is not None:
                    self.now = max(self.now, until)
                return
            t, _n, kind, side, payload = heapq.heappop(self._heap)
            self.now = max(self.now, t)
            self.steps += 1
            s = self.sessions[side]
            if kind == "timer":
                if self._timer_at[side] != t:
                    continue  # superseded
                self._timer_at[side] = None
                s.handle_timer(self.now)
            else:
                rec = payload
                assert isinstance(rec, tuple)
                record, data = rec
                if record.collided:
                    continue
                if self.framed:
                    s.receive_bytes(data, self.now)
                else:
                    s.receive_frame(data, self.now)
            self._pump(side)
        raise RuntimeError(f"simulation did not settle after {max_steps} steps")

    # ----------------------------------------------------------------- internals

    def _push(self, t: float, kind: str, side: Side, payload: object) -> None:
        self._n += 1
        heapq.heappush(self._heap, (t, self._n, kind, side, payload))

    def _pump(self, side: Side) -> None:
        s = self.sessions[side]
        other: Side = "b" if side == "a" else "a"
        if self.auto_drain[side]:
            while (ev := s.next_event()) is not None:
                self.events[side].append(ev)
                self.timeline.append((self.now, side, ev))
                if isinstance(ev, MessageReceived):
                    s.consumed(len(ev.data))
        for raw in s.frames_to_send(self.now):
            wire = encode_frame(raw) if self.framed else raw
            start = max(self.now, self._line_busy[side])
            end = start + (len(wire) / self.byte_rate if self.byte_rate else 0.0)
            self._line_busy[side] = end
            rec = TxRecord(start, end, side, raw, decode_packet(raw))
            if self.half_duplex:
                for prev in reversed(self.log):
                    if prev.end <= start - 1.0:
                        break
                    if prev.src == other and prev.time < end and start < prev.end:
                        prev.collided = rec.collided = True
            self.log.append(rec)
            for d in self.fate(rec, wire):
                self._push(end + self.latency + d.delay, "deliver", other, (rec, d.data))
        t = s.get_timer()
        if t is not None:
            at = max(t, self.now)
            if at != self._timer_at[side]:
                self._timer_at[side] = at
                self._push(at, "timer", side, None)
