"""The pairing view: show a one-time code with its QR, or pair with another node's code.

From ``GET /apis/florete.io/v1alpha1/pairing`` (see ``agent/api_pairing.py``); until an agent
serves it (a 404) the view says "pairing not available yet". ``p`` shows a new code (``POST
pairing``; the code and a QR code of its pairing URI stay on screen while it is valid), ``x``
stops showing it, ``j`` asks for a code shown on another node and pairs with it (``POST
pairing/join``). All three change the trust store and are hidden in read-only mode.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any, ClassVar

from rich.text import Text
from textual.binding import Binding, BindingType

from agent.tui.adapter import AgentApi
from agent.tui.dialogs import AskScreen
from agent.tui.fmt import ago
from agent.tui.view import TextView

__all__ = ["PairingView", "pairing_lines", "qr_lines"]

ABSENT = (
    "Pairing not available yet: this agent has no pairing API. Trust a node with "
    "`florete-agent peers add` meanwhile."
)
_STATES = {
    "none": "no code shown",
    "answered": "a node is trying the code",
    "burned": "too many wrong tries",
    "expired": "the code is too old",
    "cancelled": "the code was withdrawn",
}
# States in which the code shown by ``p`` is still the one peers can use.
_LIVE = frozenset({"showing", "answered", "finishing"})


def qr_lines(uri: str) -> list[str]:
    """A QR code of ``uri`` in text (two modules per character cell, quiet zone of one), or
    no lines when segno (the ``pairing`` extra) is not installed."""
    try:
        import segno
    except ImportError:
        return []
    out = io.StringIO()
    segno.make(uri, error="l").terminal(out=out, compact=True, border=1)
    return out.getvalue().rstrip("\n").split("\n")


def pairing_lines(
    status: Mapping[str, Any], shown: Mapping[str, Any] | None, qr: list[str], read_only: bool
) -> list[Text]:
    """The view's lines: the state, the code and its QR while it is valid, events, the peer."""
    state = str(status.get("state", "none"))
    head = [f"Pairing: {state}" + (f" ({_STATES[state]})" if state in _STATES else "")]
    if state in _LIVE:
        head.append(
            f"expires in {ago(status.get('expiresInSeconds'))}, "
            f"{status.get('failures', 0)} of {status.get('maxFailures', '?')} failures"
        )
    if shown is not None and state in _LIVE:
        head += [
            "",
            f"Code  {shown['code']}",
            "",
            "On the other node:",
            f"  florete-agent pair {shown['code']}",
        ]
        head += ["or scan the QR code."]
    peer = status.get("peer")
    if peer:
        head += ["", f"Paired with {peer.get('name')}", f"  {peer.get('nodeID', '')[:23]}..."]
    if not read_only:
        head += ["", "p: show a code  x: stop", "j: pair with a code"]
    lines: list[str]
    if shown is not None and state in _LIVE and qr:
        width = max(len(line) for line in qr)
        rows = max(len(qr), len(head))
        lines = [
            f"{qr[i] if i < len(qr) else '':<{width}}  {head[i] if i < len(head) else ''}"
            for i in range(rows)
        ]
    else:
        lines = list(head)
    events = status.get("events") or []
    if events:
        lines += ["", "Events"]
        lines += [
            f"  {e.get('time', '')}  {e.get('kind', '')}  {e.get('message', '')}" for e in events
        ]
    return [Text(line, no_wrap=True) for line in lines]


class PairingView(TextView):
    """Pairing with other nodes."""

    NAME = "pairing"
    ALIASES = ("pair",)
    MUTATING = frozenset({"show_code", "stop_code", "join"})
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("p", "show_code", "Show code", priority=True),
        Binding("x", "stop_code", "Stop code", priority=True),
        Binding("j", "join", "Pair with code", priority=True),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.shown: dict[str, Any] | None = None
        self.qr: list[str] = []
        self.available = False

    def fetch(self, api: AgentApi) -> dict[str, Any] | None:
        """The pairing status, or None without a pairing API."""
        return api.pairing_status()

    def lines(self, data: Any) -> list[Text]:
        """:func:`pairing_lines`, or "not available"."""
        self.available = data is not None
        if data is None:
            return [Text(ABSENT)]
        if data.get("state") not in _LIVE:
            self.shown, self.qr = None, []
        return pairing_lines(data, self.shown, self.qr, self.tui.read_only)

    def _needs_api(self) -> bool:
        if not self.available:
            self.tui.say("error: this agent has no pairing API", error=True)
        return self.available

    def action_show_code(self) -> None:
        """``p``: show a new one-time code and its QR code."""
        if not self._needs_api():
            return
        api = self.tui.api

        def show() -> None:
            shown = api.show_pairing_code()
            self.qr = qr_lines(str(shown.get("uri", "")))
            self.shown = shown

        self.run_blocking(show, "showing a pairing code")

    def action_stop_code(self) -> None:
        """``x``: stop showing the code."""
        if not self._needs_api():
            return
        self.run_blocking(self.tui.api.cancel_pairing_code, "the pairing code is withdrawn")

    def action_join(self) -> None:
        """``j``: pair with the code another node shows."""
        if not self._needs_api():
            return
        api = self.tui.api

        def answered(code: str | None) -> None:
            if not code:
                return
            self.tui.say(f"pairing with code {code}...")
            self.run_blocking(
                lambda: api.join_pairing(code),
                lambda peer: f"paired with {peer.get('name', '?')}: see the peers view",
            )

        self.app.push_screen(
            AskScreen("The code shown on the other node (or its pairing URI):", "1234-5678"),
            answered,
        )
