"""CRI log format, line splitting and rotation of the process runtime (no processes)."""

from __future__ import annotations

import calendar
import os
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wri_plugins.process import crilog


def test_timestamp_format_is_fixed_width_utc_nanoseconds() -> None:
    ns = calendar.timegm((2016, 10, 6, 0, 17, 9)) * 1_000_000_000 + 669794202
    assert crilog.format_timestamp(ns) == b"2016-10-06T00:17:09.669794202Z"
    assert crilog.format_timestamp(0) == b"1970-01-01T00:00:00.000000000Z"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"2016-10-06T00:17:09.669794202Z", 1475713029.669794202),
        (b"2016-10-06T02:17:09.5+02:00", 1475713029.5),  # containerd: local time, trimmed
        (b"2016-10-05T23:17:09-01:00", 1475713029.0),
        (b"2000-02-29T12:00:00z", 951825600.0),  # leap day
        (b"1969-12-31T23:59:59Z", -1.0),
    ],
)
def test_parse_timestamp_accepts_rfc3339(text: bytes, expected: float) -> None:
    assert crilog.parse_timestamp(text) == pytest.approx(expected, abs=1e-6)


def test_timestamp_round_trip() -> None:
    now = time.time_ns()
    parsed = crilog.parse_timestamp(crilog.format_timestamp(now))
    assert parsed == pytest.approx(now / 1e9, abs=1e-6)


@pytest.mark.parametrize(
    "text",
    [b"", b"2016-10-06", b"2016-10-06 00:17:09Z", b"2016-13-06T00:17:09Z", b"2016-10-06T00:17:09"],
)
def test_parse_timestamp_rejects_garbage(text: bytes) -> None:
    with pytest.raises(ValueError, match=r"RFC 3339|not|zone|range|invalid"):
        crilog.parse_timestamp(text)


def test_record_round_trip() -> None:
    stamp = b"2016-10-06T00:17:09.669794202Z"
    for stream in crilog.STREAMS:
        for partial in (False, True):
            for text in (b"hello world", b"", b"  spaces  ", b"\xff\x00binary"):
                line = crilog.format_record(stamp, stream, partial, text)
                assert line.endswith(b"\n")
                when, name, was_partial, body = crilog.parse_record(line)
                assert when == pytest.approx(1475713029.669794202)
                assert (name, was_partial, body) == (stream.decode(), partial, text)


def test_parse_record_reads_tag_lists_and_missing_text() -> None:
    assert crilog.parse_record(b"2016-10-06T00:17:09Z stdout P:X x y")[1:] == (
        "stdout",
        True,
        b"x y",
    )
    assert crilog.parse_record(b"2016-10-06T00:17:09Z stderr F")[1:] == ("stderr", False, b"")


@pytest.mark.parametrize(
    "line",
    [b"", b"garbage", b"2016-10-06T00:17:09Z stdin F x", b"2016-10-06T00:17:09Z stdout  x"],
)
def test_parse_record_rejects_garbage(line: bytes) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - every malformed line is a ValueError
        crilog.parse_record(line)


@given(st.binary(max_size=80))
def test_parse_record_of_random_bytes_parses_or_raises_value_error(line: bytes) -> None:
    try:
        crilog.parse_record(line)
    except ValueError:
        pass


@given(st.text(alphabet="0123456789-:TZ.+", max_size=40))
def test_parse_timestamp_of_random_text_parses_or_raises_value_error(text: str) -> None:
    try:
        crilog.parse_timestamp(text.encode())
    except ValueError:
        pass


def test_splitter_emits_full_lines_and_keeps_the_rest() -> None:
    splitter = crilog.LineSplitter(b"stdout")
    out: list[bytes] = []
    splitter.feed(b"one\ntw", b"T", out)
    splitter.feed(b"o\n\nthr", b"T", out)
    assert out == [b"T stdout F one\n", b"T stdout F two\n", b"T stdout F \n"]
    out.clear()
    splitter.flush(b"E", out)
    assert out == [b"E stdout P thr\n"]  # cut at end of stream
    splitter.flush(b"E", out)
    assert len(out) == 1


