"""The neighbour table: every node this agent has heard of, and the state of each link to it.

Pure state, no I/O: discovery (mDNS, radio beacons) *observes* nodes, link sessions report
*link up/down*, and the table answers the API and the CLI (:meth:`NeighbourTable.snapshot`).

Liveness comes only from link sessions (ARQ keepalives behind :meth:`NeighbourTable.link_up`
and :meth:`NeighbourTable.link_down`), never from discovery: an mDNS record may outlive a
crashed node by 75 minutes (RFC 6762 §10: PTR TTL 4500 s), and a record that vanishes says
only that the node stopped announcing. So an observation never brings a link up, a vanished
announcement (:meth:`NeighbourTable.withdraw`) never brings one down, and a node heard only
through discovery is ``"discovered"``, not ``"up"``.

A neighbour's ``state`` (in :meth:`Neighbour.state`):

=============  =====================================================================
``up``         at least one link is up (a session answers keepalives)
``down``       no link is up, and at least one was up before (the session ended)
``discovered`` no link was ever up; the node is announced (mDNS or beacon)
``gone``       no link is up and the node said goodbye (mDNS goodbye or a session
               goodbye), until it is observed again
=============  =====================================================================

The table never holds this node's own ID. Trust (``trusted``, ``untrusted``, ``revoked``) is
not stored here: a callable given to the table answers it from the trust store at read time.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

from agent.identity import parse_node_id

__all__ = [
    "Address",
    "ChangeKind",
    "LinkSource",
    "LinkState",
    "Neighbour",
    "NeighbourChange",
    "NeighbourState",
    "NeighbourTable",
    "TrustState",
]

_log = logging.getLogger(__name__)

TrustState = Literal["trusted", "untrusted", "revoked"]
LinkSource = Literal["mdns", "beacon", "session"]
NeighbourState = Literal["up", "down", "discovered", "gone"]
ChangeKind = Literal["added", "updated", "up", "down", "withdrawn", "goodbye", "removed"]

Address = tuple[str, int, str]
"""Where a neighbour is reached on a link: ``(host, port, interface)``.

