"""The pods view: every pod of every namespace; describe, logs, restart, delete.

Restart: pods are immutable and the API has no restart verb, so ``r`` deletes the pod, waits
until it is gone and creates it again from the same manifest, as ``kubectl replace --force``
(:meth:`agent.tui.adapter.AgentApi.restart_pod`). Restart and delete ask first, and are hidden
in read-only mode.
"""

from __future__ import annotations

from typing import Any, ClassVar

from textual.binding import Binding, BindingType

from agent import render
from agent.tui.adapter import AgentApi
from agent.tui.dialogs import ConfirmScreen, TextScreen
from agent.tui.logs import LogScreen
from agent.tui.view import TableView

__all__ = ["PodsView"]


class PodsView(TableView):
    """``kubectl get pods -A`` with keys."""

    NAME = "pods"
    ALIASES = ("pod", "po")
    COLUMNS = ("NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE")
    EMPTY = "No pods. Create one with: florete-agent apply -f POD.yaml"
    MUTATING = frozenset({"restart", "delete"})
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "describe", "Describe", key_display="Enter", priority=True),
        Binding("l", "logs", "Logs", priority=True),
        Binding("r", "restart", "Restart", priority=True),
        Binding("ctrl+k", "delete", "Delete", priority=True),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.pods: dict[str, dict[str, Any]] = {}

    def fetch(self, api: AgentApi) -> list[dict[str, Any]]:
        """Every pod."""
        return api.pods()

    def rows(self, data: Any) -> list[tuple[str, list[str]]]:
        """One row per pod, keyed ``namespace/name``."""
        now = self.tui.clock()
        self.pods = {}
        rows = []
        for pod in data:
            meta = pod["metadata"]
            key = f"{meta.get('namespace', 'default')}/{meta['name']}"
            self.pods[key] = pod
            rows.append((key, [meta.get("namespace", "default"), *render.pod_row(pod, False, now)]))
        return rows

    def _selected(self) -> tuple[str, str, dict[str, Any]] | None:
        key = self.selected
        if key is None or key not in self.pods:
            self.tui.say("no pod selected")
            return None
        namespace, _, name = key.partition("/")
        return namespace, name, self.pods[key]

    def action_describe(self) -> None:
        """Enter: ``describe pod``."""
        chosen = self._selected()
        if chosen is None:
            return
        namespace, name, _ = chosen
        clock = self.tui.clock

        def load(api: AgentApi) -> str:
            pod = api.pod(namespace, name)
            return render.describe_pod(pod, api.pod_events(namespace, name), clock())

        self.app.push_screen(TextScreen(f"describe pod {namespace}/{name}", load))

    def action_logs(self) -> None:
        """``l``: follow the logs of the pod's first container (``c`` there for the next)."""
        chosen = self._selected()
        if chosen is None:
            return
        namespace, name, pod = chosen
        spec = pod.get("spec") or {}
        containers = [c["name"] for c in (spec.get("containers") or [])]
        containers += [c["name"] for c in (spec.get("initContainers") or [])]
        if not containers:
            self.tui.say("this pod has no containers")
            return
        self.app.push_screen(
            LogScreen(namespace, name, containers, self.tui.log_lines, self.tui.refresh_seconds)
        )

    def action_restart(self) -> None:
        """``r``: delete the pod and create it again from its manifest, after confirmation."""
        chosen = self._selected()
        if chosen is None:
            return
        namespace, name, _ = chosen
        api = self.tui.api

        def answered(yes: bool | None) -> None:
            if yes:
                self.tui.say(f"restarting pod {namespace}/{name}...")
                self.run_blocking(
                    lambda: api.restart_pod(namespace, name),
                    f"pod {namespace}/{name} restarted",
                )

        self.app.push_screen(
            ConfirmScreen(
                f"Restart pod {namespace}/{name}?\nIt is deleted (with its grace period) and "
                "created again from the same manifest; restart counts start at 0."
            ),
            answered,
        )

    def action_delete(self) -> None:
        """``ctrl+k``: delete the pod, after confirmation."""
        chosen = self._selected()
        if chosen is None:
            return
        namespace, name, _ = chosen
        api = self.tui.api

        def answered(yes: bool | None) -> None:
            if yes:
                self.run_blocking(
                    lambda: api.delete_pod(namespace, name),
                    f"pod {namespace}/{name} is being deleted",
                )

        self.app.push_screen(
            ConfirmScreen(f"Delete pod {namespace}/{name}?\nIts containers are stopped."),
            answered,
        )
