"""``florete-agent tui`` in a real terminal: tmux runs it at 80x24 on a Linux-console terminal
type with colours off (``NO_COLOR``), the test types keys and reads the screen with
``capture-pane``. A tmux server of its own (``-L``) is used and always killed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from tests.integration.conftest import Agent
from tests.tui.conftest import pod_ready, socket_of

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]

POD = """
apiVersion: v1
kind: Pod
metadata: {name: tmux-pod}
spec:
  containers:
  - name: main
    command: ["sh", "-c", "echo from-tmux-pod; exec sleep 3600"]
"""


class Tmux:
    """One tmux server and session running a command at 80x24."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.server = f"fltui{os.getpid()}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        line = f"env {exports} {shlex.join(command)}; echo EXITED $?; sleep 600"
        self.tmux("new-session", "-d", "-s", "tui", "-x", "80", "-y", "24", line)

    def tmux(self, *args: str) -> str:
        result = subprocess.run(
            ["tmux", "-L", self.server, *args], capture_output=True, text=True, timeout=30
        )
        if result.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {result.stderr}")
        return result.stdout

    def screen(self, escapes: bool = False) -> str:
        """The pane's text (with SGR escapes when asked)."""
        return self.tmux("capture-pane", "-p", *(["-e"] if escapes else []), "-t", "tui")

    def keys(self, *keys: str) -> None:
        """Type keys (tmux key names, or literal text with ``-l``)."""
        self.tmux("send-keys", "-t", "tui", *keys)

    def wait(self, predicate: Callable[[str], bool], what: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            text = self.screen()
            if predicate(text):
                return text
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{text}")
            time.sleep(0.1)

    def kill(self) -> None:
        subprocess.run(["tmux", "-L", self.server, "kill-server"], capture_output=True)


@pytest.fixture
def terminal(work: Agent) -> Iterator[Tmux]:
    work.apply(POD)
    pod_ready(work, "tmux-pod")
    env = {
        "TERM": "linux",
        "NO_COLOR": "1",
        "PATH": os.environ.get("PATH", ""),
        "HOME": os.environ.get("HOME", "/root"),
        "PYTHONPATH": os.getcwd(),
    }
    command = [sys.executable, "-m", "agent.cli", "tui", "--socket", str(socket_of(work))]
    tmux = Tmux([*command, "--view", "pods", "--refresh", "0.5"], env)
    try:
        yield tmux
    finally:
        tmux.kill()
        work.cli("delete", "pod", "tmux-pod", "--no-wait", check=False)


def test_tui_in_a_real_terminal(terminal: Tmux) -> None:
    # Keys typed before Textual has drawn its first full frame (the footer comes last) may be
    # handled out of order: wait for it, as a person would.
    text = terminal.wait(
        lambda s: "tmux-pod" in s and "Filter" in s.splitlines()[-1], "the pod in the table"
    )
    lines = text.splitlines()
    assert len(lines) <= 24
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].startswith(" florete-agent | tui-work | pods")
    assert "NAMESPACE" in lines[1]
    assert "STATUS" in lines[1]
    # No colour: the title and the selected row are in reverse video (SGR 7).
    escaped = terminal.screen(escapes=True).splitlines()
    assert "7m" in escaped[0].split("florete-agent")[0]
    assert any("7m" in line and "default" in line for line in escaped[2:])

    terminal.keys("/")
    terminal.keys("-l", "tmux-pod")
    terminal.keys("Enter")
    terminal.wait(lambda s: "filter: tmux-pod" in s, "the filter in the title")
    terminal.keys("l")
    terminal.wait(lambda s: "from-tmux-pod" in s and "logs default/tmux-pod" in s, "the log")
    # A terminal sends Escape as the start of a sequence too: wait until it has been taken
    # alone before the next key.
    terminal.keys("Escape")
    terminal.wait(lambda s: "NAMESPACE" in s, "the pods again")
    terminal.keys("Enter")
    terminal.wait(lambda s: "Name:             tmux-pod" in s, "describe")
    terminal.keys("Escape")
    terminal.wait(lambda s: "NAMESPACE" in s, "the pods again")
    terminal.keys(":")
    terminal.keys("-l", "overview")
    terminal.keys("Enter")
    terminal.wait(lambda s: "Node ID" in s and "Runtimes" in s, "the overview")
    terminal.keys("?")
    terminal.wait(lambda s: "Everywhere" in s, "the help")
    terminal.keys("Escape")
    terminal.wait(lambda s: "Everywhere" not in s, "the help to close")
    terminal.keys("q")
    terminal.wait(lambda s: "EXITED 0" in s, "the TUI to exit with 0")
