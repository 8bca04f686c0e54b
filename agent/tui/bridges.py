"""The MQTT bridge view: broker connection, mappings, outbox and per-peer counts.

From ``GET /apis/florete.io/v1alpha1/bridges`` (``agent/api_mqtt.py``): a ``BridgeList`` with
one ``Bridge`` when ``mqtt.broker`` is set. An empty list, or a 404 from an agent without the
bridge, shows "not configured". Fields are read with defaults, so an agent with an older or
newer object still shows what it has.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from rich.text import Text

from agent.render import table
from agent.tui.fmt import size
from agent.tui.view import OptionalView

__all__ = ["BridgesView", "bridge_lines"]


def _one_line(item: Any) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, Mapping):
        return "  ".join(f"{k}={v}" for k, v in item.items())
    return json.dumps(item)


def bridge_lines(bridge: Mapping[str, Any]) -> list[str]:
    """The lines for one ``Bridge`` object."""
    spec: Mapping[str, Any] = bridge.get("spec") or {}
    st: Mapping[str, Any] = bridge.get("status") or {}
    outbox: Mapping[str, Any] = st.get("outbox") or {}
    name = (bridge.get("metadata") or {}).get("name", "?")
    state = "connected" if st.get("connected") else "NOT CONNECTED"
    lines = [
        f"Bridge      {name}: {state} to {spec.get('broker', '?')} "
        f"(MQTT {spec.get('protocol', '?')}, {st.get('connects', 0)} connects)",
    ]
    if st.get("lastError"):
        lines.append(f"Last error  {st['lastError']}")
    lines += [
        f"Outbox      {outbox.get('messages', 0)} messages, {size(outbox.get('bytes', 0))} "
        f"(max {outbox.get('maxMessages', '?')}, {size(outbox.get('maxBytes'))})",
        f"            delivered {outbox.get('delivered', 0)}, dropped {outbox.get('dropped', 0)}, "
        f"too large {outbox.get('rejectedTooLarge', 0)}",
        f"Traffic     received {st.get('received', 0)}, published {st.get('published', 0)}, "
        f"duplicates {st.get('duplicatesSkipped', 0)}, rejected {st.get('rejected', 0)}, "
        f"in flight {st.get('inflight', 0)}",
    ]
    mappings = spec.get("mappings") or []
    lines += ["", f"Mappings ({len(mappings)})"] + [f"  {_one_line(m)}" for m in mappings]
    peers = st.get("peers") or []
    lines += ["", f"Peers ({len(peers)})"]
    if peers:
        rows = [
            [
                str(p.get("name") or str(p.get("nodeID", "?")).split("-", 1)[0]),
                str(p.get("state", "?")),
                str(p.get("queued", 0)),
                str(p.get("delivered", 0)),
                str(p.get("dropped", 0)),
                str(p.get("sentQoS0", 0)),
            ]
            for p in peers
        ]
        headers = ["NAME", "STATE", "QUEUED", "DELIVERED", "DROPPED", "QOS0-SENT"]
        lines += ["  " + line for line in table(headers, rows).splitlines()]
    sensors = st.get("serialSensors") or []
    if sensors:
        lines += ["", f"Serial sensors ({len(sensors)})"] + [f"  {_one_line(s)}" for s in sensors]
    return lines


class BridgesView(OptionalView):
    """The MQTT bridge's mappings and counters."""

    NAME = "mqtt"
    ALIASES = ("bridges", "bridge")
    RESOURCE = "bridges"
    ABSENT = "MQTT bridge: not configured. Set mqtt.broker in the agent's configuration."

    def lines(self, data: Any) -> list[Text]:
        """``ABSENT`` for a 404 or an empty list, else every bridge."""
        items = [] if data is None else data.get("items") or []
        if not items:
            return [Text(self.ABSENT)]
        out: list[str] = []
        for bridge in items:
            out += [*bridge_lines(bridge), ""]
        return [Text(line, no_wrap=True) for line in out[:-1]]
