"""CRI container log format: formatting, parsing and rotation naming.

One record per line, as the kubelet reads them (Kubernetes CRI, ``pkg/kubelet/kuberuntime/logs``,
and containerd's ``pkg/cri/io/logger.go``)::

    2016-10-06T00:17:09.669794202Z stdout F text
    <RFC 3339 time> <stdout|stderr> <tag> <text>

The tag is ``F`` for a full line and ``P`` for a partial one (a line longer than the writer's
buffer, or output cut at the end of the stream); tags may be joined with ``:`` (only ``P`` matters).

Rotation keeps older files next to the live one: ``<path>.1`` is the newest rotated file,
``<path>.<n>`` the oldest.

This module is imported both by the runtime and, by file path, by the shim (``python -I -S``), so it
uses nothing but ``os``, ``sys`` and ``time`` and has no package-relative imports.
"""

from __future__ import annotations

import os
import sys
import time

STREAMS = (b"stdout", b"stderr")
#: Longest line (bytes) written as one record; longer lines become ``P`` records of this size.
#: 16 KiB is containerd's default ``max_container_log_line_size``.
MAX_LINE = 16 * 1024


def format_timestamp(ns: int) -> bytes:
    """Format a wall-clock time as RFC 3339 in UTC with nanoseconds.

    Args:
        ns: nanoseconds since the epoch (``time.time_ns()``).

    Returns:
        e.g. ``b"2016-10-06T00:17:09.669794202Z"`` (always 30 bytes for years 1000-9999).
    """
    sec, nsec = divmod(ns, 1_000_000_000)
    t = time.gmtime(sec)
    return b"%04d-%02d-%02dT%02d:%02d:%02d.%09dZ" % (
        t.tm_year,
        t.tm_mon,
        t.tm_mday,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
        nsec,
    )


