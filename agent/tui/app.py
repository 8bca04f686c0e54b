"""The TUI application: views, polling, the connection banner, ``:`` and ``/``.

Every ``refresh`` seconds the app asks the current view for its data in a worker thread
(:meth:`View.fetch`) and shows it on the UI thread (:meth:`View.show`); a poll still running is
never doubled up, so a slow agent cannot pile up requests. A poll that cannot reach the agent
turns on the banner, which says why and that the TUI keeps trying; the next poll that gets an
answer turns it off and, when the agent's start time changed, says that it restarted. The TUI
never gives up reconnecting (k9s#718 is the bug this avoids).

Nothing animates (``animation_level = "none"``, no blinking cursor, no spinners): each refresh
repaints only the cells that changed, which keeps a 9600-baud serial console usable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.reactive import reactive
from textual.screen import ModalScreen, Screen
from textual.widgets import ContentSwitcher, Footer, Input

from agent.errors import ApiError
from agent.render import human_duration
from agent.tui.adapter import AgentApi, is_unreachable
from agent.tui.bridges import BridgesView
from agent.tui.dialogs import HelpScreen, SubScreen, help_text
from agent.tui.links import LinksView
from agent.tui.neighbours import NeighboursView
from agent.tui.overview import OverviewView
from agent.tui.pairing import PairingView
from agent.tui.peers import PeersView
from agent.tui.pods import PodsView
from agent.tui.supernode import SupernodeView
from agent.tui.view import View
from agent.tui.widgets import Banner, Prompt, TitleBar

__all__ = ["VIEWS", "FloreteTui", "MainScreen"]

#: Every view, in the order the help lists them.
VIEWS: tuple[type[View], ...] = (
    OverviewView,
    PodsView,
    NeighboursView,
    LinksView,
    PeersView,
    PairingView,
    SupernodeView,
    BridgesView,
)

# Errors that mean the agent's answer did not have the shape a view expects.
_SHAPE_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)


class MainScreen(Screen[None]):
    """The views, one at a time, under a title bar and the connection banner."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "clear_filter", "Clear filter", show=False)
    ]
    DEFAULT_CSS = """
    MainScreen > ContentSwitcher { height: 1fr; }
    """

    def __init__(self, views: Sequence[View], start: str) -> None:
        super().__init__()
        self.views = {view.NAME: view for view in views}
        self.start = start
        self.title_bar = TitleBar()
        self.banner = Banner()
        self.prompt = Prompt()
        self.switcher = ContentSwitcher(*views, initial=start)

    @property
    def tui(self) -> FloreteTui:
        """The application, typed."""
        app = self.app
        assert isinstance(app, FloreteTui)
        return app

    def compose(self) -> ComposeResult:
        """Title, banner, the views, the prompt, the footer."""
        yield self.title_bar
        yield self.banner
        yield self.switcher
        yield self.prompt
        yield Footer(compact=True)

    def on_mount(self) -> None:
        """Follow the connection state; give the keys to the first view."""
        self.watch(self.tui, "connection", self.banner.show)
        self.retitle()
        self.current_view.focus_main()

    @property
    def current_view(self) -> View:
        """The view on screen."""
        return self.views[self.switcher.current or self.start]

    def retitle(self) -> None:
        """Refresh the title bar (node, view, mode, filter)."""
        view = self.current_view
        self.title_bar.show(self.tui.node_name, view.NAME, self.tui.read_only, view.filter_text)

    def switch(self, name: str) -> None:
        """Show the view ``name`` (a ``View.NAME``)."""
        self.switcher.current = name
        self.current_view.focus_main()
        self.retitle()

    def open_command(self) -> None:
        """``:``: ask for a view."""
        self.prompt.open("command")

    def open_filter(self) -> None:
        """``/``: ask for a filter of the current view."""
        self.prompt.open("filter", self.current_view.filter_text)

    def _set_filter(self, text: str) -> None:
        self.current_view.set_filter(text)
        self.retitle()

    def on_input_changed(self, event: Input.Changed) -> None:
        """Filter as the user types."""
        if event.input is self.prompt and self.prompt.mode == "filter":
            self._set_filter(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        """Enter: go to the view named, or keep the filter."""
        if event.input is not self.prompt:
            return
        self.prompt.close()
        self.current_view.focus_main()
        if self.prompt.mode == "command":
            self.tui.run_command(event.value)

    def on_prompt_cancelled(self, event: Prompt.Cancelled) -> None:
        """Escape in the prompt: close it (and drop the filter being typed)."""
        self.prompt.close()
        if event.mode == "filter":
            self._set_filter("")
        self.current_view.focus_main()

    def action_clear_filter(self) -> None:
        """Escape: drop the current view's filter."""
        self._set_filter("")


class FloreteTui(App[int]):
    """The ``florete-agent tui`` application.

    Args:
        api: the agent's API (every call is made from worker threads).
        read_only: hide and refuse every action that changes something.
        refresh: seconds between polls of the current view, and between reconnection attempts.
        log_lines: lines a log view keeps (and fetches when it opens).
        view: the view to start with (a view name or alias).
        clock: wall-clock time in seconds since the epoch (ages are computed from it).
    """

    TITLE = "florete-agent"
    ENABLE_COMMAND_PALETTE = False
    # Priority: handled in the order typed, before the focused widget sees later keys (a
    # normal binding runs only once the key has bubbled back up, and keys typed fast behind
    # it, such as a filter after "/", would overtake it). Off while a text input has focus.
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("colon", "command", "View", key_display=":", priority=True),
        Binding("slash", "filter", "Filter", key_display="/", priority=True),
        Binding("question_mark", "help", "Help", key_display="?", priority=True),
        Binding("q", "quit", "Quit", priority=True),
    ]

    #: Empty while the agent answers; otherwise the banner's text.
    connection: reactive[str] = reactive("")

    def __init__(
        self,
        api: AgentApi,
        *,
        read_only: bool = False,
        refresh: float = 2.0,
        log_lines: int = 5000,
        view: str = "overview",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__()
        self.animation_level = "none"
        self.api = api
        self.read_only = read_only
        self.refresh_seconds = refresh
        self.log_lines = log_lines
        self.clock = clock
        self.view_classes = VIEWS
        self.view_names: dict[str, str] = {}
        for cls in VIEWS:
            for name in (cls.NAME, *cls.ALIASES):
                self.view_names[name] = cls.NAME
        if view not in self.view_names:
            raise ValueError(f'no view "{view}"; views: {", ".join(c.NAME for c in VIEWS)}')
        self.main = MainScreen([cls() for cls in VIEWS], self.view_names[view])
        self.node_name = ""
        self.started_at: str | None = None
        self.failures = 0
        self._down_since = 0.0
        self._polling = False
        self._poll_again = False

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """The global keys are off in dialogs (their own keys answer them) and are text while
        an input line (the prompt, a question) has focus."""
        if action in ("command", "filter", "help", "quit"):
            screen = self.screen
            return not (isinstance(screen, ModalScreen) or isinstance(screen.focused, Input))
        return True

    def get_default_screen(self) -> Screen[Any]:
        """The main screen."""
        return self.main

    def on_mount(self) -> None:
        """Poll now and every ``refresh`` seconds."""
        self.set_interval(self.refresh_seconds, self.poll)
        self.poll()

    def on_unmount(self) -> None:
        """Close every stream, so that no worker thread outlives the app."""
        self.api.close()

    # --- polling and connection state -----------------------------------------------------------

    def poll(self) -> None:
        """Refresh the current view, unless a refresh is still running."""
        if self._polling:
            self._poll_again = True
            return
        self._polling = True
        self._poll_again = False
        self.run_worker(self._poll(self.main.current_view), group="poll")

    async def _poll(self, view: View) -> None:
        try:
            if not self.started_at:
                await self._identify()
            try:
                data = await asyncio.to_thread(view.fetch, self.api)
            except ApiError as err:
                if is_unreachable(err):
                    self._lost(err)
                    return
                await self._reached()
                view.show_error(err.message)
                return
            await self._reached()
            try:
                view.show(data)
            except _SHAPE_ERRORS as err:
                view.show_error(f"unexpected answer from the agent: {err!r}")
        finally:
            self._polling = False
            if self._poll_again:  # asked for while this one ran: the view changed, or an action
                self.poll()

    async def _identify(self) -> None:
        """Learn the node's name and the agent's start time (a failure is left to the poll)."""
        try:
            status = await asyncio.to_thread(self.api.agent_status)
        except (ApiError, *_SHAPE_ERRORS):
            return
        self.started_at = str(status.get("startedAt", "")) or None
        self.node_name = str(status.get("name", ""))
        self.main.retitle()

    def _lost(self, err: ApiError) -> None:
        now = self.clock()
        if not self.failures:
            self._down_since = now
        self.failures += 1
        self.connection = (
            f"AGENT UNREACHABLE: {err.message}\n"
            f"Retrying every {self.refresh_seconds:g} s (attempt {self.failures}, down for "
            f"{human_duration(now - self._down_since)}); the data shown is from before."
        )

    async def _reached(self) -> None:
        if not self.failures:
            return
        self.failures = 0
        self.connection = ""
        previous = self.started_at
        await self._identify()
        if previous and self.started_at and previous != self.started_at:
            self.say(f"reconnected: the agent restarted (up since {self.started_at})")
        else:
            self.say("reconnected to the agent")

    def run_action_call(self, call: Callable[[], Any], done: str | Callable[[Any], str]) -> None:
        """Run a blocking API call that changes something in a worker thread; then say
        ``done`` (or ``done(result)``) or the agent's error, and refresh the view."""

        async def run() -> None:
            try:
                result = await asyncio.to_thread(call)
            except ApiError as err:
                self.say(f"error: {err.message}", error=True)
            else:
                self.say(done(result) if callable(done) else done)
            self.poll()

        self.run_worker(run(), group="actions")

    def say(self, message: str, error: bool = False) -> None:
        """A notification, as plain text (never markup); errors stay longer."""
        self.notify(
            message,
            severity="error" if error else "information",
            markup=False,
            timeout=8 if error else 4,
        )

    # --- keys ---------------------------------------------------------------------------------

    def run_command(self, text: str) -> None:
        """Run a ``:`` command: a view name or alias, ``help``, or ``q``/``quit``."""
        word = text.strip().lstrip(":").strip().lower()
        if not word:
            return
        if word in ("q", "q!", "quit", "exit"):
            self.exit(0)
        elif word in ("help", "h"):
            self.action_help()
        elif word in self.view_names:
            self.main.switch(self.view_names[word])
            self.poll()
        else:
            views = ", ".join(cls.NAME for cls in VIEWS)
            self.say(f'error: no view "{word}"; views: {views}', error=True)

    def action_command(self) -> None:
        """``:``: back to the main screen and ask for a view."""
        while self.screen is not self.main and len(self.screen_stack) > 1:
            self.pop_screen()
        self.main.open_command()

    def action_filter(self) -> None:
        """``/``: filter what the current screen shows."""
        screen = self.screen
        if isinstance(screen, MainScreen | SubScreen):
            screen.open_filter()

    def action_help(self) -> None:
        """``?``: every key."""
        self.push_screen(HelpScreen(help_text(self)))

    async def action_quit(self) -> None:
        """``q``: leave."""
        self.exit(0)
