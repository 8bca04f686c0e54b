"""The connection to the local broker: paho-mqtt 2.x in its own network thread, seen from asyncio.

paho's loop thread (``loop_start``) does the socket work, the (re)connects and their backoff
(1 s doubling to 30 s, ``reconnect_delay_set``); every paho callback is handed to the event
loop with ``call_soon_threadsafe``, so the bridge's code runs on the loop only.

What this wrapper guarantees:

* **Subscriptions after every connect.** The wanted filters are subscribed again in each
  ``on_connect``, whether or not the broker says it kept the session: a broker restarted without
  persistence forgets them (the bug of telegraf#6232 and zigbee2mqtt#4854, which subscribed
  once).
* **A persistent session** (MQTT 5 ``clean_start=False`` with a session expiry of a week; 3.1.1
  ``clean_session=False``) under a fixed client id, so the broker keeps what arrives for us
  while the agent restarts, and **manual acknowledgement**: a QoS 1 message gets its PUBACK only
  when the bridge calls :meth:`BrokerClient.ack` (after the outbox stored it), so the broker
  sends again whatever the agent had not secured when it died.
* **No echo of our own publications**: MQTT 5 no-local subscriptions; with 3.1.1 mosquitto's
  bridge flag (``enable_bridge_mode``, protocol level 0x84), which tells the broker the same.
  This is the bridge's loop prevention.
* **Bounded in flight**: at most ``max_inflight`` QoS 1 publications wait for their PUBACK
  (:meth:`BrokerClient.publish` waits for a slot).
* A last will on the availability topic (``offline``, retained).

paho-mqtt is imported only in :meth:`BrokerClient.start`: an agent without ``mqtt.broker``
never loads it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import ConfigError, LocalError
from agent.mqtt.routes import OnceLog
from agent.mqtt.settings import BrokerAddress

__all__ = [
    "SESSION_EXPIRY",
    "BrokerClient",
    "BrokerRejectedError",
    "BrokerUnavailableError",
    "ClientOptions",
    "Received",
]

log = logging.getLogger(__name__)

SESSION_EXPIRY = 7 * 24 * 3600
"""Seconds the broker keeps our MQTT 5 session (subscriptions, queued messages) while we are
away."""
RECONNECT_MIN, RECONNECT_MAX = 1, 30
"""Reconnect backoff in seconds: paho doubles from the first to the second."""


class BrokerUnavailableError(LocalError):
    """The local broker is not connected (a peer's delivery is answered 503 and retried)."""

    code = "broker_unavailable"
    http_status = 503


class BrokerRejectedError(LocalError):
    """The broker refused a publication (MQTT 5 PUBACK reason code 0x80 or above)."""

    code = "broker_rejected"
    http_status = 502


@dataclasses.dataclass(frozen=True)
class ClientOptions:
    """How to connect.

    Attributes:
        broker: where the broker is.
        client_id: MQTT client id (fixed: the session is found by it).
        protocol: ``"3.1.1"`` or ``"5"``.
        keepalive: seconds.
        username: user name, ``""`` for none.
        password: the password, ``""`` for none (never logged).
        tls_ca: CA bundle for ``mqtts://`` (None: the system's CAs).
        max_inflight: QoS 1 publications awaiting PUBACK, and QoS 1 messages the broker may send
            us unacknowledged (MQTT 5 Receive Maximum).
        will_topic: topic of the last will (``""``: none); its payload is ``offline``.
    """

    broker: BrokerAddress
    client_id: str
    protocol: str = "5"
    keepalive: int = 30
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)
    tls_ca: Path | None = None
    max_inflight: int = 64
    will_topic: str = ""


@dataclasses.dataclass(frozen=True, slots=True)
class Received:
    """A message from the broker.

    Attributes:
        topic: its topic.
        payload: its bytes.
        qos: 0 or 1 (as granted).
        retain: the retain flag (as published, with MQTT 5 or the bridge flag).
        mid: packet id, for :meth:`BrokerClient.ack` of QoS 1.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    mid: int


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def read_password(path: Path) -> str:
    """The first line of a password file.

    Raises:
        ConfigError: the file cannot be read (the message names the file, not its content).
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"mqtt.password_file: cannot read {path}: {err}") from err
    return lines[0] if lines else ""


