"""Run a coroutine's first step at once, in the caller, and finish it later only if it waits.

Python 3.12 calls this eager execution (``asyncio.eager_task_factory``); 3.11 has no such thing.
It is used where a coroutine that in practice never waits must not cost a task switch:
handing a datagram to a link driver (:mod:`link_drivers.stream`) and a TLS record to a stream
(:mod:`agent.session`)::

    rest = step(channel.send(datagram))
    if rest is not None:        # it waits (a full buffer): finish it in a task, in order
        await rest

The first step runs in the caller's task and context: code that looks at
``asyncio.current_task()`` there sees the caller's.
"""

from __future__ import annotations

from collections.abc import Coroutine, Generator
from typing import Any

__all__ = ["Rest", "step"]


class Rest:
    """The rest of a coroutine that :func:`step` started and that suspended.

    Awaiting it finishes the coroutine exactly as ``await coro`` would have (PEP 380
    delegation: what the task sends or throws, cancellation included, goes to the coroutine).
    Await it once.
    """

    def __init__(self, coro: Coroutine[Any, Any, None], waiting_on: Any) -> None:
        self._coro = coro
        self._waiting_on = waiting_on

    def __await__(self) -> Generator[Any, Any, None]:
        coro, value = self._coro, self._waiting_on
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation or close: the coroutine handles it
                try:
                    value = coro.throw(exc)
                except StopIteration:
                    return
            else:
                try:
                    value = coro.send(sent)
                except StopIteration:
                    return


def step(coro: Coroutine[Any, Any, None]) -> Rest | None:
    """Run ``coro`` until it finishes or first suspends.

    Args:
        coro: a coroutine not started yet, whose result is None.

    Returns:
        None when it finished; else the :class:`Rest` to await (in a task) to finish it.

    Raises:
        Exception: whatever the coroutine raised in its first step.
    """
    try:
        waiting_on = coro.send(None)
    except StopIteration:
        return None
    return Rest(coro, waiting_on)
