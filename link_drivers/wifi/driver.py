"""The ``wifi`` link driver: the UDP data path on a wireless interface, plus the radio's view.

Data goes through a :class:`~link_drivers.udp.UdpDriver` bound to the one wireless interface
(composed, not copied). nl80211 adds what UDP cannot see: signal, bit rates and the expected
throughput of the station (polled), and association changes (the ``mlme`` multicast group). When
the interface loses its association the channels report ``up=False`` but stay open, so an ARQ
session above keeps its state and resumes when the peer is back; when the radio cannot be watched
(no such interface, not wireless, no nl80211) the data path still runs, the driver reports
``up=False`` and :meth:`WifiDriver.available` says why. :meth:`WifiDriver.start` never raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

from agent.errors import ConfigError, LocalError
from link_drivers._log import LinkLog
from link_drivers.api import LinkInfo
from link_drivers.udp import UdpAddress, UdpChannel, UdpDriver
from link_drivers.wifi.config import WifiConfig
from link_drivers.wifi.iw import missing_tools, run_commands, setup_commands
from link_drivers.wifi.nl80211 import (
    AssociationEvent,
    AssociationState,
    InterfaceInfo,
    RadioMetrics,
)
from link_drivers.wifi.radio import Nl80211Radio

__all__ = ["WIFI_COST", "WifiDriver"]

log = logging.getLogger(__name__)

WIFI_COST = 2.0  # a shared, half-duplex medium: dearer per byte than a wire at the same rate
EVENT_RETRY_MAX = 60.0  # seconds between attempts to resubscribe to the mlme group, at most


class WifiDriver:
    """Entry point ``wifi`` of ``florete.links``.

    Args:
        config: a :class:`WifiConfig`, or a mapping accepted by :meth:`WifiConfig.from_mapping`.

    Attributes:
        udp: the data path (one :class:`UdpDriver` on the wireless interface).
        state: the association, folded from nl80211 events and station dumps.

    Raises:
        ConfigError: the mapping is invalid.
    """

    name = "wifi"

    def __init__(self, config: WifiConfig | Mapping[str, Any]) -> None:
        self.config = config if isinstance(config, WifiConfig) else WifiConfig.from_mapping(config)
        self.udp = UdpDriver(self.config.udp_config())
        self.state = AssociationState(self.config.mode)
        self._radio: Nl80211Radio | None = None
        self._interface: InterfaceInfo | None = None
        self._stations: list[RadioMetrics] = []
        self._metrics: RadioMetrics | None = None
        self._reason: str | None = None
        self._known = False
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._closed = False
        self._log = LinkLog(log, link=f"wifi/{self.config.interface}")

    # ------------------------------------------------------------------ radio facts

    def available(self) -> str | None:
        """Why the radio cannot be watched, or None when it can (as far as known).

        Checks the interface, ``/sys/class/net/<if>/phy80211`` and, for mesh/IBSS, that ``iw``
        and ``ip`` are installed; after :meth:`start`, also what nl80211 and ``iw`` answered.

        Returns:
            None, or a reason such as ``"no wireless interface wlan0:
            /sys/class/net/wlan0/phy80211 missing"`` or ``"nl80211 unavailable (...)"``.
        """
        iface = self.config.interface
        try:
            socket.if_nametoindex(iface)
        except OSError:
            return f"no wireless interface {iface}: no such interface"
        phy = f"/sys/class/net/{iface}/phy80211"
        if not os.path.exists(phy):
            return f"no wireless interface {iface}: {phy} missing"
        missing = missing_tools(setup_commands(self.config))
        if missing:
            return f"{' and '.join(missing)} not installed (needed for {self.config.mode} setup)"
        return self._reason

    @property
    def up(self) -> bool:
        """True while the radio is watched, associated, and a socket is open."""
        return self._radio is not None and self.state.associated and self.udp.up

    @property
    def info(self) -> LinkInfo:
        """The link: ``bitrate`` is the expected throughput (bit/s) when nl80211 reports one,
        else the interface's speed; ``cost`` :data:`WIFI_COST`."""
        rate = self._metrics.expected_throughput if self._metrics is not None else None
        base = self.udp.info
        return LinkInfo(mtu=base.mtu, bitrate=rate or base.bitrate, cost=WIFI_COST)

    def radio_metrics(self) -> RadioMetrics | None:
        """The last station figures: the access point's (managed), or the strongest peer's
        (mesh, IBSS); None when the radio is unavailable or has no station.

        Refreshed every ``poll_interval`` seconds, or now with :meth:`refresh`.
        """
        return self._metrics

    def stations(self) -> list[RadioMetrics]:
        """Figures of every station entry from the last poll (all mesh/IBSS peers)."""
        return list(self._stations)

    # ------------------------------------------------------------------ data path

    @property
    def bound(self) -> list[UdpAddress]:
        """Local socket addresses (see :attr:`UdpDriver.bound`)."""
        return self.udp.bound

    def channel(self, peer: UdpAddress) -> UdpChannel:
        """The channel to a neighbour (see :meth:`UdpDriver.channel`)."""
        return self.udp.channel(peer)

    async def accept(self) -> UdpChannel:
        """The next channel a neighbour opened (see :meth:`UdpDriver.accept`)."""
        return await self.udp.accept()

    async def open(self) -> UdpChannel:
        """Start and return the channel to the configured ``peer``; it reports ``up=False``
        while the interface is absent or disassociated.

        Raises:
            ConfigError: the config names no ``peer``.
        """
        peer = self.udp.config.peer_address()
        if peer is None:
            raise ConfigError(
                "wifi: open() needs the config to name exactly one peer ('peer' = \"host:port\"); "
                "for several neighbours call start() and channel(UdpAddress(...))"
            )
        await self.start()
        return self.udp.channel(peer)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Set up the mode (mesh/IBSS via ``iw``), bind the data path and watch the radio.

        Never raises for a missing or unusable radio: the problem is logged once, kept for
        :meth:`available`, and what works (the UDP path) runs; sockets that could not be bound
        are retried every ``poll_interval``.
        """
        if self._started or self._closed:
            return
        self._started = True
        reason = self.available()
        commands = setup_commands(self.config)
        if reason is None and commands:
            self._reason = reason = await run_commands(commands)
        await self._bind()
        if reason is None:
            reason = await self._open_radio()
        if reason is not None:
            self._log.warning("radio not watched: %s; UDP data path only, up=False", reason)
        self._tasks.append(asyncio.create_task(self._poll(), name="wifi-poll"))
        if self._radio is not None:
            self._tasks.append(asyncio.create_task(self._watch(), name="wifi-events"))

    async def _bind(self) -> None:
        try:
            await self.udp.start()
        except LocalError as err:
            self._log.warn_once("bind", "data path not bound (retrying): %s", err)
        else:
            self._log.clear("bind")

    async def _open_radio(self) -> str | None:
        radio = Nl80211Radio(self.config.interface)
        try:
            self._interface = await radio.open()
        except LocalError as err:
            self._reason = err.message
            return self._reason
        self._radio = radio
        if self._interface.mode != self.config.mode:
            self._log.warning(
                "interface is in mode %s, configured %s", self._interface.mode, self.config.mode
            )
        await self._resync()
        return None

    async def refresh(self) -> RadioMetrics | None:
        """Query nl80211 now (interface and stations) and update :meth:`radio_metrics`.

        The association itself follows the ``mlme`` events (the station table seeds it at start
        and after the event subscription was lost).

        Returns:
            The new :meth:`radio_metrics` (None without a radio or a station).

        Raises:
            LocalError: a query failed.
        """
        if self._radio is None:
            return None
        self._interface = info = await self._radio.interface_info()
        stations = await self._radio.stations()
        self._stations = [
            dataclasses.replace(s, ssid=info.ssid, frequency=info.frequency) for s in stations
        ]
        self._metrics = self._pick()
        rate = self._metrics.expected_throughput if self._metrics is not None else None
        self.udp.set_bitrate(self.config.interface, rate)
        return self._metrics

    async def _resync(self) -> None:
        """Take the association from the station table (at start and after lost events)."""
        try:
            await self.refresh()
        except LocalError as err:
            self._log.warn_once("poll", "station query failed: %s", err)
            return
        before = self.state.associated if self._known else None
        self.state.seed(s.peer for s in self._stations)
        self._known = True
        if before != self.state.associated:
            self._log.info("station table: associated=%s", self.state.associated)
        self._apply_carrier()

    def _pick(self) -> RadioMetrics | None:
        if not self._stations:
            return None
        if self.config.mode == "managed":
            for s in self._stations:
                if s.peer == self.state.bssid:
                    return s
            return self._stations[0]
        return max(self._stations, key=lambda s: -999 if s.signal_dbm is None else s.signal_dbm)

    def handle_event(self, event: AssociationEvent) -> None:
        """Apply one association event: on disconnect the channels report ``up=False`` and stay
        open; on (re)connect they report ``up=True`` again.

        Called for every ``mlme`` event of the interface; events of other interfaces (another
        ``ifindex``) are ignored.
        """
        ifindex = self._radio.ifindex if self._radio is not None else None
        if event.ifindex is not None and ifindex and event.ifindex != ifindex:
            return
        first, self._known = not self._known, True
        changed = self.state.apply(event)
        who = event.bssid or "?"
        if changed and event.kind == "disconnected":
            by = " by the access point" if event.by_ap else ""
            self._log.warning("%s %s lost%s (reason %s)", event.scope, who, by, event.reason)
        elif changed or event.kind == "roamed":
            self._log.info("%s %s %s", event.scope, who, event.kind)
        else:
            self._log.debug("%s %s %s (no change)", event.scope, who, event.kind)
        if changed or first:
            self._apply_carrier()

    def _apply_carrier(self) -> None:
        if self._known:
            self.udp.set_carrier(self.config.interface, self.state.associated)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_interval)
            if self.udp.unbound():
                await self._bind()
            if self._radio is not None:
                try:
                    await self.refresh()
                except LocalError as err:
                    self._log.warn_once("poll", "station query failed: %s", err)
                else:
                    self._log.clear("poll")

    async def _watch(self) -> None:
        assert self._radio is not None
        delay = 1.0
        while True:
            try:
                async for event in self._radio.events():
                    delay = 1.0
                    self.handle_event(event)
            except LocalError as err:
                self._log.warn_once(
                    "events", "association events lost (retry in %.0f s): %s", delay, err
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, EVENT_RETRY_MAX)
            await self._resync()

    async def aclose(self) -> None:
        """Stop watching the radio and close every channel and socket; idempotent."""
        if self._closed:
            return
        self._closed = True
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._radio is not None:
            self._radio.close()
        await self.udp.aclose()
