"""Logging helpers for link drivers: context prefixes and no floods (STYLE.md item 9).

:class:`LinkLog` prefixes every line with its context (``link=/dev/ttyUSB0``, ``peer=...``), as
asyncssh's ``logging.py`` does, and logs a recurring failure at WARNING the first time and at DEBUG
afterwards until it is cleared, as zeroconf's ``log_exception_once`` does: a flaky radio must not
flood the journal.
"""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["LinkLog"]


class LinkLog:
    """A logger with a fixed context and once-per-episode warnings.

    Args:
        logger: the module's logger.
        **context: key/value pairs shown before every message, e.g. ``link="/dev/ttyUSB0"``.
    """

    def __init__(self, logger: logging.Logger, **context: object) -> None:
        self._logger = logger
        self._prefix = " ".join(f"{k}={v}" for k, v in context.items())
        self._warned: set[str] = set()

    def _log(self, level: int, msg: str, *args: Any, exc_info: bool = False) -> None:
        if self._logger.isEnabledFor(level):
            text = msg % args if args else msg
            self._logger.log(level, "[%s] %s", self._prefix, text, exc_info=exc_info)

    def debug(self, msg: str, *args: Any) -> None:
        """Log at DEBUG with the context prefix."""
        self._log(logging.DEBUG, msg, *args)

    def info(self, msg: str, *args: Any) -> None:
        """Log at INFO with the context prefix."""
        self._log(logging.INFO, msg, *args)

    def warning(self, msg: str, *args: Any) -> None:
        """Log at WARNING with the context prefix."""
        self._log(logging.WARNING, msg, *args)

    def warn_once(self, key: str, msg: str, *args: Any) -> None:
        """Log at WARNING the first time ``key`` fails, at DEBUG on repeats until :meth:`clear`.

        Args:
            key: names the failure episode, e.g. ``"open"``.
            msg: %-style message.
            *args: message arguments.
        """
        level = logging.DEBUG if key in self._warned else logging.WARNING
        self._warned.add(key)
        self._log(level, msg, *args)

    def clear(self, key: str) -> bool:
        """End a failure episode; returns True when one was open (to log the recovery)."""
        if key in self._warned:
            self._warned.discard(key)
            return True
        return False