``host`` is an IP address in text form (an IPv6 link-local address keeps its ``%scope``) or
empty for a point-to-point link; ``port`` is a UDP port (0 when meaningless); ``interface`` is
the local interface or device the address was heard on (``"eth0"``, ``"/dev/ttyUSB0"``), or
``""`` when unknown."""


@dataclasses.dataclass
class LinkState:
    """The state of one link to a neighbour.

    Attributes:
        up: a session on this link answers keepalives.
        source: what last touched this entry: ``"mdns"`` or ``"beacon"`` (discovery; ``up`` is
            then False unless a session also runs) or ``"session"`` (link up/down reports).
        announced: discovery currently sees the neighbour's announcement on this link (False
            after an mDNS goodbye or when the link entry comes from a session only).
        ever_up: a session on this link was up at some point.
        cost: routing cost of the link, relative (see ``LinkInfo.cost``), or None if unknown.
        rtt: smoothed round-trip time in seconds, or None if unknown.
        last_heard: monotonic seconds at the last observation or session report.
        last_heard_wall: the same instant as Unix time in seconds, for display.
        reason: why the link last went down (``"keepalive timeout"``, ``"goodbye"``), or "".
    """

    up: bool = False
    source: LinkSource = "mdns"
    announced: bool = False
    ever_up: bool = False
    cost: float | None = None
    rtt: float | None = None
    last_heard: float = 0.0
    last_heard_wall: float = 0.0
    reason: str = ""


@dataclasses.dataclass
class Neighbour:
    """One neighbour node as the table knows it.

    Attributes:
        node_id: the neighbour's node ID, display form (see :mod:`agent.identity`).
        name: its human name as announced (not authenticated).
        fingerprint: SHA-256 fingerprint of its certificate as announced, display form
            (``"3A:0F:…"``), or "" when not yet known (a session-only neighbour).
        version: the discovery protocol version it announced (0 when unknown).
        addresses: link name -> addresses on that link (``{"udp": [("10.0.0.2", 7946,
            "eth0")]}``); replaced by every observation on that link.
        links: link name (``"udp"``, ``"serial_radio:/dev/ttyUSB0"``) -> :class:`LinkState`.
        capabilities: key -> value as announced (``{"rt": "process+podman"}``).
        first_seen: monotonic seconds when the table first heard of the node.
        last_seen: monotonic seconds at the last observation or session report.
        first_seen_wall: ``first_seen`` as Unix time in seconds, for display.
        last_seen_wall: ``last_seen`` as Unix time in seconds, for display.
        said_goodbye: the node said goodbye and has not been observed since.
    """

    node_id: str
    name: str
    fingerprint: str = ""
    version: int = 0
    addresses: dict[str, list[Address]] = dataclasses.field(default_factory=dict)
    links: dict[str, LinkState] = dataclasses.field(default_factory=dict)
    capabilities: dict[str, str] = dataclasses.field(default_factory=dict)
    first_seen: float = 0.0
    last_seen: float = 0.0
    first_seen_wall: float = 0.0
    last_seen_wall: float = 0.0
    said_goodbye: bool = False

    @property
    def up(self) -> bool:
        """True when at least one link is up."""
        return any(link.up for link in self.links.values())

    @property
    def state(self) -> NeighbourState:
        """``"up"``, ``"down"``, ``"discovered"`` or ``"gone"`` (see the module docstring)."""
        if self.up:
            return "up"
        if self.said_goodbye:
            return "gone"
        if any(link.ever_up for link in self.links.values()):
            return "down"
        return "discovered"


@dataclasses.dataclass(frozen=True)
class NeighbourChange:
    """What a change listener receives.

    Attributes:
        kind: ``"added"`` (new node), ``"updated"`` (name, fingerprint, addresses or
            capabilities changed), ``"up"`` / ``"down"`` (a link), ``"withdrawn"`` (an
            announcement went away), ``"goodbye"``, ``"removed"``.
        node_id: the neighbour concerned.
        link: the link concerned, for ``up``, ``down`` and ``withdrawn``; else None.
    """

    kind: ChangeKind
    node_id: str
    link: str | None = None


Listener = Callable[[NeighbourChange], None]


def _iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="milliseconds")


def _untrusted(_node_id: str) -> TrustState:
    return "untrusted"


class NeighbourTable:
    """Every known neighbour, keyed by node ID.

    Not thread-safe: use it from the event loop. Listeners are called synchronously after each
    change, in the order they were added; a listener that raises is logged and skipped.

    Args:
        own_id: this node's ID; observations and reports about it are ignored.
        trust: node ID -> its trust state, asked at every :meth:`snapshot` (default: every
            node is ``"untrusted"``).
        clock: monotonic clock in seconds (default :func:`time.monotonic`).
        wall_clock: Unix time in seconds, for display only (default :func:`time.time`).

    Raises:
        ValueError: ``own_id`` is not a valid node ID.
    """

    def __init__(
        self,
        own_id: str,
        trust: Callable[[str], TrustState] = _untrusted,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._own_id = parse_node_id(own_id)
        self._trust = trust
        self._clock = clock
        self._wall = wall_clock
        self._nodes: dict[str, Neighbour] = {}
        self._listeners: list[Listener] = []

    @property
    def own_id(self) -> str:
        """This node's ID (display form)."""
        return self._own_id

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def get(self, node_id: str) -> Neighbour | None:
        """Return the neighbour with this ID (display form), or None."""
        return self._nodes.get(node_id)

    def neighbours(self) -> list[Neighbour]:
        """Return every neighbour, sorted by name then ID (the live objects: do not mutate)."""
        return sorted(self._nodes.values(), key=lambda n: (n.name, n.node_id))

    def add_listener(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener`` after every change; returns a function that removes it again."""
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def observe(
        self,
        node_id: str,
        *,
        name: str,
        fingerprint: str,
        link: str,
        source: Literal["mdns", "beacon"],
        addresses: Iterable[Address] = (),
        capabilities: Mapping[str, str] | None = None,
        version: int = 0,
    ) -> Neighbour | None:
        """Record that discovery heard a node's announcement on a link.

        Idempotent: observing the same facts again only refreshes ``last_seen`` and the link's
        ``last_heard``, and notifies no listener. The addresses on ``link`` are replaced by
        ``addresses`` (one resolution gives the whole current set); ``capabilities`` replaces
        the previous ones when given. A link that was not known is added *down*: only a session
        brings it up. A node that had said goodbye is no longer ``gone``.

        Args:
            node_id: the announced node ID, display form (the caller has validated it).
            name: the announced name.
            fingerprint: the announced certificate fingerprint, display form.
            link: the link the announcement came from (``"udp"``, ``"serial_radio:/dev/…"``).
            source: ``"mdns"`` or ``"beacon"``.
            addresses: where the node is reached on ``link``.
            capabilities: announced capabilities, or None to keep the known ones.
            version: the announced protocol version.

        Returns:
            The neighbour, or None when ``node_id`` is this node's own ID.
        """
        if node_id == self._own_id:
            return None
        now, wall = self._clock(), self._wall()
        node = self._nodes.get(node_id)
        kind: ChangeKind | None = None
        if node is None:
            node = Neighbour(node_id, name, first_seen=now, first_seen_wall=wall)
            self._nodes[node_id] = node
            kind = "added"
        new_addresses = list(dict.fromkeys(addresses))
        state = node.links.get(link)
        if kind is None and (
            node.name != name
            or node.fingerprint != fingerprint
            or node.version != version
            or node.addresses.get(link, []) != new_addresses
            or (capabilities is not None and node.capabilities != dict(capabilities))
            or node.said_goodbye
            or state is None
            or not state.announced
        ):
            kind = "updated"
        if node.fingerprint and node.fingerprint != fingerprint:
            _log.info(
                "neighbour %s (%s) announces a new certificate fingerprint %s (was %s)",
                node_id,
                name,
                fingerprint,
                node.fingerprint,
            )
        node.name, node.fingerprint, node.version = name, fingerprint, version
        node.addresses[link] = new_addresses
        if capabilities is not None:
            node.capabilities = dict(capabilities)
        node.said_goodbye = False
        if state is None:
            state = node.links[link] = LinkState(source=source)
        if not state.up:
            state.source = source
        state.announced = True
        state.last_heard, state.last_heard_wall = now, wall
        node.last_seen, node.last_seen_wall = now, wall
        if kind is not None:
            self._notify(NeighbourChange(kind, node_id))
        return node

    def link_up(
        self,
        node_id: str,
        link: str,
        *,
        name: str = "",
        cost: float | None = None,
        rtt: float | None = None,
    ) -> Neighbour | None:
        """Record that a session on ``link`` to ``node_id`` is up, or answered a keepalive.

        A node not yet known is added (a peer may connect before discovery hears it); the first
        report of a link going up notifies ``"up"``, later ones only refresh ``last_heard``,
        ``cost`` and ``rtt``.

        Args:
            node_id: the peer's authenticated node ID, display form.
            link: the link the session runs on.
            name: the peer's name, used only when the node is new.
            cost: routing cost of the link, or None to keep the known one.
            rtt: smoothed round-trip time in seconds, or None to keep the known one.

        Returns:
            The neighbour, or None when ``node_id`` is this node's own ID.
        """
        if node_id == self._own_id:
            return None
        now, wall = self._clock(), self._wall()
        node = self._nodes.get(node_id)
        added = node is None
        if node is None:
            node = Neighbour(node_id, name, first_seen=now, first_seen_wall=wall)
            self._nodes[node_id] = node
        state = node.links.setdefault(link, LinkState(source="session"))
        went_up = not state.up
        state.up = state.ever_up = True
        state.source = "session"
        state.reason = ""
        state.cost = state.cost if cost is None else cost
        state.rtt = state.rtt if rtt is None else rtt
        state.last_heard, state.last_heard_wall = now, wall
        node.last_seen, node.last_seen_wall = now, wall
        node.said_goodbye = False
        if added:
            self._notify(NeighbourChange("added", node_id))
        if went_up:
            self._notify(NeighbourChange("up", node_id, link))
        return node

    def link_down(self, node_id: str, link: str, reason: str) -> None:
        """Record that the session on ``link`` to ``node_id`` ended.

        Nothing happens when the node or the link is unknown or already down.

        Args:
            node_id: the peer's node ID, display form.
            link: the link the session ran on.
            reason: why, for display (``"keepalive timeout"``, ``"peer closed"``).
        """
        node = self._nodes.get(node_id)
        state = node.links.get(link) if node is not None else None
        if state is None or not state.up:
            return
        state.up = False
        state.source = "session"
        state.reason = reason
        self._notify(NeighbourChange("down", node_id, link))

    def withdraw(self, node_id: str, link: str) -> None:
        """Record that discovery no longer sees the node's announcement on ``link``.

        Only the announcement is marked gone: an up link stays up and a down link stays down
        (see the module docstring). Whether the node is then ``gone`` is the caller's choice
        (:meth:`goodbye`). Nothing happens when the node or link is unknown or not announced.
        """
        node = self._nodes.get(node_id)
        state = node.links.get(link) if node is not None else None
        if state is None or not state.announced:
            return
        state.announced = False
        self._notify(NeighbourChange("withdrawn", node_id, link))

    def goodbye(self, node_id: str, reason: str = "goodbye") -> None:
        """Record that the node said goodbye: every link goes down at once, the node is
        ``gone`` until observed again. Nothing happens for an unknown node.

        Args:
            node_id: the node, display form.
            reason: the down reason given to the links that were up.
        """
        node = self._nodes.get(node_id)
        if node is None or node.said_goodbye:
            return
        node.said_goodbye = True
        went_down = [name for name, state in node.links.items() if state.up]
        for name in went_down:
            state = node.links[name]
            state.up, state.reason = False, reason
        for name in went_down:
            self._notify(NeighbourChange("down", node_id, name))
        self._notify(NeighbourChange("goodbye", node_id))

    def remove(self, node_id: str) -> bool:
        """Forget a node entirely; returns whether it was known."""
        if self._nodes.pop(node_id, None) is None:
            return False
        self._notify(NeighbourChange("removed", node_id))
        return True

    def trust_of(self, node_id: str) -> TrustState:
        """Return the node's trust state, from the callable given to the table."""
        return self._trust(node_id)

    def snapshot(self) -> list[dict[str, Any]]:
        """Return the table as JSON-ready data, sorted by name then node ID.

        Each item::

            {"nodeID": str, "name": str, "state": "up"|"down"|"discovered"|"gone",
             "up": bool, "trust": "trusted"|"untrusted"|"revoked", "fingerprint": str,
             "version": int, "capabilities": {str: str},
             "addresses": {link: [{"host": str, "port": int, "interface": str}]},
             "links": {link: {"up": bool, "announced": bool, "source": str,
                              "cost": float|None, "rttSeconds": float|None,
                              "lastHeard": ISO 8601 UTC, "reason": str}},
             "firstSeen": ISO 8601 UTC, "lastSeen": ISO 8601 UTC,
             "lastSeenAgoSeconds": float}
        """
        now = self._clock()
        return [
            {
                "nodeID": node.node_id,
                "name": node.name,
                "state": node.state,
                "up": node.up,
                "trust": self._trust(node.node_id),
                "fingerprint": node.fingerprint,
                "version": node.version,
                "capabilities": dict(sorted(node.capabilities.items())),
                "addresses": {
                    link: [{"host": h, "port": p, "interface": i} for h, p, i in addresses]
                    for link, addresses in sorted(node.addresses.items())
                },
                "links": {
                    link: {
                        "up": state.up,
                        "announced": state.announced,
                        "source": state.source,
                        "cost": state.cost,
                        "rttSeconds": state.rtt,
                        "lastHeard": _iso(state.last_heard_wall),
                        "reason": state.reason,
                    }
                    for link, state in sorted(node.links.items())
                },
                "firstSeen": _iso(node.first_seen_wall),
                "lastSeen": _iso(node.last_seen_wall),
                "lastSeenAgoSeconds": round(max(0.0, now - node.last_seen), 3),
            }
            for node in self.neighbours()
        ]

    def _notify(self, change: NeighbourChange) -> None:
        for listener in list(self._listeners):
            try:
                listener(change)
            except Exception:
                _log.exception("neighbour listener %r failed on %s", listener, change)
