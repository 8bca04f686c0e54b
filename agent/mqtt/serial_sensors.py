"""Serial sensors: text lines from a serial port become MQTT messages.

Each ``[[mqtt.serial_sensors]]`` port is read line by line (``\\n`` ends a line, a ``\\r``
before it is dropped). A line is, by the sensor's ``format`` (``auto`` picks per line by its
first character):

* **JSON** (``{``, ``[``, a number, ...): published as it came, on ``topic``.
* **NMEA 0183** (``$`` or ``!``): the checksum is verified (NMEA 0183 v4.11 §5.2.1: XOR of
  the characters between ``$`` and ``*``, two hex digits); published as JSON on
  ``topic/<talker+sentence>`` (``.../GPGGA``): ``{"sentence", "fields"}``, plus the decoded
  position and fix for GGA and RMC sentences.
* **key=value** pairs separated by spaces, commas or semicolons (``t=21.5 h=40``): published as
  a JSON object on ``topic``, numbers as numbers.

With ``split = true``, each key of an object is also published on ``topic/<key>``.

Lines that are none of these (noise on the line, a bad checksum, bytes that are not UTF-8,
longer than :data:`MAX_LINE` bytes) are counted as garbage; the first one is logged at WARNING
with its reason, later ones at DEBUG. Nothing on the line can stop the reader. A port that
cannot be opened or fails is opened again after 1 s, doubling to 30 s.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import re
from collections.abc import Callable
from typing import Any

from agent.mqtt.routes import OnceLog
from agent.mqtt.settings import SerialSensor

__all__ = [
    "MAX_LINE",
    "GarbageLineError",
    "Reading",
    "SensorReader",
    "SensorStats",
    "parse_line",
    "readings_to_messages",
]

log = logging.getLogger(__name__)

MAX_LINE = 4096
"""Longest line accepted, bytes; a longer one is garbage (skipped up to its end)."""
REOPEN_FIRST, REOPEN_MAX = 1.0, 30.0

_KV = re.compile(r"\s*([A-Za-z_][\w.\-]*)\s*=\s*([^\s,;=]*)\s*[,;]?")
_NMEA = re.compile(r"^[$!]([A-Z0-9]{2,6}),([\x20-\x7e]*)\*([0-9A-Fa-f]{2})$")


class GarbageLineError(ValueError):
    """A line that is not a reading; the message says why."""


@dataclasses.dataclass(frozen=True)
class Reading:
    """One parsed line.

    Attributes:
        kind: ``json``, ``nmea`` or ``kv``.
        value: the JSON value (``kv`` and ``nmea``: an object).
        payload: the bytes to publish (the line itself for JSON).
        subtopic: a level to add under the sensor's topic (the NMEA sentence), or ``""``.
    """

    kind: str
    value: Any
    payload: bytes
    subtopic: str = ""


def _number(text: str) -> Any:
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def _parse_json(text: str) -> Reading:
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        raise GarbageLineError(f"not JSON: {err}") from None
    return Reading("json", value, text.encode())


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_kv(text: str) -> Reading:
    pairs: dict[str, Any] = {}
    pos = 0
    while pos < len(text):
        match = _KV.match(text, pos)
        if match is None or match.end() == pos:
            raise GarbageLineError(f"not key=value pairs at column {pos + 1}")
        pairs[match.group(1)] = _number(match.group(2))
        pos = match.end()
    if not pairs:
        raise GarbageLineError("no key=value pair")
    return Reading("kv", pairs, json.dumps(pairs, separators=(",", ":")).encode())


def _coordinate(value: str, hemisphere: str) -> float | None:
    """NMEA ``ddmm.mmmm`` (latitude) or ``dddmm.mmmm`` (longitude) to signed degrees."""
    if not value or hemisphere not in ("N", "S", "E", "W"):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    degrees = int(number // 100)
    result = degrees + (number - degrees * 100) / 60
    return round(-result if hemisphere in ("S", "W") else result, 7)


def _decode_nmea(sentence: str, fields: list[str]) -> dict[str, Any]:
    kind = sentence[-3:]
    out: dict[str, Any] = {}
    if kind == "GGA" and len(fields) >= 9:
        out["time"] = fields[0]
        out["latitude"] = _coordinate(fields[1], fields[2])
        out["longitude"] = _coordinate(fields[3], fields[4])
        out["fix_quality"] = _number(fields[5]) if fields[5] else None
        out["satellites"] = _number(fields[6]) if fields[6] else None
        out["hdop"] = _number(fields[7]) if fields[7] else None
        out["altitude_m"] = _number(fields[8]) if fields[8] else None
    elif kind == "RMC" and len(fields) >= 9:
        out["time"] = fields[0]
        out["valid"] = fields[1] == "A"
        out["latitude"] = _coordinate(fields[2], fields[3])
        out["longitude"] = _coordinate(fields[4], fields[5])
        out["speed_knots"] = _number(fields[6]) if fields[6] else None
        out["course_deg"] = _number(fields[7]) if fields[7] else None
        out["date"] = fields[8]
    return out


def _parse_nmea(text: str) -> Reading:
    match = _NMEA.match(text)
    if match is None:
        raise GarbageLineError("not an NMEA sentence ($XXXXX,...*hh)")
    body = text[1 : text.rindex("*")]
    checksum = 0
    for char in body.encode("ascii"):
        checksum ^= char
    if checksum != int(match.group(3), 16):
        raise GarbageLineError(
            f"NMEA checksum {match.group(3).upper()} does not match {checksum:02X}"
        )
    sentence, fields = match.group(1), match.group(2).split(",")
    value = {"sentence": sentence, "fields": fields, **_decode_nmea(sentence, fields)}
    return Reading("nmea", value, json.dumps(value, separators=(",", ":")).encode(), sentence)


def parse_line(line: bytes, fmt: str = "auto") -> Reading:
    """Parse one line (without its line ending).

    Args:
        line: the raw bytes.
        fmt: ``auto``, ``json``, ``nmea`` or ``kv``.

    Returns:
        The reading.

    Raises:
        GarbageLineError: the line is empty, too long, not UTF-8, or not in the format.
    """
    if len(line) > MAX_LINE:
        raise GarbageLineError(f"line longer than {MAX_LINE} bytes")
    try:
        text = line.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise GarbageLineError("not UTF-8 text") from None
    if not text:
        raise GarbageLineError("empty line")
    if not text.isprintable():
        raise GarbageLineError("control characters in the line")
    if fmt == "auto":
        first = text[0]
        fmt = "nmea" if first in "$!" else "kv" if "=" in text and first not in '{["' else "json"
    if fmt == "json":
        return _parse_json(text)
    if fmt == "nmea":
        return _parse_nmea(text)
    return _parse_kv(text)


def readings_to_messages(reading: Reading, topic: str, split: bool) -> list[tuple[str, bytes]]:
    """The ``(topic, payload)`` messages of one reading (see the module docstring)."""
    base = f"{topic}/{reading.subtopic}" if reading.subtopic else topic
    messages = [(base, reading.payload)]
    if split and isinstance(reading.value, dict):
        for key, value in reading.value.items():
            if not isinstance(key, str) or not key or "/" in key or "+" in key or "#" in key:
                continue
            text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
            messages.append((f"{base}/{key}", text.encode()))
    return messages


@dataclasses.dataclass
class SensorStats:
    """Counters of one serial sensor.

    Attributes:
        lines: lines read.
        readings: lines that parsed.
        messages: messages handed to the bridge.
        garbage: lines that did not parse.
        last_garbage: why the last garbage line was refused.
        opens: times the port was opened.
        open: whether the port is open now.
        error: why the port is closed (``""`` when open).
    """

    lines: int = 0
    readings: int = 0
    messages: int = 0
    garbage: int = 0
    last_garbage: str = ""
    opens: int = 0
    open: bool = False
    error: str = ""


class SensorReader:
    """Reads one serial sensor on the event loop (``add_reader``; no thread).

    Args:
        spec: the sensor's table.
        topic: its topic (the default already applied).
        emit: called with ``(topic, payload, qos, retain)`` for each message.
    """

    def __init__(
        self,
        spec: SerialSensor,
        topic: str,
        emit: Callable[[str, bytes, int, bool], None],
    ) -> None:
        self.spec = spec
        self.topic = topic
        self.stats = SensorStats()
        self._emit = emit
        self._buffer = bytearray()
        self._skipping = False
        self._serial: Any = None
        self._once = OnceLog(log)

    async def run(self) -> None:
        """Open the port, read it until cancelled, and open it again when it fails."""
        delay = REOPEN_FIRST
        while True:
            lost: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            try:
                self._open(lost)
            except (OSError, ValueError) as err:
                self.stats.error = str(err)
                self._once.warning("open", "serial sensor %s: cannot open: %s", self.spec.port, err)
            else:
                delay = REOPEN_FIRST
                try:
                    reason = await lost
                finally:
                    self._close()
                self.stats.error = reason
                self._once.warning("open", "serial sensor %s: %s", self.spec.port, reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, REOPEN_MAX)

    def _open(self, lost: asyncio.Future[str]) -> None:
        import serial

        try:
            port = serial.Serial(self.spec.port, self.spec.baudrate, timeout=0, exclusive=True)
        except serial.SerialException as err:
            raise OSError(str(err)) from err
        self._serial = port
        self._buffer.clear()
        self._skipping = False
        fd = port.fileno()
        asyncio.get_running_loop().add_reader(fd, self._readable, fd, lost)
        self.stats.opens += 1
        self.stats.open, self.stats.error = True, ""
        if self._once.clear("open") or self.stats.opens == 1:
            log.info("serial sensor %s: open, publishing on %s", self.spec.port, self.topic)

    def _close(self) -> None:
        port, self._serial = self._serial, None
        self.stats.open = False
        if port is None:
            return
        try:
            asyncio.get_running_loop().remove_reader(port.fileno())
        except (OSError, ValueError):
            pass
        try:
            port.close()
        except OSError as err:
            log.debug("serial sensor %s: close: %s", self.spec.port, err)

    def _readable(self, fd: int, lost: asyncio.Future[str]) -> None:
        try:
            data = os.read(fd, 4096)
        except BlockingIOError:
            return
        except OSError as err:
            if not lost.done():
                lost.set_result(f"read failed: {err}")
            return
        if not data:
            if not lost.done():
                lost.set_result("the port closed (device gone?)")
            return
        self.feed(data)

    def feed(self, data: bytes) -> None:
        """Take bytes read from the port; complete lines are parsed and emitted."""
        self._buffer += data
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                if len(self._buffer) > MAX_LINE:
                    if not self._skipping:
                        self._garbage(f"line longer than {MAX_LINE} bytes")
                    self._skipping = True
                    self._buffer.clear()
                return
            line = bytes(self._buffer[:end]).rstrip(b"\r")
            del self._buffer[: end + 1]
            if self._skipping:
                self._skipping = False
                continue
            self._line(line)

    def _line(self, line: bytes) -> None:
        self.stats.lines += 1
        if not line.strip():
            return
        try:
            reading = parse_line(line, self.spec.format)
        except GarbageLineError as err:
            self._garbage(str(err))
            return
        self.stats.readings += 1
        for topic, payload in readings_to_messages(reading, self.topic, self.spec.split):
            self.stats.messages += 1
            self._emit(topic, payload, self.spec.qos, self.spec.retain)

    def _garbage(self, reason: str) -> None:
        self.stats.garbage += 1
        self.stats.last_garbage = reason
        self._once.warning(
            "garbage",
            "serial sensor %s: ignoring a line that is not a reading (%s); further ones are "
            "counted and logged at DEBUG",
            self.spec.port,
            reason,
        )
