"""The MQTT bridge: the local broker on one side, the peers' agents across the mesh on the other.

Data flow::

    local broker ─► BrokerClient ─► routes ─► QoS 1: outbox (fsync, then PUBACK) ─┐
                                           └► QoS 0: queue in memory ────────────┴► Forwarder
    Forwarder ─► mesh "mqtt.deliver" ─► peer's Receiver ─► peer's broker ─► ack ─► outbox ack
    serial sensors, telemetry ─► local broker, and through the routes as if received

Routes come from this node's ``out``/``both`` mappings and from the subscriptions peers ask
for with their ``in``/``both`` mappings (method ``mqtt.subscribe``, checked against
``mqtt.peer_read`` and kept in the store, so forwarding for an absent peer goes on across our
restarts). This node sends its own ``in`` subscriptions to each peer when the peer's session
comes up.

Loop prevention: the broker never hands the bridge its own publications (MQTT 5 no-local, or
mosquitto's bridge flag with 3.1.1), and what the bridge publishes for a peer never enters the
routes, so every message crosses exactly one mesh hop. Two nodes may both map the same topics
in both directions without a loop.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import sqlite3
from collections.abc import Callable
from typing import Any

from agent.errors import BadRequestError, FloreteError
from agent.identity import Identity, short_id
from agent.mqtt.client import (
    BrokerClient,
    BrokerUnavailableError,
    ClientOptions,
    Received,
    read_password,
)
from agent.mqtt.forwarder import DELIVER_METHOD, MAX_MESSAGE_BYTES, Forwarder, Receiver
from agent.mqtt.outbox import InboundMarks, Outbox, Outgoing, PeerRoute
from agent.mqtt.routes import OnceLog, Route, RouteTable
from agent.mqtt.serial_sensors import SensorReader
from agent.mqtt.settings import MqttConfig, check_filter, filter_covers
from agent.mqtt.telemetry import Telemetry
from agent.neighbours import NeighbourChange, NeighbourTable
from agent.store import Store
from agent.trust import TrustStore

__all__ = ["SUBSCRIBE_METHOD", "Bridge"]

log = logging.getLogger(__name__)

SUBSCRIBE_METHOD = "mqtt.subscribe"
LOCAL_QUEUE = 1000
"""Messages of serial sensors and telemetry waiting for the broker; beyond, the oldest goes."""
MAX_PEER_ROUTES = 64
"""Subscriptions one peer may hold here."""


def topic_safe(name: str) -> str:
    """A node name as one topic level: ``/``, ``+``, ``#`` and NUL become ``_``."""
    return re.sub(r"[/+#\0]", "_", name) or "_"