class BrokerClient:
    """One MQTT connection to the local broker.

    Args:
        options: how to connect.
        on_message: called on the event loop for every message received.
        on_connect: called on the event loop after each successful connect, once the
            subscriptions were sent again.
    """

    def __init__(
        self,
        options: ClientOptions,
        on_message: Callable[[Received], None],
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.options = options
        self._on_message = on_message
        self._on_connect = on_connect
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wanted: dict[str, int] = {}
        self._slots = asyncio.Semaphore(options.max_inflight)
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._once = OnceLog(log)
        self.connected = False
        self.connects = 0
        """Successful connects since start."""
        self.last_error = ""
        """Why the last connect failed or the connection dropped (``""`` while connected)."""

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Set up paho and start its network thread, which connects (and reconnects) in the
        background: a broker that is down at boot is retried with backoff.

        Raises:
            ConfigError: the TLS CA bundle cannot be loaded.
        """
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self._loop = asyncio.get_running_loop()
        o = self.options
        v5 = o.protocol == "5"
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=o.client_id,
            clean_session=None if v5 else False,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            manual_ack=True,
        )
        if not v5:
            client.enable_bridge_mode()
        if o.username or o.password:
            client.username_pw_set(o.username or None, o.password or None)
        if o.broker.tls:
            try:
                client.tls_set(
                    ca_certs=str(o.tls_ca) if o.tls_ca else None,
                    cert_reqs=ssl.CERT_REQUIRED,
                    tls_version=ssl.PROTOCOL_TLS_CLIENT,
                )
            except (OSError, ssl.SSLError) as err:
                raise ConfigError(f"mqtt.tls_ca: cannot load {o.tls_ca}: {err}") from err
        if o.will_topic:
            client.will_set(o.will_topic, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(RECONNECT_MIN, RECONNECT_MAX)
        client.max_inflight_messages_set(o.max_inflight)
        client.on_connect = self._paho_connect
        client.on_connect_fail = self._paho_connect_fail
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        client.on_subscribe = self._paho_subscribe
        properties = None
        if v5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = SESSION_EXPIRY
            properties.ReceiveMaximum = min(o.max_inflight, 65535)
        client.connect_async(
            o.broker.host,
            o.broker.port,
            keepalive=max(5, int(o.keepalive)),
            clean_start=False,
            properties=properties,
        )
        self._client = client
        client.loop_start()
        log.info("MQTT: connecting to %s as %s (MQTT %s)", o.broker.url, o.client_id, o.protocol)

    async def stop(self) -> None:
        """Disconnect cleanly (the broker does not send the will) and stop paho's thread."""
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        self.connected = False
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrokerUnavailableError("MQTT client stopped"))
        self._pending.clear()

    # ----------------------------------------------------------------- subscriptions

    def set_subscriptions(self, wanted: dict[str, int]) -> None:
        """Make ``wanted`` (filter -> QoS) the subscriptions: new filters are subscribed now
        if connected, dropped ones unsubscribed; all of them again after every reconnect."""
        old, self._wanted = self._wanted, dict(wanted)
        if not self.connected or self._client is None:
            return
        gone = [f for f in old if f not in wanted]
        if gone:
            self._client.unsubscribe(gone)
        new = {f: q for f, q in wanted.items() if old.get(f) != q}
        if new:
            self._subscribe(new)

    def _subscribe(self, filters: dict[str, int]) -> None:
        if self.options.protocol == "5":
            from paho.mqtt.subscribeoptions import SubscribeOptions

            self._client.subscribe(
                [
                    (
                        f,
                        SubscribeOptions(
                            qos=q,
                            noLocal=True,
                            retainAsPublished=True,
                            retainHandling=SubscribeOptions.RETAIN_SEND_IF_NEW_SUB,
                        ),
                    )
                    for f, q in filters.items()
                ]
            )
        else:
            self._client.subscribe(list(filters.items()))

    # ----------------------------------------------------------------- publishing

    async def publish(
        self, topic: str, payload: bytes, qos: int = 0, retain: bool = False
    ) -> asyncio.Future[None] | None:
        """Publish a message.

        QoS 0 is handed to paho at once. QoS 1 first waits for one of ``max_inflight`` slots,
        then returns a future that completes when the broker's PUBACK arrives (paho sends the
        message again after a reconnect until then).

        Returns:
            None for QoS 0; for QoS 1 the PUBACK future, which may fail with
            :class:`BrokerRejectedError` or :class:`BrokerUnavailableError` (client stopped).

        Raises:
            BrokerUnavailableError: not connected, or the client is stopped.
        """
        if qos == 0:
            self.publish_nowait(topic, payload, retain)
            return None
        if not self.connected or self._client is None:
            raise BrokerUnavailableError(f"MQTT broker {self.options.broker.url} not connected")
        await self._slots.acquire()
        if self._client is None:
            self._slots.release()
            raise BrokerUnavailableError("MQTT client stopped")
        info = self._client.publish(topic, payload, qos, retain)
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        future.add_done_callback(_retrieve)  # a caller may drop it: no "never retrieved" noise
        self._pending[info.mid] = future
        return future

    def publish_nowait(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """Publish at QoS 0 (handed to paho's thread at once).

        Raises:
            BrokerUnavailableError: not connected, or the client is stopped.
        """
        if not self.connected or self._client is None:
            raise BrokerUnavailableError(f"MQTT broker {self.options.broker.url} not connected")
        self._client.publish(topic, payload, 0, retain)

    def ack(self, mid: int) -> None:
        """Acknowledge a QoS 1 message received (send its PUBACK)."""
        if self._client is not None:
            self._client.ack(mid, 1)

    @property
    def inflight(self) -> int:
        """QoS 1 publications waiting for their PUBACK."""
        return len(self._pending)

    # ----------------------------------------------------------------- paho callbacks
    # (paho's thread: hand everything to the event loop)

    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    def _paho_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        self._call(self._connected, not reason.is_failure, str(reason), flags.session_present)

    def _paho_connect_fail(self, _c: Any, _u: Any) -> None:
        self._call(self._connect_failed)

    def _paho_disconnect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self._call(self._disconnected, str(reason))

    def _paho_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            topic = msg.topic
        except UnicodeDecodeError:  # paho decodes lazily; a broker should never send this
            topic = None
        self._call(self._received, topic, bytes(msg.payload), msg.qos, bool(msg.retain), msg.mid)

    def _paho_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self._call(self._published, mid, bool(reason.is_failure), str(reason))

    def _paho_subscribe(self, _c: Any, _u: Any, _mid: int, reasons: Any, _p: Any) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._call(self._subscribe_failed, failed)

    # ----------------------------------------------------------------- on the loop

    def _connected(self, ok: bool, reason: str, session_present: bool) -> None:
        url = self.options.broker.url
        if not ok:
            self.last_error = f"connection refused: {reason}"
            self._once.warning("connect", "MQTT: %s refused the connection: %s", url, reason)
            return
        self.connected, self.last_error = True, ""
        self.connects += 1
        self._once.clear("connect")
        self._once.clear("connection")
        log.info("MQTT: connected to %s (session present: %s)", url, session_present)
        if self._wanted:
            self._subscribe(self._wanted)
        if self._on_connect is not None:
            self._on_connect()

    def _connect_failed(self) -> None:
        self.last_error = "cannot connect"
        self._once.warning(
            "connect",
            "MQTT: cannot connect to %s; retrying with backoff up to %d s",
            self.options.broker.url,
            RECONNECT_MAX,
        )

    def _disconnected(self, reason: str) -> None:
        was = self.connected
        self.connected = False
        if not was:  # a refused connect ends here too: keep its reason
            return
        self.last_error = f"disconnected: {reason}"
        if self._client is not None:
            self._once.warning(
                "connection", "MQTT: lost %s (%s); reconnecting", self.options.broker.url, reason
            )

    def _received(
        self, topic: str | None, payload: bytes, qos: int, retain: bool, mid: int
    ) -> None:
        if topic is None:
            self._once.warning("topic", "MQTT: dropped a message whose topic is not UTF-8")
            if qos == 1:
                self.ack(mid)
            return
        self._on_message(Received(topic, payload, qos, retain, mid))

    def _published(self, mid: int, failed: bool, reason: str) -> None:
        future = self._pending.pop(mid, None)
        if future is None:
            return
        self._slots.release()
        if future.done():
            return
        if failed:
            future.set_exception(BrokerRejectedError(f"broker refused the message: {reason}"))
        else:
            future.set_result(None)

    def _subscribe_failed(self, reasons: list[str]) -> None:
        self._once.warning(
            "subscribe", "MQTT: the broker refused a subscription: %s", ", ".join(reasons)
        )
