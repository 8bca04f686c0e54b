"""Pilot tests of every view and every key, against real agents (``pair`` in conftest)."""

from __future__ import annotations

import asyncio
import json
import re

import pytest
from textual.binding import Binding
from textual.widgets import Log

from agent.tui.app import VIEWS, FloreteTui, MainScreen
from agent.tui.dialogs import ConfirmScreen, HelpScreen, TextScreen, help_text
from agent.tui.logs import LogScreen
from agent.tui.view import TableView
from agent.tui.widgets import Prompt
from tests.tui.conftest import Pair, screen_text, start_tui, until

pytestmark = pytest.mark.integration


def rows(app: FloreteTui) -> list[list[str]]:
    """The current table view's rows as text."""
    view = app.main.current_view
    assert isinstance(view, TableView)
    table = view.table
    return [[cell.plain for cell in table.get_row_at(i)] for i in range(table.row_count)]


def loaded(app: FloreteTui) -> bool:
    return app.main.current_view.loaded


async def test_overview_shows_identity_resources_and_runtimes(pair: Pair) -> None:
    status = json.loads(pair.a.cli("status", "-o", "json").stdout)["status"]
    app = start_tui(pair.a)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: loaded(app), "the overview")
        text = screen_text(app)
        assert "florete-agent | tui-a | overview" in text
        assert status["nodeID"] in text
        assert re.search(r"CPU +\d+\.\d% of \d+ CPUs, load [\d.]+ [\d.]+ [\d.]+", text)
        assert re.search(
            r"Memory +[\d.]+ GiB used of [\d.]+ GiB \(\d+%\), agent [\d.]+ MiB RSS", text
        )
        assert re.search(r"Temperature +(not available|[\d.]+ °C)", text)
        assert re.search(r"Uptime +agent \S+ \(since \S+Z\), host \S+", text)
        assert re.search(r"Pods +2 Running, 1 Succeeded", text)
        assert re.search(r"process +healthy", text)


async def test_command_mode_reaches_every_view_by_every_name(pair: Pair) -> None:
    app = start_tui(pair.a)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        for view in VIEWS:
            await pilot.press("colon", *view.NAME, "enter")
            assert app.main.switcher.current == view.NAME
            await until(pilot, lambda: loaded(app), f"view {view.NAME}")
            assert f"| {view.NAME}" in screen_text(app).splitlines()[0]
        for view in VIEWS:  # aliases, and what the prompt passes on: spaces, ":", case
            for name in view.ALIASES:
                app.run_command(f" :{name.upper()} ")
                assert app.main.switcher.current == view.NAME, name
        await pilot.press("colon", *"nosuchview", "enter")
        await until(pilot, lambda: 'no view "nosuchview"' in screen_text(app), "the error")
        assert app.main.switcher.current == VIEWS[-1].NAME
        # Escape leaves command mode without going anywhere.
        await pilot.press("colon", "p", "o", "escape")
        assert app.main.switcher.current == VIEWS[-1].NAME
        assert not app.main.prompt.display


async def test_pods_table_filter_and_describe(pair: Pair) -> None:
    app = start_tui(pair.a, view="pods")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: len(rows(app)) == 3, "three pods")
        by_name = {r[1]: r for r in rows(app)}
        assert by_name["job"][2:4] == ["0/1", "Completed"]
        assert by_name["web"][2:4] == ["1/1", "Running"]
        assert by_name["greeter"][2:4] == ["2/2", "Running"]
        await pilot.press("slash", *"WE")
        assert [r[1] for r in rows(app)] == ["web"]
        assert "filter: WE" in screen_text(app).splitlines()[0]
        await pilot.press("enter")  # keep the filter, back to the table
        assert not app.main.prompt.display
        await pilot.press("enter")  # describe the selected pod
        assert isinstance(app.screen, TextScreen)
        screen = app.screen
        await until(pilot, lambda: screen.loaded, "describe")
        text = screen_text(app)
        assert "Name:             web" in text
        assert "Status:           Running" in text
        await pilot.press("slash", *"restart")
        assert "Restart Count:  0" in screen_text(app)
        assert "Name:" not in screen_text(app)
        await pilot.press("escape")  # closes the prompt and drops the filter
        assert "Name:" in screen_text(app)
        await pilot.press("slash", *"restart", "enter", "escape")  # Escape drops a kept filter
        assert "Name:" in screen_text(app)
        assert isinstance(app.screen, TextScreen)
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)
        await pilot.press("escape")  # clears the table's filter
        assert len(rows(app)) == 3


