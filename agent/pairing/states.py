"""Every state and transition of pairing, in one table (STYLE.md item 2, as h11's ``_state.py``).

Two roles share the table. The **shower** displays a code and answers attempts; one code serves
several attempts in turn until one succeeds, the attempts run out, it expires or it is cancelled.
The **joiner** typed the code and runs exactly one attempt.

Shower::

    SHOWING --start--> ANSWERED --confirmed--> FINISHING --done / linger_over--> PAIRED
       ^                   |
       +---attempt_failed--+            SHOWING --burn--> BURNED (the failures ran out)
    SHOWING, ANSWERED --expire--> EXPIRED;  --cancel--> CANCELLED
    any shower state --refuse--> itself (an attempt turned away: busy, rate limited, no code)

Joiner::

    NEW --start--> STARTED --confirmed--> CONFIRMED --identified--> PAIRED
    STARTED, CONFIRMED --wrong_code / aborted / timeout / protocol_error--> FAILED

An event with no entry raises :class:`~agent.errors.LocalProtocolError`.
"""

from __future__ import annotations

import enum

from agent.errors import LocalProtocolError

__all__ = ["SHOWER_TERMINAL", "TRANSITIONS", "Event", "State", "advance"]


class State(enum.Enum):
    """Where a pairing flow is."""

    # shower
    SHOWING = "showing"
    """A code is shown; no attempt is running."""
    ANSWERED = "answered"
    """An attempt started: our SPAKE2 message and confirmation were sent; waiting for the
    joiner's confirmation."""
    FINISHING = "finishing"
    """The joiner proved the code; its identity is trusted and ours was sent; waiting for its
    last word before closing."""
    BURNED = "burned"
    """Too many failed attempts: the code is void."""
    EXPIRED = "expired"
    """The code's time ran out."""
    CANCELLED = "cancelled"
    """The user stopped showing the code (or showed a new one)."""
    # joiner
    NEW = "new"
    """Not started."""
    STARTED = "started"
    """Our SPAKE2 message was sent; waiting for the shower's answer."""
    CONFIRMED = "confirmed"
    """The shower proved the code; our confirmation and identity were sent; waiting for its
    identity."""
    FAILED = "failed"
    """The attempt failed (wrong code, refused, timed out, broken)."""
    # both
    PAIRED = "paired"
    """Done: the peer is trusted."""


class Event(enum.Enum):
    """What makes a flow move."""

    START = "start"
    CONFIRMED = "confirmed"
    IDENTIFIED = "identified"
    DONE = "done"
    LINGER_OVER = "linger_over"
    ATTEMPT_FAILED = "attempt_failed"
    BURN = "burn"
    EXPIRE = "expire"
    CANCEL = "cancel"
    REFUSE = "refuse"
    WRONG_CODE = "wrong_code"
    ABORTED = "aborted"
    TIMEOUT = "timeout"
    PROTOCOL_ERROR = "protocol_error"


S, E = State, Event

SHOWER_TERMINAL = frozenset({S.PAIRED, S.BURNED, S.EXPIRED, S.CANCELLED})
"""Shower states in which the code no longer works."""

_SHOWER = (S.SHOWING, S.ANSWERED, S.FINISHING, *SHOWER_TERMINAL)

TRANSITIONS: dict[tuple[State, Event], State] = {
    # shower
    (S.SHOWING, E.START): S.ANSWERED,
    (S.ANSWERED, E.CONFIRMED): S.FINISHING,
    (S.ANSWERED, E.ATTEMPT_FAILED): S.SHOWING,
    (S.SHOWING, E.BURN): S.BURNED,
    (S.FINISHING, E.DONE): S.PAIRED,
    (S.FINISHING, E.LINGER_OVER): S.PAIRED,
    **{(state, E.EXPIRE): S.EXPIRED for state in (S.SHOWING, S.ANSWERED)},
    **{(state, E.CANCEL): S.CANCELLED for state in (S.SHOWING, S.ANSWERED)},
    **{(state, E.REFUSE): state for state in _SHOWER},
    # joiner
    (S.NEW, E.START): S.STARTED,
    (S.STARTED, E.CONFIRMED): S.CONFIRMED,
    (S.CONFIRMED, E.IDENTIFIED): S.PAIRED,
    **{
        (state, event): S.FAILED
        for state in (S.STARTED, S.CONFIRMED)
        for event in (E.WRONG_CODE, E.ABORTED, E.TIMEOUT, E.PROTOCOL_ERROR)
    },
}
"""(state, event) -> next state: every change of state either role can make."""


def advance(state: State, event: Event) -> State:
    """The state after ``event`` in ``state``.

    Raises:
        LocalProtocolError: the table has no entry for ``(state, event)``.
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise LocalProtocolError(
            f"pairing: event {event.value!r} is not allowed in state {state.value}"
        ) from None
