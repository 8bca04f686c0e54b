"""The store-and-forward outbox on a real SQLite store: order, bounds, drops, restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.mqtt.outbox import InboundMarks, Outbox, Outgoing, PeerRoute
from agent.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "agent.db")


def msg(peer: str, n: int, size: int = 10) -> Outgoing:
    return Outgoing(peer, "t", str(n).encode().ljust(size - 1, b"."), 1, False)


def test_messages_leave_in_order_per_peer_and_count_as_delivered(store: Store) -> None:
    box = Outbox(store, 100, 10_000)
    box.append([msg("p", 0), msg("q", 0), msg("p", 1), msg("p", 2)])
    batch = box.peek("p", 2, 10_000)
    assert [b.payload[:1] for b in batch] == [b"0", b"1"]
    assert box.ack("p", batch[-1].seq) == 2
    assert [b.payload[:1] for b in box.peek("p", 10, 10_000)] == [b"2"]
    assert box.depth("p") == (1, 10)
    assert box.depth() == (2, 20)
    assert box.counters()["p"] == (2, 0)


def test_peek_bounds_bytes_but_always_returns_one(store: Store) -> None:
    box = Outbox(store, 100, 100_000)
    box.append([msg("p", i, 1000) for i in range(5)])
    assert len(box.peek("p", 10, 2500)) == 2
    assert len(box.peek("p", 10, 10)) == 1


def test_oldest_dropped_first_when_full_and_counted_per_peer(store: Store) -> None:
    box = Outbox(store, 5, 10_000)
    box.append([msg("p", i) for i in range(3)] + [msg("q", 0)])
    result = box.append([msg("q", 1), msg("q", 2), msg("q", 3)])
    assert result.dropped == {"p": 2}
    assert [b.payload[:1] for b in box.peek("p", 10, 10_000)] == [b"2"]
    assert box.depth() == (5, 50)
    assert box.counters()["p"] == (0, 2)


def test_byte_bound_and_a_batch_larger_than_the_bound(store: Store) -> None:
    box = Outbox(store, 1000, 35)
    result = box.append([msg("p", i) for i in range(5)])  # 50 bytes into 35
    assert result.dropped == {"p": 2}
    assert [b.payload[:1] for b in box.peek("p", 10, 10_000)] == [b"2", b"3", b"4"]
    result = box.append([Outgoing("p", "t", b"x" * 100, 1, False)])
    assert result.rejected == 1
    assert box.rejected == 1
    assert box.depth() == (3, 30)


def test_outbox_survives_reopening_with_its_epoch_and_sequence(tmp_path: Path) -> None:
    first = Store(tmp_path / "agent.db")
    box = Outbox(first, 100, 10_000)
    box.append([msg("p", 0), msg("p", 1)])
    seqs = [b.seq for b in box.peek("p", 10, 10_000)]
    epoch = box.epoch
    first.close()
    again = Outbox(Store(tmp_path / "agent.db"), 100, 10_000)
    assert again.epoch == epoch
    assert [b.seq for b in again.peek("p", 10, 10_000)] == seqs
    assert again.depth("p") == (2, 20)
    again.ack("p", seqs[-1])
    again.append([msg("p", 2)])
    assert again.peek("p", 10, 10_000)[0].seq > seqs[-1]  # sequence numbers only grow


def test_inbound_marks_skip_what_was_published_and_reset_with_a_new_epoch(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "agent.db")
    marks = InboundMarks(store)
    marks.advance("origin", "e1", 41)
    marks.advance("origin", "e1", 7)  # never backwards
    assert marks.last("origin", "e1") == 41
    assert marks.last("origin", "e2") == 0
    store.close()
    assert InboundMarks(Store(tmp_path / "agent.db")).last("origin", "e1") == 41


def test_peer_routes_replace_and_persist(store: Store) -> None:
    box = Outbox(store, 10, 10)
    box.set_peer_routes("p", [PeerRoute("a/#", "", "x/", 1), PeerRoute("b", "", "", 0)])
    box.set_peer_routes("p", [PeerRoute("c/#", "c/", "", 1)])
    assert box.peer_routes() == {"p": [PeerRoute("c/#", "c/", "", 1)]}
