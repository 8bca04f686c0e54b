"""Configuration of a UDP link and the address of a UDP neighbour.

The interfaces are always named: a UDP link never listens on "all interfaces" by accident
(ARCHITECTURE.md §7: nothing may be sent on a machine's real interface unless it was chosen).
IPv4 sockets bind ``0.0.0.0:port`` pinned to one interface with ``SO_BINDTODEVICE``; IPv6 sockets
bind the interface's link-local address (``fe80::/10``, RFC 4291 §2.5.6) with its scope id, so two
nodes on one link talk without any configured address.

The default MTU, 1200 bytes of UDP payload, fits the IPv6 minimum link MTU of 1280 bytes
(RFC 8200 §5) after the 40-byte IPv6 and 8-byte UDP headers, so no datagram is ever fragmented.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from typing import Any

from agent.errors import ConfigError

__all__ = ["DEFAULT_PORT", "UdpAddress", "UdpConfig", "parse_peer"]

DEFAULT_PORT = 4737
MAX_UDP_PAYLOAD = 65507  # 65535 - 20 (IPv4 header) - 8 (UDP header)
MIN_MTU = 16
IFNAMSIZ = 16  # linux/if.h: names are at most 15 bytes plus the terminating NUL


def _normalize_host(host: str) -> str:
    """Return the canonical text of an IP address, without a ``%scope`` suffix.

    Raises:
        ConfigError: ``host`` is not an IPv4 or IPv6 address.
    """
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).compressed
    except ValueError as err:
        raise ConfigError(f"udp: peer host must be an IP address, got {host!r}") from err


def _check_interface(name: object, what: str) -> str:
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{what}: interface names must be non-empty strings, got {name!r}")
    if len(name.encode()) >= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise ConfigError(f"{what}: {name!r} is not a valid interface name")
    return name


@dataclasses.dataclass(frozen=True)
class UdpAddress:
    """The address of a UDP neighbour (or of a local socket, in :attr:`UdpDriver.bound`).

    Attributes:
        host: IPv4 or IPv6 address text, stored in canonical form (``fe80::1``, no ``%scope``).
        port: UDP port, 0..65535.
        interface: the local interface that reaches the peer; for an IPv6 link-local address it
            is the scope.

    Raises:
        ConfigError: ``host`` is not an IP address, or ``port`` or ``interface`` is invalid.
    """

    host: str
    port: int
    interface: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "host", _normalize_host(self.host))
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise ConfigError(f"udp: port must be an integer, got {self.port!r}")
        if not 0 <= self.port <= 0xFFFF:
            raise ConfigError(f"udp: port must be 0..65535, got {self.port}")
        _check_interface(self.interface, "udp")

    @property
    def ipv6(self) -> bool:
        """True for an IPv6 address."""
        return ":" in self.host

    def __str__(self) -> str:
        if self.ipv6:
            return f"[{self.host}%{self.interface}]:{self.port}"
        return f"{self.host}:{self.port}@{self.interface}"


def parse_peer(text: str, interfaces: tuple[str, ...]) -> UdpAddress:
    """Parse a configured peer, ``"host:port"`` or ``"[v6addr%iface]:port"``.

    Args:
        text: ``10.99.0.2:4737``, ``[fe80::1%wlan0]:4737`` or ``[fe80::1]:4737``.
        interfaces: the link's interfaces; the peer's interface is the IPv6 scope when given,
            else the only configured interface.

    Returns:
        The :class:`UdpAddress`.

    Raises:
        ConfigError: the text is malformed, or the interface is ambiguous or not configured.
    """
    what = f"udp: peer {text!r}"
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"{what} must be 'host:port' or '[ipv6%interface]:port'")
    scope = None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        host, _, scope = host.partition("%")
    elif ":" in host:
        raise ConfigError(f"{what}: write an IPv6 peer in brackets, '[{host}]:{port_text}'")
    if scope:
        interface = scope
    elif len(interfaces) == 1:
        interface = interfaces[0]
    else:
        raise ConfigError(
            f"{what}: several interfaces are configured; name one as '[ipv6%interface]:port' "
            "or configure a single interface"
        )
    if interface not in interfaces:
        raise ConfigError(f"{what}: interface {interface!r} is not in interfaces {interfaces}")
    return UdpAddress(host, int(port_text), interface)


@dataclasses.dataclass(frozen=True)
class UdpConfig:
    """One UDP link: the interfaces it binds and what it carries.

    Attributes:
        interfaces: interface names to bind, at least one (``"lo"`` allowed); never implied.
        port: UDP port of every socket; 0 picks an ephemeral port per socket (tests).
        mtu: largest datagram payload, bytes (default 1200: no IPv6 fragmentation).
        ipv4: bind ``0.0.0.0:port`` on each interface (``SO_BINDTODEVICE``).
        ipv6: bind each interface's IPv6 link-local address (``::1`` on loopback).
        queue: receive queue per peer, datagrams; more are dropped and counted.
        peer: the one neighbour :meth:`UdpDriver.open` connects to, ``"host:port"`` or
            ``"[ipv6%iface]:port"``; None when channels are made with :meth:`UdpDriver.channel`.

    Raises:
        ConfigError: a value has the wrong type or range (the message names the key).
    """

    interfaces: tuple[str, ...]
    port: int = DEFAULT_PORT
    mtu: int = 1200
    ipv4: bool = True
    ipv6: bool = True
    queue: int = 256
    peer: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.interfaces, str) or not isinstance(self.interfaces, tuple | list):
            raise ConfigError(f"udp: interfaces must be a list of names, got {self.interfaces!r}")
        names = tuple(_check_interface(n, "udp: interfaces") for n in self.interfaces)
        if not names:
            raise ConfigError("udp: interfaces must name at least one interface (e.g. ['lo'])")
        if len(set(names)) != len(names):
            raise ConfigError(f"udp: interfaces lists a name twice: {list(names)}")
        object.__setattr__(self, "interfaces", names)
        _check_int("port", self.port, 0, 0xFFFF)
        _check_int("mtu", self.mtu, MIN_MTU, MAX_UDP_PAYLOAD)
        _check_int("queue", self.queue, 1, 1 << 20)
        for key in ("ipv4", "ipv6"):
            if not isinstance(getattr(self, key), bool):
                raise ConfigError(f"udp: {key} must be true or false, got {getattr(self, key)!r}")
        if not (self.ipv4 or self.ipv6):
            raise ConfigError("udp: ipv4 and ipv6 are both false; enable at least one")
        if self.peer is not None:
            if not isinstance(self.peer, str):
                raise ConfigError(f"udp: peer must be a 'host:port' string, got {self.peer!r}")
            parse_peer(self.peer, names)

    def peer_address(self) -> UdpAddress | None:
        """The configured :attr:`peer` as a :class:`UdpAddress`, or None when not set."""
        return None if self.peer is None else parse_peer(self.peer, self.interfaces)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> UdpConfig:
        """Build from a config mapping (the agent's TOML or YAML).

        Args:
            data: keys as the attributes; ``interfaces`` is a list of names or a comma-separated
                string (as in ``FLORETE_INTERFACES``).

        Raises:
            ConfigError: unknown key (named), missing ``interfaces``, or a bad value.
        """
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"udp: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        if "interfaces" not in data:
            raise ConfigError("udp: interfaces is required (e.g. ['lo'] or 'wlan0,eth1')")
        values = dict(data)
        names = values["interfaces"]
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",") if n.strip()]
        if isinstance(names, list):
            names = tuple(names)
        values["interfaces"] = names
        return cls(**values)


def _check_int(key: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"udp: {key} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"udp: {key} must be {low}..{high}, got {value}")
