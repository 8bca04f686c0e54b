"""ARQ protocol version 2: small messages packed into frames, delayed and piggybacked ACKs,
and the guards that keep them honest (RTT samples, spurious timeouts, receive window).

Same deterministic set-up as ``test_arq_session``: a fake clock and a wire the test controls,
unpaced with 50 ms one-way latency unless a test says otherwise.
"""

from __future__ import annotations

import random

import pytest

from agent.errors import ConfigError
from link_drivers.api import LinkInfo
from link_drivers.arq import ArqConfig, ArqSession, MessageReceived, State, ack_delay_for_link
from link_drivers.arq.packets import Ack, Data, Hello, decode_packet, split_segments
from link_drivers.arq.sim import Delivery, LinkSim, TxRecord

LAT = 0.05
BASE = {"mtu": 64, "window": 8, "initial_rto": 1.0, "min_rto": 0.2, "max_rto": 8.0}
DELAYED = ArqConfig(**BASE, ack_every=2, ack_delay=0.02)  # type: ignore[arg-type]
PAYLOAD = 60  # bytes per frame at mtu 64


def pair(
    cfg: ArqConfig = DELAYED, **sim_kw: float | bool | None
) -> tuple[LinkSim, ArqSession, ArqSession]:
    a = ArqSession(cfg, rng=random.Random(1), name="a")
    b = ArqSession(cfg, rng=random.Random(2), name="b")
    sim = LinkSim(a, b, latency=LAT, **sim_kw)  # type: ignore[arg-type]
    sim.run(until=0.2)
    assert a.state is State.ESTABLISHED
    assert b.state is State.ESTABLISHED
    return sim, a, b


def messages(sim: LinkSim, side: str) -> list[bytes]:
    return [e.data for e in sim.events[side] if isinstance(e, MessageReceived)]


def sent(sim: LinkSim, src: str, kind: type) -> list[TxRecord]:
    return [r for r in sim.log if r.src == src and isinstance(r.packet, kind)]


def data_sent(sim: LinkSim, src: str) -> list[Data]:
    return [r.packet for r in sim.log if r.src == src and isinstance(r.packet, Data)]


def acks_sent(sim: LinkSim, src: str) -> list[tuple[float, Ack]]:
    return [
        (round(r.time, 9), r.packet) for r in sim.log if r.src == src and isinstance(r.packet, Ack)
    ]


def queue(sim: LinkSim, side: str, msgs: list[bytes]) -> None:
    """Queue several messages at once (as an application does within one loop iteration)."""
    for m in msgs[:-1]:
        sim.sessions[side].send(m)
    sim.send(side, msgs[-1])


# ------------------------------------------------------------------ packing


def test_small_messages_queued_together_share_frames() -> None:
    sim, a, _b = pair()
    msgs = [bytes([i]) * 10 for i in range(30)]
    queue(sim, "a", msgs)
    sim.run(until=3.0)
    assert messages(sim, "b") == msgs
    data = data_sent(sim, "a")
    # 30 messages of 10 bytes, 11 with their length byte: 5 per 60-byte frame, the last frame
    # of each window may end with a piece of the next message.
    assert a.stats.data_sent == len(data) <= 7
    first = data[0]
    assert first.packed
    assert split_segments(first.payload)[:5] == msgs[:5]


def test_a_long_message_between_short_ones_is_cut_and_rejoined() -> None:
    sim, _a, _b = pair()
    msgs = [b"s" * 10, bytes(range(200)), b"t" * 5, b"", b"u" * 3]
    queue(sim, "a", msgs)
    sim.run(until=3.0)
    assert messages(sim, "b") == msgs
    frames = data_sent(sim, "a")
    # Frame 1 packs the short message and the start of the long one; then whole-frame pieces
    # in the version 1 layout; the long message's tail is packed with the three short ones.
    assert frames[0].packed
    assert not frames[0].end
    assert [f.packed for f in frames[1:3]] == [False, False]
    assert frames[-1].packed
    assert frames[-1].end
    assert sum(len(f.payload) for f in frames) < sum(len(m) for m in msgs) + 2 * len(msgs)


def test_a_lone_message_goes_out_in_the_version_1_layout() -> None:
    sim, _a, _b = pair()
    sim.send("a", b"alone")
    sim.run(until=1.0)
    (frame,) = sent(sim, "a", Data)
    assert frame.raw[0] == 0x21  # DATA, END, nothing else
    assert frame.raw[4:] == b"alone"