class Bridge:
    """The MQTT bridge of this node.

    Args:
        config: the ``[mqtt]`` section (``broker`` set).
        identity: this node's identity.
        store: the agent's database (outbox, marks, peer subscriptions).
        mesh: the running mesh (``request``, ``on_peer_request``, ``links``, and its neighbour
            table: a peer coming up wakes its sender).
        trust: the trust store (who the peers are; names of ``peers`` in mappings).

    Raises:
        ConfigError: ``mqtt.password_file`` cannot be read.
    """

    def __init__(
        self,
        config: MqttConfig,
        *,
        identity: Identity,
        store: Store,
        mesh: Any,
        trust: TrustStore,
    ) -> None:
        assert config.broker is not None
        self.config = config
        self.identity = identity
        self.mesh = mesh
        self.trust = trust
        self.table: NeighbourTable = mesh.table
        self.base_topic = config.base_topic or f"florete/{topic_safe(identity.name)}"
        self.outbox = Outbox(store, config.outbox_max_messages, config.outbox_max_bytes)
        self.telemetry = Telemetry(
            identity.node_id,
            identity.name,
            self.base_topic,
            config.discovery_prefix if config.telemetry else "",
            lambda: collections.Counter(
                p.status.get("phase", "Pending") for p in store.list_pods()
            ),
            mesh.links,
        )
        options = ClientOptions(
            broker=config.broker,
            client_id=config.client_id or f"florete-{short_id(identity.node_id).lower()}",
            protocol=config.protocol,
            keepalive=int(config.keepalive),
            username=config.username,
            password=config.password
            or (read_password(config.password_file) if config.password_file else ""),
            tls_ca=config.tls_ca,
            max_inflight=config.max_inflight,
            will_topic=self.telemetry.availability_topic,
        )
        self.client = BrokerClient(options, self._on_local, self._on_connect)
        self.forwarder = Forwarder(mesh, self.outbox)
        self.receiver = Receiver(self.client, InboundMarks(store), config.peer_write)
        self.routes = RouteTable()
        self.sensors = [
            SensorReader(
                spec,
                spec.topic or f"{self.base_topic}/serial/{topic_safe(spec.name)}",
                self._emit_local,
            )
            for spec in config.serial_sensors
        ]
        self.received = 0
        """Messages from the local broker that matched a route."""
        self.dropped_local = 0
        """Messages of sensors and telemetry dropped while the broker was away."""
        self.subscribed: dict[str, str] = {}
        """Peer -> the outcome of sending it our ``in`` subscriptions."""
        self._peer_routes = self.outbox.peer_routes()
        self._writes: list[tuple[int | None, list[Outgoing]]] = []
        self._write_wake = asyncio.Event()
        self._writing = False
        self._local: collections.deque[tuple[str, bytes, int, bool]] = collections.deque(
            maxlen=LOCAL_QUEUE
        )
        self._local_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._once = OnceLog(log)
        self._unlisten: list[Callable[[], None]] = []

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Connect to the broker (in the background), serve the peers' requests, start the
        senders, sensors and telemetry.

        Raises:
            ConfigError: the TLS CA bundle cannot be loaded.
        """
        self._rebuild_routes()
        await self.client.start()
        self.mesh.on_peer_request(DELIVER_METHOD, self.receiver.deliver)
        self.mesh.on_peer_request(SUBSCRIBE_METHOD, self._on_subscribe)
        self._unlisten.append(self.table.add_listener(self._on_neighbour))
        self._unlisten.append(self.trust.add_listener(lambda _peer: self._rebuild_routes()))
        self._spawn(self._write_loop(), "mqtt-outbox")
        self._spawn(self._local_loop(), "mqtt-local")
        if self.config.telemetry:
            self._spawn(self._telemetry_loop(), "mqtt-telemetry")
        for reader in self.sensors:
            self._spawn(reader.run(), f"mqtt-serial-{reader.spec.name}")
        for peer in self.outbox.queued_peers():
            self.forwarder.wake(peer)
        for neighbour in self.table.neighbours():
            if neighbour.up:
                self._spawn(self._send_subscriptions(neighbour.node_id), "mqtt-subscribe")

    async def stop(self) -> None:
        """Publish ``offline``, stop every task and disconnect; the outbox stays in the store."""
        for unlisten in self._unlisten:
            unlisten()
        if self.client.connected and self.config.telemetry:
            with contextlib.suppress(FloreteError):
                self.client.publish_nowait(self.telemetry.availability_topic, b"offline", True)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.forwarder.close()
        await self.client.stop()

    def _spawn(self, coro: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("MQTT task %s failed", task.get_name(), exc_info=task.exception())
        if task in self._tasks:
            self._tasks.remove(task)

    # ----------------------------------------------------------------- routes

    def resolve(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """Node IDs of trusted peers named by node ID, short ID or name (all when empty)."""
        trusted = self.trust.trusted()
        if not names:
            return tuple(p.node_id for p in trusted)
        found: list[str] = []
        for name in names:
            hits = [
                p.node_id
                for p in trusted
                if name in (p.node_id, p.name) or short_id(p.node_id) == name.upper()
            ]
            if not hits:
                self._once.warning(
                    f"peer {name}", "MQTT: no trusted peer %r (named in mqtt.mappings)", name
                )
            found += hits
        return tuple(dict.fromkeys(found))

    def _rebuild_routes(self) -> None:
        routes: list[Route] = []
        for i, m in enumerate(self.config.mappings):
            if m.direction in ("out", "both"):
                peers = self.resolve(m.peers)
                routes.append(
                    Route(
                        m.local_filter,
                        m.local_prefix,
                        m.remote_prefix,
                        m.qos,
                        peers,
                        f"mappings[{i}]",
                    )
                )
        trusted = {p.node_id for p in self.trust.trusted()}
        for peer, stored in sorted(self._peer_routes.items()):
            if peer not in trusted:
                continue
            for r in stored:
                routes.append(
                    Route(r.filter, r.strip, r.prefix, r.qos, (peer,), f"peer {short_id(peer)}")
                )
        self.routes = RouteTable(routes)
        wanted = self.routes.filters()
        if self.telemetry.ha_status_topic:
            wanted.setdefault(self.telemetry.ha_status_topic, 0)
        self.client.set_subscriptions(wanted)

    def _in_routes_for(self, peer: str) -> list[PeerRoute]:
        """What this node asks ``peer`` to send (its ``in``/``both`` mappings naming it)."""
        wanted = []
        for m in self.config.mappings:
            if m.direction in ("in", "both") and peer in self.resolve(m.peers):
                wanted.append(PeerRoute(m.remote_filter, m.remote_prefix, m.local_prefix, m.qos))
        return wanted

    async def _send_subscriptions(self, peer: str) -> None:
        wanted = self._in_routes_for(peer)
        body = {"routes": [[r.filter, r.strip, r.prefix, r.qos] for r in wanted]}
        try:
            answer = await self.mesh.request(peer, SUBSCRIBE_METHOD, body, 10.0)
        except FloreteError as err:
            self.subscribed[peer] = f"failed: {err}"
            if wanted:
                self._once.warning(
                    f"subscribe {peer}",
                    "MQTT: cannot subscribe at %s: %s",
                    short_id(peer),
                    err,
                )
            return
        refused = answer.get("refused", []) if isinstance(answer, dict) else []
        self.subscribed[peer] = f"refused: {', '.join(map(str, refused))}" if refused else "ok"
        if refused:
            self._once.warning(
                f"subscribe {peer}",
                "MQTT: %s refused our subscriptions %s (its mqtt.peer_read)",
                short_id(peer),
                refused,
            )

    async def _on_subscribe(self, peer: str, body: Any) -> dict[str, Any]:
        """``mqtt.subscribe`` from ``peer``: replace its subscriptions here.

        Raises:
            BadRequestError: a malformed body (400).
        """
        raw = body.get("routes") if isinstance(body, dict) else None
        if not isinstance(raw, list) or len(raw) > MAX_PEER_ROUTES:
            raise BadRequestError(f"{SUBSCRIBE_METHOD}: routes must be a list of <= 64")
        accepted: list[PeerRoute] = []
        refused: list[str] = []
        for item in raw:
            if not (
                isinstance(item, list)
                and len(item) == 4
                and all(isinstance(x, str) for x in item[:3])
                and item[3] in (0, 1)
            ):
                raise BadRequestError(
                    f"{SUBSCRIBE_METHOD}: each route is [filter, strip, prefix, qos]"
                )
            route = PeerRoute(item[0], item[1], item[2], int(item[3]))
            try:
                check_filter(route.filter)
            except ValueError as err:
                raise BadRequestError(f"{SUBSCRIBE_METHOD}: {err}") from None
            if any(filter_covers(allowed, route.filter) for allowed in self.config.peer_read):
                accepted.append(route)
            else:
                refused.append(route.filter)
        if accepted != self._peer_routes.get(peer, []):
            self.outbox.set_peer_routes(peer, accepted)
            self._peer_routes[peer] = accepted
            if not accepted:
                del self._peer_routes[peer]
            self._rebuild_routes()
            log.info(
                "MQTT: peer %s subscribes to %s",
                short_id(peer),
                ", ".join(r.filter for r in accepted) or "nothing",
            )
        return {"accepted": len(accepted), "refused": refused}

    def _on_neighbour(self, change: NeighbourChange) -> None:
        if change.kind == "up":
            self.forwarder.wake(change.node_id)
            self._spawn(self._send_subscriptions(change.node_id), "mqtt-subscribe")

    # ----------------------------------------------------------------- local messages

    def _on_connect(self) -> None:
        if self.config.telemetry:
            self._spawn(self._announce(), "mqtt-announce")

    def _on_local(self, msg: Received) -> None:
        """A message from the local broker (on the loop, in the broker's order)."""
        if msg.topic == self.telemetry.ha_status_topic and msg.payload == b"online":
            self._spawn(self._announce(), "mqtt-announce")
        self._dispatch(msg.topic, msg.payload, msg.qos, msg.retain, msg.mid if msg.qos else None)

    def _dispatch(
        self, topic: str, payload: bytes, qos: int, retain: bool, mid: int | None
    ) -> None:
        targets = self.routes.targets(topic, qos)
        stored: list[Outgoing] = []
        if targets:
            self.received += 1
            if len(topic.encode("utf-8", "surrogatepass")) + len(payload) > MAX_MESSAGE_BYTES:
                self.outbox.rejected += 1
                self._once.warning(
                    "too large",
                    "MQTT: not bridging a message of %d bytes on %s (at most %d)",
                    len(payload),
                    topic,
                    MAX_MESSAGE_BYTES,
                )
                targets = []
        for target in targets:
            if target.qos == 0:
                self.forwarder.send_qos0(target.peer, target.topic, payload, retain)
            else:
                stored.append(Outgoing(target.peer, target.topic, payload, 1, retain))
        if stored or (mid is not None and (self._writes or self._writing)):
            self._writes.append((mid, stored))  # PUBACKs go in the order received (§4.6)
            self._write_wake.set()
        elif mid is not None:
            self.client.ack(mid)

    async def _write_loop(self) -> None:
        """Group commit: everything that arrived while the last fsync ran goes in one."""
        while True:
            await self._write_wake.wait()
            self._write_wake.clear()
            batch, self._writes = self._writes, []
            if not batch:
                continue
            messages = [m for _, group in batch for m in group]
            self._writing = True
            try:
                result = await asyncio.to_thread(self.outbox.append, messages)
            except sqlite3.Error as err:
                self._once.warning("outbox", "MQTT: cannot store in the outbox (retrying): %s", err)
                self._writes[:0] = batch
                await asyncio.sleep(1.0)
                self._write_wake.set()
                continue
            finally:
                self._writing = False
            self._once.clear("outbox")
            for mid, _ in batch:
                if mid is not None:
                    self.client.ack(mid)
            for peer, count in result.dropped.items():
                self._once.warning(
                    f"full {peer}",
                    "MQTT: outbox full (%d messages / %d bytes): dropped the %d oldest for %s; "
                    "further drops are counted in `florete-agent bridges`",
                    self.outbox.max_messages,
                    self.outbox.max_bytes,
                    count,
                    short_id(peer),
                )
            for peer in dict.fromkeys(m.peer for m in messages):
                self.forwarder.wake(peer)

    def _emit_local(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """A message made here (serial sensor, telemetry): to the broker and the routes."""
        if len(self._local) == LOCAL_QUEUE:
            self.dropped_local += 1
        self._local.append((topic, payload, qos, retain))
        self._local_wake.set()

    async def _local_loop(self) -> None:
        while True:
            await self._local_wake.wait()
            self._local_wake.clear()
            while self._local:
                topic, payload, qos, retain = self._local.popleft()
                self._dispatch(topic, payload, qos, retain, None)
                try:
                    await self.client.publish(topic, payload, qos, retain)
                except BrokerUnavailableError:
                    self.dropped_local += 1

    async def _announce(self) -> None:
        """Availability ``online`` and the discovery configs, retained."""
        messages = [
            (self.telemetry.availability_topic, b"online"),
            *self.telemetry.discovery(),
            (self.telemetry.state_topic, self.telemetry.state()),
        ]
        for topic, payload in messages:
            with contextlib.suppress(BrokerUnavailableError):
                await self.client.publish(topic, payload, 1, True)

    async def _telemetry_loop(self) -> None:
        while True:
            if self.client.connected:
                self._emit_local(self.telemetry.state_topic, self.telemetry.state(), 0, True)
            await asyncio.sleep(self.config.telemetry_interval)

    # ----------------------------------------------------------------- status

    def snapshot(self) -> dict[str, Any]:
        """The bridge as an API object (``kind: Bridge``): spec (broker, mappings, sensors)
        and status (connection, outbox, per-peer counts, receiver and sensor counts)."""
        count, size = self.outbox.depth()
        counters = self.outbox.counters()
        names = {p.node_id: p.name for p in self.trust.peers()}
        peer_ids = set(counters) | set(self.forwarder.peers) | set(self.outbox.queued_peers())
        peers = []
        for node_id in sorted(peer_ids, key=lambda n: (names.get(n, ""), n)):
            delivered, dropped = counters.get(node_id, (0, 0))
            queued, queued_bytes = self.outbox.depth(node_id)
            sender = self.forwarder.peers.get(node_id)
            peers.append(
                {
                    "nodeID": node_id,
                    "name": names.get(node_id, ""),
                    "queued": queued,
                    "queuedBytes": queued_bytes,
                    "delivered": delivered,
                    "dropped": dropped,
                    "sentQoS0": sender.sent_qos0 if sender else 0,
                    "discardedQoS0": sender.discarded_qos0 if sender else 0,
                    "retries": sender.retries if sender else 0,
                    "state": sender.state if sender else "idle",
                    "lastError": sender.last_error if sender else "",
                    "lastDelivery": sender.last_delivery if sender else None,
                    "subscriptions": self.subscribed.get(node_id, ""),
                }
            )
        stats = self.receiver.stats
        assert self.config.broker is not None
        return {
            "apiVersion": "florete.io/v1alpha1",
            "kind": "Bridge",
            "metadata": {"name": "mqtt"},
            "spec": {
                "broker": self.config.broker.url,
                "clientID": self.client.options.client_id,
                "protocol": self.config.protocol,
                "baseTopic": self.base_topic,
                "mappings": [m.describe() for m in self.config.mappings],
                "serialSensors": [s.describe() for s in self.config.serial_sensors],
            },
            "status": {
                "connected": self.client.connected,
                "connects": self.client.connects,
                "lastError": self.client.last_error,
                "inflight": self.client.inflight,
                "routes": self.routes.describe(),
                "outbox": {
                    "messages": count,
                    "bytes": size,
                    "maxMessages": self.outbox.max_messages,
                    "maxBytes": self.outbox.max_bytes,
                    "dropped": sum(d for _, d in counters.values()),
                    "delivered": sum(d for d, _ in counters.values()),
                    "rejectedTooLarge": self.outbox.rejected,
                },
                "received": self.received,
                "published": stats.published,
                "duplicatesSkipped": stats.duplicates,
                "rejected": stats.rejected,
                "discardedQoS0": stats.discarded_qos0,
                "droppedLocal": self.dropped_local,
                "peers": peers,
                "serialSensors": [
                    {"port": r.spec.port, "topic": r.topic, **vars(r.stats)} for r in self.sensors
                ],
            },
        }
