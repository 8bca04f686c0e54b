"""Following a container's log across agent restarts, with a bounded buffer.

:class:`LogFollower` runs in a worker thread: it opens a followed log, pushes every line into a
:class:`LogBuffer`, and when the stream ends (the container ended, the agent restarted, the pod
was deleted and created again) it waits and opens it again from the last timestamp it saw, so no
line is shown twice and none is lost while the agent was away. The UI thread drains the buffer
on a timer, so a log that floods (thousands of lines a second) costs the UI one batch per tick,
and never more lines than the buffer holds (k9s#2183 is the bug this avoids).

No Textual here: the UI side is in :mod:`agent.tui.logs`.
"""

from __future__ import annotations

import calendar
import threading
import time
from collections import deque
from dataclasses import dataclass

from agent.errors import ApiError
from agent.tui.adapter import AgentApi, LogStream, is_unreachable

__all__ = ["LogBuffer", "LogFollower", "Notice"]


@dataclass(frozen=True)
class Notice:
    """A message about the stream itself (ended, reconnecting), shown between log lines."""

    text: str


class LogBuffer:
    """A thread-safe queue of log lines and notices, bounded to ``capacity`` entries.

    When the writer outruns the reader, the oldest entries are dropped and counted in
    :attr:`dropped` (the view shows them as a notice).
    """

    def __init__(self, capacity: int) -> None:
        self._entries: deque[str | Notice] = deque(maxlen=capacity)
        self._lock = threading.Lock()
        self.dropped = 0

    def push(self, entry: str | Notice) -> None:
        """Add one line or notice."""
        with self._lock:
            if len(self._entries) == self._entries.maxlen:
                self.dropped += 1
            self._entries.append(entry)

    def drain(self) -> tuple[list[str | Notice], int]:
        """Take every entry; returns ``(entries, lines dropped since the last drain)``."""
        with self._lock:
            entries = list(self._entries)
            self._entries.clear()
            dropped, self.dropped = self.dropped, 0
        return entries, dropped


def _epoch(stamp: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 UTC timestamp (to the second), None if bad."""
    try:
        return float(calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S")))
    except ValueError:
        return None


class LogFollower:
    """Follow one container's log into a :class:`LogBuffer` until :meth:`stop`.

    Args:
        api: the agent.
        namespace: the pod's namespace.
        pod: the pod's name.
        container: the container's name.
        buffer: where lines and notices go.
        tail: lines from the end to start with.
        retry: seconds between attempts to open the log again.
    """

    def __init__(
        self,
        api: AgentApi,
        namespace: str,
        pod: str,
        container: str,
        buffer: LogBuffer,
        tail: int,
        retry: float = 2.0,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.pod = pod
        self.container = container
        self.buffer = buffer
        self.tail = tail
        self.retry = retry
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._stream: LogStream | None = None
        self._last = ""  # timestamp of the last line shown
        self._at_last = 0  # lines shown with that timestamp (one write may carry several)
        self._notice = ""  # the last notice, so that a state is announced once

    def stop(self) -> None:
        """End :meth:`run` (from any thread); an open stream is closed at once."""
        self._stop.set()
        with self._lock:
            stream = self._stream
        if stream is not None:
            self.api.forget(stream)

    def run(self) -> None:
        """Follow the log until :meth:`stop`; meant for a worker thread. Never raises."""
        while not self._stop.is_set():
            self._follow_once()
            self._stop.wait(self.retry)

    def _announce(self, text: str) -> None:
        if text != self._notice:
            self._notice = text
            self.buffer.push(Notice(text))

    def _follow_once(self) -> None:
        since = None
        if self._last:
            seen = _epoch(self._last)
            if seen is not None:
                since = max(1, int(time.time() - seen) + 2)
        stream = self.api.open_log(
            self.namespace,
            self.pod,
            self.container,
            tail=self.tail if since is None else None,
            since_seconds=since,
        )
        with self._lock:
            self._stream = stream
        if self._stop.is_set():
            stream.close()
        boundary, skip = self._last, self._at_last
        try:
            for line in stream.lines():
                if line.time < boundary or (line.time == boundary and skip > 0):
                    skip -= line.time == boundary
                    continue  # shown before the stream was opened again
                if self._notice:
                    self._notice = ""
                    self.buffer.push(Notice("log stream resumed"))
                self._at_last = self._at_last + 1 if line.time == self._last else 1
                self._last = line.time
                self.buffer.push(line.text)
            if not self._stop.is_set():
                self._announce(f"log stream ended; reopening every {self.retry:g} s")
        except ApiError as err:
            if is_unreachable(err):
                self._announce(f"agent unreachable; reopening every {self.retry:g} s")
            elif err.status == 404:
                self._announce(f"pod {self.namespace}/{self.pod} not found; waiting for it")
            else:
                self._announce(f"{err.message}; trying again every {self.retry:g} s")
        finally:
            self.api.forget(stream)
            with self._lock:
                self._stream = None
