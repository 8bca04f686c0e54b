"""Real agents for the TUI's tests, and helpers to drive the TUI with Textual's pilot.

* ``pair`` (session): two agents, ``tui-a`` and ``tui-b``, in a network namespace of their own
  (only ``lo``, so their mDNS and links never meet any other test's agents), trusting each
  other with an established link; ``tui-a`` runs fixed pods. Tests only read from it, so the
  snapshots stay the same whatever order tests run in.
* ``work`` (session): one agent on the host's ``lo`` (mDNS off) for tests that change things;
  each such test uses pods of its own names.
* ``make_agent`` (per test, from the integration tests): agents a test stops and starts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from agent.tui.adapter import AgentApi
from agent.tui.app import FloreteTui
from tests.integration.conftest import Agent, make_agent, running_and_ready

__all__ = [
    "Pair",
    "make_agent",
    "netns_agents",
    "pair",
    "screen_text",
    "start_tui",
    "until",
    "work",
]

_NS_PREFIX = "fltui"

#: Pods of ``tui-a``: a finished job, a quiet server, a pod that printed fixed lines, and a
#: pod with two containers.
PAIR_PODS = """
apiVersion: v1
kind: Pod
metadata: {name: job}
spec:
  restartPolicy: Never
  containers:
  - name: main
    command: ["sh", "-c", "echo done"]
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: main
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: greeter}
spec:
  containers:
  - name: main
    command: ["sh", "-c", "for i in $(seq 1 30); do echo hello $i; done; exec sleep 3600"]
  - name: side
    command: ["sh", "-c", "echo side car; exec sleep 3600"]
"""


@dataclass
class Pair:
    """The two agents of the ``pair`` fixture."""

    a: Agent
    b: Agent
    b_id: str


def _netns_available() -> str | None:
    if os.geteuid() != 0:
        return "a network namespace needs root"
    if shutil.which("ip") is None:
        return "ip is not installed (apt install iproute2)"
    return None


def _sweep_namespaces() -> None:
    """Delete namespaces left by test runs whose process is gone."""
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for line in listing.splitlines():
        match = re.match(rf"({_NS_PREFIX}(\d+)\S*)", line)
        if match and not os.path.exists(f"/proc/{match.group(2)}"):
            subprocess.run(["ip", "netns", "delete", match.group(1)], capture_output=True)


def _new_agent(roots: list[Path], env: dict[str, str], netns: str | None = None) -> Agent:
    root = Path(tempfile.mkdtemp(prefix="fl-"))
    roots.append(root)
    agent = Agent(root / "s", env, netns)
    agent.start(timeout=60)
    return agent


def _links_up(agent: Agent, node_id: str) -> bool:
    links = json.loads(agent.cli("links", "-o", "json").stdout)["items"]
    neighbours = json.loads(agent.cli("neighbours", "-o", "json").stdout)["items"]
    return any(
        link["nodeID"] == node_id and link["state"] == "established" for link in links
    ) and any(n["nodeID"] == node_id and n["state"] == "up" for n in neighbours)


@contextlib.contextmanager
def netns_agents(nodes: list[tuple[str, str]]) -> Iterator[list[Agent]]:
    """Agents named and on the UDP ports given, alone in a new network namespace (only
    ``lo``, mDNS on); they, the namespace and their state dirs are removed afterwards."""
    reason = _netns_available()
    if reason is not None:
        pytest.skip(reason)
    _sweep_namespaces()
    ns = f"{_NS_PREFIX}{os.getpid()}-{nodes[0][0]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    agents: list[Agent] = []
    roots: list[Path] = []
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        for name, port in nodes:
            env = {"FLORETE_MDNS": "on", "FLORETE_NODE_NAME": name, "FLORETE_LINK_PORT": port}
            agents.append(_new_agent(roots, env, ns))
        yield agents
    finally:
        for agent in agents:
            agent.kill_everything()
        subprocess.run(["ip", "netns", "delete", ns], capture_output=True)
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def pair() -> Iterator[Pair]:
    """``tui-a`` and ``tui-b`` with a link between them; ``tui-a`` runs :data:`PAIR_PODS`."""
    with netns_agents([("tui-a", "4737"), ("tui-b", "4738")]) as (a, b):
        a.cli("peers", "add", "-", stdin=b.cli("peers", "export").stdout)
        b.cli("peers", "add", "-", stdin=a.cli("peers", "export").stdout)
        b_id = json.loads(b.cli("status", "-o", "json").stdout)["status"]["nodeID"]
        a.apply(PAIR_PODS)
        a.wait_for("a link from tui-a to tui-b", lambda: _links_up(a, b_id), 60)
        for pod in ("web", "greeter"):
            a.wait_running(pod, 60)
        a.wait_pod("job", lambda p: p["status"].get("phase") == "Succeeded", "Succeeded", 60)
        yield Pair(a, b, b_id)


@pytest.fixture(scope="session")
def work() -> Iterator[Agent]:
    """An agent for tests that create, restart and delete pods (their own names each)."""
    roots: list[Path] = []
    agent: Agent | None = None
    try:
        agent = _new_agent(roots, {"FLORETE_NODE_NAME": "tui-work"})
        yield agent
    finally:
        if agent is not None:
            agent.kill_everything()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)


def socket_of(agent: Agent) -> Path:
    """The agent's API socket (the default place in its state dir)."""
    return agent.state_dir / "agent.sock"


def start_tui(
    agent: Agent | None = None,
    *,
    api: AgentApi | None = None,
    refresh: float = 0.5,
    **options: Any,
) -> FloreteTui:
    """A TUI for ``agent`` (or ``api``), polling every ``refresh`` seconds."""
    if api is None:
        assert agent is not None
        api = AgentApi(socket_of(agent), timeout=10.0)
    return FloreteTui(api, refresh=refresh, **options)


async def until(
    pilot: Pilot[Any], predicate: Callable[[], bool], what: str, within: float = 30.0
) -> None:
    """Let the app run until ``predicate()`` holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            app = pilot.app
            shown = screen_text(app) if isinstance(app, FloreteTui) else ""
            shown += "\nnotifications: " + "; ".join(n.message for n in app._notifications)
            raise AssertionError(f"timed out after {within} s waiting for {what}:\n{shown}")
        await pilot.pause(0.05)
    await pilot.pause()  # let the screen catch up with the state


def screen_text(app: FloreteTui) -> str:
    """What the terminal shows now, as plain text (one line per row)."""
    strips = app.screen._compositor.render_strips()
    return "\n".join(strip.text for strip in strips)


def pod_ready(agent: Agent, name: str, timeout: float = 60.0) -> dict[str, Any]:
    """Wait until the pod is Running and ready."""
    return agent.wait_pod(name, running_and_ready, "Running and ready", timeout)


def pod_gone(agent: Agent, name: str) -> bool:
    """True when ``get pod NAME`` says it does not exist."""
    return "NotFound" in agent.cli("get", "pod", name, check=False).stderr


@contextlib.contextmanager
def stopped(agent: Agent) -> Iterator[None]:
    """The agent is stopped inside the block and started again after it."""
    agent.stop()
    try:
        yield
    finally:
        agent.start(timeout=60)
