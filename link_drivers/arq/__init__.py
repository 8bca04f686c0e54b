"""Sans-IO selective-repeat ARQ: the same core under every link driver (ARCHITECTURE.md §4).

Start with :class:`ArqSession` and :class:`ArqConfig`; :mod:`~link_drivers.arq.sim` runs two
sessions on a simulated line with a fake clock.
"""

from link_drivers.arq.config import ArqConfig, ack_delay_for_link, window_for_link
from link_drivers.arq.events import (
    ArqEvent,
    Connected,
    LinkDown,
    LinkUp,
    MessageReceived,
    SessionReset,
)
from link_drivers.arq.session import ArqSession, ArqStats
from link_drivers.arq.state import Input, State

__all__ = [
    "ArqConfig",
    "ArqEvent",
    "ArqSession",
    "ArqStats",
    "Connected",
    "Input",
    "LinkDown",
    "LinkUp",
    "MessageReceived",
    "SessionReset",
    "State",
    "ack_delay_for_link",
    "window_for_link",
]
