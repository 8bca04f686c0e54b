"""The one table of ARQ session state transitions (as h11's ``_state.py``).

Everything that changes :attr:`ArqSession.state` goes through :func:`transition`. An input with no
entry for the current state is a bug in the caller and raises :class:`LocalProtocolError`.

=============  ============  ============  ============  ============  ============  ========
state          HELLO_ECHOED  PEER_FRAME    PEER_NEW_SID  SILENCE       VIOLATION     CLOSE
=============  ============  ============  ============  ============  ============  ========
CONNECTING     ESTABLISHED   ESTABLISHED   CONNECTING    --            CONNECTING    CLOSED
ESTABLISHED    ESTABLISHED   ESTABLISHED   CONNECTING    DOWN          CONNECTING    CLOSED
DOWN           ESTABLISHED   ESTABLISHED   CONNECTING    --            CONNECTING    CLOSED
CLOSED         --            --            --            --            --            CLOSED
=============  ============  ============  ============  ============  ============  ========

Inputs: ``HELLO_ECHOED`` a HELLO that names our session id; ``PEER_FRAME`` a DATA/ACK/PING with
the current session tag; ``PEER_NEW_SID`` a HELLO from a session id other than the known peer's
(first contact or peer restart); ``SILENCE`` nothing heard for ``dead_interval``; ``VIOLATION`` the
peer broke a protocol limit; ``CLOSE`` the local user closed the session.
"""

from __future__ import annotations

import enum

from agent.errors import LocalProtocolError

__all__ = ["TRANSITIONS", "Input", "State", "transition"]


class State(enum.Enum):
    """Session states."""

    CONNECTING = "connecting"
    ESTABLISHED = "established"
    DOWN = "down"
    CLOSED = "closed"


class Input(enum.Enum):
    """What can happen to a session (see the module table)."""

    HELLO_ECHOED = "hello_echoed"
    PEER_FRAME = "peer_frame"
    PEER_NEW_SID = "peer_new_sid"
    SILENCE = "silence"
    VIOLATION = "violation"
    CLOSE = "close"


_C, _E, _D, _X = State.CONNECTING, State.ESTABLISHED, State.DOWN, State.CLOSED

TRANSITIONS: dict[tuple[State, Input], State] = {
    (_C, Input.HELLO_ECHOED): _E,
    (_C, Input.PEER_FRAME): _E,
    (_C, Input.PEER_NEW_SID): _C,
    (_C, Input.VIOLATION): _C,
    (_C, Input.CLOSE): _X,
    (_E, Input.HELLO_ECHOED): _E,
    (_E, Input.PEER_FRAME): _E,
    (_E, Input.PEER_NEW_SID): _C,
    (_E, Input.SILENCE): _D,
    (_E, Input.VIOLATION): _C,
    (_E, Input.CLOSE): _X,
    (_D, Input.HELLO_ECHOED): _E,
    (_D, Input.PEER_FRAME): _E,
    (_D, Input.PEER_NEW_SID): _C,
    (_D, Input.VIOLATION): _C,
    (_D, Input.CLOSE): _X,
    (_X, Input.CLOSE): _X,
}
"""``(state, input) -> next state``; the only place where states change."""


def transition(state: State, event: Input) -> State:
    """Return the state after ``event``.

    Raises:
        LocalProtocolError: the table has no entry for ``(state, event)``.
    """
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        message = f"ARQ: no transition for {event.value} in state {state.value}"
        raise LocalProtocolError(message) from None
