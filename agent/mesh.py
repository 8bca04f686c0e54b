"""The mesh: links to neighbours, one secure session per link, messages routed by cost.

Data path per link (ARCHITECTURE.md §4)::

    DatagramChannel (udp, serial_radio, wifi) ─► ArqStream ─► SecureSession (TLS 1.3) ─► Endpoint

* **Which links.** UDP and Wi-Fi (``udp/eth0``, ``wifi/wlan0``: interfaces named by
  ``[[links.wifi]]`` get the Wi-Fi driver): every trusted neighbour that discovery placed on one
  of our interfaces is dialled (IPv4 preferred, else IPv6 link-local; one link per interface),
  and any peer that sends first is accepted. Serial radios (``[[links.serial_radios]]``) are
  point-to-point: one link per radio, dialled for ever, with beacons for discovery (a new
  neighbour heard triggers a fast start of our own beacons). A session with an untrusted peer
  stays open carrying only pairing messages (to :attr:`Mesh.pairing_handler`; the pairing
  service dials one with :meth:`Mesh.open_pairing`); it closes when the peer becomes trusted,
  so a fresh one authenticates.
* **Liveness** comes from ARQ keepalives (``links.keepalive``, ``links.dead_interval``): a silent
  peer's link goes down after ``dead_interval`` seconds; a Goodbye marks the node down at once.
  A link down for longer than :data:`RETIRE_AFTER` is closed; discovery dials again when the node
  reappears. The TLS session survives a link that goes down and comes back.
* **Routing.** :meth:`Mesh.request` and :meth:`Mesh.publish` use, per neighbour, the established
  link that is up with the lowest cost (then RTT); when it goes down the next one takes over.
* **Sessions that break** are opened again on the same link: at once after a peer restart
  (the ARQ reset is the session boundary), else on a new ARQ session after a backoff of 1 s
  doubling to 30 s (see :meth:`_Link.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from agent.beacons import Beacon, BeaconScheduler, decode_beacon, encode_beacon, is_beacon
from agent.config import LinksConfig
from agent.errors import FloreteError, LocalError, NotFoundError
from agent.identity import Identity, short_id
from agent.messages import PairingMessage
from agent.neighbours import NeighbourTable
from agent.rpc import Endpoint, PublishCallback, RequestHandler
from agent.session import PairingHandler, SecureSession, SessionState, open_session
from agent.store import StoredPeer
from agent.trust import TrustStore
from link_drivers.api import DatagramChannel, LinkInfo, LinkMetrics, ReliableStream
from link_drivers.arq import ArqConfig
from link_drivers.stream import ArqStream
from link_drivers.udp import UdpAddress, UdpDriver

if TYPE_CHECKING:  # imported in Mesh.start only when [[links.wifi]] is configured (pyroute2: ~9 MB)
    from link_drivers.wifi import WifiDriver

    IpDriver = UdpDriver | WifiDriver
    """A link driver of UDP datagrams on IP interfaces: channels per peer address, accept."""

__all__ = ["RETIRE_AFTER", "Mesh"]

log = logging.getLogger(__name__)

PeerRequestHandler = Callable[[str, Any], Awaitable[Any]]
"""Serves one method and learns who asked: ``await handler(peer node ID, body) -> result``."""

RETIRE_AFTER = 30.0
"""Seconds a dialled link may stay down before it is closed (discovery dials it again)."""
DIAL_INTERVAL = 0.5
"""Seconds between passes over the neighbour table looking for links to open."""
_BACKOFF_FIRST, _BACKOFF_MAX = 1.0, 30.0


@dataclasses.dataclass
class _LinkState:
    state: str = "connecting"  # connecting, established, untrusted, down, closed
    node_id: str = ""
    peer_name: str = ""
    since: float = dataclasses.field(default_factory=time.time)
    down_since: float | None = None
    reason: str = ""
    sessions: int = 0


class _Link:
    """One channel to one neighbour, with the ARQ stream and session on it, reopened as needed.

    Args:
        mesh: the owner.
        name: link name in the neighbour table, ``"udp/eth0"``, ``"serial_radio:/dev/ttyUSB0"``.
        channel: the datagram channel (the link owns it and closes it at the end).
        address: the peer's address, for display.
        persistent: dial for ever (a radio, a trusted neighbour); else end when the first
            session ends (a peer that called us).
    """

    def __init__(
        self,
        mesh: Mesh,
        name: str,
        channel: DatagramChannel,
        address: str,
        *,
        persistent: bool,
    ) -> None:
        self.mesh = mesh
        self.name = name
        self.channel = channel
        self.address = address
        self.persistent = persistent
        self.status = _LinkState()
        self.stream: ArqStream | None = None
        self.endpoint: Endpoint | None = None
        self.untrusted: SecureSession | None = None
        self.task: asyncio.Task[None] | None = None
        self.closing = False

    @property
    def cost(self) -> float:
        return self.channel.info.cost

    @property
    def up(self) -> bool:
        return self.stream is not None and self.stream.up

    @property
    def metrics(self) -> LinkMetrics:
        return self.stream.metrics if self.stream is not None else self.channel.metrics

    async def run(self) -> None:
        """Open sessions on the link until it is closed (or, for a peer that called us, until
        the first session that never got established ends).

        Session boundaries are ARQ session boundaries, so that no byte of an old session is
        ever read by a new one: when the peer restarted (the stream reports the ARQ reset in
        order), the next session starts on the same stream right away; when a session ends for
        any other reason, this side starts a new ARQ session (a new stream), which the peer
        sees as a reset, after a backoff of 1 s doubling to 30 s.
        """
        config = ArqConfig.for_link(
            self.channel.info,
            keepalive_interval=self.mesh.config.keepalive,
            dead_interval=self.mesh.config.dead_interval,
        )
        backoff = _BACKOFF_FIRST
        try:
            while True:
                stream = ArqStream(self.channel, config, name=self.name, on_link=self._on_link)
                self.stream = stream
                async with stream:
                    while True:
                        resets = stream.resets_reported
                        established = await self._one_session(_Borrowed(stream))
                        self.persistent = (self.persistent or established) and self._wanted()
                        reset = stream.resets_reported != resets
                        if self.closing or not (self.persistent or reset):
                            return
                        if established:
                            backoff = _BACKOFF_FIRST
                        if not reset:
                            break
                        if not established:  # the peer keeps starting over: pace it
                            await asyncio.sleep(backoff * random.uniform(1.0, 1.25))
                            backoff = min(backoff * 2, _BACKOFF_MAX)
                await asyncio.sleep(backoff * random.uniform(1.0, 1.25))
                backoff = min(backoff * 2, _BACKOFF_MAX)
        finally:
            self.status.state = "closed"
            await self.channel.aclose()

    def _wanted(self) -> bool:
        """Whether to keep opening sessions: always on a radio, on an IP link only while the
        peer is trusted (after a revocation the link ends instead of retrying for ever)."""
        if not self.name.startswith(("udp/", "wifi/")) or not self.status.node_id:
            return True
        return self.mesh.table.trust_of(self.status.node_id) == "trusted"

    async def _one_session(self, stream: _Borrowed) -> bool:
        """Open one session and serve it until it ends; True if it was established."""
        mesh = self.mesh
        self.status.state = "connecting"
        try:
            session = await open_session(
                stream,
                mesh.identity,
                mesh.trust,
                handshake_timeout=mesh.handshake_timeout,
                pairing_handler=mesh._on_pairing_message,
            )
        except (FloreteError, TimeoutError) as err:
            self.status.reason = str(err)
            log.info("link %s to %s: no session: %s", self.name, self.address, err)
            return False
        if session.state is not SessionState.ESTABLISHED:
            await self._hold_untrusted(session)
            return False
        await self._serve(session)
        return True

    async def _hold_untrusted(self, session: SecureSession) -> None:
        """Keep a session with an untrusted peer open (it carries only pairing messages) until
        it closes, or until the peer becomes trusted (then a fresh session authenticates)."""
        self.status.state, self.status.node_id = "untrusted", session.peer_id
        self.status.peer_name = session.peer_name
        log.info(
            "link %s: peer %s (%s) is not trusted: only pairing messages pass",
            self.name,
            short_id(session.peer_id),
            session.peer_name,
        )
        self.untrusted = session
        try:
            with contextlib.suppress(FloreteError):
                await session.receive()
        finally:
            self.untrusted = None
            await session.close("not trusted")
            if self.mesh.pairing_ended is not None:
                self.mesh.pairing_ended(session)

    async def _serve(self, session: SecureSession) -> None:
        mesh, status = self.mesh, self.status
        status.state, status.node_id, status.peer_name = "established", session.peer_id, ""
        status.peer_name = session.peer_name
        status.sessions += 1
        status.since, status.down_since, status.reason = time.time(), None, ""
        endpoint = Endpoint(session)
        for method, handler in mesh.handlers.items():
            endpoint.on_request(method, handler)
        for method, peer_handler in mesh.peer_handlers.items():
            endpoint.on_request(method, functools.partial(peer_handler, session.peer_id))
        endpoint.start()
        for pattern, callback in mesh.subscriptions:
            await endpoint.subscribe(pattern, callback)
        self.endpoint = endpoint
        self._report_up()
        log.info(
            "link %s: session with %s (%s) established",
            self.name,
            session.peer_name,
            short_id(session.peer_id),
        )
        try:
            await endpoint.wait_closed()
        finally:
            self.endpoint = None
            reason = session.close_reason or "closed"
            status.state, status.reason = "down", reason
            if reason.startswith("peer said goodbye"):
                mesh.table.goodbye(session.peer_id, reason)
            else:
                mesh.table.link_down(session.peer_id, self.name, reason)
            log.info(
                "link %s: session with %s ended: %s", self.name, short_id(session.peer_id), reason
            )

    def _report_up(self) -> None:
        rtt = self.stream.metrics.rtt if self.stream is not None else None
        self.mesh.table.link_up(
            self.status.node_id, self.name, name=self.status.peer_name, cost=self.cost, rtt=rtt
        )

    def _on_link(self, up: bool) -> None:
        if self.endpoint is None:
            return
        if up:
            self.status.down_since = None
            self._report_up()
        else:
            self.status.down_since = time.monotonic()
            self.mesh.table.link_down(self.status.node_id, self.name, "keepalive timeout")

    async def close(self) -> None:
        """Say goodbye on the session (if any) and stop."""
        self.closing = True
        if self.endpoint is not None:
            with contextlib.suppress(FloreteError):
                await self.endpoint.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    def snapshot(self) -> dict[str, Any]:
        m, s = self.metrics, self.status
        return {
            "name": self.name,
            "address": self.address,
            "nodeID": s.node_id,
            "peerName": s.peer_name,
            "state": s.state,
            "up": self.up,
            "cost": self.cost,
            "mtu": self.channel.info.mtu,
            "bitrate": self.channel.info.bitrate,
            "rttSeconds": m.rtt,
            "loss": m.loss,
            "retransmissions": m.retransmissions,
            "rxBytes": m.rx_bytes,
            "txBytes": m.tx_bytes,
            "rxGoodputBytes": m.rx_goodput_bytes,
            "txGoodputBytes": m.tx_goodput_bytes,
            "rejectedFrames": m.rejected_frames,
            "sessions": s.sessions,
            "since": s.since,
            "reason": s.reason,
            **self._radio(),
        }

    def _radio(self) -> dict[str, Any]:
        """Radio figures of a Wi-Fi link (nl80211), ``{}`` for other links."""
        interface = self.name.partition("wifi/")[2]
        entry = self.mesh.ip_links.get(interface) if interface else None
        if entry is None or not hasattr(entry[1], "radio_metrics"):
            return {}
        radio = entry[1].radio_metrics()
        if radio is None:
            return {"radio": None}
        return {
            "radio": {
                "signalDbm": radio.signal_dbm,
                "txBitrate": radio.tx_bitrate,
                "rxBitrate": radio.rx_bitrate,
                "expectedThroughput": radio.expected_throughput,
            }
        }


class _Borrowed(ReliableStream):
    """A stream lent to one session: closing the session leaves the link's stream open."""

    def __init__(self, stream: ArqStream) -> None:
        self._stream = stream

    @property
    def metrics(self) -> LinkMetrics:
        return self._stream.metrics

    async def send(self, message: bytes) -> None:
        await self._stream.send(message)

    async def receive(self) -> bytes:
        return await self._stream.receive()

    async def drain(self) -> None:
        await self._stream.drain()

    async def aclose(self) -> None:
        """Nothing: the link closes its stream."""


