"""Moving messages between agents over the mesh: one sender per peer, and the receiving side.

Wire: one RPC method, ``mqtt.deliver``, over :meth:`agent.mesh.Mesh.request`, with the body
``{"qos": 0|1, "epoch": str, "messages": [[seq, topic, payload, retain], ...]}`` (``seq`` 0 for
QoS 0) and the answer ``{"acked": seq}``: the highest ``seq`` the receiver has published to its
broker (QoS 1: after the broker's PUBACK). The sender then deletes everything up to it from
the outbox. Batches hold at most :data:`BATCH_MESSAGES` messages and :data:`BATCH_BYTES` bytes,
one batch in flight per peer, so the order of the outbox is the order on the peer's broker.

* **QoS 1** (store-and-forward): messages wait in the :class:`~agent.mqtt.outbox.Outbox` until
  acknowledged; a failed or unanswered batch is sent again after a backoff (0.5 s doubling to
  30 s) or as soon as the peer's session comes back up. The receiver skips messages whose
  ``seq`` it already published (:class:`~agent.mqtt.outbox.InboundMarks`), so a lost answer
  does not publish twice; duplicates remain possible only where QoS 1 allows them (the
  receiving agent died between its broker's PUBACK and recording the mark).
* **QoS 0** (at most once): a bounded queue in memory per peer, sent when the peer is
  reachable, discarded (and counted) when it is not.

A receiver publishes only topics that ``mqtt.peer_write`` allows; others are counted as
rejected and acknowledged, so that a sender does not retry them for ever.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from agent.errors import BadRequestError, FloreteError, NotFoundError
from agent.identity import short_id
from agent.mqtt.client import BrokerClient, BrokerRejectedError, BrokerUnavailableError
from agent.mqtt.outbox import InboundMarks, Outbox
from agent.mqtt.routes import OnceLog
from agent.mqtt.settings import check_topic, topic_matches
from agent.rpc import RpcError

__all__ = [
    "BATCH_BYTES",
    "BATCH_MESSAGES",
    "DELIVER_METHOD",
    "Forwarder",
    "PeerSender",
    "Receiver",
]

log = logging.getLogger(__name__)

DELIVER_METHOD = "mqtt.deliver"
BATCH_MESSAGES = 256
"""Most messages in one ``mqtt.deliver`` request."""
BATCH_BYTES = 48 * 1024
"""Most bytes of topics and payloads in one request (a session message is at most 64 KiB)."""
MAX_MESSAGE_BYTES = BATCH_BYTES
"""Largest message bridged: topic plus payload, bytes. Larger ones are rejected and counted."""
QOS0_QUEUE = 1000
"""QoS 0 messages queued per peer; beyond, the oldest is discarded."""
DELIVER_TIMEOUT = 30.0
"""Seconds a sender waits for the answer to one batch."""
PUBLISH_TIMEOUT = 20.0
"""Seconds a receiver waits for its broker's PUBACKs of one batch (below DELIVER_TIMEOUT)."""
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 30.0
IDLE_CHECK = 5.0
"""Seconds between two looks at the outbox of a peer that has nothing queued or is away."""

Batch = list[tuple[int, str, bytes, bool]]
"""Messages of one ``mqtt.deliver`` request: ``(seq, topic, payload, retain)``."""
Mesh = Any  # agent.mesh.Mesh; Any keeps this module free of the mesh's imports in tests


@dataclasses.dataclass
class PeerSender:
    """Delivery to one peer, and its figures for the API.

    Attributes:
        node_id: the peer.
        state: ``idle``, ``sending``, ``unreachable`` or ``retrying``.
        last_error: why the last batch failed (``""`` after a success).
        sent_qos0: QoS 0 messages the peer acknowledged.
        discarded_qos0: QoS 0 messages discarded (peer away, queue full).
        delivered: QoS 1 messages the peer published, since start (totals: the outbox).
        batches: batches acknowledged.
        retries: batches that failed and were sent again.
        last_delivery: Unix time of the last acknowledged batch, or None.
    """

    node_id: str
    state: str = "idle"
    last_error: str = ""
    sent_qos0: int = 0
    discarded_qos0: int = 0
    delivered: int = 0
    batches: int = 0
    retries: int = 0
    last_delivery: float | None = None
    queue0: collections.deque[tuple[str, bytes, bool]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=QOS0_QUEUE), repr=False
    )
    wake: asyncio.Event = dataclasses.field(default_factory=asyncio.Event, repr=False)
    task: asyncio.Task[None] | None = dataclasses.field(default=None, repr=False)


