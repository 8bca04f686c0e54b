"""The TUI's pure parts: the log buffer, text forms, and renderers fed odd shapes (an agent of
another version must never crash the TUI)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.tui.bridges import bridge_lines
from agent.tui.fmt import ago, percent, rate, seconds_ms, size
from agent.tui.links import (
    COUNTERS,
    link_key,
    link_name,
    link_rates,
    link_row,
    link_signal,
    link_state,
    rates_lines,
)
from agent.tui.logfollow import LogBuffer, Notice
from agent.tui.neighbours import neighbour_row
from agent.tui.overview import overview_lines
from agent.tui.pairing import pairing_lines, qr_lines
from agent.tui.supernode import supernode_lines
from agent.tui.widgets import matches


def test_log_buffer_keeps_the_newest_and_counts_what_it_dropped() -> None:
    buffer = LogBuffer(3)
    for i in range(5):
        buffer.push(f"line {i}")
    buffer.push(Notice("ended"))
    entries, dropped = buffer.drain()
    assert entries == ["line 3", "line 4", Notice("ended")]
    assert dropped == 3
    assert buffer.drain() == ([], 0)


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "-"), (0, "0B"), (1023, "1023B"), (1536, "1.5KiB"), (5 * 2**20, "5.0MiB")],
)
def test_size(value: float | None, text: str) -> None:
    assert size(value) == text


def test_short_forms() -> None:
    assert rate(None) == "-"
    assert rate(2048) == "2.0KiB/s"
    assert seconds_ms(0.0046) == "4.6ms"
    assert seconds_ms(None) == "-"
    assert percent(0.025) == "2.5%"
    assert percent(None) == "-"
    assert ago(200) == "3m20s"
    assert ago(None) == "-"


def test_filter_matches_any_cell_ignoring_case() -> None:
    assert matches(["default", "Web"], "web")
    assert not matches(["default", "web"], "job")
    assert matches([], "")


EMPTY: list[dict[str, Any]] = [{}, {"status": None}, {"status": {"members": [{}]}}]


@pytest.mark.parametrize("obj", EMPTY)
def test_renderers_survive_missing_fields(obj: dict[str, Any]) -> None:
    assert supernode_lines(obj)[0] == "Supernode    ?"
    assert bridge_lines(obj)[0].startswith("Bridge      ?: NOT CONNECTED")
    assert overview_lines(obj.get("status") or {}, 0.0)[0].plain.startswith("Node")
    assert pairing_lines({}, None, [], read_only=True)[0].plain.startswith("Pairing: none")
    assert neighbour_row({})[0] == "?"
    assert link_key({}) == "? ?"
    assert link_row(obj, None) == ["?", "-", "?", "-", "-", "-", "-", "-"]


def test_qr_code_is_text_of_even_width() -> None:
    lines = qr_lines("florete://pair?code=12345678")
    assert lines
    assert len({len(line) for line in lines}) == 1
    assert set("".join(lines)) <= set("█▀▄ ")


WIFI = {
    "name": "wifi/wlan0",
    "peerName": "b",
    "state": "established",
    "up": True,
    "rttSeconds": 0.0042,
    "loss": 0.025,
    "rxBytes": 10_000,
    "txBytes": 4_000,
    "rxGoodputBytes": 8_000,
    "txGoodputBytes": 3_000,
    "radio": {"signalDbm": -67, "txBitrate": 1.2e8, "rxBitrate": 6.5e7, "expectedThroughput": None},
}


def counters(link: dict[str, Any]) -> dict[str, float]:
    return {k: float(link[k]) for k in COUNTERS}


def test_link_row_shows_goodput_rates_and_the_radio_signal() -> None:
    later = {**WIFI, "rxBytes": 14_096, "txBytes": 5_024, "rxGoodputBytes": 12_096}
    rates = link_rates((10.0, counters(WIFI)), (12.0, counters(later)))
    assert rates is not None
    assert rates.seconds == 2.0
    assert rates.rates == {
        "rxBytes": 2048.0,
        "txBytes": 512.0,
        "rxGoodputBytes": 2048.0,
        "txGoodputBytes": 0.0,
    }
    row = link_row(later, rates)
    assert row == ["wifi/wlan0", "b", "up", "4.2ms", "2.5%", "2.0KiB/s", "0B/s", "-67dBm"]
    assert link_row(later, None)[5:7] == ["-", "-"]
    assert rates_lines(rates) == [
        "Rates between the last two refreshes, 2.0 s apart:",
        "  goodput  RX 2.0KiB/s     TX 0B/s         payload in order",
        "  link     RX 2.0KiB/s     TX 512B/s       every byte on the link",
    ]
    assert rates_lines(None) == ["Rates: - (shown from the second refresh on)"]


def test_rates_are_unknown_when_a_counter_goes_back_or_is_missing() -> None:
    """A new ARQ stream on the link starts its goodput counters again from 0; an agent of an
    older version has no goodput counters: neither may show a rate."""
    before = (1.0, {"rxBytes": 100.0, "txBytes": 100.0, "rxGoodputBytes": 50.0})
    after = (2.0, {"rxBytes": 300.0, "txBytes": 100.0, "rxGoodputBytes": 10.0})
    rates = link_rates(before, after)
    assert rates is not None
    assert rates.rates == {
        "rxBytes": 200.0,
        "txBytes": 0.0,
        "rxGoodputBytes": None,
        "txGoodputBytes": None,
    }
    assert link_rates(after, after) is None  # no time between them


@pytest.mark.parametrize(
    ("radio", "text"),
    [
        (None, "-"),  # a Wi-Fi link whose radio cannot be read
        ({"signalDbm": None}, "-"),
        ({"signalDbm": -41.6}, "-42dBm"),
        ({"signalDbm": True}, "-"),
        ("garbage", "-"),
    ],
)
def test_signal(radio: Any, text: str) -> None:
    assert link_signal({"radio": radio}) == text
    assert link_signal({}) == "-"  # UDP and serial radio links have no "radio"


@pytest.mark.parametrize(
    ("state", "up", "text"),
    [
        ("established", True, "up"),
        ("established", False, "down"),  # the session lives, the link is silent
        ("down", True, "down"),
        ("connecting", True, "connecting"),
        ("untrusted", True, "untrusted"),
        ("closed", False, "closed"),
    ],
)
def test_link_state_is_one_word(state: str, up: bool, text: str) -> None:
    assert link_state({"state": state, "up": up}) == text


def test_serial_radio_links_are_shown_short() -> None:
    assert link_name("serial_radio:/dev/ttyUSB0") == "serial:ttyUSB0"
    assert link_name("serial_radio:/tmp/radio/a") == "serial:/tmp/radio/a"
    assert link_name("udp/eth0") == "udp/eth0"
    assert link_name("wifi/wlan0") == "wifi/wlan0"
