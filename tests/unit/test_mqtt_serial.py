"""Serial sensor lines: JSON, NMEA 0183, key=value, and garbage that never crashes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.mqtt.serial_sensors import (
    MAX_LINE,
    GarbageLineError,
    SensorReader,
    parse_line,
    readings_to_messages,
)
from agent.mqtt.settings import SerialSensor

GGA = b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47"


def test_json_lines_are_published_as_they_came() -> None:
    reading = parse_line(b' {"t": 21.5, "h": 40} ')
    assert reading.kind == "json"
    assert reading.payload == b'{"t": 21.5, "h": 40}'
    assert readings_to_messages(reading, "s", split=True) == [
        ("s", b'{"t": 21.5, "h": 40}'),
        ("s/t", b"21.5"),
        ("s/h", b"40"),
    ]


def test_key_value_lines_become_json_objects() -> None:
    reading = parse_line(b"temp=21.5, hum=40; status=ok")
    assert reading.value == {"temp": 21.5, "hum": 40, "status": "ok"}
    assert json.loads(reading.payload) == reading.value


def test_nmea_sentences_are_checked_and_decoded() -> None:
    reading = parse_line(GGA)
    assert reading.subtopic == "GPGGA"
    assert reading.value["latitude"] == pytest.approx(48.1173)
    assert reading.value["longitude"] == pytest.approx(11.516667)
    assert reading.value["satellites"] == 8
    assert readings_to_messages(reading, "gps", split=False)[0][0] == "gps/GPGGA"
    with pytest.raises(GarbageLineError, match="checksum 48 does not match 47"):
        parse_line(GGA[:-2] + b"48")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"\xff\xfe", "not UTF-8"),
        (b"hello world", "not JSON"),
        (b"{broken", "not JSON"),
        (b"NaN", "not JSON"),
        (b"a=1 ==", "not key=value"),
        (b"x" * (MAX_LINE + 1), "longer than"),
        (b"\x1b[2J", "control characters"),
    ],
)
def test_garbage_lines_say_why(line: bytes, reason: str) -> None:
    with pytest.raises(GarbageLineError, match=reason):
        parse_line(line)


@given(st.binary(max_size=300), st.sampled_from(["auto", "json", "nmea", "kv"]))
def test_any_bytes_parse_or_are_garbage(line: bytes, fmt: str) -> None:
    try:
        reading = parse_line(line, fmt)
    except GarbageLineError:
        return
    assert isinstance(reading.payload, bytes)


def test_reader_splits_lines_counts_garbage_and_skips_overlong_lines() -> None:
    sent: list[tuple[str, bytes, int, bool]] = []
    reader = SensorReader(SerialSensor("/dev/null", qos=1), "s", lambda *m: sent.append(m))
    reader.feed(b'{"a": 1}\r\nnoise\n' + b"y" * (MAX_LINE + 10))
    reader.feed(b"still the long line\nk=v\n")
    assert sent == [("s", b'{"a": 1}', 1, False), ("s", b'{"k":"v"}', 1, False)]
    assert (reader.stats.garbage, reader.stats.readings) == (2, 2)
    assert "longer than" in reader.stats.last_garbage
