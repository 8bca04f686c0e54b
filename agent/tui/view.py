"""The base of every view: data fetched in a worker thread, shown on the UI thread.

A view is polled by the app: :meth:`View.fetch` runs in a worker thread with the
:class:`~agent.tui.adapter.AgentApi` (blocking calls are fine there) and returns plain data;
:meth:`View.show` then runs on the UI thread with that data. Actions that change something
are named in ``MUTATING``: in read-only mode they are neither bound nor shown.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.widgets import Static

from agent.tui.adapter import AgentApi
from agent.tui.fmt import dump
from agent.tui.widgets import RowTable, focus_now, matches

if TYPE_CHECKING:
    from agent.tui.app import FloreteTui

__all__ = ["OptionalView", "TableView", "TextView", "View"]


class View(Vertical):
    """One view of the main screen.

    Its keys are priority bindings, so they act in the order typed even when keys come
    faster than the screen (a paste, a serial line); no text input lives inside a view.

    Class attributes:
        NAME: the view's name in ``:`` command mode and in the title bar.
        ALIASES: other names accepted in ``:`` command mode.
        MUTATING: actions hidden and refused in read-only mode.
    """

    NAME: ClassVar[str] = ""
    ALIASES: ClassVar[tuple[str, ...]] = ()
    MUTATING: ClassVar[frozenset[str]] = frozenset()

    DEFAULT_CSS = """
    View { height: 1fr; }
    View > .message { height: auto; padding: 0 1; }
    """

    def __init__(self) -> None:
        super().__init__(id=self.NAME)
        self.filter_text = ""
        self.message = Static("loading...", classes="message")
        self.loaded = False

    @property
    def tui(self) -> FloreteTui:
        """The application, typed."""
        from agent.tui.app import FloreteTui

        app = self.app
        assert isinstance(app, FloreteTui)
        return app

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Hide and refuse ``MUTATING`` actions in read-only mode."""
        return not (action in self.MUTATING and self.tui.read_only)

    def fetch(self, api: AgentApi) -> Any:
        """Get the view's data; runs in a worker thread.

        Raises:
            ApiError: the agent is unreachable or refused (the app shows it).
        """
        raise NotImplementedError

    def show(self, data: Any) -> None:
        """Show what :meth:`fetch` returned; runs on the UI thread."""
        raise NotImplementedError

    def show_error(self, text: str) -> None:
        """Show an error from the agent in place of the data."""
        self.message.update(Text(f"error: {text}"))
        self.message.display = True

    def set_filter(self, text: str) -> None:
        """Show only what contains ``text`` (case-insensitive)."""
        self.filter_text = text

    def focus_main(self) -> None:
        """Focus the widget that takes the view's keys."""
        focus_now(self)

    def run_blocking(self, call: Callable[[], Any], done: str | Callable[[Any], str]) -> None:
        """Run ``call`` (a blocking API call) in a worker thread; then say ``done`` (or
        ``done(result)``), or the agent's error."""
        self.tui.run_action_call(call, done)


class TableView(View):
    """A view that is one :class:`RowTable`, with a message when it is empty."""

    COLUMNS: ClassVar[Sequence[str]] = ()
    EMPTY: ClassVar[str] = "Nothing here."

    def __init__(self) -> None:
        super().__init__()
        self.table = RowTable(self.COLUMNS)

    def compose(self) -> ComposeResult:
        """The message line above the table."""
        yield self.message
        yield self.table

    def rows(self, data: Any) -> list[tuple[str, list[str]]]:
        """``(key, cells)`` for each row of ``data``."""
        raise NotImplementedError

    def show(self, data: Any) -> None:
        """Fill the table; say so when it is empty or everything is filtered out."""
        self.loaded = True
        self.table.set_rows(self.rows(data))
        self._update_message()

    def set_filter(self, text: str) -> None:
        """Filter the table's rows."""
        super().set_filter(text)
        self.table.set_filter(text)
        self._update_message()

    def _update_message(self) -> None:
        if not self.loaded:
            return
        if not self.table.total:
            self.message.update(Text(self.EMPTY))
        elif not self.table.shown:
            self.message.update(Text(f'No rows match "{self.filter_text}".'))
        self.message.display = not self.table.shown

    def focus_main(self) -> None:
        """The table takes the keys."""
        focus_now(self.table)

    @property
    def selected(self) -> str | None:
        """The key of the selected row."""
        return self.table.selected_key


class TextView(View):
    """A view of text lines in a scrollable area; the filter keeps the matching lines."""

    DEFAULT_CSS = """
    TextView > VerticalScroll { height: 1fr; padding: 0 1; }
    TextView > VerticalScroll > Static { text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self) -> None:
        super().__init__()
        self.body = Static()
        self.scroll = VerticalScroll(self.body)
        self.scroll.can_focus = True
        self._lines: list[Text] = []

    def compose(self) -> ComposeResult:
        """The message line above the text."""
        yield self.message
        yield self.scroll

    def lines(self, data: Any) -> list[Text]:
        """The lines to show for ``data``."""
        raise NotImplementedError

    def show(self, data: Any) -> None:
        """Show the lines of ``data``."""
        self.loaded = True
        self.message.display = False
        self._lines = self.lines(data)
        self._render_lines()

    def set_filter(self, text: str) -> None:
        """Keep the lines that contain ``text``."""
        super().set_filter(text)
        self._render_lines()

    def _render_lines(self) -> None:
        needle = self.filter_text.lower()
        kept = [line for line in self._lines if matches([line.plain], needle)]
        self.body.update(Text("\n", no_wrap=True, overflow="ellipsis").join(kept))

    def focus_main(self) -> None:
        """The scroll area takes the keys."""
        focus_now(self.scroll)


class OptionalView(TextView):
    """A view of a feature the agent may not have: its object as YAML, or ``ABSENT`` when
    ``GET /apis/florete.io/v1alpha1/<RESOURCE>`` answers 404."""

    RESOURCE: ClassVar[str] = ""
    ABSENT: ClassVar[str] = "not configured"

    def fetch(self, api: AgentApi) -> dict[str, Any] | None:
        """The feature's object, or None."""
        return api.optional(self.RESOURCE)

    def lines(self, data: Any) -> list[Text]:
        """``ABSENT``, or :meth:`present`."""
        if data is None:
            return [Text(self.ABSENT)]
        return self.present(data)

    def present(self, data: dict[str, Any]) -> list[Text]:
        """The object's lines (YAML)."""
        return [Text(line, no_wrap=True) for line in dump(data).splitlines()]
