"""Widgets shared by the TUI's screens: the title bar, the connection banner, the prompt for
``:`` commands and ``/`` filters, and a table that updates rows in place.

Meaning is never carried by colour alone: states are words, the banner and the selected row
are also in reverse video, so everything reads on a monochrome console.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

from rich.text import Text
from textual.binding import Binding, BindingType
from textual.message import Message
from textual.widget import Widget
from textual.widgets import DataTable, Input, Static

__all__ = ["Banner", "Prompt", "PromptMode", "RowTable", "TitleBar", "focus_now", "matches"]

PromptMode = Literal["command", "filter"]


def matches(cells: Sequence[str], needle: str) -> bool:
    """True when ``needle`` (lower case) is in any cell, case-insensitively ('' matches all)."""
    return not needle or any(needle in cell.lower() for cell in cells)


def focus_now(widget: Widget) -> None:
    """Focus ``widget`` at once (``Widget.focus`` waits for the next turn of the loop, so keys
    already typed, from a fast typist, a paste or a serial line, would go elsewhere)."""
    widget.screen.set_focus(widget)


class TitleBar(Static):
    """One line on top: program, node, view, mode and filter, in words."""

    DEFAULT_CSS = """
    TitleBar { height: 1; text-style: bold reverse; }
    """

    def show(self, node: str, view: str, read_only: bool, filter_text: str) -> None:
        """Set the line: ``florete-agent | NODE | VIEW | READ-ONLY | filter: TEXT``."""
        parts = ["florete-agent", node or "?", view]
        if read_only:
            parts.append("READ-ONLY")
        if filter_text:
            parts.append(f"filter: {filter_text}")
        self.update(Text(" " + " | ".join(parts), no_wrap=True, overflow="ellipsis"))


class Banner(Static):
    """The connection banner: hidden while the agent answers, a reverse-video block with the
    reason and the retry schedule while it does not."""

    DEFAULT_CSS = """
    Banner { height: auto; max-height: 4; text-style: bold reverse; display: none; }
    """

    def show(self, message: str) -> None:
        """Show ``message``, or hide the banner when it is empty."""
        self.display = bool(message)
        self.update(Text(message))


class Prompt(Input):
    """The input line for ``:`` (a view to go to) and ``/`` (a filter); Escape cancels."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    Prompt { dock: bottom; height: 1; border: none; padding: 0 1; display: none; }
    Prompt:focus { border: none; }
    """

    class Cancelled(Message):
        """The user pressed Escape in the prompt."""

        def __init__(self, mode: PromptMode) -> None:
            super().__init__()
            self.mode = mode

    def __init__(self) -> None:
        super().__init__(compact=True)
        self.cursor_blink = False  # no animation over a slow serial console
        self.mode: PromptMode = "command"

    def open(self, mode: PromptMode, value: str = "") -> None:
        """Show the prompt for ``mode`` with ``value`` in it and focus it."""
        self.mode = mode
        self.placeholder = "view: pods, overview, links, ... (Enter)" if mode == "command" else ""
        self.value = value
        self.display = True
        # At once, not on the next turn of the loop as focus() does: keys typed right after
        # the ``:`` or ``/`` (a fast typist, a paste, a serial line) must reach the prompt.
        focus_now(self)
        self.cursor_position = len(value)

    def close(self) -> None:
        """Hide the prompt."""
        self.display = False

    def action_cancel(self) -> None:
        """Escape: tell the screen, which closes the prompt."""
        self.post_message(self.Cancelled(self.mode))


class RowTable(DataTable[Text]):
    """A row-cursor table of text cells keyed by a string, with a substring filter.

    :meth:`set_rows` updates cells in place when the rows are the same as before (so a refresh
    repaints only what changed) and keeps the cursor on the same key when rows come and go.
    """

    DEFAULT_CSS = """
    RowTable { height: 1fr; }
    RowTable > .datatable--cursor { text-style: bold reverse; }
    RowTable:focus > .datatable--cursor { text-style: bold reverse; }
    RowTable > .datatable--header { text-style: bold underline; }
    """

    def __init__(self, columns: Sequence[str], *, id: str | None = None) -> None:
        super().__init__(cursor_type="row", zebra_stripes=False, id=id)
        self.columns_names = list(columns)
        self._all: list[tuple[str, list[str]]] = []
        self._needle = ""

    def on_mount(self) -> None:
        """Add the columns."""
        for name in self.columns_names:
            self.add_column(name, key=name)

    @property
    def selected_key(self) -> str | None:
        """The key of the row under the cursor, or None when the table is empty."""
        if not self.row_count:
            return None
        return self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value

    @property
    def shown(self) -> int:
        """Rows that pass the filter."""
        return self.row_count

    @property
    def total(self) -> int:
        """Rows before the filter."""
        return len(self._all)

    def set_rows(self, rows: Sequence[tuple[str, list[str]]]) -> None:
        """Show ``rows`` (``(key, cells)`` with one cell per column) that pass the filter."""
        self._all = list(rows)
        self._render_rows()

    def set_filter(self, text: str) -> None:
        """Show only rows with ``text`` in some cell (case-insensitive); '' shows all."""
        self._needle = text.lower()
        self._render_rows()

    def _render_rows(self) -> None:
        shown = [(key, cells) for key, cells in self._all if matches(cells, self._needle)]
        keys = [key for key, _ in shown]
        if keys == [row.value for row in self.rows]:
            for key, cells in shown:
                for column, value in zip(self.columns_names, cells, strict=True):
                    if self.get_cell(key, column).plain != value:
                        self.update_cell(key, column, Text(value), update_width=True)
            return
        selected = self.selected_key
        self.clear()
        for key, cells in shown:
            self.add_row(*(Text(c, no_wrap=True) for c in cells), key=key)
        if selected in keys:
            self.move_cursor(row=keys.index(selected), animate=False)
