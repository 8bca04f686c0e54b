"""The ``udp`` link driver: unicast datagrams to each neighbour over chosen interfaces.

One socket per interface and address family (:mod:`link_drivers.udp.endpoint`) carries the
datagrams of every neighbour on that interface; received datagrams are demultiplexed by source
address into one :class:`UdpChannel` per peer. A datagram from a peer nobody asked for creates a
channel that :meth:`UdpDriver.accept` hands out, so a listener takes the sessions others start.

Memory stays bounded whatever arrives: each channel queues at most ``queue`` datagrams (more are
dropped and counted in ``rejected_frames``), at most :data:`ACCEPT_BACKLOG` unaccepted channels
exist at once, and a datagram the socket's send buffer cannot take at once is dropped.
Datagrams that arrive together (:data:`~link_drivers.udp.endpoint.READ_BATCH` per socket wake-up
at most) reach a channel in one batch, queued or handed to its receiver
(:meth:`UdpChannel.set_receiver`). Reliability comes from
:class:`link_drivers.stream.ArqStream` on top.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import ipaddress
import logging
import socket
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from agent.errors import ConfigError, LocalError
from link_drivers._log import LinkLog
from link_drivers.api import DatagramChannel, LinkInfo, LinkMetrics
from link_drivers.udp.config import UdpAddress, UdpConfig
from link_drivers.udp.endpoint import Addr, UdpEndpoint, bind_socket, family_name

__all__ = ["ACCEPT_BACKLOG", "DEFAULT_BITRATE", "UdpChannel", "UdpDriver", "UdpStats"]

log = logging.getLogger(__name__)

ACCEPT_BACKLOG = 16  # channels opened by unknown peers and not yet accepted
DEFAULT_BITRATE = 100e6  # bit/s when the interface does not report its speed (lo, Wi-Fi)
CLOSE_TIMEOUT = 1.0  # seconds aclose waits for asyncio to release the sockets

_Key = tuple[str, str, int]  # (interface, canonical host, port)


@functools.lru_cache(maxsize=1024)
def _canonical(host: str) -> str:
    return ipaddress.ip_address(host.split("%", 1)[0]).compressed


@dataclasses.dataclass
class UdpStats:
    """Driver-wide counters.

    Attributes:
        errors: ICMP and socket errors reported (port unreachable, firewall EPERM, ...).
        send_dropped: datagrams not sent: no socket for the peer's interface and family, or the
            socket's send buffer was full.
        unknown_dropped: datagrams from unknown peers dropped because the accept backlog was full
            or the datagram exceeded the MTU.
    """

    errors: int = 0
    send_dropped: int = 0
    unknown_dropped: int = 0


class UdpChannel(DatagramChannel):
    """Datagrams to and from one peer (see :class:`DatagramChannel`); made by :class:`UdpDriver`.

    Attributes:
        peer: the neighbour's address.
        errors: ICMP errors about this peer (its port closed, host unreachable).
    """

    def __init__(self, driver: UdpDriver, peer: UdpAddress) -> None:
        self.peer = peer
        self.errors = 0
        self._driver = driver
        self._family = socket.AF_INET6 if peer.ipv6 else socket.AF_INET
        self._limit = driver.config.queue
        self._mtu = driver.config.mtu
        self._metrics = LinkMetrics()
        self._rx: collections.deque[bytes] = collections.deque()
        self._rx_ready = asyncio.Event()
        self._receiver: Callable[[list[bytes]], None] | None = None
        self._overflow = 0
        self._closed = False
        self._log = LinkLog(log, link="udp", peer=str(peer))

    @property
    def info(self) -> LinkInfo:
        """The link: ``mtu`` from the config, ``bitrate`` of the peer's interface in bit/s."""
        return self._driver.link_info(self.peer.interface)

    @property
    def metrics(self) -> LinkMetrics:
        """Live counters; ``up`` is True while the socket for the peer is open and the interface's
        medium is not known to be down; ``rejected_frames`` counts datagrams dropped on a full
        queue or over the MTU."""
        self._metrics.up = not self._closed and self._driver.path_up(self.peer)
        return self._metrics

    @property
    def closed(self) -> bool:
        """True after :meth:`aclose` (or the driver's)."""
        return self._closed

    def send_nowait(self, datagram: bytes) -> None:
        """Send one datagram without waiting; dropped (and counted) when no socket can take it.

        Raises:
            LocalError: the datagram exceeds the MTU or the channel is closed.
        """
        if self._closed:
            raise LocalError(f"udp channel to {self.peer} is closed")
        if len(datagram) > self._mtu:
            raise LocalError(f"datagram of {len(datagram)} bytes exceeds the MTU of {self._mtu}")
        if self._driver.transmit(self.peer, self._family, datagram):
            self._metrics.tx_frames += 1
            self._metrics.tx_bytes += len(datagram)

    async def send(self, datagram: bytes) -> None:
        """Send one datagram (see :meth:`DatagramChannel.send` and :meth:`send_nowait`)."""
        self.send_nowait(datagram)

    async def receive(self) -> bytes:
        """Wait for the next datagram from the peer (see :meth:`DatagramChannel.receive`)."""
        while not self._rx:
            if self._closed:
                raise LocalError(f"udp channel to {self.peer} is closed")
            self._rx_ready.clear()
            await self._rx_ready.wait()
        return self._rx.popleft()

    def set_receiver(self, receiver: Callable[[list[bytes]], None] | None) -> bool:
        """Hand received datagrams to ``receiver`` as they arrive (see
        :meth:`DatagramChannel.set_receiver`); datagrams already queued go to it at once.

        Returns:
            True: UDP channels support it.
        """
        self._receiver = receiver
        if receiver is not None and self._rx:
            queued = list(self._rx)
            self._rx.clear()
            receiver(queued)
        return True

    async def aclose(self) -> None:
        """Close the channel and drop it from the driver; readers get :class:`LocalError`.

        A later datagram from the same peer opens a new channel (see :meth:`UdpDriver.accept`).
        """
        self.close_nowait()

    def close_nowait(self) -> None:
        """Close without awaiting (as :meth:`aclose`); idempotent."""
        if self._closed:
            return
        self._closed = True
        self._receiver = None
        self._rx.clear()
        self._rx_ready.set()
        self._driver.forget(self)

    def deliver(self, datagrams: list[bytes]) -> None:
        """Take datagrams that arrived together (called by the driver): to the receiver, if one
        is set, else into the queue for :meth:`receive`.

        Oversize datagrams and datagrams beyond the queue limit are dropped and counted in
        ``rejected_frames``; the first drop of a burst is logged (WARNING the first time).
        """
        m = self._metrics
        self._log.clear("icmp")
        good: list[bytes] = []
        for data in datagrams:
            m.rx_bytes += len(data)
            if len(data) > self._mtu:
                m.rejected_frames += 1
                self._log.warn_once(
                    "oversize", "dropped a %d-byte datagram (MTU %d)", len(data), self._mtu
                )
            else:
                good.append(data)
        if not good:
            return
        if self._receiver is not None:
            m.rx_frames += len(good)
            self._receiver(good)
            return
        for data in good:
            if len(self._rx) >= self._limit:
                m.rejected_frames += 1
                if not self._overflow:
                    self._log.warn_once(
                        "overflow", "receive queue full (%d datagrams): dropping", self._limit
                    )
                self._overflow += 1
                continue
            if self._overflow:
                self._log.debug("receive queue overflow over: %d datagrams dropped", self._overflow)
                self._overflow = 0
            m.rx_frames += 1
            self._rx.append(data)
        self._rx_ready.set()

    def report_error(self, err: OSError) -> None:
        """Count an ICMP error about this peer (called by the driver); logs once per episode."""
        self.errors += 1
        self._log.warn_once("icmp", "peer unreachable: %s", err.strerror or err)