async def test_logs_follow_filter_and_containers(pair: Pair) -> None:
    app = start_tui(pair.a, view="pods")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: len(rows(app)) == 3, "three pods")
        await pilot.press("slash", *"greeter", "enter", "l")
        assert isinstance(app.screen, LogScreen)
        screen = app.screen
        log = screen.query_one(Log)
        await until(pilot, lambda: log.line_count >= 30, "30 lines of log")
        assert list(screen.lines)[:3] == ["hello 1", "hello 2", "hello 3"]
        assert "hello 30" in screen_text(app)  # following: the end is on screen
        await pilot.press("f")
        assert "(not following)" in screen_text(app).splitlines()[0]
        assert not log.auto_scroll
        await pilot.press("f")
        assert log.auto_scroll
        await pilot.press("slash", *"hello 2")
        assert log.line_count == 11  # hello 2, hello 20..29
        await pilot.press("escape")
        assert log.line_count == 30
        await pilot.press("c")
        assert screen.container == "side"
        await until(pilot, lambda: "side car" in list(screen.lines), "the side container")
        assert "[side]" in screen_text(app).splitlines()[0]
        await pilot.press("escape")
        assert isinstance(app.screen, MainScreen)


async def test_neighbours_and_links_show_live_metrics(pair: Pair) -> None:
    app = start_tui(pair.a, view="neighbours")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: any(r[0] == "tui-b" for r in rows(app)), "tui-b")
        row = next(r for r in rows(app) if r[0] == "tui-b")
        assert row[1:5] == [pair.b_id.split("-")[0], "up", "trusted", "udp/lo"]
        assert re.fullmatch(r"\d+\.\dms", row[5]), row
        await pilot.press("enter")
        assert isinstance(app.screen, TextScreen)
        screen = app.screen
        await until(pilot, lambda: screen.loaded, "details")
        assert f"nodeID: {pair.b_id}" in screen_text(app)
        await pilot.press("escape", "colon", *"links", "enter")
        await until(pilot, lambda: any(r[1] == "tui-b" for r in rows(app)), "the link")
        row = next(r for r in rows(app) if r[1] == "tui-b")
        assert row[:3] == ["udp/lo", "tui-b", "up"]
        assert re.fullmatch(r"\d+\.\dms", row[3]), row
        assert re.fullmatch(r"\d+\.\d%", row[4]), row
        assert row[7] == "-"  # a UDP link has no radio signal
        await pilot.press("enter")
        await until(pilot, lambda: "rxBytes:" in screen_text(app), "link details")


def goodput_counters(pair: Pair) -> tuple[int, int, int, int]:
    """rxGoodputBytes, txGoodputBytes, rxBytes, txBytes of tui-a's link to tui-b, from
    ``florete-agent links -o json``."""
    items = json.loads(pair.a.cli("links", "-o", "json").stdout)["items"]
    link = next(i for i in items if i["nodeID"] == pair.b_id)
    return link["rxGoodputBytes"], link["txGoodputBytes"], link["rxBytes"], link["txBytes"]


async def test_links_show_goodput_signal_and_rates_of_every_byte(pair: Pair) -> None:
    before = goodput_counters(pair)
    assert all(isinstance(n, int) for n in before), before
    assert before[0] <= before[2]  # payload is part of the bytes on the link
    assert before[1] <= before[3]
    app = start_tui(pair.a, view="links")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:

        def link() -> list[str]:
            return next((r for r in rows(app) if r[1] == "tui-b"), [])

        await until(pilot, lambda: link()[5:6] not in ([], ["-"]), "the first rates")
        assert screen_text(app).splitlines()[1].split() == [
            "LINK", "PEER", "STATE", "RTT", "LOSS", "GOODPUT-RX", "GOODPUT-TX", "SIGNAL"
        ]  # fmt: skip
        row = link()
        assert row[:3] == ["udp/lo", "tui-b", "up"]
        assert re.fullmatch(r"\d+(B|\.\dKiB)/s", row[5]), row
        assert re.fullmatch(r"\d+(B|\.\dKiB)/s", row[6]), row
        assert row[7] == "-"
        # Requests and answers are payload: both goodput rates rise above zero.
        pings = asyncio.create_task(
            asyncio.to_thread(pair.a.cli, "ping", "tui-b", "-c", "40", "-i", "0.05")
        )
        try:
            moving = re.compile(r"[1-9]\d*B/s|\d+\.\dKiB/s")
            await until(
                pilot,
                lambda: bool(moving.fullmatch(link()[5]) and moving.fullmatch(link()[6])),
                "goodput in both directions",
            )
            await pilot.press("enter")
            await until(pilot, lambda: "rxBytes:" in screen_text(app), "link details")
            text = screen_text(app)
            assert re.search(r"Rates between the last two refreshes, \d+\.\d s apart:", text)
            assert re.search(r"goodput +RX \S+/s +TX \S+/s +payload in order", text), text
            assert re.search(r"link +RX \S+/s +TX \S+/s +every byte on the link", text), text
            await pilot.press("slash", *"goodputbytes", "enter")  # below the fold
            await until(pilot, lambda: "txGoodputBytes:" in screen_text(app), "the counters")
            assert re.search(r"rxGoodputBytes: [1-9]\d*\b", screen_text(app))
        finally:
            await pings
    after = goodput_counters(pair)
    assert after[0] > before[0], (before, after)
    assert after[1] > before[1], (before, after)
    # 40 requests and answers (TLS records) are payload; the link also carried ARQ headers,
    # ACKs and keepalives.
    assert after[0] - before[0] < after[2] - before[2]
    assert after[1] - before[1] < after[3] - before[3]


