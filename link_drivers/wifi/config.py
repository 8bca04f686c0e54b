"""Configuration of a Wi-Fi link: the UDP data path's settings plus the radio's mode.

``managed`` leaves association to wpa_supplicant (or whatever manages the interface) and only
watches it. ``mesh`` (IEEE 802.11s) and ``ibss`` (ad hoc) need no access point: the driver sets the
interface type and joins the mesh or cell with ``iw`` when it starts (:mod:`link_drivers.wifi.iw`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from agent.errors import ConfigError
from link_drivers.udp import DEFAULT_PORT, UdpConfig
from link_drivers.wifi.nl80211 import MODES

__all__ = ["WifiConfig"]

MAX_SSID_BYTES = 32  # IEEE 802.11-2020 9.4.2.2 (SSID) and 9.4.2.97 (Mesh ID): 0..32 octets
MIN_FREQUENCY, MAX_FREQUENCY = 2400, 7125  # MHz: the 2.4, 5 and 6 GHz bands


def _check_name(key: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"wifi: {key} must be a non-empty string, got {value!r}")
    if len(value.encode()) > MAX_SSID_BYTES:
        raise ConfigError(f"wifi: {key} must be at most {MAX_SSID_BYTES} bytes, got {value!r}")


@dataclasses.dataclass(frozen=True)
class WifiConfig:
    """One Wi-Fi link.

    Attributes:
        interface: the wireless interface (``wlan0``); required.
        port: UDP port (0: ephemeral, tests).
        mtu: largest datagram payload, bytes.
        ipv4: bind ``0.0.0.0:port`` on the interface.
        ipv6: bind the interface's IPv6 link-local address.
        queue: receive queue per peer, datagrams.
        peer: the one neighbour :meth:`WifiDriver.open` connects to (``"host:port"``).
        mode: ``managed`` (default), ``mesh`` (802.11s) or ``ibss`` (ad hoc).
        mesh_id: the mesh to join; required with ``mode = "mesh"``, 1..32 bytes.
        ssid: the IBSS cell to join; required with ``mode = "ibss"``, 1..32 bytes.
        frequency: channel centre frequency in MHz (2412 is channel 1); required for ``ibss``,
            optional for ``mesh``.
        poll_interval: seconds between station queries (radio metrics), and between retries of
            sockets that could not be bound.

    Raises:
        ConfigError: a value is missing, of the wrong type or out of range, or does not apply
            to the mode (the message names the key).
    """

    interface: str
    port: int = DEFAULT_PORT
    mtu: int = 1200
    ipv4: bool = True
    ipv6: bool = True
    queue: int = 256
    peer: str | None = None
    mode: str = "managed"
    mesh_id: str | None = None
    ssid: str | None = None
    frequency: int | None = None
    poll_interval: float = 2.0

    def __post_init__(self) -> None:
        if not isinstance(self.interface, str) or not self.interface:
            raise ConfigError(f"wifi: interface must name one interface, got {self.interface!r}")
        if self.mode not in MODES:
            raise ConfigError(f"wifi: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.mode == "mesh":
            if self.mesh_id is None:
                raise ConfigError("wifi: mode 'mesh' needs mesh_id (the 802.11s mesh to join)")
            _check_name("mesh_id", self.mesh_id)
        elif self.mesh_id is not None:
            raise ConfigError(f"wifi: mesh_id applies to mode 'mesh' only (mode is {self.mode!r})")
        if self.mode == "ibss":
            if self.ssid is None or self.frequency is None:
                raise ConfigError("wifi: mode 'ibss' needs ssid and frequency (MHz)")
            _check_name("ssid", self.ssid)
        elif self.ssid is not None:
            raise ConfigError(
                f"wifi: ssid applies to mode 'ibss' only (mode is {self.mode!r}; a managed "
                "interface joins networks through wpa_supplicant)"
            )
        if self.frequency is not None:
            if self.mode == "managed":
                raise ConfigError(
                    "wifi: frequency applies to modes 'mesh' and 'ibss' (a managed interface "
                    "follows its access point)"
                )
            f = self.frequency
            if isinstance(f, bool) or not isinstance(f, int):
                raise ConfigError(f"wifi: frequency must be an integer in MHz, got {f!r}")
            if not MIN_FREQUENCY <= f <= MAX_FREQUENCY:
                raise ConfigError(
                    f"wifi: frequency is in MHz ({MIN_FREQUENCY}..{MAX_FREQUENCY}, e.g. 2412 "
                    f"for channel 1), got {f}"
                )
        p = self.poll_interval
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.05 <= p <= 3600:
            raise ConfigError(f"wifi: poll_interval must be 0.05..3600 seconds, got {p!r}")
        self.udp_config()

    def udp_config(self) -> UdpConfig:
        """The data path's :class:`UdpConfig`: the same settings on the one wireless interface.

        Raises:
            ConfigError: a UDP setting is invalid (the message starts with ``wifi:``).
        """
        try:
            return UdpConfig(
                interfaces=(self.interface,),
                port=self.port,
                mtu=self.mtu,
                ipv4=self.ipv4,
                ipv6=self.ipv6,
                queue=self.queue,
                peer=self.peer,
            )
        except ConfigError as err:
            raise ConfigError("wifi: " + err.message.removeprefix("udp: ")) from err

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> WifiConfig:
        """Build from a config mapping (the agent's TOML or YAML).

        Raises:
            ConfigError: unknown key (named), missing ``interface``, or a bad value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"wifi: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        if "interface" not in data:
            raise ConfigError("wifi: interface is required (e.g. 'wlan0')")
        return cls(**data)
