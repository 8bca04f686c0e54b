"""The links view: every link with live RTT, loss, bytes and throughput.

From ``GET /apis/florete.io/v1alpha1/links``. Throughput (RX/s, TX/s) is the change of the
byte counters between two polls divided by the time between them, so it shows ``-`` until the
second poll. Enter shows every metric of the link.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, ClassVar

from textual.binding import Binding, BindingType

from agent.tui.adapter import AgentApi
from agent.tui.dialogs import TextScreen
from agent.tui.fmt import dump, percent, rate, seconds_ms, size
from agent.tui.view import TableView

__all__ = ["LinksView", "link_key"]


def link_key(link: Mapping[str, Any]) -> str:
    """A link's identity across polls: its name and peer address."""
    return f"{link.get('name', '?')} {link.get('address', '?')}"


class LinksView(TableView):
    """Links to neighbours with their live metrics."""

    NAME = "links"
    ALIASES = ("link", "ln")
    COLUMNS = ("LINK", "PEER", "STATE", "UP", "RTT", "LOSS", "RX", "TX", "RX/s", "TX/s")
    EMPTY = "No links: no neighbour session has been opened yet."
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "details", "Details", key_display="Enter", priority=True)
    ]

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, dict[str, Any]] = {}
        self._previous: dict[str, tuple[float, float, float]] = {}

    def fetch(self, api: AgentApi) -> tuple[float, list[dict[str, Any]]]:
        """The links, with the monotonic time they were read at (for rates)."""
        items = api.links()
        return time.monotonic(), items

    def rows(self, data: Any) -> list[tuple[str, list[str]]]:
        """One row per link, keyed by name and address."""
        now, items = data
        rows = []
        previous, self._previous = self._previous, {}
        self.items = {}
        for link in items:
            key = link_key(link)
            self.items[key] = link
            rx, tx = float(link.get("rxBytes", 0)), float(link.get("txBytes", 0))
            self._previous[key] = (now, rx, tx)
            rx_rate = tx_rate = None
            if key in previous and now > previous[key][0]:
                then, rx0, tx0 = previous[key]
                rx_rate = max(0.0, rx - rx0) / (now - then)
                tx_rate = max(0.0, tx - tx0) / (now - then)
            rows.append(
                (
                    key,
                    [
                        str(link.get("name", "?")),
                        str(link.get("peerName") or "-"),
                        str(link.get("state", "?")),
                        "yes" if link.get("up") else "no",
                        seconds_ms(link.get("rttSeconds")),
                        percent(link.get("loss")),
                        size(rx),
                        size(tx),
                        rate(rx_rate),
                        rate(tx_rate),
                    ],
                )
            )
        return rows

    def action_details(self) -> None:
        """Enter: every field and metric of the link."""
        key = self.selected
        if key is None or key not in self.items:
            self.tui.say("no link selected")
            return
        item = self.items[key]
        self.app.push_screen(TextScreen(f"link {key}", lambda api: dump(item)))