async def test_peers_list_and_details(pair: Pair) -> None:
    app = start_tui(pair.a, view="peers")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: bool(rows(app)), "a peer")
        assert rows(app)[0][:4] == ["tui-b", pair.b_id.split("-")[0], "trusted", "manual"]
        await pilot.press("enter")
        await until(pilot, lambda: "BEGIN CERTIFICATE" in screen_text(app), "the certificate")


@pytest.mark.parametrize(
    ("view", "says"),
    [
        ("pairing", "Pairing: none"),
        ("supernode", "Supernode: not configured"),
        ("mqtt", "MQTT bridge: not configured"),
    ],
)
async def test_features_the_agent_lacks_say_so(pair: Pair, view: str, says: str) -> None:
    app = start_tui(pair.a, view=view)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: loaded(app), view)
        assert says in screen_text(app)


def every_binding() -> list[tuple[str, Binding]]:
    """(where, binding) for every key the TUI binds."""
    owners: list[type] = [FloreteTui, MainScreen, *VIEWS, LogScreen, TextScreen]
    owners += [ConfirmScreen, HelpScreen, Prompt]
    return [
        (owner.__name__, b)
        for owner in owners
        for b in owner.BINDINGS  # type: ignore[attr-defined]
        if isinstance(b, Binding)
    ]


async def test_help_lists_every_key_and_closes(pair: Pair) -> None:
    app = start_tui(pair.a)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        text = help_text(app)
        for owner, binding in every_binding():
            if owner == "HelpScreen":
                continue  # the help's own keys are in its title
            line = f"  {app.get_key_display(binding):<10} {binding.description}"
            assert line in text, (owner, binding.key)
        for view in VIEWS:
            assert ", ".join((view.NAME, *view.ALIASES)) in text
        for key in ("question_mark", "escape"):
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpScreen)
            assert "Everywhere" in screen_text(app)
            await pilot.press(key)
            assert isinstance(app.screen, MainScreen)
        await pilot.press("colon", *"help", "enter")
        assert isinstance(app.screen, HelpScreen)
        await pilot.press("q")  # closes the help, not the app
        assert isinstance(app.screen, MainScreen)


async def test_read_only_hides_every_change(pair: Pair) -> None:
    app = start_tui(pair.a, view="pods", read_only=True)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: len(rows(app)) == 3, "three pods")
        assert "READ-ONLY" in screen_text(app).splitlines()[0]
        active = app.screen.active_bindings
        assert "l" in active
        assert "enter" in active
        assert "r" not in active
        assert "ctrl+k" not in active
        footer = screen_text(app).splitlines()[-1]
        assert "Logs" in footer
        assert "Restart" not in footer
        assert "Delete" not in footer
        for key in ("r", "ctrl+k"):
            await pilot.press(key)
            await pilot.pause(0.2)
            assert isinstance(app.screen, MainScreen), key
        await pilot.press("colon", *"peers", "enter")
        await until(pilot, lambda: bool(rows(app)), "a peer")
        assert "ctrl+k" not in app.screen.active_bindings
        await pilot.press("ctrl+k")
        await pilot.pause(0.2)
        assert isinstance(app.screen, MainScreen)
        text = help_text(app)
        assert "Restart" not in text
        assert "Delete" not in text
        assert "Revoke" not in text
        assert "Read-only mode" in text
    assert len(pair.a.pods()) == 3


@pytest.mark.parametrize("keys", [("q",), ("colon", "q", "enter")])
async def test_quit(pair: Pair, keys: tuple[str, ...]) -> None:
    app = start_tui(pair.a)
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: loaded(app), "the overview")
        await pilot.press(*keys)
        await pilot.pause(0.1)
    assert app.return_code == 0
