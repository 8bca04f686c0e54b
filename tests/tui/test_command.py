"""The ``tui`` command: registered beside the others, Textual loaded only when it runs, and
precise errors for bad options and for a missing terminal."""

from __future__ import annotations

import subprocess
import sys

import pytest

CLI = [sys.executable, "-m", "agent.cli"]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60
    )


def test_the_daemon_and_the_cli_never_import_textual() -> None:
    code = (
        "import sys, agent.cli, agent.daemon\n"
        "agent.cli.build_parser().parse_args(['run'])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'agent'))\n"
        "assert 'textual' not in loaded and 'agent.tui.app' not in loaded, loaded\n"
        "assert 'agent.tui.command' in loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_tui_is_listed_and_has_help() -> None:
    assert "tui" in run("--help").stdout
    help_text = run("tui", "--help").stdout
    for option in ("--read-only", "--refresh", "--log-lines", "--view", "--socket"):
        assert option in help_text


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--refresh", "0"], "argument --refresh: must be at least 0.2"),
        (["--refresh", "soon"], "argument --refresh: expected a number, got 'soon'"),
        (["--log-lines", "5"], "argument --log-lines: must be at least 100"),
        (["--view", "nope"], "argument --view: invalid choice: 'nope'"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], says: str) -> None:
    result = run("tui", *args)
    assert result.returncode == 2
    assert says in result.stderr


def test_without_a_terminal_it_says_so(tmp_path: object) -> None:
    result = run("tui", "--state-dir", str(tmp_path))
    assert result.returncode == 1
    assert result.stderr == "error: the TUI needs a terminal: run `florete-agent tui` in one\n"