class Forwarder:
    """The sending side: one task per peer that has something to send.

    Args:
        mesh: the mesh (``request``).
        outbox: the QoS 1 outbox.
    """

    def __init__(self, mesh: Mesh, outbox: Outbox) -> None:
        self.mesh = mesh
        self.outbox = outbox
        self.peers: dict[str, PeerSender] = {}
        self._once = OnceLog(log)
        self._closed = False

    def peer(self, node_id: str) -> PeerSender:
        """The sender of ``node_id`` (made, with its task, on first use)."""
        sender = self.peers.get(node_id)
        if sender is None:
            sender = self.peers[node_id] = PeerSender(node_id)
        if sender.task is None and not self._closed:
            sender.task = asyncio.get_running_loop().create_task(
                self._run(sender), name=f"mqtt-send-{short_id(node_id)}"
            )
            sender.task.add_done_callback(self._ended)
        return sender

    def _ended(self, task: asyncio.Task[None]) -> None:
        """A sender never ends but by cancellation; log it if it failed, and let the next
        :meth:`peer` start a new one."""
        for sender in self.peers.values():
            if sender.task is task:
                sender.task = None
        if not task.cancelled() and task.exception() is not None:
            log.error("MQTT: sender %s failed", task.get_name(), exc_info=task.exception())

    def wake(self, node_id: str) -> None:
        """Look at the peer's queues now (new messages, or its session came up)."""
        self.peer(node_id).wake.set()

    def send_qos0(self, node_id: str, topic: str, payload: bytes, retain: bool) -> None:
        """Queue a QoS 0 message for a peer (the oldest is discarded when the queue is full)."""
        sender = self.peer(node_id)
        if len(sender.queue0) == QOS0_QUEUE:
            sender.discarded_qos0 += 1
        sender.queue0.append((topic, payload, retain))
        sender.wake.set()

    async def close(self) -> None:
        """Stop every sender (what is in the outbox stays there)."""
        self._closed = True
        tasks = [s.task for s in self.peers.values() if s.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, sender: PeerSender) -> None:
        backoff = BACKOFF_FIRST
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(IDLE_CHECK):
                    await sender.wake.wait()
            sender.wake.clear()
            while True:
                try:
                    progressed = await self._send_some(sender)
                except NotFoundError as err:
                    sender.state, sender.last_error = "unreachable", str(err)
                    self._discard_qos0(sender)
                    break
                except FloreteError as err:
                    sender.state, sender.last_error = "retrying", str(err)
                    sender.retries += 1
                    self._once.warning(
                        f"deliver {sender.node_id}",
                        "MQTT: delivery to %s failed (retry in %.1f s): %s",
                        short_id(sender.node_id),
                        backoff,
                        err,
                    )
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(backoff):
                            await sender.wake.wait()
                    sender.wake.clear()
                    backoff = min(backoff * 2, BACKOFF_MAX)
                    continue
                if not progressed:
                    sender.state = "idle"
                    break
                backoff = BACKOFF_FIRST
                if self._once.clear(f"deliver {sender.node_id}"):
                    log.info("MQTT: delivery to %s works again", short_id(sender.node_id))

    def _discard_qos0(self, sender: PeerSender) -> None:
        sender.discarded_qos0 += len(sender.queue0)
        sender.queue0.clear()

    async def _send_some(self, sender: PeerSender) -> bool:
        """Send one batch of each kind that has something; False when there was nothing.

        Raises:
            NotFoundError: no session to the peer, or its links are down (batches are not
                queued into a dead link: they would wait there and time out).
            FloreteError: the batch failed (timeout, session closed, the peer's error).
        """
        neighbour = self.mesh.table.get(sender.node_id)
        if neighbour is None or not neighbour.up:
            raise NotFoundError(f"peer {short_id(sender.node_id)} is not up")
        progressed = False
        if sender.queue0:
            batch = _take(sender.queue0)
            sender.state = "sending"
            body = {"qos": 0, "epoch": "", "messages": [[0, t, p, r] for t, p, r in batch]}
            try:
                await self._request(sender.node_id, body)
            except FloreteError:
                sender.discarded_qos0 += len(batch)
                raise
            sender.sent_qos0 += len(batch)
            progressed = True
        rows = self.outbox.peek(sender.node_id, BATCH_MESSAGES, BATCH_BYTES)
        if rows:
            sender.state = "sending"
            body = {
                "qos": 1,
                "epoch": self.outbox.epoch,
                "messages": [[r.seq, r.topic, r.payload, r.retain] for r in rows],
            }
            answer = await self._request(sender.node_id, body)
            acked = answer.get("acked") if isinstance(answer, dict) else None
            if not isinstance(acked, int) or isinstance(acked, bool):
                raise BadRequestError(f"peer answered {DELIVER_METHOD} with {answer!r}")
            removed = self.outbox.ack(sender.node_id, min(acked, rows[-1].seq))
            sender.delivered += removed
            sender.batches += 1
            sender.last_delivery = time.time()
            progressed = True
        return progressed

    async def _request(self, node_id: str, body: dict[str, Any]) -> Any:
        try:
            return await self.mesh.request(node_id, DELIVER_METHOD, body, DELIVER_TIMEOUT)
        except RpcError as err:
            if err.status == 404:
                raise RpcError(f"the peer has no MQTT bridge ({err})", 404) from err
            raise


