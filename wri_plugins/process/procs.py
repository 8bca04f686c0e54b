"""Processes of a task: identity (pid + creation time), waiting for an exit, signalling a group."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import psutil

from wri_plugins.api import TaskStats

_log = logging.getLogger(__name__)

#: Two creation times closer than this (seconds) are the same process. psutil derives them from
#: ``btime``, which moves when the clock is stepped; a pid reused within a second is not realistic.
CTIME_TOLERANCE = 1.0
#: Seconds between checks when pidfds are not available (Linux < 5.3).
POLL_INTERVAL = 0.5


def is_alive(pid: int, ctime: float) -> bool:
    """Whether ``pid`` is the process created at ``ctime`` and has not exited.

    Args:
        pid: process id.
        ctime: its creation time (seconds since the epoch, psutil's ``create_time``); 0 when
            unknown (no guard against pid reuse).

    Returns:
        False for a missing process, a zombie, or another process that reused the pid.
    """
    try:
        proc = psutil.Process(pid)
        if ctime and abs(proc.create_time() - ctime) > CTIME_TOLERANCE:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


async def wait_for_exit(pid: int, ctime: float) -> None:
    """Return once the process ``pid`` created at ``ctime`` has exited (at once if it has).

    Uses a pidfd (``pidfd_open(2)``, Linux >= 5.3) watched by the event loop, so it works for
    processes that are not the agent's children and costs nothing while waiting; falls back to
    checking every :data:`POLL_INTERVAL` seconds.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except (AttributeError, OSError) as err:
        _log.debug("pidfd_open unavailable (%s); polling pid %d", err, pid)
        while True:
            if not is_alive(pid, ctime):
                return
            await asyncio.sleep(POLL_INTERVAL)
    try:
        if not is_alive(pid, ctime):  # checked after opening: the fd refers to this process
            return
        loop = asyncio.get_running_loop()
        exited = loop.create_future()

        def readable() -> None:
            if not exited.done():
                exited.set_result(None)

        loop.add_reader(fd, readable)
        try:
            await exited
        finally:
            loop.remove_reader(fd)
    finally:
        os.close(fd)


def signal_group(pid: int, signum: int) -> None:
    """Send ``signum`` to the process group led by ``pid``, or to ``pid`` if it left its group.

    Gone processes are not an error.
    """
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def task_stats(pid: int) -> TaskStats:
    """Resource usage of process ``pid`` and all its descendants, summed.

    CPU includes the time of descendants already reaped (``children_user``/``children_system``).
    I/O counters need the same user as the task (or root); they count 0 otherwise.

    Raises:
        psutil.Error: ``pid`` is gone (NoSuchProcess) or cannot be read.
    """
    main = psutil.Process(pid)
    cpu = 0.0
    rss = read = write = 0
    for proc in (main, *main.children(recursive=True)):
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                cpu += times.user + times.system + times.children_user + times.children_system
                rss += proc.memory_info().rss
                with contextlib.suppress(psutil.AccessDenied):
                    io = proc.io_counters()
                    read += io.read_bytes
                    write += io.write_bytes
        except psutil.NoSuchProcess:
            if proc is main:
                raise
    return TaskStats(cpu_seconds=cpu, rss_bytes=rss, read_bytes=read, write_bytes=write)