def test_splitter_cuts_long_lines_into_partial_records() -> None:
    splitter = crilog.LineSplitter(b"stderr")
    out: list[bytes] = []
    splitter.feed(b"x" * (2 * crilog.MAX_LINE + 5) + b"\n", b"T", out)
    parsed = [line.split(b" ", 3) for line in out]
    assert [(tag, len(text)) for _, _, tag, text in parsed] == [
        (b"P", crilog.MAX_LINE + 1),  # text + newline
        (b"P", crilog.MAX_LINE + 1),
        (b"F", 5 + 1),
    ]


def _texts(path: Path) -> list[bytes]:
    return [crilog.parse_record(line)[3] for line in path.read_bytes().splitlines()]


def test_writer_rotates_and_keeps_max_files(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    stamp = crilog.format_timestamp(0)
    writer = crilog.LogWriter(str(log), max_bytes=200, max_files=2)
    records = [crilog.format_record(stamp, b"stdout", False, b"line %02d" % i) for i in range(20)]
    assert len(records[0]) == 48
    for record in records:
        writer.write([record])
    names = crilog.log_files(str(log))
    assert names == [str(log) + ".2", str(log) + ".1", str(log)]
    assert all(Path(name).stat().st_size <= 200 for name in names)
    kept = [text for name in names for text in _texts(Path(name))]
    assert kept == [b"line %02d" % i for i in range(20 - len(kept), 20)]  # newest, in order
    assert len(kept) == 12  # four 48-byte records per file


def test_writer_puts_an_oversized_record_in_a_file_of_its_own(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    writer = crilog.LogWriter(str(log), max_bytes=10, max_files=1)
    stamp = crilog.format_timestamp(0)
    writer.write([crilog.format_record(stamp, b"stdout", False, b"a"), b"", b""])
    writer.write([crilog.format_record(stamp, b"stdout", False, b"b")])
    assert _texts(log) == [b"b"]
    assert _texts(Path(crilog.rotated_path(str(log), 1))) == [b"a"]


def test_rotate_without_kept_files_and_after_shrinking_max_files(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_bytes(b"x")
    crilog.rotate(str(log), 0)
    assert crilog.log_files(str(log)) == []
    for index in (1, 2, 3):
        Path(crilog.rotated_path(str(log), index)).write_bytes(b"%d" % index)
    log.write_bytes(b"0")
    crilog.rotate(str(log), 2)  # .3 (beyond the new max) goes, .1 -> .2, live -> .1
    names = crilog.log_files(str(log))
    assert names == [str(log) + ".2", str(log) + ".1"]
    assert [Path(n).read_bytes() for n in names] == [b"1", b"0"]


def test_writer_survives_a_missing_directory(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    writer = crilog.LogWriter(str(tmp_path / "gone" / "c.log"), max_bytes=100, max_files=1)
    writer.write([b"x\n"])  # dropped, never raises
    assert "No such file" in capfd.readouterr().err


def test_output_copier_turns_both_pipes_into_records(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    copier = crilog.OutputCopier(out_r, err_r, crilog.LogWriter(str(log), 1 << 20, 1))
    os.write(out_w, b"one\ntw")
    os.write(err_w, b"oops\n")
    assert copier.copy(out_r)
    assert copier.copy(err_r)
    os.close(out_w)
    assert not copier.copy(out_r)  # end of file: the unfinished line becomes a P record
    copier.write()
    assert copier.open_fds == (err_r,)
    assert copier.finish() == 1  # stderr was cut while still open
    os.close(err_w)
    os.close(err_r)
    records = [crilog.parse_record(line) for line in log.read_bytes().splitlines()]
    assert [(stream, partial, text) for _, stream, partial, text in records] == [
        ("stdout", False, b"one"),
        ("stderr", False, b"oops"),
        ("stdout", True, b"tw"),
    ]