def _take(queue: collections.deque[tuple[str, bytes, bool]]) -> list[tuple[str, bytes, bool]]:
    batch: list[tuple[str, bytes, bool]] = []
    size = 0
    while queue and len(batch) < BATCH_MESSAGES:
        topic, payload, _ = queue[0]
        n = len(topic.encode("utf-8", "surrogatepass")) + len(payload)
        if batch and size + n > BATCH_BYTES:
            break
        batch.append(queue.popleft())
        size += n
    return batch


@dataclasses.dataclass
class ReceiverStats:
    """Counters of the receiving side (all peers, since start).

    Attributes:
        published: messages from peers published to the local broker.
        duplicates: QoS 1 messages skipped because their ``seq`` was already published.
        rejected: messages refused: invalid topic, not allowed by ``mqtt.peer_write``, refused
            by the broker.
        discarded_qos0: QoS 0 messages from peers dropped because the broker was down.
    """

    published: int = 0
    duplicates: int = 0
    rejected: int = 0
    discarded_qos0: int = 0


class Receiver:
    """The receiving side of ``mqtt.deliver``: publishes what peers send to the local broker.

    Args:
        client: the local broker connection.
        marks: the per-origin marks of what was published.
        allowed: the ``mqtt.peer_write`` filters.
    """

    def __init__(self, client: BrokerClient, marks: InboundMarks, allowed: Sequence[str]) -> None:
        self.client = client
        self.marks = marks
        self.allowed = tuple(allowed)
        self.stats = ReceiverStats()
        self._locks: dict[str, asyncio.Lock] = {}
        self._once = OnceLog(log)

    async def deliver(self, origin: str, body: Any) -> dict[str, int]:
        """Serve one ``mqtt.deliver`` request from ``origin`` (its authenticated node ID).

        Returns:
            ``{"acked": seq}``: every message up to ``seq`` is published (or was rejected for
            good, or skipped as a duplicate).

        Raises:
            BadRequestError: the body is malformed (400).
            BrokerUnavailableError: the local broker is not connected, or did not acknowledge
                in time (503: the sender retries).
        """
        qos, epoch, messages = _parse(body)
        if qos == 0:
            return self._deliver_qos0(origin, messages)
        async with self._locks.setdefault(origin, asyncio.Lock()):
            return await self._deliver_qos1(origin, epoch, messages)

    def _allowed(self, origin: str, topic: str) -> bool:
        try:
            check_topic(topic)
        except ValueError as err:
            reason = str(err)
        else:
            if any(topic_matches(f, topic) for f in self.allowed):
                return True
            reason = f"topic {topic!r} is not allowed by mqtt.peer_write"
        self.stats.rejected += 1
        self._once.warning(
            f"reject {origin}", "MQTT: refused a message from %s: %s", short_id(origin), reason
        )
        return False

    def _deliver_qos0(self, origin: str, messages: Batch) -> dict[str, int]:
        for _, topic, payload, retain in messages:
            if not self._allowed(origin, topic):
                continue
            if not self.client.connected:
                self.stats.discarded_qos0 += 1
                continue
            self.client.publish_nowait(topic, payload, retain)
            self.stats.published += 1
        return {"acked": 0}

    async def _deliver_qos1(self, origin: str, epoch: str, messages: Batch) -> dict[str, int]:
        if not self.client.connected:
            raise BrokerUnavailableError("the local MQTT broker is not connected")
        last = self.marks.last(origin, epoch)
        done = last
        waiting: list[tuple[int, asyncio.Future[None] | None]] = []
        failure: FloreteError | None = None
        for seq, topic, payload, retain in messages:
            if seq <= last:
                self.stats.duplicates += 1
                waiting.append((seq, None))
                continue
            if not self._allowed(origin, topic):
                waiting.append((seq, None))
                continue
            try:
                future = await self.client.publish(topic, payload, 1, retain)
            except BrokerUnavailableError as err:
                failure = err
                break
            waiting.append((seq, future))
        deadline = asyncio.get_running_loop().time() + PUBLISH_TIMEOUT
        for seq, future in waiting:
            if future is not None:
                try:
                    async with asyncio.timeout_at(deadline):
                        await asyncio.shield(future)
                    self.stats.published += 1
                except BrokerRejectedError as err:
                    self.stats.rejected += 1
                    self._once.warning(f"broker {origin}", "MQTT: %s", err)
                except (TimeoutError, BrokerUnavailableError):
                    failure = BrokerUnavailableError(
                        f"the local MQTT broker did not acknowledge within {PUBLISH_TIMEOUT} s"
                    )
                    break
            done = max(done, seq)
        self.marks.advance(origin, epoch, done)
        if failure is not None:
            raise failure
        return {"acked": done}


