"""The TUI's pure parts: the log buffer, text forms, and renderers fed odd shapes (an agent of
another version must never crash the TUI)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.tui.bridges import bridge_lines
from agent.tui.fmt import ago, percent, rate, seconds_ms, size
from agent.tui.links import link_key
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


def test_qr_code_is_text_of_even_width() -> None:
    lines = qr_lines("florete://pair?code=12345678")
    assert lines
    assert len({len(line) for line in lines}) == 1
    assert set("".join(lines)) <= set("█▀▄ ")
