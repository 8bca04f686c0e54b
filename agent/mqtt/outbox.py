"""The store-and-forward outbox: QoS 1 messages for peers, kept in the agent's SQLite store.

A message is written here (``synchronous=FULL``, group-committed) *before* the local broker gets
its PUBACK, so once the broker forgot it, the outbox has it: it survives a crash of the agent
and a power cut, and the broker resends what was not acknowledged (iotedge#706 lost messages
this way). Messages leave only when the peer says it published them to its own broker
(:meth:`Outbox.ack`), in ``seq`` order per peer.

Bounds: at most ``max_messages`` messages and ``max_bytes`` bytes of topic plus payload, over
all peers. When a new message would break a bound, the oldest messages (of any peer) are
dropped first, and each drop is counted per peer in ``mqtt_counters`` (kept across restarts).

Sequence numbers come from SQLite's AUTOINCREMENT, so they only grow, also across restarts; with
the outbox's ``epoch`` (random, made once per database) a receiver can tell a redelivery
(``seq`` at or below the last it published) from a new message (see :class:`InboundMarks`).

Methods are synchronous and thread-safe: :meth:`Outbox.append` pays an fsync and is meant to
run in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import dataclasses
import secrets
import threading
import time
from collections.abc import Iterable, Sequence
from typing import Any

from agent.store import Store

__all__ = ["AppendResult", "InboundMarks", "Outbox", "Outgoing", "PeerRoute", "Queued"]


@dataclasses.dataclass(frozen=True, slots=True)
class Outgoing:
    """A message to store for a peer.

    Attributes:
        peer: the peer's node ID.
        topic: the topic on the peer's broker.
        payload: bytes.
        qos: QoS to publish with there (1).
        retain: publish retained there.
    """

    peer: str
    topic: str
    payload: bytes
    qos: int
    retain: bool

    @property
    def size(self) -> int:
        """Bytes counted against ``max_bytes``: UTF-8 topic plus payload."""
        return len(self.topic.encode("utf-8", "surrogatepass")) + len(self.payload)


@dataclasses.dataclass(frozen=True, slots=True)
class Queued:
    """A stored message, as :meth:`Outbox.peek` returns it (``size`` as :attr:`Outgoing.size`)."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    size: int


@dataclasses.dataclass(frozen=True)
class AppendResult:
    """What :meth:`Outbox.append` did.

    Attributes:
        stored: messages written.
        dropped: per peer, messages dropped to keep within the bounds (older ones first; a
            new message is dropped only when the new batch alone breaks a bound).
        rejected: messages larger than ``max_bytes`` on their own (never stored).
    """

    stored: int
    dropped: dict[str, int]
    rejected: int


@dataclasses.dataclass(frozen=True, slots=True)
class PeerRoute:
    """A subscription a peer asked for (its ``in`` mapping), kept across restarts.

    Attributes:
        filter: topic filter on our broker.
        strip: prefix removed from our topics.
        prefix: prefix put in front on the peer's side.
        qos: 0 or 1.
    """

    filter: str
    strip: str
    prefix: str
    qos: int


