"""Pure decoding of nl80211 messages: station figures, interface facts, association events.

Input is a decoded nl80211 generic-netlink message as pyroute2 gives it (``nl80211cmd``: anything
with ``get_attr(name, default)``); nothing here does I/O, so the decoders are tested against
messages encoded from the layout documented in ``linux/nl80211.h``:

* ``NL80211_ATTR_STA_INFO`` nests ``NL80211_STA_INFO_*``: ``SIGNAL`` and ``SIGNAL_AVG`` (u8
  carrying a signed dBm value), ``INACTIVE_TIME`` (u32, ms), ``CONNECTED_TIME`` (u32, s),
  ``TX_RETRIES``/``TX_FAILED`` (u32), ``EXPECTED_THROUGHPUT`` (u32, kbit/s) and ``TX_BITRATE`` /
  ``RX_BITRATE``, which nest ``NL80211_RATE_INFO_BITRATE32`` (u32) or the older
  ``NL80211_RATE_INFO_BITRATE`` (u16), both in units of 100 kbit/s.
* ``NL80211_CMD_CONNECT`` carries the BSSID in ``NL80211_ATTR_MAC`` and the IEEE 802.11 status
  code (u16, 0 = success) in ``NL80211_ATTR_STATUS_CODE``, or the flag ``NL80211_ATTR_TIMED_OUT``;
  ``NL80211_CMD_ROAM`` the new BSSID in ``NL80211_ATTR_MAC``; ``NL80211_CMD_DISCONNECT`` the
  802.11 reason code (u16) in ``NL80211_ATTR_REASON_CODE`` and the flag
  ``NL80211_ATTR_DISCONNECTED_BY_AP``; ``NL80211_CMD_NEW_STATION`` / ``DEL_STATION`` the peer's
  MAC in ``NL80211_ATTR_MAC`` (mesh and IBSS peers, and the access point's entry on a station).

:class:`AssociationState` turns the events into one fact, "associated or not", by one table.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable
from typing import Any, Literal, Protocol

from agent.errors import RemoteProtocolError

__all__ = [
    "CMD_CONNECT",
    "CMD_DEL_STATION",
    "CMD_DISCONNECT",
    "CMD_GET_INTERFACE",
    "CMD_GET_STATION",
    "CMD_NEW_STATION",
    "CMD_ROAM",
    "MODES",
    "AssociationEvent",
    "AssociationState",
    "InterfaceInfo",
    "NlAttrs",
    "RadioMetrics",
    "parse_interface",
    "parse_mlme_event",
    "parse_station",
]

# enum nl80211_commands (linux/nl80211.h)
CMD_GET_INTERFACE = 5
CMD_GET_STATION = 17
CMD_NEW_STATION = 19
CMD_DEL_STATION = 20
CMD_CONNECT = 46
CMD_ROAM = 47
CMD_DISCONNECT = 48

# enum nl80211_iftype, as the config's mode names
_IFTYPES = {1: "ibss", 2: "managed", 3: "ap", 4: "ap_vlan", 6: "monitor", 7: "mesh"}
MODES = ("managed", "mesh", "ibss")
RATE_UNIT = 100_000  # NL80211_RATE_INFO_BITRATE(32) counts 100 kbit/s

Kind = Literal["connected", "disconnected", "roamed"]
Scope = Literal["bss", "peer"]


class NlAttrs(Protocol):
    """A decoded netlink message or nested attribute set (pyroute2 ``nla``/``nlmsg``)."""

    def get_attr(self, attr: str, default: Any = None) -> Any:
        """The value of attribute ``attr``, or ``default`` when absent."""
        ...


@dataclasses.dataclass(frozen=True)
class RadioMetrics:
    """Radio figures of one station entry (the access point, or a mesh/IBSS peer).

    Attributes:
        peer: the station's MAC: the BSSID on a managed interface, the peer's MAC in a mesh.
        signal_dbm: last received signal, dBm.
        signal_avg_dbm: average received signal, dBm.
        tx_bitrate: current transmit rate, bit/s.
        rx_bitrate: current receive rate, bit/s.
        expected_throughput: the driver's estimate of achievable throughput, bit/s.
        inactive_ms: time since the last frame from the station, milliseconds.
        connected_s: time associated, seconds.
        tx_retries: frames retried (cumulative).
        tx_failed: frames that failed after all retries (cumulative).
        ssid: the network's SSID (from the interface; None for a mesh).
        frequency: the channel's centre frequency, MHz (from the interface).
    """

    peer: str | None = None
    signal_dbm: int | None = None
    signal_avg_dbm: int | None = None
    tx_bitrate: float | None = None
    rx_bitrate: float | None = None
    expected_throughput: float | None = None
    inactive_ms: int | None = None
    connected_s: int | None = None
    tx_retries: int | None = None
    tx_failed: int | None = None
    ssid: str | None = None
    frequency: int | None = None


@dataclasses.dataclass(frozen=True)
class InterfaceInfo:
    """Facts from ``NL80211_CMD_GET_INTERFACE``.

    Attributes:
        ifindex: kernel interface index.
        name: interface name.
        mode: ``managed``, ``mesh``, ``ibss``, ``ap``, ``monitor``... (``type<N>`` if unknown).
        mac: the interface's own MAC address.
        ssid: the SSID in use (managed: only while connected; IBSS: the joined cell).
        frequency: operating frequency, MHz, when on a channel.
    """

    ifindex: int | None
    name: str | None
    mode: str
    mac: str | None
    ssid: str | None
    frequency: int | None


@dataclasses.dataclass(frozen=True)
class AssociationEvent:
    """A change of association reported on the nl80211 ``mlme`` multicast group.

    Attributes:
        kind: ``connected``, ``disconnected`` or ``roamed``.
        scope: ``bss`` for the interface's own association (CONNECT, ROAM, DISCONNECT),
            ``peer`` for a station entry coming or going (NEW_STATION, DEL_STATION: mesh and
            IBSS peers, and the access point's entry on a managed interface).
        bssid: the BSSID (bss scope) or peer MAC (peer scope); None when the message has none
            (DISCONNECT).
        ifindex: the interface the event is about, if given.
        reason: IEEE 802.11 reason code of a disconnect, or status code of a failed connect.
        by_ap: the access point ended the association.
    """

    kind: Kind
    scope: Scope
    bssid: str | None = None
    ifindex: int | None = None
    reason: int | None = None
    by_ap: bool = False


def _signed8(value: int | None) -> int | None:
    """A u8 attribute that carries an s8 (dBm), as signed; pyroute2 may have signed it already."""
    if value is None:
        return None
    return value - 256 if value > 127 else value


def _hex_int(value: object) -> int | None:
    """An integer attribute pyroute2 maps as raw ``hex`` ("11:00"), in host byte order."""
    if value is None:
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        value = bytes.fromhex(value.replace(":", ""))
    if not isinstance(value, bytes | bytearray) or not value:
        raise RemoteProtocolError(f"nl80211: expected an integer attribute, got {value!r}")
    return int.from_bytes(value, sys.byteorder)


def _rate(rate_info: NlAttrs | None) -> float | None:
    """Bit/s from a nested ``nl80211_rate_info`` (BITRATE32 preferred; 0 means unknown)."""
    if rate_info is None:
        return None
    units = rate_info.get_attr("NL80211_RATE_INFO_BITRATE32")
    if units is None:
        units = rate_info.get_attr("NL80211_RATE_INFO_BITRATE")
    return float(units * RATE_UNIT) if units else None


def parse_station(attrs: NlAttrs) -> RadioMetrics:
    """Decode one station entry (a reply to ``NL80211_CMD_GET_STATION``, or NEW_STATION).

    Args:
        attrs: the decoded message, with ``NL80211_ATTR_MAC`` and ``NL80211_ATTR_STA_INFO``.

    Returns:
        :class:`RadioMetrics` in bit/s, dBm and ms; absent figures are None
        (``ssid``/``frequency`` come from the interface, see :func:`parse_interface`).

    Raises:
        RemoteProtocolError: the message has no ``NL80211_ATTR_STA_INFO``.
    """
    sta = attrs.get_attr("NL80211_ATTR_STA_INFO")
    if sta is None:
        raise RemoteProtocolError("nl80211: station message without NL80211_ATTR_STA_INFO")
    throughput = sta.get_attr("NL80211_STA_INFO_EXPECTED_THROUGHPUT")
    return RadioMetrics(
        peer=attrs.get_attr("NL80211_ATTR_MAC"),
        signal_dbm=_signed8(sta.get_attr("NL80211_STA_INFO_SIGNAL")),
        signal_avg_dbm=_signed8(sta.get_attr("NL80211_STA_INFO_SIGNAL_AVG")),
        tx_bitrate=_rate(sta.get_attr("NL80211_STA_INFO_TX_BITRATE")),
        rx_bitrate=_rate(sta.get_attr("NL80211_STA_INFO_RX_BITRATE")),
        expected_throughput=float(throughput * 1000) if throughput else None,
        inactive_ms=sta.get_attr("NL80211_STA_INFO_INACTIVE_TIME"),
        connected_s=sta.get_attr("NL80211_STA_INFO_CONNECTED_TIME"),
        tx_retries=sta.get_attr("NL80211_STA_INFO_TX_RETRIES"),
        tx_failed=sta.get_attr("NL80211_STA_INFO_TX_FAILED"),
    )


def parse_interface(attrs: NlAttrs) -> InterfaceInfo:
    """Decode a reply to ``NL80211_CMD_GET_INTERFACE``.

    Args:
        attrs: the decoded message (``NL80211_ATTR_IFINDEX``, ``IFNAME``, ``IFTYPE``, ``MAC``,
            ``SSID``, ``WIPHY_FREQ``).

    Returns:
        The :class:`InterfaceInfo`; ``frequency`` in MHz.
    """
    iftype = attrs.get_attr("NL80211_ATTR_IFTYPE")
    ssid = attrs.get_attr("NL80211_ATTR_SSID")
    return InterfaceInfo(
        ifindex=attrs.get_attr("NL80211_ATTR_IFINDEX"),
        name=attrs.get_attr("NL80211_ATTR_IFNAME"),
        mode=_IFTYPES.get(iftype, f"type{iftype}") if iftype is not None else "unknown",
        mac=attrs.get_attr("NL80211_ATTR_MAC"),
        ssid=ssid or None,
        frequency=attrs.get_attr("NL80211_ATTR_WIPHY_FREQ"),
    )


def parse_mlme_event(cmd: int, attrs: NlAttrs) -> AssociationEvent | None:
    """Map one ``mlme`` multicast message to an :class:`AssociationEvent`.

    Args:
        cmd: the generic-netlink command (``NL80211_CMD_*``).
        attrs: the decoded message.

    Returns:
        The event; None for commands that do not change association (AUTHENTICATE, FRAME...).
        A failed CONNECT (status code not 0, or timed out) is a ``disconnected`` event that
        carries the status code in ``reason``.

    Raises:
        RemoteProtocolError: an integer attribute has no bytes.
    """
    ifindex = attrs.get_attr("NL80211_ATTR_IFINDEX")
    mac = attrs.get_attr("NL80211_ATTR_MAC")
    if cmd == CMD_CONNECT:
        status = _hex_int(attrs.get_attr("NL80211_ATTR_STATUS_CODE"))
        timed_out = attrs.get_attr("NL80211_ATTR_TIMED_OUT") is not None
        if status or timed_out:
            return AssociationEvent("disconnected", "bss", mac, ifindex, reason=status)
        return AssociationEvent("connected", "bss", mac, ifindex)
    if cmd == CMD_ROAM:
        return AssociationEvent("roamed", "bss", mac, ifindex)
    if cmd == CMD_DISCONNECT:
        return AssociationEvent(
            "disconnected",
            "bss",
            None,
            ifindex,
            reason=attrs.get_attr("NL80211_ATTR_REASON_CODE"),
            by_ap=attrs.get_attr("NL80211_ATTR_DISCONNECTED_BY_AP") is not None,
        )
    if cmd == CMD_NEW_STATION:
        return AssociationEvent("connected", "peer", mac, ifindex)
    if cmd == CMD_DEL_STATION:
        return AssociationEvent("disconnected", "peer", mac, ifindex)
    return None


class AssociationState:
    """Is the interface associated? Folded from events, by one table per mode.

    A managed interface follows its own association (bss-scope events) and ignores station
    entries; a mesh or IBSS interface is associated while it has at least one peer
    (peer-scope events). Every other (mode, scope) pair changes nothing.

    Args:
        mode: ``managed``, ``mesh`` or ``ibss``.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.bssid: str | None = None
        self.peers: set[str] = set()

    @property
    def associated(self) -> bool:
        """True while connected to a BSS (managed) or to at least one peer (mesh, IBSS)."""
        return self.bssid is not None if self.mode == "managed" else bool(self.peers)

    def seed(self, stations: Iterable[str | None]) -> None:
        """Start from the kernel's station table (``GET_STATION`` dump): MACs of the entries."""
        macs = [m for m in stations if m]
        if self.mode == "managed":
            self.bssid = macs[0] if macs else None
        else:
            self.peers = set(macs)

    def apply(self, event: AssociationEvent) -> bool:
        """Fold one event in.

        Returns:
            True when :attr:`associated` changed.
        """
        before = self.associated
        step = _TRANSITIONS.get((self.mode == "managed", event.scope, event.kind))
        if step is not None:
            step(self, event.bssid)
        return self.associated != before


def _bss_set(state: AssociationState, mac: str | None) -> None:
    state.bssid = mac or state.bssid or "unknown"


def _bss_clear(state: AssociationState, mac: str | None) -> None:
    state.bssid = None


def _peer_add(state: AssociationState, mac: str | None) -> None:
    if mac:
        state.peers.add(mac)


def _peer_remove(state: AssociationState, mac: str | None) -> None:
    if mac:
        state.peers.discard(mac)
    else:
        state.peers.clear()


# (managed?, scope, kind) -> step; absent pairs change nothing.
_TRANSITIONS = {
    (True, "bss", "connected"): _bss_set,
    (True, "bss", "roamed"): _bss_set,
    (True, "bss", "disconnected"): _bss_clear,
    (False, "peer", "connected"): _peer_add,
    (False, "peer", "disconnected"): _peer_remove,
}
