"""API routes of the MQTT bridge under ``/apis/florete.io/v1alpha1/``.

* ``GET bridges`` -> ``BridgeList``: one ``Bridge`` (named ``mqtt``) when ``mqtt.broker`` is
  set, none otherwise. Its ``spec`` holds the broker, mappings and serial sensors; its
  ``status`` the connection, the routes in force, the outbox (depth, bounds, dropped and
  delivered totals) and per peer the queue depth, delivered, dropped and QoS 0 counts.
* ``GET bridges/{name}`` -> that ``Bridge``, or 404.
"""

from __future__ import annotations

from typing import Any, Protocol

from agent.errors import NotFoundError
from agent.httproute import Handler, Request, Response

__all__ = ["BridgeSource", "MqttApi"]

GROUP = "/apis/florete.io/v1alpha1"


class BridgeSource(Protocol):
    """What the API needs of a bridge: its state as an API object."""

    def snapshot(self) -> dict[str, Any]:
        """The ``Bridge`` object."""
        ...


class MqttApi:
    """Handlers of the bridge routes.

    Attributes:
        bridge: the running bridge, or None (no broker configured, or not started yet).
    """

    def __init__(self, bridge: BridgeSource | None = None) -> None:
        self.bridge = bridge

    def routes(self) -> list[tuple[str, str, Handler]]:
        """``(method, path template, handler)`` for :class:`agent.httproute.Router`."""
        return [
            ("GET", f"{GROUP}/bridges", self.list_bridges),
            ("GET", f"{GROUP}/bridges/{{name}}", self.get_bridge),
        ]

    def _items(self) -> list[dict[str, Any]]:
        return [] if self.bridge is None else [self.bridge.snapshot()]

    async def list_bridges(self, request: Request) -> Response:
        """``GET bridges``."""
        return Response.json(
            {"apiVersion": "florete.io/v1alpha1", "kind": "BridgeList", "items": self._items()}
        )

    async def get_bridge(self, request: Request) -> Response:
        """``GET bridges/{name}``.

        Raises:
            NotFoundError: no bridge by that name.
        """
        for item in self._items():
            if item["metadata"]["name"] == request.params["name"]:
                return Response.json(item)
        raise NotFoundError(f'bridges "{request.params["name"]}" not found')
