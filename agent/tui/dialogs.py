"""Screens over the main screen: text detail (``describe``), confirmation, and help.

:class:`TextScreen` loads its text in a worker thread and can be filtered with ``/``;
:class:`ConfirmScreen` asks before anything is deleted or restarted; :class:`HelpScreen` lists
every key the TUI binds, from the bindings themselves, so it cannot fall out of date.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Input, Static

from agent.errors import ApiError
from agent.tui.adapter import AgentApi
from agent.tui.widgets import Banner, Prompt, TitleBar, focus_now, matches

if TYPE_CHECKING:
    from agent.tui.app import FloreteTui

__all__ = ["AskScreen", "ConfirmScreen", "HelpScreen", "SubScreen", "TextScreen", "help_text"]


class SubScreen(Screen[None]):
    """A full screen above the main one: title, connection banner, body, ``/`` prompt,
    footer. Escape clears the filter, or goes back when there is none."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "back", "Back")]

    def __init__(self, title: str) -> None:
        super().__init__()
        self.title_text = title
        self.filter_text = ""
        self.title_bar = TitleBar()
        self.banner = Banner()
        self.prompt = Prompt()

    @property
    def tui(self) -> FloreteTui:
        """The application, typed."""
        from agent.tui.app import FloreteTui

        app = self.app
        assert isinstance(app, FloreteTui)
        return app

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The screen's letter keys (priority bindings) are text while the prompt has focus."""
        return action == "back" or not isinstance(self.focused, Input)

    def body(self) -> ComposeResult:
        """The screen's own widgets, between the banner and the prompt."""
        raise NotImplementedError

    def compose(self) -> ComposeResult:
        """Title, banner, body, prompt, footer."""
        yield self.title_bar
        yield self.banner
        yield from self.body()
        yield self.prompt
        yield Footer(compact=True)

    def on_mount(self) -> None:
        """Show the title and follow the connection state."""
        self._retitle()
        self.watch(self.tui, "connection", self.banner.show)

    def _retitle(self) -> None:
        self.title_bar.show(
            self.tui.node_name, self.title_text, self.tui.read_only, self.filter_text
        )

    def open_filter(self) -> None:
        """``/``: open the filter prompt."""
        self.prompt.open("filter", self.filter_text)

    def apply_filter(self, text: str) -> None:
        """Show only what matches ``text``."""
        raise NotImplementedError

    def on_input_changed(self, event: Input.Changed) -> None:
        """Filter as the user types."""
        if event.input is self.prompt and self.prompt.mode == "filter":
            self.filter_text = event.value
            self.apply_filter(event.value)
            self._retitle()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter keeps the filter."""
        if event.input is self.prompt:
            self.prompt.close()
            self.focus_body()

    def on_prompt_cancelled(self, event: Prompt.Cancelled) -> None:
        """Escape in the prompt drops the filter."""
        self.prompt.close()
        self._set_filter("")
        self.focus_body()

    def _set_filter(self, text: str) -> None:
        self.filter_text = text
        self.apply_filter(text)
        self._retitle()

    def focus_body(self) -> None:
        """Give the keys back to the body."""
        raise NotImplementedError

    def action_back(self) -> None:
        """Escape: clear the filter, or leave the screen."""
        if self.filter_text:
            self._set_filter("")
        else:
            self.dismiss()


class TextScreen(SubScreen):
    """A text (``describe`` output, an object's details) loaded once in a worker thread.

    Args:
        title: shown in the title bar.
        load: builds the text from the API; runs in a worker thread and may raise ApiError.
    """

    DEFAULT_CSS = """
    TextScreen > VerticalScroll { height: 1fr; padding: 0 1; }
    TextScreen > VerticalScroll > Static { text-wrap: nowrap; text-overflow: ellipsis; }
    """

    def __init__(self, title: str, load: Callable[[AgentApi], str]) -> None:
        super().__init__(title)
        self._load = load
        self._lines: list[str] = []
        self.text = Static(Text("loading..."))
        self.scroll = VerticalScroll(self.text)
        self.scroll.can_focus = True
        self.loaded = False

    def body(self) -> ComposeResult:
        """The scrollable text."""
        yield self.scroll

    def on_mount(self) -> None:
        """Load the text."""
        super().on_mount()
        focus_now(self.scroll)
        self.run_worker(self._fetch(), exit_on_error=False)

    async def _fetch(self) -> None:
        try:
            text = await asyncio.to_thread(self._load, self.tui.api)
        except ApiError as err:
            text = f"error: {err.message}"
        self._lines = text.splitlines()
        self.loaded = True
        self.apply_filter(self.filter_text)

    def apply_filter(self, text: str) -> None:
        """Keep the lines that contain ``text``."""
        needle = text.lower()
        kept = [line for line in self._lines if matches([line], needle)]
        self.text.update(Text("\n".join(kept), no_wrap=True, overflow="ellipsis"))

    def focus_body(self) -> None:
        """The text scrolls with the arrow keys."""
        focus_now(self.scroll)


class ConfirmScreen(ModalScreen[bool]):
    """Ask a yes/no question; dismisses with True only on ``y``."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n", "answer(False)", "No"),
        Binding("escape", "answer(False)", "No"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical {
        width: 64; height: auto; border: heavy $foreground; padding: 0 1; background: $panel;
    }
    """

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        """The question and the keys that answer it."""
        with Vertical():
            yield Static(Text(self.question))
            yield Static(Text("y: yes    n or Escape: no", style="bold"))

    def action_answer(self, yes: bool) -> None:
        """Close with the answer."""
        self.dismiss(yes)


class AskScreen(ModalScreen[str | None]):
    """Ask for one line of text; Enter answers it, Escape answers None."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel")]
    DEFAULT_CSS = """
    AskScreen { align: center middle; }
    AskScreen > Vertical {
        width: 64; height: auto; border: heavy $foreground; padding: 0 1; background: $panel;
    }
    """

    def __init__(self, question: str, placeholder: str = "") -> None:
        super().__init__()
        self.question = question
        self.answer = Input(placeholder=placeholder, compact=True)
        self.answer.cursor_blink = False

    def compose(self) -> ComposeResult:
        """The question and the input line."""
        with Vertical():
            yield Static(Text(self.question))
            yield self.answer
            yield Static(Text("Enter: go    Escape: cancel", style="bold"))

    def on_mount(self) -> None:
        """Type at once."""
        focus_now(self.answer)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter: answer with the text."""
        self.dismiss(event.value.strip())

    def action_cancel(self) -> None:
        """Escape: no answer."""
        self.dismiss(None)


def _keys(app: FloreteTui, bindings: Iterable[BindingType], hidden: frozenset[str]) -> list[str]:
    lines = []
    for item in bindings:
        if not isinstance(item, Binding) or item.action.split("(")[0] in hidden:
            continue
        lines.append(f"  {app.get_key_display(item):<10} {item.description}")
    return lines


def help_text(app: FloreteTui) -> str:
    """Every key of the TUI, by where it works; without the mutating ones in read-only mode."""
    from agent.tui.app import MainScreen
    from agent.tui.logs import LogScreen

    lines = ["Everywhere"]
    lines += _keys(app, app.BINDINGS, frozenset())
    lines += _keys(app, MainScreen.BINDINGS, frozenset())
    lines.append("  Up Down PgUp PgDn Home End  move, scroll")
    lines.append("Commands (after :)")
    for view in app.view_classes:
        names = ", ".join((view.NAME, *view.ALIASES))
        lines.append(f"  {names}")
    lines.append("  q, quit")
    for view in app.view_classes:
        hidden = view.MUTATING if app.read_only else frozenset()
        keys = _keys(app, view.BINDINGS, hidden)
        if keys:
            lines.append(f"View {view.NAME}")
            lines += keys
    lines.append("Logs")
    lines += _keys(app, LogScreen.BINDINGS, frozenset())
    lines.append("Describe and details")
    lines += _keys(app, TextScreen.BINDINGS, frozenset())
    lines.append("Questions")
    lines += _keys(app, ConfirmScreen.BINDINGS, frozenset())
    lines += _keys(app, AskScreen.BINDINGS, frozenset())
    lines.append("Prompt")
    lines += _keys(app, Prompt.BINDINGS, frozenset())
    lines.append("  Enter      apply")
    if app.read_only:
        lines.append("Read-only mode: actions that change something are hidden.")
    return "\n".join(lines)


class HelpScreen(ModalScreen[None]):
    """Every key, from the bindings themselves; Escape, ``q`` or ``?`` closes."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "close", "Close"),
        Binding("q", "close", "Close"),
        Binding("question_mark", "close", "Close", key_display="?"),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 72; height: 90%; border: heavy $foreground; padding: 0 1; background: $panel;
    }
    """

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def compose(self) -> ComposeResult:
        """The key list, scrollable."""
        scroll = VerticalScroll(Static(Text(self.text)))
        scroll.can_focus = True
        scroll.border_title = "Keys (Escape closes)"
        yield scroll

    def on_mount(self) -> None:
        """Scroll with the arrow keys."""
        focus_now(self.query_one(VerticalScroll))

    def action_close(self) -> None:
        """Close the help."""
        self.dismiss()
