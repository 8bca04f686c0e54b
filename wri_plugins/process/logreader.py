"""Reading a task's CRI log files: tail, since and follow across rotation.

Files are read in chunks in a worker thread so a large log never blocks the event loop. A follower
polls the live file (every :data:`FOLLOW_POLL` seconds while there is nothing new), notices rotation
by the inode of the live path, and stops once the task has ended and the file is drained (the shim
writes the exit record only after its last log write).

Semantics follow the kubelet (``pkg/kubelet/kuberuntime/logs``): ``tail`` picks the last records
first, ``since`` then filters them by time. Unlike the kubelet, rotated files are included, oldest
first. A follower that falls behind by two rotations between polls misses the middle file.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from wri_plugins.api import LogRecord
from wri_plugins.process import crilog

_log = logging.getLogger(__name__)

CHUNK = 256 * 1024  # bytes per forward read
BLOCK = 64 * 1024  # bytes per backward read when looking for the tail
FOLLOW_POLL = 0.25  # seconds between looks at the live file while following


def _parse(line: bytes, since: float | None) -> LogRecord | None:
    try:
        when, stream, partial, text = crilog.parse_record(line)
    except ValueError as err:
        _log.debug("skipping a malformed log line: %s", err)
        return None
    if since is not None and when < since:
        return None
    return LogRecord(time=when, stream=stream, text=text, partial=partial)


def tail_start(fds: list[int], count: int) -> tuple[int, int]:
    """Where the last ``count`` complete records of a sequence of log files begin.

    Blocking (reads backwards in :data:`BLOCK` chunks); run it in a thread.

    Args:
        fds: open files, oldest first; each complete record ends with ``b"\\n"``.
        count: records wanted (>= 0).

    Returns:
        ``(file index, byte offset)`` to read forward from; ``(0, 0)`` when there are fewer.
    """
    seen = 0
    for index in range(len(fds) - 1, -1, -1):
        pos = os.fstat(fds[index]).st_size
        while pos > 0:
            start = max(0, pos - BLOCK)
            block = os.pread(fds[index], pos - start, start)
            end = len(block)
            while True:
                newline = block.rfind(b"\n", 0, end)
                if newline < 0:
                    break
                seen += 1
                if seen == count + 1:
                    return index, start + newline + 1
                end = newline
            pos = start
    return 0, 0


class _Cursor:
    """An open log file being read forward, with the unfinished last line kept aside."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.rest = b""
        self.inode = os.fstat(fd).st_ino

    async def records(self, since: float | None, complete: bool) -> AsyncIterator[LogRecord]:
        """Yield the records up to the current end of the file.

        Args:
            since: drop records older than this (seconds since the epoch).
            complete: the file is finished: a last line without newline is a record too.
        """
        while True:
            data = await asyncio.to_thread(os.read, self.fd, CHUNK)
            if not data:
                break
            lines = (self.rest + data).split(b"\n")
            self.rest = lines.pop()
            for line in lines:
                record = _parse(line, since)
                if record is not None:
                    yield record
        if complete and self.rest:
            record = _parse(self.rest, since)
            self.rest = b""
            if record is not None:
                yield record

    def rotated(self, path: Path) -> bool:
        """A new file took ``path`` (the one this cursor reads was rotated away)."""
        try:
            return os.stat(path).st_ino != self.inode
        except FileNotFoundError:
            return False  # rotated, but the new file is not there yet


async def read_logs(
    path: Path,
    ended: Callable[[], bool],
    *,
    follow: bool = False,
    tail: int | None = None,
    since: float | None = None,
) -> AsyncIterator[LogRecord]:
    """Yield the records of the log at ``path`` and its rotated files, oldest first.

    Args:
        path: the live CRI log file.
        ended: whether the writer has finished for good (checked only when following).
        follow: keep yielding new records until ``ended()`` and the file is drained.
        tail: only the last ``tail`` records that exist now.
        since: only records at or after this time (seconds since the epoch).
    """
    names = crilog.log_files(str(path))
    fds: list[int] = []
    live: _Cursor | None = None
    try:
        for name in names:
            try:
                fds.append(os.open(name, os.O_RDONLY))
            except FileNotFoundError:  # rotated away meanwhile; the next name has its records
                continue
        first, offset = (0, 0)
        if tail is not None:
            first, offset = await asyncio.to_thread(tail_start, fds, max(tail, 0))
        for index in range(first, len(fds)):
            if index == first:
                os.lseek(fds[index], offset, os.SEEK_SET)
            cursor = _Cursor(fds[index])
            is_live = index == len(fds) - 1 and names[-1] == str(path)
            async for record in cursor.records(since, complete=not is_live):
                yield record
            if is_live:
                live = cursor
        while follow:
            if live is None:
                try:
                    fds.append(os.open(path, os.O_RDONLY))
                    live = _Cursor(fds[-1])
                except FileNotFoundError:
                    pass
            if live is not None:
                async for record in live.records(since, complete=False):
                    yield record
                if live.rotated(path):
                    async for record in live.records(since, complete=True):
                        yield record
                    live = None
                    continue
            if ended():  # one more pass: what was written before the end
                while live is not None:
                    async for record in live.records(since, complete=True):
                        yield record
                    if not live.rotated(path):
                        break
                    fds.append(os.open(path, os.O_RDONLY))
                    live = _Cursor(fds[-1])
                break
            await asyncio.sleep(FOLLOW_POLL)
    finally:
        for fd in fds:
            os.close(fd)
