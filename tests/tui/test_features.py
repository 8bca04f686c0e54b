"""The views of optional features with the real thing behind them: a supernode, an MQTT bridge
to a real mosquitto, and pairing between two agents (a code shown by one, typed into the
TUI of the other)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent.tui.adapter import AgentApi
from agent.tui.dialogs import AskScreen
from agent.tui.pairing import ABSENT, PairingView
from tests.integration.conftest import Agent
from tests.tui.conftest import netns_agents, screen_text, socket_of, start_tui, until

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def mosquitto() -> Iterator[int]:
    """A real mosquitto on 127.0.0.1; yields its port."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (apt install mosquitto)")
    port = free_port()
    root = Path(tempfile.mkdtemp(prefix="fltui-mq-"))
    conf = root / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)


async def test_supernode_and_mqtt_bridge_views(
    make_agent: Callable[..., Agent], mosquitto: int
) -> None:
    agent = make_agent({"FLORETE_MQTT_BROKER": f"mqtt://127.0.0.1:{mosquitto}"})
    agent.cli("supernode", "create", "tui-sn")
    app = start_tui(agent, view="supernode")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: "Supernode    tui-sn" in screen_text(app), "the supernode")
        text = screen_text(app)
        assert "(leader), ready" in text
        assert "quorum" in text
        assert "Members (1)" in text
        assert "Placements (0)" in text
        await pilot.press("colon", *"mqtt", "enter")
        await until(pilot, lambda: "Bridge      mqtt: connected" in screen_text(app), "bridge")
        text = screen_text(app)
        assert f"mqtt://127.0.0.1:{mosquitto}" in text
        assert "Outbox      0 messages" in text


@pytest.fixture(scope="module")
def strangers() -> Iterator[tuple[Agent, Agent]]:
    """Two agents that do not trust each other, alone in a network namespace."""
    with netns_agents([("tui-x", "4747"), ("tui-y", "4748")]) as (x, y):
        yield x, y


async def test_pair_with_a_code_typed_into_the_tui(strangers: tuple[Agent, Agent]) -> None:
    x, y = strangers
    shower = AgentApi(socket_of(x))
    try:
        shown = shower.show_pairing_code()
    finally:
        shower.close()
    app = start_tui(y, view="pairing")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: "Pairing: none" in screen_text(app), "the pairing view")
        await pilot.press("j")
        assert isinstance(app.screen, AskScreen)
        await pilot.press("q", "colon")  # text here: not quit, not command mode
        assert app.screen.answer.value == "q:"
        await pilot.press("escape")  # no answer: nothing happens
        assert not isinstance(app.screen, AskScreen)
        await pilot.press("j", *shown["code"], "enter")
        await until(pilot, lambda: "paired with tui-x" in screen_text(app), "paired", 60)
        await pilot.press("colon", *"peers", "enter")
        await until(pilot, lambda: "tui-x" in screen_text(app), "tui-x among the peers")
    assert "tui-y" in x.cli("peers").stdout  # both sides trust each other now


async def test_pairing_join_that_fails_says_why(strangers: tuple[Agent, Agent]) -> None:
    x, y = strangers
    shower = AgentApi(socket_of(x))
    try:
        shower.show_pairing_code()
    finally:
        shower.close()
    app = start_tui(y, view="pairing")
    async with app.run_test(size=(80, 24), notifications=True) as pilot:
        await until(pilot, lambda: app.main.current_view.loaded, "the pairing view")
        await pilot.press("j", *"0000-0000", "enter")
        await until(pilot, lambda: "error:" in screen_text(app), "the error", 60)
    assert y.cli("peers").stdout.count("tui-x") == 1  # from the pairing before, unchanged


def test_pairing_view_without_a_pairing_api_says_so() -> None:
    view = PairingView()
    assert [line.plain for line in view.lines(None)] == [ABSENT]
    assert ABSENT.startswith("Pairing not available yet")
