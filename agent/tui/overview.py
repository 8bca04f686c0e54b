"""The overview: this node's identity, CPU, memory, temperature, uptime and runtimes.

From ``GET /apis/florete.io/v1alpha1/agent`` (``status.host`` holds the machine's figures).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text

from agent.podstatus import parse_rfc3339
from agent.tui.adapter import AgentApi
from agent.tui.fmt import ago, mib
from agent.tui.view import TextView

__all__ = ["OverviewView", "overview_lines"]

_LABEL = 13


def _line(label: str, value: str) -> Text:
    return Text(f"{label:<{_LABEL}}{value}", no_wrap=True, overflow="ellipsis")


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def overview_lines(status: Mapping[str, Any], now: float) -> list[Text]:
    """The overview's lines for an ``AgentStatus.status`` at wall-clock time ``now`` (seconds)."""
    host: Mapping[str, Any] = status.get("host") or {}
    started = parse_rfc3339(status.get("startedAt"))
    booted = parse_rfc3339(host.get("bootTime"))
    uptime = f"agent {ago(status.get('uptimeSeconds'))}"
    if started is not None:
        uptime += f" (since {status['startedAt']})"
    if booted is not None:
        uptime += f", host {ago(now - booted)}"
    cpu = "-"
    if "cpuPercent" in host:
        load = " ".join(f"{x:.2f}" for x in host.get("loadAverage", []))
        cpu = f"{host['cpuPercent']:.1f}% of {host.get('cpuCount', '?')} CPUs, load {load}"
    memory = f"agent {mib(status.get('rssBytes', 0))} RSS"
    if host.get("memoryTotalBytes"):
        total, free = host["memoryTotalBytes"], host.get("memoryAvailableBytes", 0)
        used = total - free
        memory = f"{_gib(used)} used of {_gib(total)} ({used / total:.0%}), {memory}"
    temp = host.get("temperatureCelsius")
    pods = ", ".join(f"{n} {phase}" for phase, n in sorted((status.get("pods") or {}).items()))
    lines = [
        _line("Node", str(status.get("name", "?"))),
        _line("Node ID", str(status.get("nodeID", "?"))),
        _line("Version", str(status.get("version", "?"))),
        _line("Uptime", uptime),
        _line("CPU", cpu),
        _line("Memory", memory),
        _line("Temperature", "not available" if temp is None else f"{temp:.1f} °C"),
        _line(
            "Interfaces",
            f"{', '.join(status.get('interfaces') or []) or '-'} "
            f"(host IP {status.get('hostIP', '?')})",
        ),
        _line("Pods", pods or "none"),
        Text("Runtimes", style="bold"),
    ]
    for rt in status.get("runtimes") or []:
        health = "healthy" if rt.get("healthy") else "UNHEALTHY"
        lines.append(_line(f"  {rt.get('name', '?')}", f"{health:<10} {rt.get('description', '')}"))
    return lines


class OverviewView(TextView):
    """Node identity and health at a glance."""

    NAME = "overview"
    ALIASES = ("ov", "node", "status")

    def fetch(self, api: AgentApi) -> dict[str, Any]:
        """The agent's status."""
        return api.agent_status()

    def lines(self, data: Any) -> list[Text]:
        """See :func:`overview_lines`."""
        return overview_lines(data, self.tui.clock())
