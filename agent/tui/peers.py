"""The peers view: the trust store, with revocation.

From ``GET /apis/florete.io/v1alpha1/peers``. ``ctrl+k`` revokes the selected peer after
confirmation (its sessions close at once); hidden in read-only mode. Peers are added by
pairing (the pairing view) or with ``florete-agent peers add``.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual.binding import Binding, BindingType

from agent.tui.adapter import AgentApi
from agent.tui.dialogs import ConfirmScreen, TextScreen
from agent.tui.fmt import ago, dump
from agent.tui.view import TableView

__all__ = ["PeersView"]


class PeersView(TableView):
    """Trusted and revoked peers."""

    NAME = "peers"
    ALIASES = ("peer",)
    COLUMNS = ("NAME", "NODE-ID", "STATE", "SOURCE", "ADDED")
    EMPTY = "No peers: pair with a node (pairing view) or use `florete-agent peers add`."
    MUTATING = frozenset({"revoke"})
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "details", "Details", key_display="Enter", priority=True),
        Binding("ctrl+k", "revoke", "Revoke", priority=True),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.items: dict[str, dict[str, Any]] = {}

    def fetch(self, api: AgentApi) -> list[dict[str, Any]]:
        """The trust store."""
        return api.peers()

    def rows(self, data: Any) -> list[tuple[str, list[str]]]:
        """One row per peer, keyed by node ID."""
        now = self.tui.clock()
        self.items = {p["metadata"]["name"]: p for p in data}
        rows = []
        for p in data:
            status = p.get("status") or {}
            added = status.get("addedAt")
            rows.append(
                (
                    p["metadata"]["name"],
                    [
                        str((p.get("spec") or {}).get("name", "?")),
                        p["metadata"]["name"].split("-", 1)[0],
                        str(status.get("state", "?")),
                        str(status.get("source", "?")),
                        "-" if not isinstance(added, int | float) else ago(now - added) + " ago",
                    ],
                )
            )
        return rows

    def action_details(self) -> None:
        """Enter: the peer's fingerprint and certificate."""
        key = self.selected
        if key is None or key not in self.items:
            self.tui.say("no peer selected")
            return
        item = self.items[key]
        self.app.push_screen(TextScreen(f"peer {key.split('-', 1)[0]}", lambda api: dump(item)))

    def action_revoke(self) -> None:
        """``ctrl+k``: revoke the peer, after confirmation."""
        key = self.selected
        if key is None or key not in self.items:
            self.tui.say("no peer selected")
            return
        name = str((self.items[key].get("spec") or {}).get("name", key))
        api = self.tui.api

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_blocking(lambda: api.revoke_peer(key), f"peer {name} revoked")

        self.app.push_screen(
            ConfirmScreen(f"Revoke peer {name} ({key})?\nIts sessions close at once."),
            answered,
        )