class UdpDriver:
    """Entry point ``udp`` of ``florete.links``: unicast UDP to neighbours on chosen interfaces.

    Use :meth:`start` then :meth:`channel` for each neighbour (and :meth:`accept` for those that
    call first), or :meth:`open` when the config names one ``peer``::

        driver = UdpDriver({"interfaces": ["wlan0"], "port": 4737})
        await driver.start()
        channel = driver.channel(UdpAddress("fe80::2", 4737, "wlan0"))

    Args:
        config: a :class:`UdpConfig`, or a mapping accepted by :meth:`UdpConfig.from_mapping`.

    Raises:
        ConfigError: the mapping is invalid.
    """

    name = "udp"

    def __init__(self, config: UdpConfig | Mapping[str, Any]) -> None:
        self.config = config if isinstance(config, UdpConfig) else UdpConfig.from_mapping(config)
        self.stats = UdpStats()
        self._families = [
            f
            for f, on in ((socket.AF_INET, self.config.ipv4), (socket.AF_INET6, self.config.ipv6))
            if on
        ]
        self._endpoints: dict[tuple[str, int], UdpEndpoint] = {}
        self._lost: dict[UdpEndpoint, asyncio.Future[None]] = {}
        self._channels: dict[_Key, UdpChannel] = {}
        self._backlog: collections.deque[UdpChannel] = collections.deque()
        self._backlog_ready = asyncio.Event()
        self._carrier: dict[str, bool] = {}
        self._bitrate: dict[str, float] = {}
        self._speed: dict[str, float] = {}
        self._noted: set[str] = set()
        self._closed = False
        self._log = LinkLog(log, link=f"udp:{','.join(self.config.interfaces)}")

    # ------------------------------------------------------------------ link facts

    @property
    def info(self) -> LinkInfo:
        """The link: ``mtu`` from the config, ``bitrate`` of the slowest interface in bit/s
        (its reported speed, read by :meth:`start`, else 100e6), ``cost`` 1.0."""
        rates = [self._interface_bitrate(i) for i in self.config.interfaces]
        return LinkInfo(mtu=self.config.mtu, bitrate=min(rates), cost=1.0)

    def link_info(self, interface: str) -> LinkInfo:
        """The :class:`LinkInfo` of one interface (``bitrate`` in bit/s)."""
        return LinkInfo(mtu=self.config.mtu, bitrate=self._interface_bitrate(interface), cost=1.0)

    def _interface_bitrate(self, interface: str) -> float:
        if interface in self._bitrate:
            return self._bitrate[interface]
        if interface not in self._speed:
            self._read_speeds()
        return self._speed.get(interface, DEFAULT_BITRATE)

    def _read_speeds(self) -> None:
        stats = psutil.net_if_stats()
        for interface in self.config.interfaces:
            mbps = stats[interface].speed if interface in stats else 0
            self._speed[interface] = mbps * 1e6 if mbps > 0 else DEFAULT_BITRATE

    def set_bitrate(self, interface: str, bitrate: float | None) -> None:
        """Override the bit rate an interface reports (Wi-Fi: the expected throughput).

        Args:
            interface: a configured interface.
            bitrate: bit/s, or None to go back to the interface's reported speed.
        """
        if bitrate is None or bitrate <= 0:
            self._bitrate.pop(interface, None)
        else:
            self._bitrate[interface] = float(bitrate)

    def set_carrier(self, interface: str, up: bool) -> None:
        """Say whether the medium under an interface carries frames (Wi-Fi association).

        While False the channels on that interface report ``up=False``; they stay open and
        still send (the kernel drops what it cannot deliver), so an ARQ session above resumes
        as soon as frames flow again.
        """
        self._carrier[interface] = up

    def path_up(self, peer: UdpAddress) -> bool:
        """True while a socket for the peer's interface and family is open and the medium is up."""
        family = socket.AF_INET6 if peer.ipv6 else socket.AF_INET
        ep = self._endpoints.get((peer.interface, family))
        return ep is not None and ep.is_open and self._carrier.get(peer.interface, True)

    @property
    def up(self) -> bool:
        """True while at least one socket is open."""
        return any(ep.is_open for ep in self._endpoints.values())

    @property
    def bound(self) -> list[UdpAddress]:
        """The local address of every open socket (IPv4 ones show ``0.0.0.0``), with its port."""
        return [
            UdpAddress(ep.local[0], ep.local[1], ep.interface)
            for ep in self._endpoints.values()
            if ep.is_open
        ]

    @property
    def pending(self) -> int:
        """Channels opened by peers that sent first and not yet taken by :meth:`accept`."""
        return len(self._backlog)

    def unbound(self) -> list[tuple[str, str]]:
        """The ``(interface, "ipv4" | "ipv6")`` sockets not bound yet (see :meth:`start`)."""
        return [
            (i, family_name(f))
            for i in self.config.interfaces
            for f in self._families
            if (i, f) not in self._endpoints
        ]

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind one socket per configured interface and family; call again to retry the rest.

        An interface that does not exist (yet) and an interface without an IPv6 link-local
        address (``lo`` binds ``::1`` instead; a fresh address is tentative during duplicate
        address detection) are skipped with a log line: :meth:`unbound` lists them.

        Raises:
            LocalError: a socket cannot be bound (port in use, permission), or the driver was
                closed; the sockets bound by this call are closed again.
        """
        self._check_open()
        self._read_speeds()
        new: list[UdpEndpoint] = []
        try:
            for interface in self.config.interfaces:
                for family in self._families:
                    if (interface, family) in self._endpoints:
                        continue
                    ep = await self._bind(interface, family)
                    if ep is not None:
                        new.append(ep)
        except BaseException:
            for ep in new:
                self._endpoints.pop((ep.interface, ep.family), None)
                ep.close()
            await self._wait_closed(new)
            raise

    async def _bind(self, interface: str, family: int) -> UdpEndpoint | None:
        label = f"{interface}/{family_name(family)}"
        sock = bind_socket(interface, family, self.config.port)
        if sock is None:
            try:
                socket.if_nametoindex(interface)
            except OSError:
                self._log.warn_once(f"missing:{interface}", "interface %s not found", interface)
                return None
            if label not in self._noted:
                self._noted.add(label)
                self._log.info("%s: no usable IPv6 link-local address; IPv6 not bound", interface)
            return None
        ep = await UdpEndpoint.create(
            sock, interface, self._on_datagrams, self._on_error, self._on_lost
        )
        self._lost[ep] = asyncio.get_running_loop().create_future()
        self._endpoints[(interface, family)] = ep
        self._log.clear(f"missing:{interface}")
        self._log.info("bound %s at %s port %d", label, ep.local[0], ep.local[1])
        return ep

    async def open(self) -> UdpChannel:
        """Start the driver and return the channel to the configured ``peer``.

        Raises:
            ConfigError: the config names no ``peer`` (use :meth:`channel` for neighbours).
            LocalError: as :meth:`start`.
        """
        peer = self.config.peer_address()
        if peer is None:
            raise ConfigError(
                "udp: open() needs the config to name exactly one peer ('peer' = \"host:port\"); "
                "for several neighbours call start() and channel(UdpAddress(...))"
            )
        await self.start()
        return self.channel(peer)

    def channel(self, peer: UdpAddress) -> UdpChannel:
        """The channel to ``peer``, created on first use; the same object for the same peer.

        A channel still waiting in the accept backlog is taken out of it (it is now claimed).

        Args:
            peer: the neighbour; its interface must be configured and its family enabled.
                IPv6 peers must be link-local (or ``::1`` on loopback).

        Raises:
            LocalError: the driver is closed, or the peer does not fit the configuration.
        """
        self._check_open()
        if peer.interface not in self.config.interfaces:
            raise LocalError(
                f"udp: peer {peer}: interface {peer.interface!r} is not configured "
                f"({', '.join(self.config.interfaces)})"
            )
        if not (self.config.ipv6 if peer.ipv6 else self.config.ipv4):
            raise LocalError(f"udp: peer {peer}: its address family is disabled in the config")
        if peer.ipv6:
            ip = ipaddress.IPv6Address(peer.host)
            if not (ip.is_link_local or ip.is_loopback):
                raise LocalError(f"udp: IPv6 peer {peer} must be link-local (fe80::/10)")
        key = (peer.interface, peer.host, peer.port)
        ch = self._channels.get(key)
        if ch is None:
            ch = self._channels[key] = UdpChannel(self, peer)
        elif ch in self._backlog:
            self._backlog.remove(ch)
        return ch

    async def accept(self) -> UdpChannel:
        """Wait for the next channel opened by a peer that sent to us first.

        Its first datagrams are already queued in it.

        Raises:
            LocalError: the driver was closed.
        """
        while not self._backlog:
            self._check_open()
            self._backlog_ready.clear()
            await self._backlog_ready.wait()
        return self._backlog.popleft()

    async def aclose(self) -> None:
        """Close every channel and socket; waiting :meth:`accept` calls get LocalError.

        Idempotent; waits up to 1 s for asyncio to release the sockets.
        """
        if self._closed:
            return
        self._closed = True
        for ch in list(self._channels.values()):
            ch.close_nowait()
        self._backlog.clear()
        self._backlog_ready.set()
        endpoints = list(self._endpoints.values())
        for ep in endpoints:
            ep.close()
        await self._wait_closed(endpoints)
        self._endpoints.clear()

    async def _wait_closed(self, endpoints: list[UdpEndpoint]) -> None:
        waits = [self._lost[ep] for ep in endpoints if ep in self._lost]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await asyncio.gather(*waits)
        for ep in endpoints:
            self._lost.pop(ep, None)

    def _check_open(self) -> None:
        if self._closed:
            raise LocalError("udp driver is closed")

    # ------------------------------------------------------------------ data path

    def transmit(self, peer: UdpAddress, family: int, datagram: bytes) -> bool:
        """Send a datagram out of the socket for the peer's interface and family.

        Returns:
            False (counted in ``stats.send_dropped``) when no such socket is open or it is full.
        """
        ep = self._endpoints.get((peer.interface, family))
        if ep is None or not ep.send(datagram, ep.destination(peer.host, peer.port)):
            self.stats.send_dropped += 1
            return False
        return True

    def forget(self, channel: UdpChannel) -> None:
        """Drop a closed channel from the tables (called by :meth:`UdpChannel.aclose`)."""
        key = (channel.peer.interface, channel.peer.host, channel.peer.port)
        if self._channels.get(key) is channel:
            del self._channels[key]
        if channel in self._backlog:
            self._backlog.remove(channel)

    def _on_datagrams(self, ep: UdpEndpoint, batch: list[tuple[bytes, Addr]]) -> None:
        if len(batch) == 1:  # the common case: no grouping
            data, addr = batch[0]
            ch = self._channel_for(ep, addr, data)
            if ch is not None:
                ch.deliver([data])
            return
        groups: dict[UdpChannel, list[bytes]] = {}
        for data, addr in batch:
            ch = self._channel_for(ep, addr, data)
            if ch is not None:
                groups.setdefault(ch, []).append(data)
        for ch, datagrams in groups.items():
            ch.deliver(datagrams)

    def _channel_for(self, ep: UdpEndpoint, addr: Addr, data: bytes) -> UdpChannel | None:
        """The channel of a datagram's source; a new one in the accept backlog for an unknown
        peer (None, counted, when the backlog is full or the datagram exceeds the MTU)."""
        key = (ep.interface, _canonical(addr[0]), addr[1])
        ch = self._channels.get(key)
        if ch is None:
            if len(self._backlog) >= ACCEPT_BACKLOG or len(data) > self.config.mtu:
                self.stats.unknown_dropped += 1
                self._log.warn_once("backlog", "accept backlog full or oversize: dropped %s", key)
                return None
            ch = UdpChannel(self, UdpAddress(key[1], key[2], ep.interface))
            self._channels[key] = ch
            self._backlog.append(ch)
            self._backlog_ready.set()
            self._log.debug("new peer %s", ch.peer)
        return ch

    def _on_error(self, ep: UdpEndpoint, err: OSError, dest: Addr | None) -> None:
        self.stats.errors += 1
        ch = None
        if dest is not None:
            ch = self._channels.get((ep.interface, _canonical(dest[0]), dest[1]))
        if ch is not None:
            ch.report_error(err)
        else:
            self._log.warn_once("error", "socket error on %s: %s", ep.interface, err)

    def _on_lost(self, ep: UdpEndpoint) -> None:
        key = (ep.interface, ep.family)
        if self._endpoints.get(key) is ep:
            del self._endpoints[key]
        fut = self._lost.pop(ep, None)
        if fut is not None and not fut.done():
            fut.set_result(None)