class Outbox:
    """The outbox over the agent's store.

    Args:
        store: the agent's database (tables ``mqtt_outbox`` and ``mqtt_counters``).
        max_messages: bound on stored messages, >= 1.
        max_bytes: bound on stored bytes (topic plus payload), >= 1.
    """

    def __init__(self, store: Store, max_messages: int, max_bytes: int) -> None:
        self._store = store
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self.epoch = self._load_epoch()
        rows = store.query("SELECT peer, COUNT(*), SUM(size) FROM mqtt_outbox GROUP BY peer")
        self._depth: dict[str, list[int]] = {peer: [n, b or 0] for peer, n, b in rows}
        self.rejected = 0
        """Messages too large for the outbox since start."""

    def _load_epoch(self) -> str:
        with self._store.transaction() as db:
            db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('mqtt_outbox_epoch', ?)",
                (secrets.token_hex(8),),
            )
            row = db.execute("SELECT value FROM meta WHERE key = 'mqtt_outbox_epoch'").fetchone()
        return str(row[0])

    # ----------------------------------------------------------------- writing

    def append(self, messages: Sequence[Outgoing]) -> AppendResult:
        """Store messages durably (one fsync for the batch), dropping the oldest to stay
        within the bounds.

        Returns:
            What was stored, dropped and rejected.

        Raises:
            sqlite3.Error: the database failed (nothing of the batch is stored).
        """
        fits = [m for m in messages if m.size <= self.max_bytes]
        rejected = len(messages) - len(fits)
        now = time.time()
        with self._lock:
            with self._store.transaction() as db:
                count = sum(n for n, _ in self._depth.values()) + len(fits)
                size = sum(b for _, b in self._depth.values()) + sum(m.size for m in fits)
                dropped: dict[str, int] = {}
                freed: dict[str, list[int]] = {}
                if count > self.max_messages or size > self.max_bytes:
                    cutoff = None
                    rows = db.execute("SELECT seq, peer, size FROM mqtt_outbox ORDER BY seq")
                    for seq, peer, n in rows:
                        if count <= self.max_messages and size <= self.max_bytes:
                            break
                        cutoff, count, size = seq, count - 1, size - n
                        dropped[peer] = dropped.get(peer, 0) + 1
                        entry = freed.setdefault(peer, [0, 0])
                        entry[0], entry[1] = entry[0] + 1, entry[1] + n
                    if cutoff is not None:
                        db.execute("DELETE FROM mqtt_outbox WHERE seq <= ?", (cutoff,))
                while fits and (count > self.max_messages or size > self.max_bytes):
                    first = fits.pop(0)
                    count, size = count - 1, size - first.size
                    dropped[first.peer] = dropped.get(first.peer, 0) + 1
                db.executemany(
                    "INSERT INTO mqtt_outbox (peer, topic, payload, qos, retain, size, queued_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [(m.peer, m.topic, m.payload, m.qos, int(m.retain), m.size, now) for m in fits],
                )
                _add_counts(db, "dropped", dropped)
            for peer, (n, b) in freed.items():
                self._shrink(peer, n, b)
            for m in fits:
                entry = self._depth.setdefault(m.peer, [0, 0])
                entry[0], entry[1] = entry[0] + 1, entry[1] + m.size
        self.rejected += rejected
        return AppendResult(len(fits), dropped, rejected)

    def _shrink(self, peer: str, count: int, size: int) -> None:
        entry = self._depth.get(peer)
        if entry is None:
            return
        entry[0], entry[1] = entry[0] - count, entry[1] - size
        if entry[0] <= 0:
            del self._depth[peer]

    def ack(self, peer: str, upto: int) -> int:
        """Remove the peer's messages with ``seq <= upto`` (the peer published them) and count
        them as delivered. Not fsynced: after a power cut a few may be sent again, and the
        receiver skips them by ``seq``.

        Returns:
            The number of messages removed.
        """
        with self._lock, self._store.transaction(durable=False) as db:
            sizes = db.execute(
                "DELETE FROM mqtt_outbox WHERE peer = ? AND seq <= ? RETURNING size", (peer, upto)
            ).fetchall()
            _add_counts(db, "delivered", {peer: len(sizes)} if sizes else {})
            self._shrink(peer, len(sizes), sum(s for (s,) in sizes))
        return len(sizes)

    # ----------------------------------------------------------------- reading

    def peek(self, peer: str, limit: int, max_bytes: int) -> list[Queued]:
        """The peer's oldest messages in order: at most ``limit`` messages and ``max_bytes``
        bytes, but always the first one if there is any."""
        rows = self._store.query(
            "SELECT seq, topic, payload, qos, retain, size FROM mqtt_outbox WHERE peer = ? "
            "ORDER BY seq LIMIT ?",
            (peer, limit),
        )
        batch: list[Queued] = []
        total = 0
        for seq, topic, payload, qos, retain, size in rows:
            if batch and total + size > max_bytes:
                break
            batch.append(Queued(seq, topic, bytes(payload), qos, bool(retain), size))
            total += size
        return batch

    def depth(self, peer: str | None = None) -> tuple[int, int]:
        """``(messages, bytes)`` queued for ``peer``, or for all peers."""
        with self._lock:
            if peer is not None:
                n, b = self._depth.get(peer, (0, 0))
                return n, b
            return (
                sum(n for n, _ in self._depth.values()),
                sum(b for _, b in self._depth.values()),
            )

    def queued_peers(self) -> list[str]:
        """Peers with queued messages."""
        with self._lock:
            return sorted(self._depth)

    def counters(self) -> dict[str, tuple[int, int]]:
        """Per peer, ``(delivered, dropped)`` since the outbox was made (kept across restarts)."""
        rows = self._store.query("SELECT peer, delivered, dropped FROM mqtt_counters")
        return {peer: (delivered, dropped) for peer, delivered, dropped in rows}

    # ----------------------------------------------------------------- peer routes

    def peer_routes(self) -> dict[str, list[PeerRoute]]:
        """The stored subscriptions of every peer."""
        routes: dict[str, list[PeerRoute]] = {}
        rows = self._store.query(
            "SELECT peer, filter, strip, prefix, qos FROM mqtt_peer_routes ORDER BY peer, filter"
        )
        for peer, filter_, strip, prefix, qos in rows:
            routes.setdefault(peer, []).append(PeerRoute(filter_, strip, prefix, qos))
        return routes

    def set_peer_routes(self, peer: str, routes: Iterable[PeerRoute]) -> None:
        """Replace a peer's stored subscriptions (durable)."""
        with self._store.transaction() as db:
            db.execute("DELETE FROM mqtt_peer_routes WHERE peer = ?", (peer,))
            db.executemany(
                "INSERT OR IGNORE INTO mqtt_peer_routes (peer, filter, strip, prefix, qos) "
                "VALUES (?, ?, ?, ?, ?)",
                [(peer, r.filter, r.strip, r.prefix, r.qos) for r in routes],
            )