def format_record(timestamp: bytes, stream: bytes, partial: bool, text: bytes) -> bytes:
    """Format one CRI log record, newline included.

    Args:
        timestamp: from :func:`format_timestamp`.
        stream: ``b"stdout"`` or ``b"stderr"``.
        partial: tag ``P`` instead of ``F``.
        text: the line without its newline; must not contain ``b"\\n"``.

    Returns:
        ``b"<timestamp> <stream> <F|P> <text>\\n"``.
    """
    return b"%s %s %s %s\n" % (timestamp, stream, b"P" if partial else b"F", text)


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date.

    Howard Hinnant, "chrono-Compatible Low-Level Date Algorithms", ``days_from_civil``.
    """
    year -= month <= 2
    era = (year if year >= 0 else year - 399) // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def parse_timestamp(text: bytes) -> float:
    """Parse an RFC 3339 date-time (RFC 3339 section 5.6) into seconds since the epoch.

    Accepts ``Z`` or a numeric offset and any number of fraction digits (Go's RFC3339Nano
    trims trailing zeros; containerd writes local time with an offset).

    Args:
        text: e.g. ``b"2016-10-06T00:17:09.669794202Z"`` or ``b"2016-10-06T02:17:09.5+02:00"``.

    Returns:
        Seconds since the epoch (float; sub-microsecond digits are rounded).

    Raises:
        ValueError: the text is not an RFC 3339 date-time.
    """
    s = text.decode("ascii")
    if len(s) < 20 or s[4] != "-" or s[7] != "-" or s[10] not in "Tt" or s[13] != ":":
        raise ValueError(f"not an RFC 3339 time: {s!r}")
    if s[16] != ":":
        raise ValueError(f"not an RFC 3339 time: {s!r}")
    year, month, day = int(s[0:4]), int(s[5:7]), int(s[8:10])
    hour, minute, second = int(s[11:13]), int(s[14:16]), int(s[17:19])
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour < 24 and minute < 60 and second < 61):
        raise ValueError(f"RFC 3339 time out of range: {s!r}")
    pos = 19
    fraction = 0.0
    if s[pos] == ".":
        end = pos + 1
        while end < len(s) and s[end].isdigit():
            end += 1
        if end == pos + 1:
            raise ValueError(f"empty fraction in RFC 3339 time: {s!r}")
        fraction = float(s[pos:end])
        pos = end
    zone = s[pos:]
    if zone in ("Z", "z"):
        offset = 0
    elif len(zone) == 6 and zone[0] in "+-" and zone[3] == ":":
        offset = int(zone[1:3]) * 3600 + int(zone[4:6]) * 60
        if zone[0] == "-":
            offset = -offset
    else:
        raise ValueError(f"bad zone in RFC 3339 time: {s!r}")
    days = _days_from_civil(year, month, day)
    return days * 86400 + hour * 3600 + minute * 60 + second - offset + fraction


def parse_record(line: bytes) -> tuple[float, str, bool, bytes]:
    """Parse one CRI log line.

    Args:
        line: one line, with or without its trailing ``b"\\n"``.

    Returns:
        ``(time, stream, partial, text)``: seconds since the epoch, ``"stdout"`` or ``"stderr"``,
        whether the tags include ``P``, and the text without the newline.

    Raises:
        ValueError: the line is not a CRI log record.
    """
    if line.endswith(b"\n"):
        line = line[:-1]
    ts_end = line.find(b" ")
    stream_end = line.find(b" ", ts_end + 1)
    if ts_end <= 0 or stream_end < 0:
        raise ValueError(f"not a CRI log record: {line[:80]!r}")
    stream = line[ts_end + 1 : stream_end]
    if stream not in STREAMS:
        raise ValueError(f"unknown stream in CRI log record: {stream[:20]!r}")
    tag_end = line.find(b" ", stream_end + 1)
    if tag_end < 0:  # "<ts> <stream> <tag>" with empty text and no trailing space
        tag_end = len(line)
    tags = line[stream_end + 1 : tag_end].split(b":")
    if not tags[0]:
        raise ValueError(f"empty tag in CRI log record: {line[:80]!r}")
    return (
        parse_timestamp(line[:ts_end]),
        stream.decode("ascii"),
        b"P" in tags,
        line[tag_end + 1 :],
    )


def rotated_path(path: str, index: int) -> str:
    """Name of rotated file ``index`` (1 = newest rotated) of the log at ``path``."""
    return f"{path}.{index}"


def log_files(path: str) -> list[str]:
    """Existing files of one log, oldest first: ``path.N`` ... ``path.1``, ``path``.

    Rotated files are found by counting up from ``.1`` until one is missing, so the list does
    not depend on the ``log_max_files`` setting that wrote them.

    Args:
        path: the live log file.

    Returns:
        Paths that exist (the live file only if it exists).
    """
    rotated = []
    index = 1
    while os.path.exists(rotated_path(path, index)):
        rotated.append(rotated_path(path, index))
        index += 1
    rotated.reverse()
    if os.path.exists(path):
        rotated.append(path)
    return rotated


def rotate(path: str, max_files: int) -> None:
    """Shift ``path`` to ``path.1`` (``.1`` to ``.2`` ...) dropping files beyond ``max_files``.

    With ``max_files == 0`` the live file is simply removed. The caller opens a new live file.

    Args:
        path: the live log file.
        max_files: rotated files to keep.

    Raises:
        OSError: a rename failed.
    """
    if max_files <= 0:
        os.unlink(path)
        return
    index = max_files + 1
    while os.path.exists(rotated_path(path, index)):  # left by a larger max_files earlier
        os.unlink(rotated_path(path, index))
        index += 1
    for index in range(max_files - 1, 0, -1):
        older = rotated_path(path, index)
        if os.path.exists(older):
            os.replace(older, rotated_path(path, index + 1))
    os.replace(path, rotated_path(path, 1))


class LogWriter:
    """Appends CRI records to a log file, rotating it before it would exceed ``max_bytes``.

    Never raises: a failure (disk full, directory gone) is reported once on stderr and the records
    are dropped, because the writer (the shim) must go on to record the workload's exit.

    Args:
        path: the live log file (created 0640 if missing, appended to otherwise).
        max_bytes: size in bytes above which the file is rotated (a longer record still goes whole
            into a fresh file).
        max_files: rotated files kept (see :func:`rotate`).
    """

    def __init__(self, path: str, max_bytes: int, max_files: int) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.fd = -1
        self.size = 0
        self.failed = False
        self._open()

    def _open(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            self.size = os.fstat(self.fd).st_size
        except OSError as err:
            self._fail(err)

    def _fail(self, err: OSError) -> None:
        if not self.failed:
            self.failed = True
            sys.stderr.write(f"shim: log {self.path}: {err}\n")
            sys.stderr.flush()

    def _flush(self, chunk: list[bytes]) -> None:
        if chunk and self.fd >= 0:
            data = b"".join(chunk)
            try:
                while data:
                    data = data[os.write(self.fd, data) :]
            except OSError as err:
                self._fail(err)
        chunk.clear()

    def write(self, records: list[bytes]) -> None:
        """Write ``records`` (formatted lines), rotating before one that would exceed the limit."""
        chunk: list[bytes] = []
        for record in records:
            if self.size and self.size + len(record) > self.max_bytes:
                self._flush(chunk)
                try:
                    rotate(self.path, self.max_files)
                except OSError as err:
                    self._fail(err)
                if self.fd >= 0:
                    os.close(self.fd)
                self._open()
                self.size = 0  # also when rotation failed: retry after another max_bytes
            chunk.append(record)
            self.size += len(record)
        self._flush(chunk)


class LineSplitter:
    """Cuts one stream's bytes into CRI records: ``F`` per line, ``P`` per :data:`MAX_LINE` bytes
    of a longer line (its last piece is ``F``), and ``P`` for what is left without a newline at
    the end of the stream.

    Args:
        name: ``b"stdout"`` or ``b"stderr"``.
    """

    def __init__(self, name: bytes) -> None:
        self.name = name
        self.buf = b""

    def feed(self, data: bytes, stamp: bytes, out: list[bytes]) -> None:
        """Append the records completed by ``data`` (read at time ``stamp``) to ``out``."""
        buf = self.buf + data if self.buf else data
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            while end - start > MAX_LINE:
                out.append(format_record(stamp, self.name, True, buf[start : start + MAX_LINE]))
                start += MAX_LINE
            out.append(format_record(stamp, self.name, False, buf[start:end]))
            start = end + 1
        while len(buf) - start > MAX_LINE:
            out.append(format_record(stamp, self.name, True, buf[start : start + MAX_LINE]))
            start += MAX_LINE
        self.buf = buf[start:]

    def flush(self, stamp: bytes, out: list[bytes]) -> None:
        """At the end of the stream: append the unfinished line, if any, as a ``P`` record."""
        if self.buf:
            out.append(format_record(stamp, self.name, True, self.buf))
            self.buf = b""


#: Bytes read from an output pipe at a time.
READ_SIZE = 65536


class OutputCopier:
    """Copies a workload's stdout and stderr pipes into a CRI log (the loop both the process
    runtime's shim and the systemd runtime's log pump run; the caller owns the poller).

    Args:
        stdout_fd: read end of the workload's stdout pipe.
        stderr_fd: read end of its stderr pipe.
        log: where the records go.
    """

    def __init__(self, stdout_fd: int, stderr_fd: int, log: LogWriter) -> None:
        self._splitters = {stdout_fd: LineSplitter(b"stdout"), stderr_fd: LineSplitter(b"stderr")}
        self._log = log
        self._out: list[bytes] = []

    @property
    def open_fds(self) -> tuple[int, ...]:
        """The pipes not at end of file yet."""
        return tuple(self._splitters)

    def copy(self, fd: int) -> bool:
        """Read what ``fd`` holds and turn it into records (written by :meth:`write`).

        Returns:
            False when ``fd`` reached end of file (or failed); it is then closed.
        """
        try:
            data = os.read(fd, READ_SIZE)
        except OSError:
            data = b""
        stamp = format_timestamp(time.time_ns())
        if data:
            self._splitters[fd].feed(data, stamp, self._out)
            return True
        self._splitters.pop(fd).flush(stamp, self._out)
        os.close(fd)
        return False

    def write(self) -> None:
        """Write the records collected so far to the log."""
        if self._out:
            self._log.write(self._out)
            self._out.clear()

    def finish(self) -> int:
        """Flush unfinished lines of pipes still open (cut at a deadline) and write everything.

        Returns:
            How many pipes were still open.
        """
        stamp = format_timestamp(time.time_ns())
        for splitter in self._splitters.values():
            splitter.flush(stamp, self._out)
        self._log.write(self._out)
        self._out.clear()
        return len(self._splitters)
