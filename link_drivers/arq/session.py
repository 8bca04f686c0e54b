"""Sans-IO selective-repeat ARQ session: bytes and time in, bytes and timer deadlines out.

Shaped like aioquic's ``QuicConnection``: the owner feeds received data with
:meth:`ArqSession.receive_frame` (one datagram) or :meth:`ArqSession.receive_bytes` (a raw byte
stream, framed with COBS + CRC-32), asks :meth:`ArqSession.frames_to_send` what to transmit now,
arms one timer at :meth:`ArqSession.get_timer` and calls :meth:`ArqSession.handle_timer` when it
fires; :meth:`ArqSession.next_event` hands out :mod:`~link_drivers.arq.events`. No socket, clock,
thread or sleep lives here: every method takes ``now`` (seconds, any monotonic origin).

What it does (details in docs/links.md):

* handshake with 32-bit session ids; a peer restart shows as a new id and resets both ends;
* fragmentation into ``mtu - 4`` byte fragments, small messages packed several to a frame, and
  in-order reassembly;
* delayed acknowledgements (at once every ``ack_every`` frames, on a gap, a duplicate or the end
  of a half-duplex burst; otherwise after at most ``ack_delay``) that ride on reverse DATA;
* selective repeat with cumulative + SACK bitmap acks, RACK-style loss detection
  (:mod:`~link_drivers.arq.window`) and an RFC 6298 retransmission timer with Karn's rule and
  exponential backoff (:mod:`~link_drivers.arq.rto`);
* pacing at the line rate with a small lead and a duty-cycle cap; on half-duplex links bursts
  flagged ``MORE`` and no transmission while the peer's frame is expected;
* keepalive PINGs, link-down after ``dead_interval`` of silence, link-up with immediate repair;
* bounded memory: receive window <= 64 frames, messages <= ``max_message``, delivered but unread
  data <= ``rx_buffer`` (the advertised window closes beyond it).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import random

from agent.errors import LocalProtocolError, RemoteProtocolError
from link_drivers._log import LinkLog
from link_drivers.arq.config import ArqConfig
from link_drivers.arq.events import (
    ArqEvent,
    Connected,
    LinkDown,
    LinkUp,
    MessageReceived,
    SessionReset,
)
from link_drivers.arq.packets import (
    DATA_HEADER,
    Ack,
    Data,
    Hello,
    Packet,
    Ping,
    ack_block_size,
    decode_packet,
    encode_packet,
    session_tag,
)
from link_drivers.arq.rto import RtoEstimator
from link_drivers.arq.state import Input, State, transition
from link_drivers.arq.window import ReceiveWindow, RxVerdict, SendWindow
from link_drivers.framing import FrameDecoder, encode_frame

__all__ = ["ArqSession", "ArqStats"]

log = logging.getLogger(__name__)

_EPS = 1e-9  # seconds: a deadline computed as a - b must open the gate it was computed for


@dataclasses.dataclass
class ArqStats:
    """Counters of one session (monotonic, over resets).

    Attributes:
        data_sent: DATA frames transmitted, retransmissions included.
        retransmissions: DATA frames transmitted again.
        timeouts: retransmission timer expiries (RFC 6298 (5.4)).
        acks_sent: ACK frames transmitted.
        acks_piggybacked: acknowledgements sent in a DATA frame instead of an ACK frame.
        acks_delayed: acknowledgements sent when the delayed-ACK timer expired.
        pings_sent: PING frames transmitted.
        hellos_sent: HELLO frames transmitted.
        frames_received: packets received with a valid format.
        duplicates: DATA frames received again (suppressed).
        beyond_window: DATA frames received outside the advertised window (dropped).
        stale: packets with another session's tag (dropped).
        malformed: packets that failed to parse (dropped).
        tx_bytes: packet bytes handed out (before framing).
        rx_bytes: packet bytes received (after framing).
        bytes_acked: message bytes the peer acknowledged cumulatively, that is received in
            order (RFC 4898 ``tcpEStatsAppHCThruOctetsAcked``; Linux ``tcpi_bytes_acked``):
            the sender's goodput. No packet headers, segment lengths, ACKs or PINGs, and a
            retransmitted frame counts once.
        bytes_delivered: message bytes handed out whole and in order (``MessageReceived``):
            the receiver's goodput. Duplicates and frames held out of order count nothing.
        resets: session resets (peer restart, protocol violation).
    """

    data_sent: int = 0
    retransmissions: int = 0
    timeouts: int = 0
    acks_sent: int = 0
    acks_piggybacked: int = 0
    acks_delayed: int = 0
    pings_sent: int = 0
    hellos_sent: int = 0
    frames_received: int = 0
    duplicates: int = 0
    beyond_window: int = 0
    stale: int = 0
    malformed: int = 0
    tx_bytes: int = 0
    rx_bytes: int = 0
    bytes_acked: int = 0
    bytes_delivered: int = 0
    resets: int = 0


class ArqSession:
    """One end of a selective-repeat ARQ session.

    Args:
        config: the session parameters (:meth:`ArqConfig.for_link` builds them from a link).
        rng: source of session ids and initial sequence numbers; seed it for reproducible tests
            (default: ``random.SystemRandom``).
        isn: first sequence number to send (default: random); tests use it for wrap-around.
        name: a label for log lines (``link=`` context).
    """

    def __init__(
        self,
        config: ArqConfig,
        *,
        rng: random.Random | None = None,
        isn: int | None = None,
        name: str = "arq",
    ) -> None:
        self.config = config
        self.stats = ArqStats()
        self._rng = rng if rng is not None else random.SystemRandom()
        self._fixed_isn = isn
        self._log = LinkLog(log, link=name)
        self.state = State.CONNECTING
        self._sid = self._new_sid()
        self._events: collections.deque[ArqEvent] = collections.deque()
        self._decoder = FrameDecoder(config.mtu)
        self.rto = RtoEstimator(config.initial_rto, config.min_rto, config.max_rto)
        self._now = 0.0
        # Peer and negotiated values.
        self.peer_sid = 0
        self._tx_tag = self._rx_tag = -1
        self._tx_window = 1
        self._tx_payload = config.mtu - DATA_HEADER
        # Windows.
        self._send = SendWindow(self._new_isn())
        self._recv = ReceiveWindow(0, config.max_message)
        self._peer_rwnd = 1
        self._rx_pending = 0
        # Frames announced in HELLO: no more than rx_buffer holds, or the peer would send
        # frames beyond the first window update that this side then has to drop.
        self._rx_window = min(config.window, max(1, config.rx_buffer // (config.mtu - DATA_HEADER)))
        self._adv_rwnd = self._rx_window  # the receive window last announced
        # Timers and flags.
        self._hello_due: float | None = None
        self._hello_interval = config.initial_rto
        self._hello_reply = False
        self._ack_due = False  # an acknowledgement goes out at the next transmission
        self._ack_pending = 0  # DATA frames received since the last acknowledgement
        self._ack_deadline: float | None = None  # delayed acknowledgement due then
        self._ack_delayed = False  # the pending acknowledgement was held by the delay timer
        self._ping_due = False
        self._rto_deadline: float | None = None
        self._last_rx = 0.0
        self._last_ping = 0.0
        self._line_free_at = 0.0
        self._medium_free_at = 0.0
        self._last_hello_sent = 0.0
        self._retired: collections.deque[int] = collections.deque(maxlen=4)

    # ------------------------------------------------------------------ properties

    @property
    def session_id(self) -> int:
        """This side's 32-bit session id."""
        return self._sid

    @property
    def send_buffered(self) -> int:
        """Payload bytes queued or in flight and not yet acknowledged."""
        return self._send.unacked_bytes

    @property
    def send_queued(self) -> bool:
        """True while a queued message waits for its first frame (the window or the line is
        full): output is due again only when an acknowledgement or a timer comes."""
        return self._send.has_queued()

    @property
    def tx_window(self) -> int:
        """Frames in flight allowed towards the peer (negotiated; 1 before the handshake)."""
        return self._tx_window

    @property
    def decoder(self) -> FrameDecoder:
        """The framing decoder used by :meth:`receive_bytes` (for its rejection counters)."""
        return self._decoder

    # ------------------------------------------------------------------ user API

    def send(self, data: bytes) -> None:
        """Queue one message for reliable, ordered delivery.

        Args:
            data: the message, at most ``config.max_message`` bytes (may be empty).

        Raises:
            LocalProtocolError: the session is closed or the message is too long.
        """
        if self.state is State.CLOSED:
            raise LocalProtocolError("ARQ session is closed")
        if len(data) > self.config.max_message:
            raise LocalProtocolError(
                f"message of {len(data)} bytes exceeds max_message {self.config.max_message}"
            )
        self._send.enqueue(bytes(data))

    def close(self) -> None:
        """Stop the session: nothing more is sent or delivered."""
        self.state = transition(self.state, Input.CLOSE)

    def next_event(self) -> ArqEvent | None:
        """Pop the next event, or None when there is none.

        Bytes of :class:`MessageReceived` events count against ``config.rx_buffer`` until the
        user calls :meth:`consumed`: that is how a slow reader closes the peer's window.
        """
        return self._events.popleft() if self._events else None

    def consumed(self, nbytes: int) -> bool:
        """Release ``nbytes`` of delivered message bytes the user has processed.

        Args:
            nbytes: bytes of messages taken from :class:`MessageReceived` events.

        Returns:
            True when this made a window update due: call :meth:`frames_to_send` soon.
        """
        self._rx_pending = max(0, self._rx_pending - nbytes)
        if self._adv_rwnd * 2 < self._rx_window <= self._rwnd() * 2 and not self._ack_due:
            self._ack_now()  # window update once the reader caught up
            return True
        return False

    # ------------------------------------------------------------------ input

    def receive_bytes(self, data: bytes, now: float) -> None:
        """Feed raw bytes from a byte-stream link (COBS/CRC-32 framed).

        Args:
            data: any chunk of the line's bytes; corrupt frames are counted in :attr:`decoder`.
            now: current time, seconds.
        """
        for payload in self._decoder.feed(data):
            self.receive_frame(payload, now)

    def receive_frame(self, datagram: bytes, now: float) -> None:
        """Feed one datagram received from the peer.

        Malformed packets and packets of another session are counted and dropped; nothing the
        peer sends raises.

        Args:
            datagram: the packet bytes.
            now: current time, seconds.
        """
        self._now = now
        if self.state is State.CLOSED:
            return
        try:
            pkt = decode_packet(datagram)
        except RemoteProtocolError as err:
            self.stats.malformed += 1
            self._log.debug("dropping malformed packet: %s", err.message)
            return
        self.stats.frames_received += 1
        self.stats.rx_bytes += len(datagram)
        if isinstance(pkt, Hello):
            self._on_hello(pkt, now)
            return
        if self.peer_sid == 0 or pkt.tag != self._rx_tag:
            self.stats.stale += 1
            if self.state is State.CONNECTING and self._hello_due is not None:
                # Someone talks to an old session of ours: answer with a HELLO soon.
                self._hello_due = min(self._hello_due, self._last_hello_sent + self.rto.min_rto)
            return
        self._heard(now, Input.PEER_FRAME)
        if self.config.half_duplex:
            self._peer_turn(pkt.more, now)
        if isinstance(pkt, Data):
            if pkt.ack is not None:
                self._on_ack(pkt.ack, now)
            self._on_data(pkt, now)
        elif isinstance(pkt, Ack):
            self._on_ack(pkt, now)
        else:
            self._ack_now()  # a PING is answered with an ACK

    def _on_hello(self, h: Hello, now: float) -> None:
        if h.my_sid in self._retired:
            self.stats.stale += 1  # a late HELLO of a peer session that has since restarted
            return
        if h.your_sid not in (0, self._sid):
            # It answers an earlier session of ours: the peer resets, with a new ISN, when it
            # hears this one, so adopt nothing yet and tell it that this session exists.
            self.stats.stale += 1
            self._hello_reply = True
            return
        if h.my_sid != self.peer_sid:
            if self.state is not State.CONNECTING:
                self._retired.append(self.peer_sid)
                self._reset("peer_restarted", now)
            self.state = transition(self.state, Input.PEER_NEW_SID)
            self._adopt_peer(h)
        echoed = h.your_sid == self._sid
        if echoed:
            self._heard(now, Input.HELLO_ECHOED)
        if not echoed or not h.established:
            self._hello_reply = True
        if self.config.half_duplex:
            self._peer_turn(False, now)

    def _adopt_peer(self, h: Hello) -> None:
        self.peer_sid = h.my_sid
        self._tx_tag = session_tag(self._sid, h.my_sid)
        self._rx_tag = session_tag(h.my_sid, self._sid)
        self._tx_window = min(h.window, self.config.window)
        self._tx_payload = min(h.mtu, self.config.mtu) - DATA_HEADER
        self._peer_rwnd = self._tx_window
        self._recv = ReceiveWindow(h.isn, self.config.max_message)

    def _heard(self, now: float, what: Input) -> None:
        """A valid packet of the current peer session arrived."""
        before = self.state
        self.state = transition(before, what)
        outage = now - self._last_rx
        self._last_rx = now
        if before is State.CONNECTING:
            self._hello_due = None
            self._hello_interval = self.config.initial_rto
            self._last_ping = now
            self._log.info(
                "connected to peer session %08x (window %d, payload %d bytes)",
                self.peer_sid,
                self._tx_window,
                self._tx_payload,
            )
            self._events.append(Connected(self.peer_sid, self._tx_window, self._tx_payload))
        elif before is State.DOWN:
            self._log.info("link up after %.1f s of silence", outage)
            self._log.clear("silence")
            self.rto.reset_backoff()
            self._send.mark_all_lost()
            self._rto_deadline = None
            self._events.append(LinkUp(outage))

    def _peer_turn(self, more: bool, now: float) -> None:
        """Half-duplex: the peer keeps the channel while it flags MORE."""
        if more:
            hold = self.config.airtime(self.config.mtu) + self.config.turnaround
            self._medium_free_at = max(self._medium_free_at, now + hold)
        else:
            self._medium_free_at = now + self.config.turnaround

    def _on_data(self, d: Data, now: float) -> None:
        recv = self._recv
        in_order = d.seq == recv.next and not recv.has_gap()
        done: list[bytes] = []
        verdict = recv.on_data(d, self._rwnd(), done)
        self._ack_pending += 1
        if (
            not in_order
            or verdict is not RxVerdict.ACCEPTED
            or self._ack_pending >= self.config.ack_every
            or not self.config.ack_delay
            or (self.config.half_duplex and not d.more)
        ):
            # RFC 5681 4.2 / RFC 9000 13.2.1: acknowledge at once every second frame, on
            # reordering, a gap or a duplicate; here also at the end of a half-duplex burst.
            self._ack_now()
        elif self._ack_deadline is None:
            self._ack_deadline = now + self.config.ack_delay
        for msg in done:
            self._rx_pending += len(msg)
            self.stats.bytes_delivered += len(msg)
            self._events.append(MessageReceived(msg))
        if verdict is RxVerdict.DUPLICATE:
            self.stats.duplicates += 1
        elif verdict is RxVerdict.BEYOND_WINDOW:
            self.stats.beyond_window += 1
        elif verdict is RxVerdict.TOO_LONG:
            self._log.warning("peer sent a message over %d bytes", self.config.max_message)
            self._reset("protocol_violation", now)
            self.state = transition(self.state, Input.VIOLATION)
            self._sid = self._new_sid()  # the peer must notice the reset
            self.peer_sid = 0

    def _on_ack(self, a: Ack, now: float) -> None:
        send = self._send
        acked = send.acked_data
        newly = send.on_ack(a, self.config.dupthresh, now, self.rto.min_rtt)
        if newly is None:
            return
        self.stats.bytes_acked += send.acked_data - acked
        self._peer_rwnd = min(a.rwnd, self._tx_window)
        if not newly:
            return
        if not a.delayed:  # a delayed ACK's time says more about the timer than the path
            fresh = [f for f in newly if f.retx == 0]
            if fresh:  # Karn's rule: only frames sent once give an RTT sample
                self.rto.sample(now - max(fresh, key=lambda f: f.order).sent_at)
        # RFC 6298 (5.2)/(5.3): stop the timer when all is acked, else restart it.
        self._rto_deadline = now + self.rto.rto if self._send.has_outstanding() else None

    # ------------------------------------------------------------------ timers

    def get_timer(self) -> float | None:
        """Return the time, in seconds, at which :meth:`handle_timer` must be called, or None.

        The deadline may be in the past: call ``handle_timer`` and ``frames_to_send`` at once.
        """
        state = self.state
        if state is State.CLOSED:
            return None
        at = self._gate_time() if self._has_work() else math.inf
        if state is State.CONNECTING:
            if self._hello_due is not None:  # None: due now, covered by the gate above
                at = min(at, self._hello_due)
            return at if at < math.inf else None
        if not self._ping_due:  # a due PING waits for the gate above
            at = min(at, self._ping_deadline())
        if self._ack_deadline is not None:
            at = min(at, self._ack_deadline)
        if state is State.ESTABLISHED:
            at = min(at, self._last_rx + self.config.dead_interval)
            if self._rto_deadline is not None:
                at = min(at, self._rto_deadline)
        return at if at < math.inf else None

    def handle_timer(self, now: float) -> None:
        """Process the timers due at ``now`` (seconds); call :meth:`frames_to_send` after it."""
        self._now = now
        if self.state in (State.CLOSED, State.CONNECTING):
            return
        if self.state is State.ESTABLISHED and now - self._last_rx >= self.config.dead_interval:
            self.state = transition(self.state, Input.SILENCE)
            silent = now - self._last_rx
            self._log.warn_once("silence", "link down: peer silent for %.1f s", silent)
            self._events.append(LinkDown(silent))
            self._rto_deadline = None
            self._ping_due = True
        if now >= self._ping_deadline():
            self._ping_due = True
        if self._ack_deadline is not None and now >= self._ack_deadline:
            self._ack_due = self._ack_delayed = True
            self._ack_deadline = None
        if (
            self.state is State.ESTABLISHED
            and self._rto_deadline is not None
            and now >= self._rto_deadline
        ):
            # RFC 6298 (5.4)-(5.6): retransmit the earliest unacknowledged frame, back off;
            # the timer restarts when that retransmission is sent (5.1).
            self.stats.timeouts += 1
            first = self._send.earliest_outstanding()
            if first is not None:
                self._send.mark_lost(first)
            self.rto.on_timeout()
            self._rto_deadline = None

    def _ping_deadline(self) -> float:
        base = max(self._last_rx, self._last_ping)
        interval = self.config.keepalive_interval
        if self._window_closed():
            interval = min(interval, self.rto.rto)  # persist probe (zero window)
        return base + interval

    # ------------------------------------------------------------------ output

    def frames_to_send(self, now: float) -> list[bytes]:
        """Return the packets to transmit now, in order (possibly none).

        Pacing holds packets back until the line is within ``tx_lead`` seconds of idle; on a
        half-duplex link a whole burst (each packet but the last flagged ``MORE``) is returned
        once the peer's turn is over.

        Args:
            now: current time, seconds.

        Returns:
            Datagrams of at most ``config.mtu`` bytes each.
        """
        self._now = now
        if self.state is State.CLOSED:
            return []
        if self.config.half_duplex:
            return self._burst(now)
        out: list[bytes] = []
        while self._line_free_at - now <= self.config.tx_lead + _EPS:
            pkt = self._next_packet(now)
            if pkt is None:
                break
            out.append(self._emit(pkt, now))
        return out

    def data_to_send(self, now: float) -> bytes:
        """Like :meth:`frames_to_send`, framed for a byte-stream link (COBS, CRC-32, ``0x00``)."""
        return b"".join(encode_frame(p) for p in self.frames_to_send(now))

    def _burst(self, now: float) -> list[bytes]:
        if now < self._medium_free_at - _EPS:
            return []
        pkts: list[Packet] = []
        air = 0.0
        while not pkts or air < self.config.max_burst:
            pkt = self._next_packet(now)
            if pkt is None:
                break
            pkts.append(pkt)
            if isinstance(pkt, Hello):
                break  # HELLO has no MORE flag: it ends the burst
            air += self.config.airtime(len(encode_packet(pkt)))
        if not pkts:
            return []
        last = len(pkts) - 1
        out = [
            self._emit(p if i == last or isinstance(p, Hello) else _with_more(p), now)
            for i, p in enumerate(pkts)
        ]
        # The peer answers after our last byte and its turnaround; wait for its first frame,
        # plus a random share of a frame time so that two sides that collided do not retry in
        # step (there is no carrier sense on a UART radio).
        air = self.config.airtime(self.config.mtu)
        reply = air * (1 + self._rng.random()) + 2 * self.config.turnaround
        self._medium_free_at = self._line_free_at + reply + self.config.processing
        return out

    def _has_work(self) -> bool:
        if self._hello_reply or (
            self.state is State.CONNECTING
            and (self._hello_due is None or self._hello_due <= self._now)
        ):
            return True
        if self.state is State.CONNECTING:
            return False
        if self._ack_due or self._ping_due:
            return True
        if self.state is State.DOWN:
            return False
        return self._send.next_lost() is not None or self._may_send_new()

    def _gate_time(self) -> float:
        if self.config.half_duplex:
            return self._medium_free_at
        return self._line_free_at - self.config.tx_lead

    def _may_send_new(self) -> bool:
        return self._send.has_queued() and self._send.in_flight < min(
            self._tx_window, self._peer_rwnd
        )

    def _window_closed(self) -> bool:
        return self._peer_rwnd == 0 and self._send.has_queued() and not self._send.inflight

    def _next_packet(self, now: float) -> Packet | None:
        """Pick the next packet by priority: HELLO, ACK (on DATA when some is ready), PING,
        retransmission, new data (with a pending acknowledgement riding along)."""
        if self._hello_reply or (
            self.state is State.CONNECTING and (self._hello_due is None or self._hello_due <= now)
        ):
            return self._make_hello(now)
        if self.state is State.CONNECTING:
            return None
        if self._ack_due:
            data = None if self.state is State.DOWN else self._next_data(now, with_ack=True)
            if data is not None:
                return data
            self.stats.acks_sent += 1
            return self._make_ack()
        if self._ping_due:
            self._ping_due = False
            self._last_ping = now
            self.stats.pings_sent += 1
            return Ping(self._tx_tag)
        if self.state is State.DOWN:
            return None
        return self._next_data(now, with_ack=self._ack_pending > 0)

    def _next_data(self, now: float, *, with_ack: bool) -> Data | None:
        """The next DATA frame (a retransmission first), carrying the pending acknowledgement
        when ``with_ack`` and it fits the peer's MTU; None when no frame may go now."""
        send = self._send
        frame = send.next_lost()
        if frame is None and not self._may_send_new():
            return None
        extra = ack_block_size(self._recv.sack_bitmap()) if with_ack else 0
        if frame is None:
            if extra >= self._tx_payload:  # a tiny MTU: no room for an ack block
                if self._ack_due:
                    return None  # the ACK goes alone first
                extra = 0
            frame = send.take_new(self._tx_payload - extra)
        elif extra and len(frame.payload) + extra > self._tx_payload:
            if self._ack_due:
                return None  # the ACK goes alone first
            extra = 0
        if frame.order:  # sent before: this is a retransmission
            self.stats.retransmissions += 1
        send.mark_sent(frame, now)
        self.stats.data_sent += 1
        if self._rto_deadline is None:  # RFC 6298 (5.1)
            self._rto_deadline = now + self.rto.rto
        ack = None
        if extra:
            self.stats.acks_piggybacked += 1
            ack = self._make_ack()
        return Data(self._tx_tag, frame.seq, frame.payload, frame.end, packed=frame.packed, ack=ack)

    def _make_ack(self) -> Ack:
        """The acknowledgement of everything received; clears the pending one."""
        delayed = self._ack_delayed
        if delayed:
            self.stats.acks_delayed += 1
        self._ack_due = self._ack_delayed = False
        self._ack_pending = 0
        self._ack_deadline = None
        self._adv_rwnd = self._rwnd()
        return Ack(
            self._tx_tag, self._recv.next, min(self._adv_rwnd, 255), self._sack(), delayed=delayed
        )

    def _ack_now(self) -> None:
        """Make the pending acknowledgement due at once (not a delayed one)."""
        self._ack_due = True
        self._ack_delayed = False
        self._ack_deadline = None

    def _make_hello(self, now: float) -> Hello:
        self._hello_reply = False
        self._adv_rwnd = self._rx_window
        self._last_hello_sent = now
        if self.state is State.CONNECTING:
            # Random jitter (0.75..1.25) so that two radios which collided do not retry in step.
            self._hello_due = now + self._hello_interval * (0.75 + 0.5 * self._rng.random())
            self._hello_interval = min(2 * self._hello_interval, self.config.keepalive_interval)
        self.stats.hellos_sent += 1
        return Hello(
            my_sid=self._sid,
            your_sid=self.peer_sid,
            isn=self._send.una,
            window=self._adv_rwnd,
            mtu=self.config.mtu,
            established=self.state is not State.CONNECTING,
        )

    def _emit(self, pkt: Packet, now: float) -> bytes:
        raw = encode_packet(pkt)
        air = self.config.airtime(len(raw)) / self.config.duty_cycle
        self._line_free_at = max(now, self._line_free_at) + air
        self.stats.tx_bytes += len(raw)
        return raw

    # ------------------------------------------------------------------ helpers

    def _rwnd(self) -> int:
        free = self.config.rx_buffer - self._rx_pending
        if free <= 0:
            return 0
        return min(self._rx_window, max(1, free // (self.config.mtu - DATA_HEADER)))

    def _sack(self) -> int:
        return self._recv.sack_bitmap()

    def _reset(self, reason: str, now: float) -> None:
        dropped = self._send.unacked_bytes
        self._log.warning("session reset (%s): dropping %d unacknowledged bytes", reason, dropped)
        self.stats.resets += 1
        self._events.append(SessionReset(reason, dropped))
        self._send = SendWindow(self._new_isn())
        self._recv = ReceiveWindow(0, self.config.max_message)
        self._rto_deadline = None
        self._ack_due = self._ping_due = self._ack_delayed = False
        self._ack_pending = 0
        self._ack_deadline = None
        self._hello_due = None
        self._hello_interval = self.config.initial_rto
        self.rto.reset_backoff()

    def _new_sid(self) -> int:
        return self._rng.randrange(1, 1 << 32)

    def _new_isn(self) -> int:
        if self._fixed_isn is not None:
            return self._fixed_isn
        return self._rng.randrange(0, 1 << 16)


def _with_more(p: Data | Ack | Ping) -> Packet:
    return dataclasses.replace(p, more=True)
