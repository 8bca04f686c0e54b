"""The ``florete-agent tui`` command; Textual is imported only when it runs.

``agent/cli.py`` calls :func:`add_parsers`. Examples::

    florete-agent tui                       # overview first; `:pods` to see pods
    florete-agent tui --read-only --view pods
    florete-agent tui --refresh 5           # poll every 5 s (slow serial console)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from agent.config import Config
from agent.errors import ConfigError

__all__ = ["VIEW_NAMES", "add_parsers"]

ConfigOf = Callable[[argparse.Namespace], Config]

#: Views ``--view`` accepts (the first name of each view; aliases work in ``:`` mode).
VIEW_NAMES = (
    "overview",
    "pods",
    "neighbours",
    "links",
    "peers",
    "pairing",
    "supernode",
    "mqtt",
)


def _positive(kind: type[float] | type[int], low: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low:g}")
        return value

    return parse


def add_parsers(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    config: ConfigOf,
) -> None:
    """Register ``tui`` on ``subparsers``.

    Args:
        subparsers: the top-level subparsers.
        common: the parent parser with ``--state-dir``, ``--socket`` and friends.
        config: builds the configuration from the parsed arguments (for the socket path).
    """
    p = subparsers.add_parser(
        "tui",
        parents=[common],
        help="full-screen terminal UI: overview, pods, logs, neighbours, links, peers",
        description="A k9s-style terminal UI for this agent. Press ? inside for every key.",
    )
    p.add_argument(
        "--read-only", action="store_true", help="hide every action that changes something"
    )
    p.add_argument(
        "--refresh",
        type=_positive(float, 0.2),
        default=2.0,
        metavar="SECONDS",
        help="seconds between refreshes and reconnection attempts (default 2)",
    )
    p.add_argument(
        "--log-lines",
        type=_positive(int, 100),
        default=5000,
        metavar="N",
        help="log lines a log view keeps, older ones are dropped (default 5000)",
    )
    p.add_argument("--view", choices=VIEW_NAMES, default="overview", help="the first view")
    # A TUI must show an unreachable agent quickly: 5 s unless --request-timeout says otherwise.
    p.set_defaults(func=lambda args: _run(args, config), request_timeout=5.0)


def _run(args: argparse.Namespace, config: ConfigOf) -> int:
    cfg = config(args)
    if not (sys.stdin.isatty() and sys.stderr.isatty()):  # Textual draws on stderr
        raise ConfigError("the TUI needs a terminal: run `florete-agent tui` in one")
    try:
        from agent.tui.app import FloreteTui
    except ImportError as err:
        if (err.name or "").split(".")[0] not in ("textual", "rich"):
            raise
        raise ConfigError(f"the TUI needs Textual ({err}): install florete-agent[tui]") from err
    from agent.tui.adapter import AgentApi

    api = AgentApi(cfg.api.socket, timeout=args.request_timeout)
    app = FloreteTui(
        api,
        read_only=args.read_only,
        refresh=args.refresh,
        log_lines=args.log_lines,
        view=args.view,
    )
    try:
        app.run()
    finally:
        api.close()
    return app.return_code or 0
