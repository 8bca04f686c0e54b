"""Goodput counters of the ARQ session: ``bytes_acked`` (message bytes the peer acknowledged
in order) and ``bytes_delivered`` (message bytes handed out whole and in order), and the
``LinkMetrics`` that carry them out of ``ArqStream``.

Same deterministic set-up as ``test_arq_session``: a fake clock and a wire the test controls,
unpaced with 50 ms one-way latency (RTT 0.1 s) unless a test says otherwise. Goodput counts
what the application gave and got, so each test compares the counters with the messages.
"""

from __future__ import annotations

import asyncio
import random

from link_drivers.arq import ArqConfig, ArqSession, MessageReceived, State
from link_drivers.arq.packets import Data, Ping
from link_drivers.arq.sim import Delivery, LinkSim, TxRecord
from tests.sessions import stream_pair

LAT = 0.05
CFG = ArqConfig(mtu=64, window=8, initial_rto=1.0, min_rto=0.2, max_rto=8.0)
DELAYED = ArqConfig(
    mtu=64, window=8, initial_rto=1.0, min_rto=0.2, max_rto=8.0, ack_every=2, ack_delay=0.02
)


def pair(cfg: ArqConfig = CFG) -> tuple[LinkSim, ArqSession, ArqSession]:
    a = ArqSession(cfg, rng=random.Random(1), name="a")
    b = ArqSession(cfg, rng=random.Random(2), name="b")
    sim = LinkSim(a, b, latency=LAT)
    sim.run(until=0.2)
    assert a.state is State.ESTABLISHED
    assert b.state is State.ESTABLISHED
    return sim, a, b


def messages(sim: LinkSim, side: str) -> list[bytes]:
    return [e.data for e in sim.events[side] if isinstance(e, MessageReceived)]


def data_frames(sim: LinkSim, src: str = "a") -> list[Data]:
    return [r.packet for r in sim.log if r.src == src and isinstance(r.packet, Data)]


def test_goodput_is_message_bytes_without_headers_or_segment_lengths() -> None:
    sim, a, b = pair(DELAYED)
    # Short messages queued together are packed with a length byte each; the long one is cut.
    msgs = [bytes([i]) * 10 for i in range(30)] + [bytes(range(200)), b"", b"end"]
    for m in msgs[:-1]:
        a.send(m)
    sim.send("a", msgs[-1])
    sim.run(until=5.0)
    assert messages(sim, "b") == msgs
    total = sum(len(m) for m in msgs)
    assert any(d.packed for d in data_frames(sim))
    assert sum(len(d.payload) for d in data_frames(sim)) > total  # the lengths are there...
    assert a.stats.bytes_acked == total  # ...and are not goodput
    assert b.stats.bytes_delivered == total
    assert a.stats.tx_bytes > total
    assert b.stats.rx_bytes > total
    assert (a.stats.bytes_delivered, b.stats.bytes_acked) == (0, 0)  # nothing went b -> a


def test_retransmitted_and_duplicated_frames_count_once() -> None:
    sim, a, b = pair()
    seen: set[int] = set()

    def fate(rec: TxRecord, wire: bytes) -> list[Delivery]:
        """Lose the first copy of every third frame; deliver every other frame twice."""
        if isinstance(rec.packet, Data):
            seq = rec.packet.seq
            first = seq not in seen
            seen.add(seq)
            if first and seq % 3 == 0:
                return []
            return [Delivery(wire), Delivery(wire, delay=0.01)]
        return [Delivery(wire)]

    sim.fate = fate
    msg = bytes(range(256)) * 8  # 2048 bytes: 35 frames of 60
    sim.send("a", msg)
    sim.run(until=10.0)
    assert messages(sim, "b") == [msg]
    assert a.stats.retransmissions >= 10
    assert b.stats.duplicates >= 35
    assert a.stats.bytes_acked == len(msg)
    assert b.stats.bytes_delivered == len(msg)


def test_keepalives_and_acks_are_not_goodput() -> None:
    sim, a, b = pair()
    sim.run(until=30.0)  # idle: PINGs every 5 s, answered with ACKs
    assert any(r.src == "a" and isinstance(r.packet, Ping) for r in sim.log)
    assert a.stats.tx_bytes > 0
    assert (a.stats.bytes_acked, b.stats.bytes_delivered) == (0, 0)
    assert (b.stats.bytes_acked, a.stats.bytes_delivered) == (0, 0)
    sim.send("b", b"answer")
    sim.run(until=31.0)
    assert (b.stats.bytes_acked, a.stats.bytes_delivered) == (6, 6)
    assert (a.stats.bytes_acked, b.stats.bytes_delivered) == (0, 0)


def test_bytes_behind_a_gap_count_only_once_the_gap_is_filled() -> None:
    """The second message arrives and is SACKed while the first is lost: neither is goodput
    until the first is repaired (RACK, one RTT after the loss), as a reader would see it."""
    sim, a, b = pair()
    dropped: list[int] = []

    def fate(rec: TxRecord, wire: bytes) -> list[Delivery]:
        if isinstance(rec.packet, Data) and not dropped:
            dropped.append(rec.packet.seq)
            return []
        return [Delivery(wire)]

    sim.fate = fate
    sim.send("a", b"first" * 4)  # 20 bytes at 0.2, lost
    sim.run(until=0.21)
    sim.send("a", b"second" * 5)  # 30 bytes at 0.21: at b at 0.26, SACKed at a at 0.31
    sim.run(until=0.33)  # the first one is resent at 0.31 and reaches b at 0.36
    assert dropped
    assert a.stats.retransmissions == 1
    assert (a.stats.bytes_acked, b.stats.bytes_delivered) == (0, 0)
    assert messages(sim, "b") == []
    sim.run(until=0.5)
    assert messages(sim, "b") == [b"first" * 4, b"second" * 5]
    assert (a.stats.bytes_acked, b.stats.bytes_delivered) == (50, 50)


async def test_stream_metrics_carry_the_goodput_counters() -> None:
    msgs = [bytes([i % 251]) * (i * 53 % 900) for i in range(40)]
    total = sum(len(m) for m in msgs)
    async with stream_pair() as (left, right):
        for m in msgs:
            await left.send(m)
        async with asyncio.timeout(10):
            got = [await right.receive() for _ in msgs]
            await left.drain()
        assert got == msgs
        sent, received = left.metrics, right.metrics
        assert (sent.tx_goodput_bytes, received.rx_goodput_bytes) == (total, total)
        assert (sent.rx_goodput_bytes, received.tx_goodput_bytes) == (0, 0)
        assert sent.tx_frames > 0