def test_lost_packed_frames_are_resent_and_each_message_arrives_once() -> None:
    sim, a, b = pair()
    dropped = [0]

    def fate(rec: TxRecord, wire: bytes) -> list[Delivery]:
        if isinstance(rec.packet, Data) and rec.packet.packed and dropped[0] < 2:
            dropped[0] += 1
            return []
        return [Delivery(wire)]

    sim.fate = fate
    msgs = [b"%03d" % i * 4 for i in range(60)]
    queue(sim, "a", msgs)
    sim.run(until=10.0)
    assert messages(sim, "b") == msgs
    assert a.stats.retransmissions >= 2
    assert b.stats.duplicates <= a.stats.retransmissions


def test_packed_segments_count_against_max_message() -> None:
    big = ArqConfig(**BASE, max_message=1000)  # type: ignore[arg-type]
    small = ArqConfig(**BASE, max_message=100)  # type: ignore[arg-type]
    a = ArqSession(big, rng=random.Random(1))
    b = ArqSession(small, rng=random.Random(2))
    sim = LinkSim(a, b, latency=LAT)
    sim.run(until=0.2)
    queue(sim, "a", [b"x" * 20, b"y" * 300])
    sim.run(until=3.0)
    assert b.stats.resets == 1
    assert messages(sim, "b") == [b"x" * 20]


# ------------------------------------------------------------------ delayed and piggybacked ACKs


def test_a_stream_is_acknowledged_every_second_frame() -> None:
    sim, a, b = pair()
    sim.send("a", b"z" * (8 * PAYLOAD))
    sim.run(until=1.0)
    acks = acks_sent(sim, "b")
    assert len(acks) == 4
    assert not any(p.delayed for _, p in acks)
    assert b.stats.acks_delayed == 0
    assert a.rto.srtt == pytest.approx(0.1)


def test_a_lone_frame_is_acknowledged_after_ack_delay_and_gives_no_rtt_sample() -> None:
    sim, a, _b = pair()
    sim.send("a", b"one")
    sim.run(until=1.0)
    ((when, ack),) = acks_sent(sim, "b")
    assert when == round(0.2 + LAT + DELAYED.ack_delay, 9)
    assert ack.delayed
    assert a.rto.srtt is None  # the sample would hold the peer's timer, not the path
    assert a.send_buffered == 0


def test_a_gap_is_acknowledged_at_once_with_its_sack() -> None:
    sim, a, _b = pair()
    first = a._send.nxt
    lost = [True]

    def fate(rec: TxRecord, wire: bytes) -> list[Delivery]:
        if lost[0] and isinstance(rec.packet, Data) and rec.packet.seq == first:
            lost[0] = False
            return []
        return [Delivery(wire)]

    sim.fate = fate
    sim.send("a", b"g" * (3 * PAYLOAD))
    sim.run(until=3.0)
    when, ack = acks_sent(sim, "b")[0]
    assert when == 0.25  # the frame after the gap: at once
    assert ack.sack == 0b1
    assert not ack.delayed
    assert a.stats.timeouts == 0


def test_duplicates_are_acknowledged_at_once() -> None:
    sim, _a, b = pair()
    sim.fate = lambda rec, wire: [Delivery(wire), Delivery(wire, 0.001)]
    sim.send("a", b"dup")
    sim.run(until=1.0)
    assert b.stats.duplicates == 1
    assert [when for when, _ in acks_sent(sim, "b")] == [0.251]


def test_replies_carry_the_acknowledgement_both_ways() -> None:
    sim, a, b = pair()
    for i in range(5):
        sim.send("a", b"request %d" % i)
        sim.run(until=sim.now + LAT + 0.005)
        assert messages(sim, "b")[-1] == b"request %d" % i
        sim.send("b", b"answer %d" % i)
        sim.run(until=sim.now + LAT + 0.005)
        assert messages(sim, "a")[-1] == b"answer %d" % i
    assert (a.stats.acks_sent, b.stats.acks_sent) == (0, 0)
    assert b.stats.acks_piggybacked == 5
    assert a.stats.acks_piggybacked == 4  # the last answer is acknowledged by the timer
    assert a.rto.srtt is not None
    sim.run(until=sim.now + 1.0)
    assert b.send_buffered == 0
    assert a.stats.acks_delayed == 1


def test_an_ack_block_too_big_for_a_retransmission_goes_alone_first() -> None:
    _sim, a, b = pair()
    a.send(b"f" * PAYLOAD)  # a full frame: no room for an ack block when it is resent
    assert len(a.frames_to_send(0.2)) == 1  # lost on the way
    lost = a._send.earliest_outstanding()
    assert lost is not None
    a._send.mark_lost(lost)
    b.send(b"1" * PAYLOAD)
    b.send(b"2" * PAYLOAD)
    for raw in b.frames_to_send(0.2):
        a.receive_frame(raw, 0.25)  # two frames: a owes b an acknowledgement at once
    out = [decode_packet(raw) for raw in a.frames_to_send(0.25)]
    assert [type(p) for p in out] == [Ack, Data]
    assert isinstance(out[1], Data)
    assert out[1].ack is None
    assert out[1].payload == b"f" * PAYLOAD