def _parse(body: Any) -> tuple[int, str, Batch]:
    """Check an ``mqtt.deliver`` body.

    Raises:
        BadRequestError: it is not ``{"qos", "epoch", "messages"}`` of the right types, or the
            ``seq`` values of a QoS 1 batch do not increase.
    """
    if not isinstance(body, dict):
        raise BadRequestError(f"{DELIVER_METHOD}: expected a map, got {type(body).__name__}")
    qos, epoch, raw = body.get("qos"), body.get("epoch"), body.get("messages")
    if qos not in (0, 1) or isinstance(qos, bool):
        raise BadRequestError(f"{DELIVER_METHOD}: qos must be 0 or 1, got {qos!r}")
    if not isinstance(epoch, str) or (qos == 1 and not epoch):
        raise BadRequestError(f"{DELIVER_METHOD}: epoch must be text")
    if not isinstance(raw, list) or len(raw) > BATCH_MESSAGES:
        raise BadRequestError(f"{DELIVER_METHOD}: messages must be a list of <= {BATCH_MESSAGES}")
    messages: Batch = []
    previous = 0
    for i, item in enumerate(raw):
        if not (
            isinstance(item, list)
            and len(item) == 4
            and type(item[0]) is int
            and isinstance(item[1], str)
            and isinstance(item[2], bytes)
            and isinstance(item[3], bool)
        ):
            raise BadRequestError(
                f"{DELIVER_METHOD}: messages[{i}] must be [seq, topic, payload bytes, retain]"
            )
        seq = item[0]
        if qos == 1 and seq <= previous:
            raise BadRequestError(f"{DELIVER_METHOD}: messages[{i}]: seq {seq} does not increase")
        previous = seq
        messages.append((seq, item[1], item[2], item[3]))
    return int(qos), epoch, messages
