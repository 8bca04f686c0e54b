"""Pilot tests of the keys that change things (restart, delete, revoke) and of long logs,
against a real agent (``work`` in conftest); each test uses pods of its own names."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import Log

from agent.identity import load_or_create_identity
from agent.tui.app import FloreteTui, MainScreen
from agent.tui.dialogs import ConfirmScreen
from agent.tui.logs import LogScreen
from agent.tui.view import TableView
from tests.integration.conftest import Agent
from tests.tui.conftest import pod_gone, pod_ready, screen_text, start_tui, until

pytestmark = pytest.mark.integration


def pod_manifest(name: str, command: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
  - name: main
    command: ["sh", "-c", "{command}"]
"""


def keys(app: FloreteTui) -> list[str]:
    view = app.main.current_view
    assert isinstance(view, TableView)
    return [view.table.get_row_at(i)[1].plain for i in range(view.table.row_count)]


async def select(app: FloreteTui, pilot: object, name: str) -> None:
    """Filter the pods view down to ``name`` (so that the cursor is on it)."""
    await pilot.press("slash", *name, "enter")  # type: ignore[attr-defined]
    await until(pilot, lambda: keys(app) == [name], f"only {name} in the table")  # type: ignore[arg-type]


async def test_restart_asks_then_deletes_and_recreates_the_pod(work: Agent) -> None:
    work.apply(pod_manifest("restart-me", "exec sleep 3600"))
    before = pod_ready(work, "restart-me")
    app = start_tui(work, view="pods")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await select(app, pilot, "restart-me")
        await pilot.press("r")
        assert isinstance(app.screen, ConfirmScreen)
        assert "Restart pod default/restart-me?" in screen_text(app)
        await pilot.press("n")
        assert isinstance(app.screen, MainScreen)
        assert work.pod("restart-me")["metadata"]["uid"] == before["metadata"]["uid"]
        await pilot.press("r", "y")
        await until(pilot, lambda: "pod default/restart-me restarted" in screen_text(app), "done")
    after = pod_ready(work, "restart-me")
    assert after["metadata"]["uid"] != before["metadata"]["uid"]
    assert after["spec"]["containers"][0]["command"] == before["spec"]["containers"][0]["command"]


async def test_delete_asks_first(work: Agent) -> None:
    work.apply(pod_manifest("delete-me", "exec sleep 3600"))
    pod_ready(work, "delete-me")
    app = start_tui(work, view="pods")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await select(app, pilot, "delete-me")
        await pilot.press("ctrl+k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)
        assert not pod_gone(work, "delete-me")
        await pilot.press("ctrl+k", "y")
        await until(pilot, lambda: keys(app) == [], "the pod to leave the table", 60)
    assert pod_gone(work, "delete-me")


async def test_revoke_peer_asks_first(work: Agent, tmp_path: Path) -> None:
    stranger = load_or_create_identity(tmp_path / "stranger", "stranger")
    work.cli("peers", "add", "-", stdin=stranger.cert_path.read_text())
    app = start_tui(work, view="peers")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: "stranger" in keys_of_peers(app), "the peer")
        await pilot.press("ctrl+k")
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("y")
        await until(pilot, lambda: "revoked" in screen_text(app), "the peer revoked")
    state = work.cli("peers", "-o", "json").stdout
    assert '"state": "revoked"' in state


def keys_of_peers(app: FloreteTui) -> list[str]:
    view = app.main.current_view
    assert isinstance(view, TableView)
    return [view.table.get_row_at(i)[0].plain for i in range(view.table.row_count)]


async def test_a_flood_of_log_lines_is_capped_and_the_ui_keeps_answering(work: Agent) -> None:
    # 100 000 lines as fast as sh can write them, once the log view is open.
    flood = "sleep 2; for i in $(seq 1 10); do seq 1 10000; done; echo END; exec sleep 3600"
    work.apply(pod_manifest("flood", flood))
    pod_ready(work, "flood")
    app = start_tui(work, view="pods", log_lines=1000)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await select(app, pilot, "flood")
        await pilot.press("l")
        screen = app.screen
        assert isinstance(screen, LogScreen)
        log = screen.query_one(Log)
        await until(pilot, lambda: "10000" in screen.lines, "the flood to start", 60)
        while "END" not in screen.lines:
            await pilot.press("f")  # toggles following: the key is handled while lines pour in
            assert log.line_count <= 1000
            assert len(screen.lines) <= 1000
            await pilot.pause(0.2)
        if not screen.follow:
            await pilot.press("f")
        await pilot.pause(0.3)
        assert "END" in screen_text(app)
    work.cli("delete", "pod", "flood", "--no-wait")
