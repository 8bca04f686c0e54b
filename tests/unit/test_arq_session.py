"""Deterministic ARQ session tests: two endpoints, a wire the test controls, a fake clock.

Unless a test says otherwise the line is unpaced with 50 ms one-way latency (RTT 0.1 s), so
every time below follows from the protocol rules alone: the handshake completes at 0.1 s
(HELLO, HELLO echo, HELLO established), retransmission timeouts follow RFC 6298 and a lost
frame is repaired the moment a later-sent frame is acknowledged.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import pytest

from agent.errors import LocalProtocolError
from link_drivers.arq import (
    ArqConfig,
    ArqSession,
    Connected,
    LinkDown,
    LinkUp,
    MessageReceived,
    SessionReset,
    State,
)
from link_drivers.arq.packets import Ack, Data, Hello, Ping
from link_drivers.arq.sim import Delivery, Fate, LinkSim, TxRecord
from link_drivers.arq.state import TRANSITIONS, Input, transition

LAT = 0.05
CFG = ArqConfig(
    mtu=64,
    window=8,
    initial_rto=1.0,
    min_rto=0.2,
    max_rto=8.0,
    keepalive_interval=5.0,
    dead_interval=15.0,
)
PAYLOAD = CFG.mtu - 4  # bytes per fragment


def pair(
    cfg: ArqConfig = CFG,
    cfg_b: ArqConfig | None = None,
    isn: int | None = None,
    **sim_kw: float | bool | None,
) -> tuple[LinkSim, ArqSession, ArqSession]:
    a = ArqSession(cfg, rng=random.Random(1), isn=isn, name="a")
    b = ArqSession(cfg_b or cfg, rng=random.Random(2), name="b")
    sim = LinkSim(a, b, latency=LAT, **sim_kw)  # type: ignore[arg-type]
    sim.run(until=0.2)
    assert a.state is State.ESTABLISHED
    assert b.state is State.ESTABLISHED
    return sim, a, b


def messages(sim: LinkSim, side: str) -> list[bytes]:
    return [e.data for e in sim.events[side] if isinstance(e, MessageReceived)]


def data_times(sim: LinkSim, seq: int, src: str = "a") -> list[float]:
    return [
        round(r.time, 9)
        for r in sim.log
        if r.src == src and isinstance(r.packet, Data) and r.packet.seq == seq
    ]


def drop_first(n: int, pred: Callable[[TxRecord], bool]) -> Fate:
    """A fate that drops the first ``n`` transmissions matching ``pred``."""
    left = [n]

    def fate(rec: TxRecord, wire: bytes) -> list[Delivery]:
        if left[0] and pred(rec):
            left[0] -= 1
            return []
        return [Delivery(wire)]

    return fate


def is_data(seq: int) -> Callable[[TxRecord], bool]:
    return lambda rec: isinstance(rec.packet, Data) and rec.packet.seq == seq


def test_handshake_takes_three_hellos_and_negotiates_the_smaller_window() -> None:
    a = ArqSession(CFG, rng=random.Random(1))
    b = ArqSession(ArqConfig(mtu=48, window=5), rng=random.Random(2))
    sim = LinkSim(a, b, latency=LAT)
    sim.run(until=1.0)
    hellos = [(round(r.time, 9), r.src, r.packet) for r in sim.log if isinstance(r.packet, Hello)]
    assert sorted((t, s) for t, s, _ in hellos) == [
        (0.0, "a"), (0.0, "b"), (0.05, "a"), (0.05, "b"), (0.1, "a"), (0.1, "b")
    ]  # fmt: skip
    assert [p.established for t, _, p in sorted(hellos, key=lambda h: h[0])] == [
        False, False, False, False, True, True
    ]  # fmt: skip
    connected = [(round(t, 9), s, e) for t, s, e in sim.timeline if isinstance(e, Connected)]
    assert connected == [
        (0.1, "a", Connected(b.session_id, window=5, max_payload=44)),
        (0.1, "b", Connected(a.session_id, window=5, max_payload=44)),
    ]


def test_clean_transfer_has_no_retransmission_and_respects_the_window() -> None:
    sim, a, _b = pair()
    msg = bytes(range(256)) * 8  # 2048 bytes = 35 fragments
    sim.send("a", msg)
    sent_at_once = [r for r in sim.log if isinstance(r.packet, Data) and r.time == 0.2]
    assert len(sent_at_once) == 8  # the window
    sim.run(until=5.0)
    assert messages(sim, "b") == [msg]
    assert a.stats.retransmissions == 0
    assert a.stats.data_sent == 35
    assert a.send_buffered == 0
    assert a.rto.srtt == pytest.approx(0.1)


def test_rto_backoff_times_are_exact_and_karn_refuses_the_sample() -> None:
    sim, a, _b = pair()
    seq = a._send.nxt
    sim.fate = drop_first(2, is_data(seq))
    sim.send("a", b"x" * 10)
    sim.run(until=10.0)
    # Initial RTO 1 s (no sample yet), doubled after each expiry (RFC 6298 (2.1), (5.5)).
    assert data_times(sim, seq) == [0.2, 1.2, 3.2]
    assert a.stats.timeouts == 2
    assert messages(sim, "b") == [b"x" * 10]
    assert a.rto.srtt is None  # Karn: the ack of a retransmitted frame gives no sample
    assert a.rto.backoff == 4  # kept until a fresh sample
    sim.send("a", b"y")
    sim.run(until=15.0)
    assert a.rto.srtt == pytest.approx(0.1)
    assert a.rto.backoff == 1
    assert a.rto.rto == pytest.approx(0.3)  # SRTT + 4 * RTTVAR = 0.1 + 4 * 0.05


def test_tail_loss_is_repaired_by_the_timer_restarted_on_the_last_ack() -> None:
    sim, a, _b = pair()
    sim.send("a", b"warm-up")
    sim.run(until=1.0)  # one sample: SRTT 0.1, RTTVAR 0.05
    first = a._send.nxt
    sim.fate = drop_first(1, is_data(first + 2))
    sim.send("a", b"z" * (3 * PAYLOAD))
    sim.run(until=5.0)
    # Two samples of 0.1 s at t=1.1: RTTVAR 0.0375 then 0.028125, RTO 0.1 + 4 * 0.028125;
    # RFC 6298 (5.3) restarts the timer then.
    rto = 0.1 + 4 * (0.75 * 0.75 * 0.05)
    assert data_times(sim, first + 2) == [1.0, round(1.1 + rto, 9)]
    assert messages(sim, "b")[-1] == b"z" * (3 * PAYLOAD)


def test_a_gap_is_repaired_at_the_first_sack_not_at_the_timeout() -> None:
    sim, a, _b = pair()
    first = a._send.nxt
    sim.fate = drop_first(1, is_data(first + 1))
    msg = b"q" * (5 * PAYLOAD)
    sim.send("a", msg)
    sim.run(until=3.0)
    assert data_times(sim, first + 1) == [0.2, 0.3]  # resent when the SACK of +2 arrives
    assert a.stats.timeouts == 0
    assert a.stats.retransmissions == 1
    sacks = [r.packet for r in sim.log if r.src == "b" and isinstance(r.packet, Ack)]
    assert Ack(sacks[0].tag, first + 1, sacks[1].rwnd, sack=0b1) in sacks
    assert messages(sim, "b") == [msg]


def test_duplicates_are_suppressed() -> None:
    sim, _a, b = pair()
    sim.fate = lambda rec, wire: [Delivery(wire), Delivery(wire, 0.001)]
    msg = b"d" * (4 * PAYLOAD + 7)
    sim.send("a", msg)
    sim.run(until=3.0)
    assert messages(sim, "b") == [msg]
    assert b.stats.duplicates == 5


@pytest.mark.parametrize(("dupthresh", "spurious"), [(1, 1), (4, 0)])
def test_reordering_costs_one_spurious_retransmission_below_dupthresh(
    dupthresh: int, spurious: int
) -> None:
    cfg = ArqConfig(mtu=64, window=8, initial_rto=1.0, min_rto=0.2, dupthresh=dupthresh)
    sim, a, b = pair(cfg)
    first = a._send.nxt
    late = [True]

    def reorder(rec: TxRecord, wire: bytes) -> list[Delivery]:
        if late[0] and is_data(first + 1)(rec):
            late[0] = False
            return [Delivery(wire, delay=0.01)]  # arrives after +2, +3 and +4
        return [Delivery(wire)]

    sim.fate = reorder
    msg = b"r" * (5 * PAYLOAD)
    sim.send("a", msg)
    sim.run(until=3.0)
    assert messages(sim, "b") == [msg]
    assert a.stats.retransmissions == spurious
    assert b.stats.duplicates == spurious


def test_corrupted_frame_is_rejected_by_crc_and_resent() -> None:
    sim, a, b = pair()
    first = a._send.nxt
    hit = [True]

    def corrupt(rec: TxRecord, wire: bytes) -> list[Delivery]:
        if hit[0] and is_data(first)(rec):
            hit[0] = False
            bad = bytearray(wire)
            bad[len(bad) // 2] ^= 0x01
            return [Delivery(bytes(bad))]
        return [Delivery(wire)]

    sim.fate = corrupt
    msg = b"x" * (2 * PAYLOAD)
    sim.send("a", msg)
    sim.run(until=3.0)
    assert b.decoder.stats.crc_errors == 1
    assert data_times(sim, first) == [0.2, 0.3]
    assert messages(sim, "b") == [msg]


def test_keepalive_pings_at_exact_intervals_when_idle() -> None:
    sim, _a, _b = pair()
    sim.run(until=12.0)
    pings = [round(r.time, 9) for r in sim.log if r.src == "a" and isinstance(r.packet, Ping)]
    # Last frame heard at 0.15 (HELLO established): PING at 0.15 + 5; the peer's PING at
    # 5.2 and its ACK at 5.25 push the next one to 10.25.
    assert pings == [5.15, 10.25]
    assert not [e for _, _, e in sim.timeline if isinstance(e, LinkDown)]


def test_long_outage_reports_link_down_then_up_and_delivers_everything() -> None:
    sim, a, _b = pair()
    outage = (1.0, 41.0)
    sim.fate = lambda rec, wire: [] if outage[0] <= rec.time < outage[1] else [Delivery(wire)]
    sim.send("a", b"before")
    sim.run(until=1.0)
    sim.send("a", b"during" * 30)
    sim.run(until=60.0)
    downs = [(round(t, 9), s, e) for t, s, e in sim.timeline if isinstance(e, LinkDown)]
    # a last heard b at 0.3 (ACK of "before"); b last heard a at 0.25.
    assert downs == [(15.25, "b", LinkDown(15.0)), (15.3, "a", LinkDown(15.0))]
    probes = [round(r.time, 9) for r in sim.log if r.src == "a" and isinstance(r.packet, Ping)]
    # Keepalives at 5.3 and 10.3, link down at 15.3 with an immediate probe, then one probe per
    # keepalive interval.
    assert probes[:5] == [5.3, 10.3, 15.3, 20.3, 25.3]
    ups = [(round(t, 9), s, e) for t, s, e in sim.timeline if isinstance(e, LinkUp)]
    # b's probe of 45.25 is the first frame through: a hears it at 45.3, b hears a's answer
    # (ACK and the repair of everything in flight) at 45.35.
    assert [(t, side) for t, side, _ in ups] == [(45.3, "a"), (45.35, "b")]
    assert [e.outage for _, _, e in ups] == pytest.approx([45.0, 45.1])
    assert messages(sim, "b") == [b"before", b"during" * 30]
    assert a.state is State.ESTABLISHED
    assert a.send_buffered == 0


def test_retransmission_timer_backs_off_to_max_rto() -> None:
    cfg = ArqConfig(mtu=64, initial_rto=1.0, max_rto=8.0, keepalive_interval=50, dead_interval=99)
    sim, a, _b = pair(cfg)
    seq = a._send.nxt
    sim.fate = lambda rec, wire: [] if isinstance(rec.packet, Data) else [Delivery(wire)]
    sim.send("a", b"lost")
    sim.run(until=40.0)
    t = data_times(sim, seq)
    assert [round(y - x, 9) for x, y in itertools.pairwise(t)] == [1, 2, 4, 8, 8, 8, 8]


def test_peer_restart_mid_stream_resets_and_resynchronises() -> None:
    sim, a, b = pair(byte_rate=960.0)
    sim.send("a", b"s" * (40 * PAYLOAD))
    sim.run(until=1.0)
    delivered = b.stats.bytes_delivered
    restarted = ArqSession(CFG, rng=random.Random(99), name="b2")
    sim.replace("b", restarted)  # the new b sends HELLO(your_sid=0) at 1.0
    arrival = 1.0 + 21 / 960.0 + LAT  # a HELLO is 21 bytes framed (15 + 4 CRC + 1 COBS + 1)
    sim.run(until=arrival - 1e-6)
    expected = a.send_buffered
    sim.run(until=3.0)
    resets = [(round(t, 9), s, e) for t, s, e in sim.timeline if isinstance(e, SessionReset)]
    assert resets == [(round(arrival, 9), "a", SessionReset("peer_restarted", expected))]
    assert expected > 0
    assert delivered == 0
    assert a.peer_sid == restarted.session_id
    assert a.state is State.ESTABLISHED
    sim.events["b"].clear()
    sim.send("a", b"after restart")
    sim.run(until=6.0)
    assert messages(sim, "b") == [b"after restart"]
    # A late copy of the old peer's HELLO must not look like yet another restart.
    old_hello = next(r.raw for r in sim.log if r.src == "b" and isinstance(r.packet, Hello))
    a.receive_frame(old_hello, sim.now)
    assert a.peer_sid == restarted.session_id
    assert a.stats.resets == 1


def test_a_new_session_first_hearing_a_hello_meant_for_its_predecessor_still_syncs() -> None:
    """The restarted side hears a HELLO addressed to its old session before the peer knows it
    restarted: that HELLO's ISN is about to be replaced (the peer resets when it hears the new
    session), so adopting it would leave the new session expecting sequence numbers that never
    come."""
    sim, _a, _b = pair()
    sim.send("b", b"x" * PAYLOAD)
    sim.run(until=1.0)
    old_hello = next(
        r.raw
        for r in reversed(sim.log)
        if r.src == "b" and isinstance(r.packet, Hello) and r.packet.established
    )
    restarted = ArqSession(CFG, rng=random.Random(99), name="a2")
    restarted.receive_frame(old_hello, sim.now)
    sim.replace("a", restarted)
    sim.run(until=3.0)
    assert [e.reason for _, s, e in sim.timeline if isinstance(e, SessionReset)] == [
        "peer_restarted"
    ]
    sim.events["a"].clear()
    sim.send("b", b"after restart")
    sim.run(until=6.0)
    assert messages(sim, "a") == [b"after restart"]


def test_sequence_numbers_wrap_around_with_a_loss_at_the_edge() -> None:
    sim, a, _b = pair(isn=65530)
    sim.fate = drop_first(1, is_data(0))
    msg = bytes(random.Random(5).randbytes(20 * PAYLOAD))
    sim.send("a", msg)
    sim.run(until=5.0)
    seqs = [r.packet.seq for r in sim.log if isinstance(r.packet, Data)]
    assert seqs[:8] == [65530, 65531, 65532, 65533, 65534, 65535, 0, 1]
    assert seqs.count(0) == 2
    assert messages(sim, "b") == [msg]
    assert a._send.una == (65530 + 20) % 65536


def test_slow_reader_closes_the_window_and_memory_stays_bounded() -> None:
    cfg = ArqConfig(mtu=64, window=8, initial_rto=1.0, min_rto=0.2, rx_buffer=10 * PAYLOAD)
    sim, a, b = pair(cfg)
    sim.auto_drain["b"] = False
    sent = [bytes([i]) * PAYLOAD for i in range(50)]
    for m in sent:
        sim.send("a", m)
    sim.run(until=30.0)
    bound = cfg.rx_buffer + cfg.window * PAYLOAD
    assert b._rx_pending <= bound
    assert b._recv.buffered_bytes <= cfg.window * PAYLOAD
    assert a.send_buffered > 0
    assert a.stats.data_sent < 40  # no flood while the window is shut
    got: list[bytes] = []
    for _ in range(30):
        got += [e.data for e in sim.drain("b") if isinstance(e, MessageReceived)]
        sim.run(until=sim.now + 2.0)
    assert got == sent


def test_message_over_the_limit_is_a_violation_that_resets_both_ends() -> None:
    small = ArqConfig(mtu=64, window=8, initial_rto=1.0, min_rto=0.2, max_message=100)
    sim, _a, b = pair(CFG, cfg_b=small)
    old_sid = b.session_id
    sim.send("a", b"v" * 180)
    sim.run(until=3.0)
    kinds = [(s, e.reason) for _, s, e in sim.timeline if isinstance(e, SessionReset)]
    assert kinds == [("b", "protocol_violation"), ("a", "peer_restarted")]
    assert b.session_id != old_sid
    assert b.state is State.ESTABLISHED
    assert b._recv.buffered_bytes == 0


def test_packets_beyond_the_window_and_garbage_are_dropped() -> None:
    _sim, a, b = pair()
    tag = a._tx_tag
    far = (b._recv.next + 100) % 65536
    b.receive_frame(b"\x20" + bytes([tag]) + far.to_bytes(2, "big") + b"far", 1.0)
    b.receive_frame(b"\x20" + bytes([tag ^ 1]) + b"\x00\x00zz", 1.0)  # another session
    b.receive_frame(b"\x44" + bytes([tag]), 1.0)  # PING with a reserved flag
    assert b.stats.beyond_window == 1
    assert b.stats.stale == 1
    assert b.stats.malformed == 1
    assert b._recv.buffered_bytes == 0


def half_duplex_pair() -> tuple[LinkSim, ArqSession, ArqSession]:
    cfg = ArqConfig(
        mtu=128,
        byte_rate=960.0,
        frame_overhead=7,
        half_duplex=True,
        turnaround=0.01,
        initial_rto=2.0,
    )
    a = ArqSession(cfg, rng=random.Random(1))
    b = ArqSession(cfg, rng=random.Random(2))
    sim = LinkSim(a, b, byte_rate=960.0, latency=0.001, half_duplex=True)
    sim.run(until=5.0)  # the first HELLOs collide; jittered retries get through
    assert a.state is State.ESTABLISHED
    assert b.state is State.ESTABLISHED
    return sim, a, b


def test_half_duplex_holds_while_the_peer_flags_more_and_never_collides() -> None:
    sim, _a, _b = half_duplex_pair()
    up = sim.now
    msg_a, msg_b = b"A" * 3000, b"B" * 2000
    sim.send("a", msg_a)
    sim.run(until=up + 0.2)  # a's first frame (135 bytes, 0.14 s) reached b: b now holds
    sim.send("b", msg_b)
    sim.run(until=up + 30.0)
    assert messages(sim, "b") == [msg_a]
    assert messages(sim, "a") == [msg_b]
    after = [r for r in sim.log if r.time >= up]
    assert not [r for r in after if r.collided]
    flagged = [r for r in after if isinstance(r.packet, Data) and r.packet.more]
    assert flagged  # several frames per turn, all but the last flagged MORE


def test_half_duplex_simultaneous_start_recovers_from_collisions() -> None:
    sim, _a, _b = half_duplex_pair()
    up = sim.now
    sim.send("a", b"A" * 1500)
    sim.send("b", b"B" * 1500)  # both transmit at once: the first bursts collide
    sim.run(until=up + 30.0)
    assert [r for r in sim.log if r.time >= up and r.collided]
    assert messages(sim, "b") == [b"A" * 1500]
    assert messages(sim, "a") == [b"B" * 1500]


def test_pacing_keeps_the_line_busy_at_the_ceiling() -> None:
    cfg = ArqConfig(mtu=256, byte_rate=960.0, frame_overhead=7)
    a = ArqSession(cfg, rng=random.Random(1))
    b = ArqSession(cfg, rng=random.Random(2))
    sim = LinkSim(a, b, byte_rate=960.0, latency=0.005)
    sim.run(until=1.0)
    msg = b"p" * (40 * 252)
    sim.send("a", msg)
    sim.run(stop=lambda: a.send_buffered == 0)
    ideal = 40 * 263 / 960.0  # 40 frames of 252 + 4 header + 4 CRC + 2 COBS + 1 delimiter
    assert messages(sim, "b") == [msg]
    assert ideal < sim.now - 1.0 < ideal + 0.6  # at most one frame time and an ACK of slack


def test_state_table_rejects_every_missing_entry() -> None:
    for state in State:
        for event in Input:
            if (state, event) in TRANSITIONS:
                assert transition(state, event) is TRANSITIONS[(state, event)]
            else:
                with pytest.raises(LocalProtocolError, match="no transition"):
                    transition(state, event)


def test_local_misuse_raises_local_error() -> None:
    s = ArqSession(CFG, rng=random.Random(1))
    with pytest.raises(LocalProtocolError, match="max_message"):
        s.send(b"x" * (CFG.max_message + 1))
    s.close()
    assert s.get_timer() is None
    assert s.frames_to_send(0.0) == []
    with pytest.raises(LocalProtocolError, match="closed"):
        s.send(b"x")