def test_half_duplex_acknowledges_at_the_end_of_the_peers_burst() -> None:
    cfg = ArqConfig(
        mtu=128,
        byte_rate=960.0,
        frame_overhead=7,
        half_duplex=True,
        turnaround=0.01,
        initial_rto=2.0,
        ack_every=64,
        ack_delay=0.1,
    )
    a = ArqSession(cfg, rng=random.Random(1))
    b = ArqSession(cfg, rng=random.Random(2))
    sim = LinkSim(a, b, byte_rate=960.0, latency=0.001, half_duplex=True)
    sim.run(until=5.0)
    up = sim.now
    sim.send("a", b"A" * 2000)
    sim.run(until=up + 30.0)
    assert messages(sim, "b") == [b"A" * 2000]
    assert b.stats.acks_delayed == 0  # never held: every burst end is answered in turn
    assert not [r for r in sim.log if r.time >= up and r.collided]


# ------------------------------------------------------------------ guards


def test_a_spurious_timeout_resends_one_frame_not_the_window() -> None:
    cfg = ArqConfig(**BASE)  # type: ignore[arg-type]
    sim, a, _b = pair(cfg)
    sim.send("a", b"warm-up")
    sim.run(until=1.0)  # SRTT 0.1 s, RTO 0.3 s, min RTT 0.1 s
    late = [True]

    def slow_acks(rec: TxRecord, wire: bytes) -> list[Delivery]:
        if late[0] and isinstance(rec.packet, Ack):
            return [Delivery(wire, delay=0.25)]  # held in a queue somewhere: RTO fires first
        return [Delivery(wire)]

    sim.fate = slow_acks
    sim.send("a", b"w" * (6 * PAYLOAD))
    sim.run(until=1.32)
    assert a.stats.timeouts == 1
    late[0] = False
    sim.run(until=5.0)
    # The acknowledgement of the first copy came back sooner than any round trip after the
    # retransmission (RFC 8985 6.2 step 2): the five frames sent before it are not lost.
    assert a.stats.retransmissions == 1
    assert messages(sim, "b")[-1] == b"w" * (6 * PAYLOAD)


def test_the_announced_window_fits_the_receive_buffer() -> None:
    cfg = ArqConfig(mtu=1200, window=64, rx_buffer=65536)
    a = ArqSession(cfg, rng=random.Random(1))
    b = ArqSession(cfg, rng=random.Random(2))
    sim = LinkSim(a, b, latency=LAT)
    sim.run(until=0.2)
    hello = next(r.packet for r in sim.log if isinstance(r.packet, Hello))
    assert hello.window == 65536 // 1196 == 54
    assert a.tx_window == 54
    sim.send("a", bytes(60000))
    sim.run(until=5.0)
    assert b.stats.beyond_window == 0
    assert a.stats.retransmissions == 0


def test_link_configs_choose_the_ack_policy() -> None:
    udp = ArqConfig.for_link(LinkInfo(mtu=1200, bitrate=100e6))
    radio = ArqConfig.for_link(LinkInfo(mtu=256, bitrate=115200 * 0.8, frame_overhead=7))
    assert (udp.ack_every, udp.ack_delay) == (2, 0.005)
    assert (radio.ack_every, radio.ack_delay) == (2, 0.0)  # every frame at once, as version 1
    assert ack_delay_for_link(None, 1200) == 0.005
    assert ack_delay_for_link(1e6, 1200) == 0.005  # 1.2 ms per frame (8 Mbit/s)
    assert ack_delay_for_link(5e5, 1200) == 0.0  # 2.4 ms per frame: too slow to wait for two
    assert ArqConfig().ack_every == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"ack_every": 0}, "ack_every"), ({"ack_delay": 0.15, "min_rto": 0.2}, "ack_delay")],
)
def test_ack_policy_is_checked(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ArqConfig(**kwargs)  # type: ignore[arg-type]


def test_every_packet_in_a_mixed_exchange_decodes() -> None:
    sim, _a, _b = pair()
    queue(sim, "a", [b"m" * n for n in range(0, 90, 7)])
    queue(sim, "b", [b"n" * n for n in range(0, 90, 11)])
    sim.run(until=3.0)
    for rec in sim.log:
        assert decode_packet(rec.raw) == rec.packet
