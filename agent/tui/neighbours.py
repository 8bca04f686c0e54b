"""The neighbours view: the nodes around, their state, trust, links and round-trip time.

From ``GET /apis/florete.io/v1alpha1/neighbours``
(:meth:`agent.neighbours.NeighbourTable.snapshot`),
refreshed on every poll. Enter shows a neighbour's addresses, links and capabilities.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from textual.binding import Binding, BindingType

from agent.tui.adapter import AgentApi
from agent.tui.dialogs import TextScreen
from agent.tui.fmt import ago, dump, seconds_ms
from agent.tui.view import TableView

__all__ = ["NeighboursView", "neighbour_row"]


def neighbour_row(n: Mapping[str, Any]) -> list[str]:
    """NAME NODE-ID STATE TRUST LINKS RTT SEEN for one neighbour (best RTT of its up links)."""
    links = n.get("links") or {}
    names = [name if st.get("up") else f"{name}(down)" for name, st in links.items()]
    rtts = [st["rttSeconds"] for st in links.values() if st.get("up") and st.get("rttSeconds")]
    return [
        str(n.get("name", "?")),
        str(n.get("nodeID", "?")).split("-", 1)[0],
        str(n.get("state", "?")),
        str(n.get("trust", "?")),
        ",".join(names) or "-",
        seconds_ms(min(rtts) if rtts else None),
        ago(n.get("lastSeenAgoSeconds")) + " ago",
    ]


class NeighboursView(TableView):
    """Who is around, and how well they are reached."""

    NAME = "neighbours"
    ALIASES = ("neighbors", "nb")
    COLUMNS = ("NAME", "NODE-ID", "STATE", "TRUST", "LINKS", "RTT", "SEEN")
    EMPTY = "No neighbours: none discovered yet on this node's links."
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "details", "Details", key_display="Enter", priority=True)
    ]

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, dict[str, Any]] = {}

    def fetch(self, api: AgentApi) -> list[dict[str, Any]]:
        """The neighbour table."""
        return api.neighbours()

    def rows(self, data: Any) -> list[tuple[str, list[str]]]:
        """One row per neighbour, keyed by node ID."""
        self.items = {n["nodeID"]: n for n in data}
        return [(n["nodeID"], neighbour_row(n)) for n in data]

    def action_details(self) -> None:
        """Enter: everything the table knows about the neighbour."""
        key = self.selected
        if key is None or key not in self.items:
            self.tui.say("no neighbour selected")
            return
        item = self.items[key]
        self.app.push_screen(TextScreen(f"neighbour {item['name']}", lambda api: dump(item)))
