"""Routes: which local topics go to which peers, under which topic there.

A route is one filter on the local broker with a prefix rewrite and a set of peers. The
bridge makes one route per ``out`` (or ``both``) mapping, and one per subscription a peer
asked for with its own ``in`` mapping (see :class:`agent.mqtt.outbox.PeerRoute`). The rewrite
is mosquitto's (mosquitto.conf(5), ``topic``): a local topic ``strip + rest`` becomes
``prefix + rest`` on the peer's broker.

Loop prevention does not happen here: the bridge's own publications never come back to it
(MQTT 5 no-local subscriptions, or mosquitto's bridge flag with 3.1.1), so a message crosses
at most one mesh hop.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable
from typing import Any

from agent.mqtt.settings import check_topic, topic_matches

__all__ = ["OnceLog", "Route", "RouteTable", "Target"]


@dataclasses.dataclass(frozen=True)
class Route:
    """One filter on the local broker, rewritten for some peers.

    Attributes:
        filter: topic filter on the local broker.
        strip: prefix removed from matching topics.
        prefix: prefix put in front for the peers.
        qos: highest QoS used (a message keeps its own QoS if lower).
        peers: node IDs of the peers.
        origin: where the route comes from, for display: ``"mappings[0]"``, ``"peer ABCDEFG"``.
    """

    filter: str
    strip: str
    prefix: str
    qos: int
    peers: tuple[str, ...]
    origin: str

    def rewrite(self, topic: str) -> str | None:
        """The topic for the peers, or None when ``topic`` does not start with ``strip`` (the
        parent level a ``#`` also matches) or the rewrite leaves no valid topic."""
        if not topic.startswith(self.strip):
            return None
        result = self.prefix + topic[len(self.strip) :]
        try:
            check_topic(result)
        except ValueError:
            return None
        return result


@dataclasses.dataclass(frozen=True, slots=True)
class Target:
    """Where one local message goes: a peer, the topic there and the QoS."""

    peer: str
    topic: str
    qos: int


class RouteTable:
    """The routes in force; rebuilt whole when mappings, trust or peer subscriptions change.

    Args:
        routes: the routes.
    """

    def __init__(self, routes: Iterable[Route] = ()) -> None:
        self.routes: tuple[Route, ...] = tuple(routes)

    def filters(self) -> dict[str, int]:
        """Every filter to subscribe to on the local broker, with the highest QoS wanted."""
        wanted: dict[str, int] = {}
        for route in self.routes:
            wanted[route.filter] = max(wanted.get(route.filter, 0), route.qos)
        return wanted

    def targets(self, topic: str, qos: int) -> list[Target]:
        """Where a message on ``topic`` received with ``qos`` goes: one target per peer and
        rewritten topic (overlapping routes give one target, at the highest QoS)."""
        found: dict[tuple[str, str], int] = {}
        for route in self.routes:
            if not topic_matches(route.filter, topic):
                continue
            rewritten = route.rewrite(topic)
            if rewritten is None:
                continue
            level = min(qos, route.qos)
            for peer in route.peers:
                key = (peer, rewritten)
                found[key] = max(found.get(key, 0), level)
        return [Target(peer, t, q) for (peer, t), q in found.items()]

    def describe(self) -> list[dict[str, Any]]:
        """JSON-ready list of the routes."""
        return [
            {
                "filter": r.filter,
                "strip": r.strip,
                "prefix": r.prefix,
                "qos": r.qos,
                "peers": list(r.peers),
                "origin": r.origin,
            }
            for r in self.routes
        ]


class OnceLog:
    """Warnings that are logged once per key, then at DEBUG (STYLE.md item 9: no floods).

    Args:
        logger: the module's logger.
    """

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._seen: set[str] = set()

    def warning(self, key: str, msg: str, *args: object) -> None:
        """Log at WARNING the first time ``key`` is seen, at DEBUG afterwards."""
        level = logging.DEBUG if key in self._seen else logging.WARNING
        self._seen.add(key)
        self._logger.log(level, msg, *args)

    def clear(self, key: str) -> bool:
        """Forget ``key`` (the condition ended); True when it had been logged."""
        if key in self._seen:
            self._seen.discard(key)
            return True
        return False
