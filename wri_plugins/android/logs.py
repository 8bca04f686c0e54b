"""A task's output on the phone, read over SSH (the parsing part; no I/O here).

On the phone each stream has its own CRI log files (``stdout.N``, ``stderr.N``; the watcher's
shell stamps each line with ``date``, and starts file N + 1 when file N passes
``log_max_bytes``). The helper's ``fetch`` prints the task's state, taken first, then for each
stream ``@<stream> <end file> <end offset> <length>`` and that many bytes: the records after the
reader's position. :class:`LogCursor` keeps the two positions and turns each answer into records,
both streams merged by time. A line still being written at the end of a file is left for the
next fetch, so the position always sits at a line start.

Because the state is taken before the files are read, an answer that says the task ended holds
all of its output: a follower stops after it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from wri_plugins.android.commands import RemoteState, parse_state
from wri_plugins.api import LogRecord
from wri_plugins.process import crilog

_log = logging.getLogger(__name__)

STREAMS = ("stdout", "stderr")


@dataclass(frozen=True)
class Fetched:
    """One answer of ``fetch``.

    Attributes:
        state: the task's state, taken before its files were read.
        records: new records of both streams, oldest first.
    """

    state: RemoteState
    records: list[LogRecord]


class LogCursor:
    """Where a reader is in each stream's files: ``(file number, byte offset)``."""

    def __init__(self) -> None:
        self.positions: dict[str, tuple[int, int]] = dict.fromkeys(STREAMS, (0, 0))

    def fetch_args(self, task_id: str, tail: int | None) -> list[str]:
        """Arguments of the helper's ``fetch``: the task, ``tail`` (-1: all) and positions."""
        out, err = self.positions["stdout"], self.positions["stderr"]
        last = -1 if tail is None else max(tail, 0)
        return [task_id, str(last), *(str(v) for v in (*out, *err))]

    def feed(self, output: bytes) -> Fetched:
        """Take one answer of ``fetch``: move the positions, return the state and records.

        Raises:
            ValueError: the answer is not framed as ``fetch`` prints it.
        """
        newline = output.find(b"\n")
        if newline < 0:
            raise ValueError(f"no task state in {output[:200]!r}")
        state = parse_state(output[:newline].decode(errors="replace"))
        pos = newline + 1
        records: list[LogRecord] = []
        for stream in STREAMS:
            end = output.find(b"\n", pos)
            header = output[pos:end].decode(errors="replace").split() if end >= 0 else []
            if len(header) != 4 or header[0] != f"@{stream}":
                raise ValueError(f"bad {stream} header in fetch: {output[pos : pos + 80]!r}")
            file_no, offset, length = (int(v) for v in header[1:])
            data = output[end + 1 : end + 1 + length]
            if len(data) != length:
                raise ValueError(f"{stream}: {len(data)} bytes of {length} in fetch")
            pos = end + 1 + length
            complete = data.rfind(b"\n") + 1
            self.positions[stream] = (file_no, offset - (length - complete))
            records.extend(_parse(data[:complete]))
        records.sort(key=lambda r: r.time)
        return Fetched(state, records)


def _parse(data: bytes) -> list[LogRecord]:
    records = []
    for line in data.split(b"\n")[:-1]:  # complete lines only; a "\r" is text
        try:
            when, stream, partial, text = crilog.parse_record(line)
        except ValueError as err:
            _log.debug("skipping a malformed log line from the phone: %s", err)
            continue
        records.append(LogRecord(time=when, stream=stream, text=text, partial=partial))
    return records
