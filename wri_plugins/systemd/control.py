"""Reading and driving one unit over a connection: its state, waits, signals, release.

Waits read the unit's state again whenever systemd reports a change of it (``Watch``) and at
least every :data:`WAIT_POLL` seconds, in case a signal was missed.
"""

from __future__ import annotations

import time

from agent.errors import WorkloadError
from wri_plugins.systemd.bus import (
    NO_SUCH_PROCESS,
    NO_SUCH_UNIT,
    Connection,
    SystemdBus,
    SystemdCallError,
    Watch,
)
from wri_plugins.systemd.units import UnitState, unit_path

WAIT_POLL = 5.0  # seconds between reads of a unit's state when no signal came (safety net)
KILL_TIMEOUT = 10.0  # seconds a task may take to end after SIGKILL
GONE_TIMEOUT = 5.0  # seconds release() waits for systemd to unload a unit


async def query(conn: Connection, path: str) -> UnitState:
    """The unit's state from one ``GetAll`` over all its interfaces.

    For a unit that is not loaded systemd answers with a ``not-found`` stub (``UnitState.gone``).
    """
    return UnitState.from_properties(await conn.properties(path))


async def settle(conn: Connection, path: str, watch: Watch, limit: float) -> UnitState:
    """Read the unit's state until no job is pending and it is not (de)activating.

    Args:
        conn: the connection ``watch`` belongs to.
        path: the unit's object path.
        watch: an open watch of the unit.
        limit: seconds to wait at most.

    Raises:
        WorkloadError: it did not settle within ``limit`` seconds.
    """
    deadline = time.monotonic() + limit
    while True:
        state = await query(conn, path)
        left = deadline - time.monotonic()
        if state.gone or state.settled:
            return state
        if left <= 0:
            raise WorkloadError(f"{path}: still {state.active_state} after {limit:.0f}s")
        await watch.changed(min(left, WAIT_POLL))


async def until_ended(
    conn: Connection, path: str, watch: Watch, limit: float | None
) -> UnitState | None:
    """Read the unit's state until its main process is not running.

    Returns:
        The state, or None when it still ran after ``limit`` seconds (no limit when None).
    """
    deadline = None if limit is None else time.monotonic() + limit
    while True:
        state = await query(conn, path)
        if not state.running:
            return state
        left = WAIT_POLL if deadline is None else min(deadline - time.monotonic(), WAIT_POLL)
        if left <= 0:
            return None
        await watch.changed(left)


async def kill(conn: Connection, name: str, who: str, signum: int) -> None:
    """``KillUnit(name, who, signum)``; a unit or main process already gone is not an error.

    Args:
        conn: a connection.
        name: the unit.
        who: ``"main"`` (the main process) or ``"all"`` (every process of the unit).
        signum: the signal.
    """
    try:
        await conn.call("KillUnit", "ssi", [name, who, int(signum)])
    except SystemdCallError as err:
        if err.name not in (NO_SUCH_PROCESS, NO_SUCH_UNIT):
            raise


async def release(bus: SystemdBus, name: str, stop_timeout: float) -> None:
    """Stop a unit (killing all its processes), reset it and wait until systemd unloaded it.

    Args:
        bus: the manager's bus.
        name: the unit.
        stop_timeout: the unit's ``TimeoutStopUSec`` in seconds (how long a stop may take).

    Raises:
        WorkloadError: systemd refused, or the stop did not finish in time.
        RuntimeUnavailableError: the bus or systemd is gone.
    """
    path = unit_path(name)
    async with bus.session() as conn, conn.watch(path) as watch:
        calls = (("StopUnit", "ss", [name, "replace"]), ("ResetFailedUnit", "s", [name]))
        for method, signature, args in calls:
            try:
                await conn.call(method, signature, args)
            except SystemdCallError as err:
                if err.name != NO_SUCH_UNIT:
                    raise
                return
            state = await settle(conn, path, watch, stop_timeout + KILL_TIMEOUT)
        deadline = time.monotonic() + GONE_TIMEOUT
        while not state.gone and time.monotonic() < deadline:
            await watch.changed(0.05)  # systemd unloads it from its GC queue, not at once
            state = await query(conn, path)
