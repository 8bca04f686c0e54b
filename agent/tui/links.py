"""The links view: every link with live RTT, loss, goodput and radio signal.

From ``GET /apis/florete.io/v1alpha1/links``. Goodput is application payload per second: the
change of ``rxGoodputBytes`` (message bytes the ARQ session delivered in order) and
``txGoodputBytes`` (message bytes the peer acknowledged) between two polls, divided by the time
between them, so it shows ``-`` until the second poll. Headers, framing, retransmissions, ACKs
and keepalives are not goodput; the rate of every byte on the link (``rxBytes``, ``txBytes``)
is on the details screen (Enter) beside it. SIGNAL is the received signal strength of a Wi-Fi
link (nl80211, dBm); other links have none.

The table fits 80 columns: STATE folds the session state and the link's liveness into one
word (``up``/``down`` as the neighbours view says it), byte totals live on the details screen
and a serial radio link is ``serial:ttyUSB0`` (its name is ``serial_radio:/dev/ttyUSB0``).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from textual.binding import Binding, BindingType

from agent.tui.adapter import AgentApi
from agent.tui.dialogs import TextScreen
from agent.tui.fmt import dump, percent, rate, seconds_ms
from agent.tui.view import TableView

__all__ = [
    "COUNTERS",
    "LinkRates",
    "LinksView",
    "link_key",
    "link_name",
    "link_rates",
    "link_row",
    "link_signal",
    "link_state",
    "rates_lines",
]

COUNTERS = ("rxBytes", "txBytes", "rxGoodputBytes", "txGoodputBytes")
"""The byte counters of a link object whose rates the view computes."""


def link_key(link: Mapping[str, Any]) -> str:
    """A link's identity across polls: its name and peer address."""
    return f"{link.get('name', '?')} {link.get('address', '?')}"


def link_name(name: str) -> str:
    """The link's name as the table shows it: ``serial_radio:/dev/ttyUSB0`` is
    ``serial:ttyUSB0`` (14 columns instead of 25); other names as they are."""
    kind, colon, device = name.partition(":")
    if kind != "serial_radio" or not colon:
        return name
    return "serial:" + device.removeprefix("/dev/")


def link_state(link: Mapping[str, Any]) -> str:
    """One word for the session and the link: ``up`` (established, keepalives answered),
    ``down`` (established but the link is silent, or the session ended), else the API's
    state (``connecting``, ``untrusted``, ``closed``)."""
    state = str(link.get("state", "?"))
    if state == "established":
        return "up" if link.get("up") else "down"
    return state


def link_signal(link: Mapping[str, Any]) -> str:
    """The received signal of a radio link, ``-67dBm``; ``-`` when the link reports none
    (UDP, serial radios, a Wi-Fi link whose radio is not readable)."""
    radio = link.get("radio")
    dbm = radio.get("signalDbm") if isinstance(radio, Mapping) else None
    if isinstance(dbm, int | float) and not isinstance(dbm, bool):
        return f"{round(dbm)}dBm"
    return "-"


@dataclasses.dataclass(frozen=True)
class LinkRates:
    """Bytes per second of one link between two polls; None where unknown.

    Attributes:
        seconds: time between the two polls, seconds.
        rates: counter name (one of :data:`COUNTERS`) -> bytes per second, or None when a poll
            lacked the counter or it went back (a new ARQ stream starts again from 0).
    """

    seconds: float
    rates: Mapping[str, float | None]

    def get(self, counter: str) -> float | None:
        """The rate of ``counter`` in bytes per second, or None."""
        return self.rates.get(counter)


def _counters(link: Mapping[str, Any]) -> dict[str, float]:
    values = {name: link.get(name) for name in COUNTERS}
    return {
        name: float(v)
        for name, v in values.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


def link_rates(
    before: tuple[float, Mapping[str, float]], after: tuple[float, Mapping[str, float]]
) -> LinkRates | None:
    """Rates of the counters between two samples ``(monotonic seconds, counters)``; None when
    no time passed between them."""
    (then, old), (now, new) = before, after
    seconds = now - then
    if seconds <= 0:
        return None
    rates: dict[str, float | None] = {}
    for name in COUNTERS:
        a, b = old.get(name), new.get(name)
        rates[name] = None if a is None or b is None or b < a else (b - a) / seconds
    return LinkRates(seconds, rates)


def link_row(link: Mapping[str, Any], rates: LinkRates | None) -> list[str]:
    """LINK PEER STATE RTT LOSS GOODPUT-RX GOODPUT-TX SIGNAL for one link."""
    rx = rates.get("rxGoodputBytes") if rates is not None else None
    tx = rates.get("txGoodputBytes") if rates is not None else None
    return [
        link_name(str(link.get("name", "?"))),
        str(link.get("peerName") or "-"),
        link_state(link),
        seconds_ms(link.get("rttSeconds")),
        percent(link.get("loss")),
        rate(rx),
        rate(tx),
        link_signal(link),
    ]


def rates_lines(rates: LinkRates | None) -> list[str]:
    """The details screen's lines on throughput: goodput and every byte on the link."""
    if rates is None:
        return ["Rates: - (shown from the second refresh on)"]

    def pair(rx: str, tx: str) -> str:
        return f"RX {rate(rates.get(rx)):<11}  TX {rate(rates.get(tx)):<11}"

    return [
        f"Rates between the last two refreshes, {rates.seconds:.1f} s apart:",
        f"  goodput  {pair('rxGoodputBytes', 'txGoodputBytes')}  payload in order",
        f"  link     {pair('rxBytes', 'txBytes')}  every byte on the link",
    ]


class LinksView(TableView):
    """Links to neighbours with their live metrics."""

    NAME = "links"
    ALIASES = ("link", "ln")
    COLUMNS = ("LINK", "PEER", "STATE", "RTT", "LOSS", "GOODPUT-RX", "GOODPUT-TX", "SIGNAL")
    EMPTY = "No links: no neighbour session has been opened yet."
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "details", "Details", key_display="Enter", priority=True)
    ]

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, dict[str, Any]] = {}
        self.rates: dict[str, LinkRates | None] = {}
        self._previous: dict[str, tuple[float, dict[str, float]]] = {}

    def fetch(self, api: AgentApi) -> tuple[float, list[dict[str, Any]]]:
        """The links, with the monotonic time they were read at (for rates)."""
        items = api.links()
        return time.monotonic(), items

    def rows(self, data: Any) -> list[tuple[str, list[str]]]:
        """One row per link, keyed by name and address."""
        now, items = data
        rows = []
        previous, self._previous = self._previous, {}
        self.items, self.rates = {}, {}
        for link in items:
            key = link_key(link)
            sample = (now, _counters(link))
            self._previous[key] = sample
            rates = link_rates(previous[key], sample) if key in previous else None
            self.items[key], self.rates[key] = link, rates
            rows.append((key, link_row(link, rates)))
        return rows

    def action_details(self) -> None:
        """Enter: the rates, then every field and metric of the link."""
        key = self.selected
        if key is None or key not in self.items:
            self.tui.say("no link selected")
            return
        text = "\n".join([*rates_lines(self.rates.get(key)), "", dump(self.items[key])])
        self.app.push_screen(TextScreen(f"link {key}", lambda api: text))
