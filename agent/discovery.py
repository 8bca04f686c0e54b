"""Neighbour discovery on IP links with mDNS/DNS-SD (RFC 6762, RFC 6763), via python-zeroconf.

Each agent announces one service instance and browses for the others:

* type ``_florete._udp.local.``; instance ``<name>._florete._udp.local.``; SRV port: the UDP
  link's port; host ``florete-<short id>.local.`` (derived from the node ID, so it never
  collides with the machine's own ``<hostname>.local.`` that avahi may announce);
* TXT (RFC 6763 §6): ``id`` node ID, ``n`` name, ``fp`` SHA-256 certificate fingerprint as 64
  hex digits, ``v`` protocol version (1), ``caps`` capabilities as comma-separated ``key=value``
  items (``caps=ln=udp,rt=process+podman``; ``pair=1.<n>`` while the node shows a pairing
  code, ``pair=0.<n>`` after, see :meth:`Discovery.set_pairing`). The whole TXT stays under
  :data:`MAX_TXT_BYTES`.

Zeroconf always runs on explicit interfaces (their IPv4 addresses, and their indexes for IPv6
when they have IPv6 addresses): never ``InterfaceChoice.All``, which would send on every
interface of the machine.

**Liveness.** Discovery only *observes* nodes (:meth:`NeighbourTable.observe`); link sessions
bring links up and down. When an announcement goes away (an mDNS goodbye, RFC 6762 §10.1, or an
expired record) the table records it (:meth:`NeighbourTable.withdraw`) and, only when no session
to the node is up, marks the node gone (:meth:`NeighbourTable.goodbye`): a node that still
answers keepalives is up whatever mDNS says, and one that stopped announcing with no session is
shown as gone rather than lingering as discovered.

**Name conflicts** are resolved once (the avahi rename storm, avahi issue #176, comes from two
hosts renaming each other forever). If probing finds the name taken, the instance registers
again, once, as ``<name>-<short id>`` (the first group of the node ID, lower case): no other
node derives the same suffix. If two nodes end up announcing one name (they probed at the same
time), the one whose TXT record is lexicographically smaller renames (the RFC 6762 §8.2
tie-break rule), and any node renames when the other announcer is not a valid Florete node.
After one rename the name never changes again while the agent runs, even if the conflicting
record goes away and comes back; a conflict on the suffixed name is logged, not acted on.

**Timing.** Registration uses zeroconf's probing (RFC 6762 §8.1: a random 150-250 ms delay,
then three probes; zeroconf spaces them 500 ms rather than 250 ms and claims the name right
after the third), so a new node is announced about 1.2 s after :meth:`Discovery.start`. The
browser starts before registration; its first query (RFC 6762 §5.2: after 20-120 ms) asks for
unicast answers (QU), which responders send at once, so a node that joins existing ones sees
them within about 0.2 s. Neither step skips what the RFC requires: no ``cooperating_responders``
shortcut.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psutil
from zeroconf import (
    IPVersion,
    NonUniqueNameException,
    RecordUpdate,
    RecordUpdateListener,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf._dns import DNSText  # re-exported by zeroconf, but not in its __all__
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from agent.errors import ConfigError, LocalProtocolError, RemoteProtocolError
from agent.identity import parse_node_id, short_id
from agent.neighbours import Address, NeighbourTable

__all__ = [
    "MAX_TXT_BYTES",
    "PROTOCOL_VERSION",
    "SERVICE_TYPE",
    "Discovery",
    "DiscoveryStats",
    "PeerAnnouncement",
    "build_txt",
    "normalize_fingerprint",
    "parse_txt",
]

_log = logging.getLogger(__name__)

SERVICE_TYPE = "_florete._udp.local."
PROTOCOL_VERSION = 1
MAX_TXT_BYTES = 400
"""Largest TXT record this node sends, in bytes on the wire (RFC 6763 §6.2 suggests < 400)."""

_LABEL_BYTES = 63  # RFC 1035 §2.3.4: a DNS label
_CAP_KEY = re.compile(r"[a-z0-9][a-z0-9_.-]{0,15}")
_HEX64 = re.compile(r"[0-9A-Fa-f]{64}")
_Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def normalize_fingerprint(text: str) -> str:
    """Return a SHA-256 fingerprint in display form (32 upper-case hex pairs joined by ``:``).

    Args:
        text: 64 hex digits, with or without ``:`` between the pairs, any case.

    Raises:
        ValueError: not 32 bytes of hex.
    """
    digits = text.replace(":", "")
    if not _HEX64.fullmatch(digits) or (":" in text and len(text) != 95):
        raise ValueError(f"not a SHA-256 fingerprint: {text[:100]!r}")
    return bytes.fromhex(digits).hex(":").upper()


def _cut(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def _txt_size(txt: Mapping[str, str]) -> int:
    """Bytes of the TXT RDATA: one length byte plus ``key=value`` per item."""
    return sum(1 + len(k.encode()) + 1 + len(v.encode()) for k, v in txt.items())


def build_txt(
    node_id: str, name: str, fingerprint: str, capabilities: Mapping[str, str]
) -> dict[str, str]:
    """Build this node's TXT items (see the module docstring).

    Args:
        node_id: the node ID, any form :func:`~agent.identity.parse_node_id` accepts.
        name: the node name (cut to 63 UTF-8 bytes).
        fingerprint: the certificate fingerprint (see :func:`normalize_fingerprint`).
        capabilities: key -> value; keys of 1-16 characters ``[a-z0-9_.-]`` (starting with a
            letter or digit), values without ``,`` (lists inside a value joined with ``+``).

    Returns:
        ``{"id": …, "n": …, "fp": …, "v": "1", "caps": …}``.

    Raises:
        ConfigError: a malformed ID, fingerprint or capability, or a TXT record over
            :data:`MAX_TXT_BYTES` bytes.
    """
    try:
        txt = {
            "id": parse_node_id(node_id),
            "n": _cut(name, _LABEL_BYTES),
            "fp": normalize_fingerprint(fingerprint).replace(":", "").lower(),
            "v": str(PROTOCOL_VERSION),
        }
    except ValueError as err:
        raise ConfigError(f"discovery: {err}") from err
    for key, value in capabilities.items():
        if not _CAP_KEY.fullmatch(key) or "," in value:
            raise ConfigError(f"discovery: capability {key!r}={value!r}: bad key or ',' in value")
    txt["caps"] = ",".join(f"{k}={v}" if v else k for k, v in sorted(capabilities.items()))
    if _txt_size(txt) > MAX_TXT_BYTES:
        raise ConfigError(
            f"discovery: TXT record of {_txt_size(txt)} bytes exceeds {MAX_TXT_BYTES}: "
            "announce fewer capabilities"
        )
    return txt


@dataclasses.dataclass(frozen=True)
class PeerAnnouncement:
    """A validated TXT record of another node.

    Attributes:
        node_id: display form.
        name: announced name (the instance label when ``n`` is missing).
        fingerprint: display form.
        version: announced protocol version.
        capabilities: parsed ``caps`` items (items that do not parse are dropped).
    """

    node_id: str
    name: str
    fingerprint: str
    version: int
    capabilities: dict[str, str]


def _text(properties: Mapping[bytes, bytes | None], key: bytes) -> str | None:
    value = properties.get(key)
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as err:
        raise RemoteProtocolError(f"TXT {key.decode()}: not UTF-8") from err


def parse_txt(properties: Mapping[bytes, bytes | None], label: str = "") -> PeerAnnouncement:
    """Validate another node's TXT items.

    Args:
        properties: zeroconf's ``ServiceInfo.properties`` (key -> value or None).
        label: the instance label, used as the name when ``n`` is missing.

    Returns:
        The announcement.

    Raises:
        RemoteProtocolError: ``id`` missing or not a valid node ID (check characters), ``fp``
            missing or not a SHA-256 fingerprint, ``v`` not a positive integer, or text that is
            not UTF-8.
    """
    raw_id = _text(properties, b"id")
    raw_fp = _text(properties, b"fp")
    if raw_id is None or raw_fp is None:
        raise RemoteProtocolError("TXT lacks id or fp")
    try:
        node_id = parse_node_id(raw_id)
        fingerprint = normalize_fingerprint(raw_fp)
    except ValueError as err:
        raise RemoteProtocolError(f"TXT: {err}") from err
    raw_version = _text(properties, b"v") or "0"
    if not raw_version.isdigit() or len(raw_version) > 4:
        raise RemoteProtocolError(f"TXT v: not a version number: {raw_version[:20]!r}")
    capabilities: dict[str, str] = {}
    for item in (_text(properties, b"caps") or "").split(","):
        key, _, value = item.partition("=")
        if _CAP_KEY.fullmatch(key):
            capabilities[key] = value
    name = _text(properties, b"n") or label
    return PeerAnnouncement(
        node_id, _cut(name, _LABEL_BYTES), fingerprint, int(raw_version), capabilities
    )


def _interface_choice(
    names: Sequence[str],
) -> tuple[list[str | int], IPVersion, list[str], list[tuple[_Network, str]]]:
    """Map interface names to what zeroconf needs.

    Returns:
        ``(interfaces, ip_version, addresses, networks)``: zeroconf's ``interfaces`` (IPv4
        addresses, and the index of every non-loopback interface with IPv6), the IP version,
        the addresses to publish (IPv6 without scope) and ``(ip_network, name)`` pairs to tell
        on which interface a neighbour's address lies.

    Raises:
        ConfigError: an interface does not exist or none has an address.
    """
    all_addrs = psutil.net_if_addrs()
    stats = psutil.net_if_stats()
    missing = [name for name in names if name not in all_addrs]
    if missing:
        raise ConfigError(f"discovery: no such interface {', '.join(missing)}")
    choice: list[str | int] = []
    published: list[str] = []
    networks: list[tuple[_Network, str]] = []
    has_v4 = has_v6 = False
    for name in names:
        loopback = "loopback" in stats[name].flags.split(",") if name in stats else False
        for snic in all_addrs[name]:
            if snic.family == socket.AF_INET:
                choice.append(snic.address)
                published.append(snic.address)
                has_v4 = True
            elif snic.family == socket.AF_INET6 and not loopback:
                published.append(snic.address.partition("%")[0])
                index = socket.if_nametoindex(name)
                if index not in choice:
                    choice.append(index)
                has_v6 = True
            else:
                continue
            if snic.netmask:
                host = snic.address.partition("%")[0]
                prefix = bin(int(ipaddress.ip_address(snic.netmask))).count("1")
                net = ipaddress.ip_network(f"{host}/{prefix}", strict=False)
                networks.append((net, name))
    if not choice:
        raise ConfigError(f"discovery: no IP address on {', '.join(names)}")
    version = (
        IPVersion.All if has_v4 and has_v6 else IPVersion.V6Only if has_v6 else IPVersion.V4Only
    )
    return choice, version, published, networks


@dataclasses.dataclass
class DiscoveryStats:
    """Counters, for metrics and tests.

    Attributes:
        resolved: announcements of other nodes resolved and given to the table.
        rejected: announcements refused (bad TXT); each reason is logged once at WARNING.
        unresolved: resolutions that timed out.
        registrations: successful registrations of this node's instance (2 after a rename).
        conflicts: name conflicts seen (acted on once, then only counted).
    """

    resolved: int = 0
    rejected: int = 0
    unresolved: int = 0
    registrations: int = 0
    conflicts: int = 0


class _ConflictWatch(RecordUpdateListener):
    """Sees every record zeroconf receives; reports TXT records that claim our instance name
    with other data (a node that probed at the same time as this one)."""

    def __init__(self, owner: Discovery) -> None:
        self._owner = owner

    def async_update_records(self, zc: Zeroconf, now: float, records: list[RecordUpdate]) -> None:
        for update in records:
            if isinstance(update.new, DNSText):
                self._owner._check_txt(update.new)


def _txt_strings(text: bytes) -> dict[bytes, bytes]:
    """Split TXT RDATA (length-prefixed strings, RFC 6763 §6.1) into key -> value."""
    items: dict[bytes, bytes] = {}
    pos = 0
    while pos < len(text):
        end = pos + 1 + text[pos]
        key, _, value = text[pos + 1 : end].partition(b"=")
        items.setdefault(key.lower(), value)
        pos = end
    return items


class Discovery:
    """Announce this node and discover the others on the chosen interfaces.

    Args:
        node_id: this node's ID.
        name: this node's name; the instance label is the name cut to 63 bytes.
        fingerprint: this node's certificate fingerprint (any form
            :func:`normalize_fingerprint` accepts).
        port: the UDP link port, 1-65535 (the SRV port).
        capabilities: announced in ``caps`` (see :func:`build_txt`).
        interfaces: interface names to use (``network.interfaces`` resolved by
            :func:`agent.config.resolve_interfaces`); may be ``["lo"]``.
        table: where observations go.
        link: the link name for addresses on no known interface (default ``"udp"``).
        link_name: interface -> the neighbour-table link of addresses heard on it (default
            ``"<link>/<interface>"``; the mesh passes its own, e.g. ``"wifi/wlan0"``).
        resolve_timeout: seconds to wait for a service's SRV/TXT/addresses (default 3).

    Raises:
        ConfigError: an empty interface list, a port out of range, or a bad TXT (see
            :func:`build_txt`).
    """

    def __init__(
        self,
        node_id: str,
        name: str,
        fingerprint: str,
        port: int,
        capabilities: Mapping[str, str],
        interfaces: Sequence[str],
        table: NeighbourTable,
        *,
        link: str = "udp",
        link_name: Callable[[str], str] | None = None,
        resolve_timeout: float = 3.0,
    ) -> None:
        if not interfaces:
            raise ConfigError("discovery: no interface to announce on (network.interfaces)")
        if not 0 < port < 65536:
            raise ConfigError(f"discovery: port must be 1-65535, got {port}")
        self._txt = build_txt(node_id, name, fingerprint, capabilities)
        self._capabilities = dict(capabilities)
        self._pairing_changes = 0
        self._node_id = self._txt["id"]
        sid = short_id(self._node_id).lower()
        # Dots would split the label for resolvers that do not escape them (RFC 6763 §4.3).
        self._label = _cut(name.replace(".", "-"), _LABEL_BYTES) or sid
        self._fallback = f"{_cut(self._label, _LABEL_BYTES - len(sid) - 1)}-{sid}"
        self._server = f"florete-{sid}.local."
        self._port = port
        self._interfaces = list(interfaces)
        self._table = table
        self._link = link
        self._link_name = link_name or (lambda interface: f"{link}/{interface}")
        self._resolve_timeout = resolve_timeout
        self.stats = DiscoveryStats()
        self._aiozc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._watch = _ConflictWatch(self)
        self._info: AsyncServiceInfo | None = None
        self._own_text: bytes = b""
        self._renamed = False
        self._announcing: set[asyncio.Future[Any]] = set()
        self._resolving: dict[str, asyncio.Task[None]] = {}
        self._again: set[str] = set()
        self._rename_task: asyncio.Task[None] | None = None
        self._names: dict[str, str] = {}  # instance name (lower case) -> node ID
        self._networks: list[tuple[_Network, str]] = []
        self._published: list[str] = []
        self._logged: set[tuple[str, str]] = set()

    @property
    def instance_name(self) -> str | None:
        """The instance label currently registered (``"alpha"``, ``"alpha-p56ioi7"``), or None
        before registration or after a second conflict left the node unannounced."""
        if self._info is None:
            return None
        return self._info.name[: -len(SERVICE_TYPE) - 1]

    async def start(self) -> None:
        """Open the mDNS sockets, start browsing, then register (probe and announce).

        Returns once the instance is registered (about 1.2 s, the probing time), or after a
        conflict left it unregistered (logged). Browsing runs from the start.

        Raises:
            ConfigError: an interface does not exist or none has an address.
            OSError: the mDNS sockets cannot be opened.
            LocalProtocolError: already started.
        """
        if self._aiozc is not None:
            raise LocalProtocolError("discovery already started")
        choice, version, self._published, self._networks = _interface_choice(self._interfaces)
        _log.debug("mDNS on %s: %s (%s)", self._interfaces, choice, version.name)
        self._aiozc = AsyncZeroconf(interfaces=choice, ip_version=version)
        try:
            zc = self._aiozc.zeroconf
            zc.async_add_listener(self._watch, None)
            self._browser = AsyncServiceBrowser(zc, SERVICE_TYPE, handlers=[self._on_change])
            await self._register(self._label)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        """Stop browsing and send the goodbye (RFC 6762 §10.1) for this node's instance;
        idempotent. Takes about 0.3 s (zeroconf repeats the goodbye)."""
        tasks = [*self._resolving.values(), *([self._rename_task] if self._rename_task else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._resolving.clear()
        self._rename_task = None
        if self._aiozc is None:
            return
        aiozc, self._aiozc = self._aiozc, None
        aiozc.zeroconf.async_remove_listener(self._watch)
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        for future in self._announcing:
            future.cancel()
        await asyncio.gather(*self._announcing, return_exceptions=True)
        self._announcing.clear()
        if self._info is not None:
            info, self._info = self._info, None
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2.0):
                    await (await aiozc.async_unregister_service(info))
        await aiozc.async_close()

    async def set_pairing(self, showing: bool) -> None:
        """Announce whether this node shows a pairing code, so that ``florete-agent pair CODE``
        elsewhere finds it: ``caps`` item ``pair=1.<n>`` while shown, ``pair=0.<n>`` after,
        ``n`` counting the changes. Every change makes a TXT record never sent before: a browser
        ignores a record still in its cache (zeroconf fires no update for it), so going back to
        an earlier TXT would leave the others with the stale one. Re-announces at once
        (RFC 6762 §8.4); a no-op when the state is unchanged.

        Raises:
            ConfigError: the TXT record would exceed :data:`MAX_TXT_BYTES`.
        """
        current = self._capabilities.get("pair", "0")
        if current.startswith("1" if showing else "0"):
            return
        self._pairing_changes += 1
        self._capabilities["pair"] = f"{int(showing)}.{self._pairing_changes}"
        fingerprint = self._txt["fp"]
        self._txt = build_txt(self._txt["id"], self._txt["n"], fingerprint, self._capabilities)
        if self._aiozc is None or self._info is None:
            return
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            self._info.name,
            port=self._port,
            properties=self._txt,
            server=self._server,
            parsed_addresses=self._published,
        )
        self._info = info
        self._own_text = info.dns_text().text
        self._announcing.add(asyncio.ensure_future(await self._aiozc.async_update_service(info)))
        _log.info("announcing %s: pairing code %s", info.name, "shown" if showing else "gone")

    async def _register(self, label: str) -> None:
        assert self._aiozc is not None
        info = AsyncServiceInfo(
            SERVICE_TYPE,
            f"{label}.{SERVICE_TYPE}",
            port=self._port,
            properties=self._txt,
            server=self._server,
            parsed_addresses=self._published,
        )
        try:
            announcing = await self._aiozc.async_register_service(info)
        except NonUniqueNameException:
            self.stats.conflicts += 1
            if self._renamed:
                _log.error(
                    "mDNS name %r is taken as well; not announcing (is another agent running "
                    "with this node's identity?)",
                    label,
                )
                return
            self._renamed = True
            _log.warning(
                "mDNS name %r is taken by another node; announcing as %r instead",
                label,
                self._fallback,
            )
            await self._register(self._fallback)
            return
        self._announcing.add(asyncio.ensure_future(announcing))
        self._info = info
        self._own_text = info.dns_text().text
        self.stats.registrations += 1
        _log.info("announcing %s on %s", info.name, ", ".join(self._interfaces))

    def _check_txt(self, record: DNSText) -> None:
        """A TXT record arrived: is it another node's claim on our instance name?"""
        info = self._info
        if info is None or record.key != info.key or record.text == self._own_text:
            return
        if record.ttl == 0:  # a goodbye (ours from a previous instance, or theirs)
            return
        self.stats.conflicts += 1
        theirs = _txt_strings(record.text).get(b"id", b"").decode("utf-8", errors="replace")
        try:
            parse_node_id(theirs)
            cooperative = True
        except ValueError:
            cooperative = False
        if self._renamed or self._rename_task is not None:
            self._log_once(info.name, "conflict", "mDNS name %s is also claimed by %r", theirs)
            return
        if cooperative and record.text < self._own_text:
            self._log_once(
                info.name, "yields", "mDNS name %s also claimed by %s, which yields", theirs
            )
            return
        self._rename_task = asyncio.get_running_loop().create_task(self._rename_after(info))

    async def _rename_after(self, info: AsyncServiceInfo) -> None:
        """Leave a conflicting name without a goodbye (the name stays the other node's) and
        register under the fallback name."""
        assert self._aiozc is not None
        self._renamed = True
        self._aiozc.zeroconf.registry.async_remove(info)
        self._info = None
        _log.warning(
            "mDNS name %s is announced by another node too; announcing as %r instead",
            info.name,
            self._fallback,
        )
        await self._register(self._fallback)

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if state_change is ServiceStateChange.Removed:
            self._on_removed(name)
            return
        if name in self._resolving:
            self._again.add(name)
            return
        task = asyncio.get_running_loop().create_task(self._resolve_loop(name))
        self._resolving[name] = task
        task.add_done_callback(lambda _: self._resolving.pop(name, None))

    async def _resolve_loop(self, name: str) -> None:
        await self._resolve(name)
        while name in self._again:
            self._again.discard(name)
            await self._resolve(name)

    async def _resolve(self, name: str) -> None:
        assert self._aiozc is not None
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._aiozc.zeroconf, self._resolve_timeout * 1000):
            self.stats.unresolved += 1
            _log.debug("mDNS service %s did not resolve in %.1f s", name, self._resolve_timeout)
            return
        label = name[: -len(SERVICE_TYPE) - 1]
        try:
            peer = parse_txt(info.properties, label)
        except RemoteProtocolError as err:
            self.stats.rejected += 1
            self._log_once(name, str(err), "ignoring mDNS service %s: %s", str(err))
            return
        if peer.node_id == self._node_id:
            return
        self.stats.resolved += 1
        self._names[name.lower()] = peer.node_id
        port = info.port or 0
        # Sorted: zeroconf lists addresses newest first, which would make the table see a
        # change at every resolution.
        addresses = sorted(self._address(host, port) for host in info.parsed_scoped_addresses())
        by_link: dict[str, list[Address]] = {}
        for address in addresses:
            by_link.setdefault(self.link_name(address[2]), []).append(address)
        for link, group in by_link.items():
            self._table.observe(
                peer.node_id,
                name=peer.name,
                fingerprint=peer.fingerprint,
                link=link,
                source="mdns",
                addresses=group,
                capabilities=peer.capabilities,
                version=peer.version,
            )

    def link_name(self, interface: str) -> str:
        """The neighbour-table link of addresses heard on ``interface``: ``"udp/eth0"`` (one link
        per interface, as the mesh names its sessions), or ``"udp"`` when it is unknown."""
        return self._link_name(interface) if interface else self._link

    def _address(self, host: str, port: int) -> Address:
        """``(host, port, interface)``: a link-local IPv6 address keeps its scope as the
        interface name (``fe80::1%eth0``); other addresses get the interface whose subnet holds
        them, or "" when none does (or, for an unscoped link-local address, when several
        interfaces could be meant)."""
        plain, _, scope = host.partition("%")
        if scope:
            try:
                ifname = socket.if_indextoname(int(scope)) if scope.isdigit() else scope
            except OSError:
                ifname = ""
            return (f"{plain}%{ifname}" if ifname else plain, port, ifname)
        ip = ipaddress.ip_address(plain)
        owners = list(dict.fromkeys(n for net, n in self._networks if ip in net))
        if ip.is_link_local and ip.version == 6:
            # Heard without a scope (the AAAA record came over IPv4): every interface has
            # fe80::/64, so the scope is known only when one chosen interface has IPv6.
            return (
                (f"{plain}%{owners[0]}", port, owners[0]) if len(owners) == 1 else (plain, port, "")
            )
        return (plain, port, owners[0] if owners else "")

    def _on_removed(self, name: str) -> None:
        node_id = self._names.pop(name.lower(), None)
        if node_id is None:
            return
        node = self._table.get(node_id)
        ours = {self._link, *(self._link_name(i) for i in self._interfaces)}
        for link in list(node.links) if node is not None else []:
            if link in ours:
                self._table.withdraw(node_id, link)
        if node is not None and not node.up:
            _log.info("neighbour %s (%s) withdrew its mDNS announcement", node.name, node_id)
            self._table.goodbye(node_id, "mdns goodbye")

    def _log_once(self, name: str, reason: str, message: str, *args: object) -> None:
        """Log at WARNING the first time ``(name, reason)`` is seen, then at DEBUG."""
        level = logging.DEBUG if (name, reason) in self._logged else logging.WARNING
        if len(self._logged) >= 1024:  # a hostile network could send endless new names
            self._logged.clear()
        self._logged.add((name, reason))
        _log.log(level, message, name, *args)
