"""The log viewer: one container's log, followed, capped, virtually scrolled.

A :class:`~agent.tui.logfollow.LogFollower` reads the log in a worker thread into a bounded
buffer; a timer drains it into Textual's ``Log`` widget, which keeps at most ``log_lines`` lines
and renders only the lines on screen, so a log of millions of lines stays as responsive as a
short one. The view sticks to the end of the log while following (``f`` turns that off to read
in peace, and on again);
``/`` shows only matching lines; ``c`` switches to the pod's next container.
"""

from __future__ import annotations

from collections import deque
from typing import ClassVar

from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.widgets import Log

from agent.tui.dialogs import SubScreen
from agent.tui.logfollow import LogBuffer, LogFollower, Notice
from agent.tui.widgets import focus_now, matches

__all__ = ["LogScreen"]

# Seconds between two transfers of buffered lines to the screen: at most this many repaints a
# second however fast the container writes.
_DRAIN_INTERVAL = 0.25


class LogScreen(SubScreen):
    """Follow the log of one of a pod's containers.

    Args:
        namespace: the pod's namespace.
        pod: the pod's name.
        containers: the pod's container names; the first is shown first.
        max_lines: lines kept (older lines are dropped) and lines asked for at the start.
        retry: seconds between attempts to reopen an ended or broken stream.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "back", "Back"),
        Binding("f", "toggle_follow", "Follow on/off", priority=True),
        Binding("c", "next_container", "Next container", priority=True),
    ]
    DEFAULT_CSS = """
    LogScreen > Log { height: 1fr; }
    """

    def __init__(
        self, namespace: str, pod: str, containers: list[str], max_lines: int, retry: float
    ) -> None:
        super().__init__(f"logs {namespace}/{pod}")
        self.namespace = namespace
        self.pod = pod
        self.containers = containers
        self.container = containers[0]
        self.max_lines = max_lines
        self.retry = retry
        self.log_widget = Log(max_lines=max_lines, auto_scroll=True)
        self.lines: deque[str] = deque(maxlen=max_lines)
        self.follow = True
        self._buffer = LogBuffer(max_lines)
        self._follower: LogFollower | None = None

    def body(self) -> ComposeResult:
        """The log."""
        yield self.log_widget

    def on_mount(self) -> None:
        """Start following the first container."""
        super().on_mount()
        focus_now(self.log_widget)
        self.set_interval(_DRAIN_INTERVAL, self.drain)
        self._start()

    def on_unmount(self) -> None:
        """Stop the follower (its open stream is closed at once)."""
        self._stop()

    def _retitle(self) -> None:
        self.title_text = f"logs {self.namespace}/{self.pod} [{self.container}]"
        if not self.follow:
            self.title_text += " (not following)"
        super()._retitle()

    def _start(self) -> None:
        self._buffer = LogBuffer(self.max_lines)
        follower = LogFollower(
            self.tui.api,
            self.namespace,
            self.pod,
            self.container,
            self._buffer,
            tail=self.max_lines,
            retry=self.retry,
        )
        self._follower = follower
        self.run_worker(follower.run, thread=True, exit_on_error=False)
        self._retitle()

    def _stop(self) -> None:
        if self._follower is not None:
            self._follower.stop()
            self._follower = None

    def drain(self) -> None:
        """Move buffered lines onto the screen (a timer calls this)."""
        entries, dropped = self._buffer.drain()
        if not entries and not dropped:
            return
        new: list[str] = []
        if dropped:
            new.append(f"--- {dropped} lines skipped: the log ran faster than the screen ---")
        for entry in entries:
            new.append(f"--- {entry.text} ---" if isinstance(entry, Notice) else entry)
        self.lines.extend(new)
        needle = self.filter_text.lower()
        shown = [line for line in new if matches([line], needle)]
        if shown:
            self.log_widget.write_lines(shown, scroll_end=False)
            if self.follow:  # Log scrolls by itself only when already at the end
                self.log_widget.scroll_end(animate=False)

    def apply_filter(self, text: str) -> None:
        """Show only the kept lines that contain ``text``."""
        needle = text.lower()
        self.log_widget.clear()
        self.log_widget.write_lines(
            [line for line in self.lines if matches([line], needle)], scroll_end=False
        )
        if self.follow:
            self.log_widget.scroll_end(animate=False)

    def focus_body(self) -> None:
        """The log scrolls with the arrow keys."""
        focus_now(self.log_widget)

    def action_toggle_follow(self) -> None:
        """``f``: stick to the end of the log, or stay where the view is."""
        self.follow = not self.follow
        self.log_widget.auto_scroll = self.follow
        if self.follow:
            self.log_widget.scroll_end(animate=False)
        self._retitle()

    def action_next_container(self) -> None:
        """``c``: show the pod's next container."""
        if len(self.containers) < 2:
            self.tui.say("this pod has one container")
            return
        self._stop()
        index = (self.containers.index(self.container) + 1) % len(self.containers)
        self.container = self.containers[index]
        self.lines.clear()
        self.log_widget.clear()
        self._start()