class _BeaconChannel(DatagramChannel):
    """A radio channel with discovery beacons split off: ARQ sees every other datagram."""

    def __init__(self, inner: DatagramChannel, on_beacon: Callable[[bytes], None]) -> None:
        self._inner = inner
        self._on_beacon = on_beacon

    @property
    def info(self) -> LinkInfo:
        return self._inner.info

    @property
    def metrics(self) -> LinkMetrics:
        return self._inner.metrics

    async def send(self, datagram: bytes) -> None:
        await self._inner.send(datagram)

    async def receive(self) -> bytes:
        while True:
            datagram = await self._inner.receive()
            if not is_beacon(datagram):
                return datagram
            self._on_beacon(datagram)

    async def aclose(self) -> None:
        await self._inner.aclose()


class Mesh:
    """All links of this node, the sessions on them, and message routing.

    Args:
        config: the ``[links]`` section.
        interfaces: interfaces for the UDP link (already resolved; never empty by accident).
        identity: this node's identity.
        trust: the trust store (decides which peers get sessions).
        table: the neighbour table discovery fills and links update.
        handshake_timeout: seconds for preamble plus TLS handshake per session.
    """

    def __init__(
        self,
        config: LinksConfig,
        interfaces: tuple[str, ...],
        identity: Identity,
        trust: TrustStore,
        table: NeighbourTable,
        *,
        handshake_timeout: float = 10.0,
    ) -> None:
        self.config = config
        self.interfaces = interfaces
        self.identity = identity
        self.trust = trust
        self.table = table
        self.handshake_timeout = handshake_timeout
        self.handlers: dict[str, RequestHandler] = {"mesh.ping": self._answer_ping}
        self.peer_handlers: dict[str, PeerRequestHandler] = {}
        self.pairing_handler: PairingHandler | None = None
        """Receives what untrusted peers send (set by the pairing service; else dropped)."""
        self.pairing_ended: Callable[[SecureSession], None] | None = None
        """Called when an untrusted session ends (set by the pairing service)."""
        self.pairing_sessions: set[SecureSession] = set()
        """Untrusted sessions a pairing flow still uses: trusting the peer leaves them open
        (the pairing service closes them when its flow is done)."""
        self.subscriptions: list[tuple[str, PublishCallback]] = []
        self.udp: UdpDriver | None = None
        self.wifi: list[WifiDriver] = []
        self.radios: list[str] = []
        """Devices of the serial radio links."""
        self.ip_links: dict[str, tuple[str, IpDriver]] = {}
        """Interface -> (link name, driver) of the IP links: ``udp/eth0``, ``wifi/wlan0``."""
        self._links: dict[str, _Link] = {}
        self._beacons: dict[str, tuple[BeaconScheduler, asyncio.Event]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._unlisten = trust.add_listener(self._on_trust_change)

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Bind the IP links, open the serial radios, start dialling and accepting.

        Interfaces named by ``[[links.wifi]]`` tables get the Wi-Fi driver (UDP plus radio
        awareness; added to the interfaces if not listed there), the others the UDP driver.

        Raises:
            LocalError: the UDP port is taken.
            ConfigError: a ``[[links.serial_radios]]`` or ``[[links.wifi]]`` table is invalid.
        """
        if self.config.wifi:
            from link_drivers.wifi import WifiDriver

            self.wifi = [WifiDriver({"port": self.config.udp_port, **t}) for t in self.config.wifi]
        wireless = [d.config.interface for d in self.wifi]
        wired = tuple(i for i in self.interfaces if i not in wireless)
        self.interfaces = tuple(dict.fromkeys((*self.interfaces, *wireless)))
        drivers: list[IpDriver] = []
        if wired:
            self.udp = UdpDriver({"interfaces": list(wired), "port": self.config.udp_port})
            await self.udp.start()
            drivers.append(self.udp)
            self.ip_links |= {i: (f"udp/{i}", self.udp) for i in wired}
        for wifi in self.wifi:
            await wifi.start()
            drivers.append(wifi)
            self.ip_links[wifi.config.interface] = (f"wifi/{wifi.config.interface}", wifi)
        for driver in drivers:
            self._spawn(self._accept_ip(driver), f"mesh-accept-{driver.name}")
        if drivers:
            self._spawn(self._dial_ip(), "mesh-dial")
        for radio in self.config.serial_radios:
            await self._open_radio(radio)

    def link_name(self, interface: str) -> str:
        """The link name of addresses on ``interface`` (``"udp/eth0"``, ``"wifi/wlan0"``), as
        sessions report it to the neighbour table; discovery names its observations alike."""
        entry = self.ip_links.get(interface)
        return entry[0] if entry is not None else f"udp/{interface}"

    def _on_trust_change(self, peer: StoredPeer) -> None:
        """A peer became trusted: its untrusted sessions close, so that new ones authenticate
        (revocations are handled by the sessions themselves)."""
        if peer.state != "trusted":
            return
        for link in self._links.values():
            if link.untrusted in self.pairing_sessions:
                continue
            if link.untrusted is not None and link.status.node_id == peer.node_id:
                task = asyncio.ensure_future(link.untrusted.close("now trusted"))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)

    async def stop(self) -> None:
        """Say goodbye on every session, close every link and driver."""
        self._unlisten()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*(link.close() for link in self._links.values()))
        self._links.clear()
        for driver in {id(d): d for _, d in self.ip_links.values()}.values():
            await driver.aclose()

    @property
    def udp_port(self) -> int:
        """The UDP port actually bound (``links.udp_port``, or the one chosen for 0)."""
        for _, driver in self.ip_links.values():
            if driver.bound:
                return driver.bound[0].port
        return self.config.udp_port

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.ensure_future(coro))
        self._tasks[-1].set_name(name)

    def _add_link(self, link: _Link) -> None:
        self._links[link.name + " " + link.address] = link
        link.task = asyncio.get_running_loop().create_task(
            self._run_link(link), name=f"link-{link.name}"
        )

    async def _run_link(self, link: _Link) -> None:
        try:
            await link.run()
        finally:
            self._links.pop(link.name + " " + link.address, None)

    # ----------------------------------------------------------------- UDP

    async def _accept_ip(self, driver: IpDriver) -> None:
        while True:
            channel = await driver.accept()
            peer = channel.peer
            name = self.link_name(peer.interface)
            self._add_link(_Link(self, name, channel, _show(peer), persistent=False))

    async def _dial_ip(self) -> None:
        while True:
            self._dial_pass()
            self._retire_pass()
            await asyncio.sleep(DIAL_INTERVAL)

    def _dial_pass(self) -> None:
        for neighbour in self.table.neighbours():
            if neighbour.said_goodbye or self.table.trust_of(neighbour.node_id) != "trusted":
                continue
            for peer in _ip_peers(neighbour.addresses, self.ip_links):
                name, driver = self.ip_links[peer.interface]
                key = f"{name} {_show(peer)}"
                if key in self._links or self._has_session(neighbour.node_id, name):
                    continue
                try:
                    channel = driver.channel(peer)
                except LocalError as err:
                    log.debug("not dialling %s: %s", _show(peer), err)
                    continue
                self._add_link(_Link(self, name, channel, _show(peer), persistent=True))

    def _has_session(self, node_id: str, name: str) -> bool:
        return any(
            link.name == name and link.status.node_id == node_id and link.endpoint is not None
            for link in self._links.values()
        )

    def _retire_pass(self) -> None:
        now = time.monotonic()
        for link in list(self._links.values()):
            since = link.status.down_since
            if since is not None and now - since > RETIRE_AFTER and link.task is not None:
                log.info(
                    "link %s to %s down for %.0f s: closing it",
                    link.name,
                    link.address,
                    now - since,
                )
                link.task.cancel()

    # ----------------------------------------------------------------- radios

    async def _open_radio(self, options: Any) -> None:
        from link_drivers.serial_radio import SerialRadioDriver

        driver = SerialRadioDriver(dict(options))
        inner = await driver.open()
        name = f"serial_radio:{driver.config.port}"
        self.radios.append(driver.config.port)
        channel = _BeaconChannel(inner, lambda data: self._on_beacon(name, data))
        self._add_link(_Link(self, name, channel, driver.config.port, persistent=True))
        self._spawn(self._send_beacons(name, inner), f"beacons-{driver.config.port}")

    def _on_beacon(self, link: str, datagram: bytes) -> None:
        try:
            beacon = decode_beacon(datagram)
        except FloreteError as err:
            log.debug("%s: beacon rejected: %s", link, err)
            return
        if beacon.node_id == self.identity.node_id:
            return
        known = self.table.get(beacon.node_id)
        if known is None or link not in known.links:
            self._fast_start(link)  # a new neighbour learns of this node at once
        self.table.observe(
            beacon.node_id,
            name=beacon.name,
            fingerprint=beacon.fingerprint,
            link=link,
            source="beacon",
            addresses=[("", 0, link.partition(":")[2])],
            version=beacon.version,
        )

    def _fast_start(self, link: str) -> None:
        entry = self._beacons.get(link)
        if entry is not None:
            scheduler, wake = entry
            scheduler.fast_start(asyncio.get_running_loop().time())
            wake.set()

    async def _send_beacons(self, link: str, channel: DatagramChannel) -> None:
        loop = asyncio.get_running_loop()
        beacon = encode_beacon(
            Beacon(self.identity.node_id, self.identity.name, self.identity.fingerprint)
        )
        scheduler = BeaconScheduler(channel.info, beacon_size=len(beacon))
        wake = asyncio.Event()
        self._beacons[link] = (scheduler, wake)
        while True:
            wake.clear()
            delay = max(0.0, scheduler.next_due(loop.time()) - loop.time())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await wake.wait()
                continue  # woken by a fast start: recompute the deadline
            await channel.send(beacon)
            scheduler.sent(loop.time(), len(beacon))

    # ----------------------------------------------------------------- pairing

    async def _on_pairing_message(self, session: SecureSession, message: PairingMessage) -> None:
        if self.pairing_handler is not None:
            await self.pairing_handler(session, message)

    async def open_pairing(self, node_id: str, timeout: float = 10.0) -> SecureSession:  # noqa: ASYNC109
        """An untrusted session to ``node_id`` that carries pairing messages: one already held
        (a radio link, a peer that called us), else one on new links dialled to every address
        of the neighbour on our IP links. Links dialled here end with their session.

        Raises:
            NotFoundError: the neighbour is not in the table, or has no address on our links.
            LocalError: no untrusted session came up within ``timeout`` seconds (the neighbour
                is unreachable, or one side still trusts the other).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        dialled = False
        while True:
            for link in self._links.values():
                if link.untrusted is not None and link.status.node_id == node_id:
                    return link.untrusted
            if not dialled:
                self._dial_for_pairing(node_id)
                dialled = True
            if loop.time() > deadline:
                raise LocalError(
                    f"no pairing session with {short_id(node_id)} within {timeout:g} s (is it "
                    "reachable? a node that still trusts the other must unpair it first)"
                )
            await asyncio.sleep(0.05)

    def _dial_for_pairing(self, node_id: str) -> None:
        neighbour = self.table.get(node_id)
        if neighbour is None:
            raise NotFoundError(f"no neighbour {short_id(node_id)}")
        peers = _ip_peers(neighbour.addresses, self.ip_links)
        if not peers and not any(link.status.node_id == node_id for link in self._links.values()):
            raise NotFoundError(f"neighbour {short_id(node_id)} has no address on our links")
        for peer in peers:
            name, driver = self.ip_links[peer.interface]
            if f"{name} {_show(peer)}" in self._links:
                continue
            try:
                channel = driver.channel(peer)
            except LocalError as err:
                log.debug("not dialling %s for pairing: %s", _show(peer), err)
                continue
            self._add_link(_Link(self, name, channel, _show(peer), persistent=False))

    def pairing_address(self, session: SecureSession) -> str | None:
        """Where the peer of an untrusted session is: ``"udp://10.99.0.2:4737"`` on an IP
        link, the link name (``"serial_radio:/dev/ttyUSB0"``) on a radio; None if it ended."""
        for link in self._links.values():
            if link.untrusted is session:
                ip = link.name.startswith(("udp/", "wifi/"))
                return f"udp://{link.address}" if ip else link.name
        return None

    async def drain_pairing(self, session: SecureSession, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until the peer acknowledged all that was sent on an untrusted session (at most
        ``timeout`` seconds), so that closing it loses no last pairing message."""
        for link in list(self._links.values()):
            if link.untrusted is session and link.stream is not None:
                with contextlib.suppress(LocalError, TimeoutError):
                    async with asyncio.timeout(timeout):
                        await link.stream.drain()

    def on_peer_request(self, method: str, handler: PeerRequestHandler) -> None:
        """Serve ``method`` for every neighbour, telling ``handler`` the caller's node ID
        (proved by the session's TLS), on current and future sessions."""
        self.peer_handlers[method] = handler
        for link in self._links.values():
            if link.endpoint is not None:
                link.endpoint.on_request(method, functools.partial(handler, link.status.node_id))

    # ----------------------------------------------------------------- messages

    def on_request(self, method: str, handler: RequestHandler) -> None:
        """Serve ``method`` for every neighbour, on current and future sessions."""
        self.handlers[method] = handler
        for link in self._links.values():
            if link.endpoint is not None:
                link.endpoint.on_request(method, handler)

    async def subscribe(self, pattern: str, callback: PublishCallback) -> None:
        """Receive publications matching ``pattern`` (MQTT wildcards) from every neighbour."""
        self.subscriptions.append((pattern, callback))
        for link in list(self._links.values()):
            if link.endpoint is not None:
                await link.endpoint.subscribe(pattern, callback)

    def best_link(self, node_id: str) -> str:
        """The name of the link :meth:`endpoint` uses for ``node_id`` (see there)."""
        return self._best(node_id).name

    def endpoint(self, node_id: str) -> Endpoint:
        """The endpoint of the best link to ``node_id``: up, then lowest cost, then lowest RTT.

        Raises:
            NotFoundError: no established session to that node.
        """
        endpoint = self._best(node_id).endpoint
        assert endpoint is not None
        return endpoint

    def _best(self, node_id: str) -> _Link:
        links = [
            link
            for link in self._links.values()
            if link.endpoint is not None and link.status.node_id == node_id
        ]
        if not links:
            raise NotFoundError(f"no session to node {short_id(node_id)}")
        return min(links, key=lambda k: (not k.up, k.cost, k.metrics.rtt or float("inf")))

    async def ping(self, node_id: str, timeout: float = 5.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Round trip of a ``mesh.ping`` request to ``node_id`` over its best link.

        Returns:
            ``{"nodeID", "name", "link", "rttSeconds"}``: who answered, over which link, and
            the request's round-trip time in seconds (TLS, ARQ and the link included).

        Raises:
            NotFoundError: no session to that node; RpcTimeoutError: no answer in ``timeout``.
        """
        link = self.best_link(node_id)
        started = time.perf_counter()
        answer = await self.request(node_id, "mesh.ping", None, timeout)
        rtt = time.perf_counter() - started
        return {"nodeID": answer["nodeID"], "name": answer["name"], "link": link, "rttSeconds": rtt}

    async def _answer_ping(self, body: Any) -> dict[str, str]:
        return {"nodeID": self.identity.node_id, "name": self.identity.name}

    async def request(
        self,
        node_id: str,
        method: str,
        body: Any = None,
        timeout: float = 10.0,  # noqa: ASYNC109 (a deadline per request, as Endpoint has)
    ) -> Any:
        """Call ``method`` on ``node_id`` over its best link (see :meth:`Endpoint.request`).

        Raises:
            NotFoundError: no session to that node; and whatever :meth:`Endpoint.request` raises.
        """
        return await self.endpoint(node_id).request(method, body, timeout)

    async def publish(self, topic: str, body: Any) -> int:
        """Publish to every neighbour that subscribed, once each, over its best link.

        Returns:
            The number of neighbours the message was sent to.
        """
        sent = 0
        for node_id in {link.status.node_id for link in self._links.values() if link.endpoint}:
            if await self.endpoint(node_id).publish(topic, body):
                sent += 1
        return sent

    def links(self) -> list[dict[str, Any]]:
        """Every link with its state and live metrics (JSON-ready), sorted by name."""
        return sorted(
            (link.snapshot() for link in self._links.values()),
            key=lambda d: (d["name"], d["address"]),
        )


def _show(peer: UdpAddress) -> str:
    host = f"[{peer.host}]" if ":" in peer.host else peer.host
    return f"{host}:{peer.port}%{peer.interface}" if ":" in peer.host else f"{host}:{peer.port}"


def _ip_peers(
    addresses: dict[str, list[tuple[str, int, str]]], interfaces: Mapping[str, object]
) -> list[UdpAddress]:
    """One address per interface of ours from a neighbour's addresses: IPv4 first, else IPv6."""
    chosen: dict[str, UdpAddress] = {}
    for entries in addresses.values():
        for host, port, interface in entries:
            if interface not in interfaces or port == 0 or not host:
                continue
            ip = ipaddress.ip_address(host.split("%", 1)[0])
            current = chosen.get(interface)
            if current is None or (ip.version == 4 and ":" in current.host):
                chosen[interface] = UdpAddress(host.split("%", 1)[0], port, interface)
    return list(chosen.values())
