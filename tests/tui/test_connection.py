"""The TUI when the agent is not running or restarts: a banner, then a reconnection by itself
(k9s#718 is the bug to avoid), and logs that resume without losing or repeating a line."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from agent.tui.app import MainScreen
from agent.tui.logs import LogScreen
from tests.integration.conftest import Agent
from tests.tui.conftest import pod_ready, screen_text, start_tui, stopped, until

pytestmark = pytest.mark.integration

TICKER = """
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  containers:
  - name: main
    command: ["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.1; done"]
"""


def banner(app: object) -> str:
    text = screen_text(app)  # type: ignore[arg-type]
    return text if "AGENT UNREACHABLE" in text else ""


async def test_starts_without_an_agent_and_connects_when_it_comes(
    make_agent: Callable[..., Agent],
) -> None:
    agent = make_agent(start=False)
    app = start_tui(agent)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: bool(banner(app)), "the banner")
        text = banner(app)
        assert "cannot reach the agent at" in text
        assert "is `florete-agent run` running?" in text
        assert re.search(r"Retrying every 0\.5 s \(attempt \d+", text)
        assert isinstance(app.screen, MainScreen)
        await pilot.press("colon", *"pods", "enter")  # keys work while disconnected
        assert app.main.switcher.current == "pods"
        agent.start(timeout=60)
        await until(pilot, lambda: app.main.current_view.loaded, "the pods view", 60)
        await until(pilot, lambda: "reconnected to the agent" in screen_text(app), "the notice")
        assert not banner(app)
        assert "No pods." in screen_text(app)


async def test_agent_restart_banner_reconnect_and_logs_without_gaps(
    make_agent: Callable[..., Agent],
) -> None:
    agent = make_agent()
    agent.apply(TICKER)
    pod_ready(agent, "ticker")
    app = start_tui(agent, view="pods")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: app.main.current_view.loaded, "the pods")
        await pilot.press("l")
        screen = app.screen
        assert isinstance(screen, LogScreen)
        await until(pilot, lambda: len(screen.lines) >= 5, "some ticks")
        with stopped(agent):
            await until(pilot, lambda: bool(banner(app)), "the banner on the log screen", 60)
            await until(
                pilot,
                lambda: any("agent unreachable" in line for line in screen.lines),
                "the log's notice",
            )
            await pilot.pause(1.0)  # ticks written now must show up after the reconnection
        await until(pilot, lambda: not banner(app), "the banner to go", 60)
        await until(pilot, lambda: "restarted" in screen_text(app), "the restart notice")
        await until(
            pilot,
            lambda: any(line == "--- log stream resumed ---" for line in screen.lines),
            "the log to resume",
            60,
        )
        resumed = list(screen.lines).index("--- log stream resumed ---")
        await until(pilot, lambda: len(screen.lines) > resumed + 5, "ticks after the restart")
    ticks = [int(line.split()[1]) for line in screen.lines if line.startswith("tick ")]
    assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), "a tick lost or repeated"