def _add_counts(db: Any, column: str, counts: dict[str, int]) -> None:
    db.executemany(
        f"INSERT INTO mqtt_counters (peer, {column}) VALUES (?, ?) "
        f"ON CONFLICT (peer) DO UPDATE SET {column} = {column} + excluded.{column}",
        list(counts.items()),
    )


class InboundMarks:
    """Per origin node, the last outbox ``seq`` this node published, so that a batch sent
    again (the ack was lost, the sender restarted) is not published twice.

    A new ``epoch`` from an origin (its database was made anew) starts over at 0. Marks are
    written without fsync: after a power cut a few messages may be published twice, which
    QoS 1 (at least once) allows.

    Args:
        store: the agent's database (table ``mqtt_inbound``).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        rows = store.query("SELECT origin, epoch, last_seq FROM mqtt_inbound")
        self._marks: dict[str, tuple[str, int]] = {o: (e, s) for o, e, s in rows}

    def last(self, origin: str, epoch: str) -> int:
        """The last ``seq`` published from ``origin`` in ``epoch`` (0: none)."""
        mark = self._marks.get(origin)
        return mark[1] if mark is not None and mark[0] == epoch else 0

    def advance(self, origin: str, epoch: str, seq: int) -> None:
        """Record that every message of ``origin`` up to ``seq`` in ``epoch`` was published."""
        if seq <= self.last(origin, epoch):
            return
        self._marks[origin] = (epoch, seq)
        with self._store.transaction(durable=False) as db:
            db.execute(
                "INSERT OR REPLACE INTO mqtt_inbound (origin, epoch, last_seq) VALUES (?, ?, ?)",
                (origin, epoch, seq),
            )
