"""Parsing of the ``[mqtt]`` config values that are more than a scalar: the broker address, the
``[[mqtt.mappings]]`` and ``[[mqtt.serial_sensors]]`` tables and topic patterns.

Pure Python, no paho: :mod:`agent.config` calls these parsers while it loads the file, so a bad
mapping is an error that names its key (``mqtt.mappings[1].direction: ...``) before the agent
starts. Every parser raises :class:`SettingError` (a ValueError) with the reason; the config
loader adds the source and the key.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

__all__ = [
    "MAX_TOPIC_BYTES",
    "BrokerAddress",
    "Direction",
    "MqttConfig",
    "SerialSensor",
    "SettingError",
    "TopicMapping",
    "check_filter",
    "check_topic",
    "filter_covers",
    "parse_broker",
    "parse_mappings",
    "parse_patterns",
    "parse_serial_sensors",
    "topic_matches",
]


class SettingError(ValueError):
    """A value of the ``[mqtt]`` section does not fit; the message says why."""


MAX_TOPIC_BYTES = 65535
"""Longest MQTT topic, bytes of UTF-8 (MQTT 3.1.1 §1.5.3: a two-byte length prefix)."""

Direction = Literal["in", "out", "both"]
LineFormat = Literal["auto", "json", "nmea", "kv"]


@dataclasses.dataclass(frozen=True)
class BrokerAddress:
    """Where the local broker is.

    Attributes:
        url: the configured URL, for display (it never holds a password: see
            :func:`parse_broker`).
        host: host name or IP address (IPv6 without brackets).
        port: TCP port (default 1883 for ``mqtt://``, 8883 for ``mqtts://``).
        tls: connect with TLS (``mqtts://``).
    """

    url: str
    host: str
    port: int
    tls: bool


@dataclasses.dataclass(frozen=True)
class TopicMapping:
    """One ``[[mqtt.mappings]]`` table, as mosquitto's bridge ``topic`` line
    ``topic PATTERN in|out|both QOS LOCAL_PREFIX REMOTE_PREFIX``.

    ``out``: messages on the local broker on ``local_prefix + pattern`` go to the peers, where
    they are published as ``remote_prefix + rest`` (``rest`` is the topic without
    ``local_prefix``). ``in``: the peers send what their brokers carry on
    ``remote_prefix + pattern``, published here as ``local_prefix + rest``. ``both``: both.

    Attributes:
        pattern: MQTT topic filter (``+``, ``#``); may be empty when a prefix names one topic.
        direction: ``in``, ``out`` or ``both``.
        qos: 0 (at most once, never stored) or 1 (at least once, stored until the peer has it).
        local_prefix: prefix on the local broker ("" for none).
        remote_prefix: prefix on the peers' brokers ("" for none).
        peers: node IDs, short IDs or names of trusted peers; empty means every trusted peer.
    """

    pattern: str
    direction: Direction
    qos: int
    local_prefix: str
    remote_prefix: str
    peers: tuple[str, ...]

    @property
    def local_filter(self) -> str:
        """The filter on the local broker: ``local_prefix + pattern``."""
        return self.local_prefix + self.pattern

    @property
    def remote_filter(self) -> str:
        """The filter on a peer's broker: ``remote_prefix + pattern``."""
        return self.remote_prefix + self.pattern

    def describe(self) -> dict[str, Any]:
        """JSON-ready form for the API."""
        return {
            "pattern": self.pattern,
            "direction": self.direction,
            "qos": self.qos,
            "localPrefix": self.local_prefix,
            "remotePrefix": self.remote_prefix,
            "peers": list(self.peers),
        }


@dataclasses.dataclass(frozen=True)
class SerialSensor:
    """One ``[[mqtt.serial_sensors]]`` table: a serial line whose text lines become messages.

    Attributes:
        port: device path (``/dev/ttyUSB0``, a pty, a ``/dev/serial/by-id`` link).
        baudrate: line speed in baud (ignored by ptys).
        format: ``json`` (one JSON value per line), ``nmea`` (NMEA 0183 sentences),
            ``kv`` (``key=value`` pairs separated by spaces, commas or semicolons) or ``auto``
            (chosen per line by its first character).
        topic: topic of the messages; ``""``: ``<mqtt.base_topic>/serial/<device name>``.
        qos: 0 or 1.
        retain: publish retained.
        split: publish each key of a JSON object or ``kv`` line on ``topic/<key>`` as well.
    """

    port: str
    baudrate: int = 9600
    format: LineFormat = "auto"
    topic: str = ""
    qos: int = 0
    retain: bool = False
    split: bool = False

    @property
    def name(self) -> str:
        """The device's file name, for topics and display."""
        return os.path.basename(self.port.rstrip("/")) or self.port

    def describe(self) -> dict[str, Any]:
        """JSON-ready form for the API."""
        return {
            "port": self.port,
            "baudrate": self.baudrate,
            "format": self.format,
            "topic": self.topic,
            "qos": self.qos,
            "retain": self.retain,
            "split": self.split,
        }


@dataclasses.dataclass(frozen=True)
class MqttConfig:
    """``[mqtt]``: the MQTT bridge (see docs/mqtt.md); off while ``broker`` is None.

    Attributes:
        broker: the local broker (``mqtt://host:port``, ``mqtts://`` for TLS), or None.
        username: user name for the broker, ``""`` for none.
        password: password (file only; never logged or shown), ``""`` for none.
        password_file: file whose first line is the password, or None.
        tls_ca: PEM bundle of CAs to verify an ``mqtts://`` broker (None: the system's).
        client_id: MQTT client id, ``""`` for ``florete-<short node ID>``.
        protocol: ``"3.1.1"`` or ``"5"``.
        keepalive: MQTT keepalive, seconds.
        max_inflight: QoS 1 messages published to the broker and not yet acknowledged.
        outbox_max_messages: messages the store-and-forward outbox holds (all peers).
        outbox_max_bytes: bytes of topic and payload the outbox holds (all peers).
        telemetry: publish node telemetry and Home Assistant discovery.
        telemetry_interval: seconds between telemetry messages.
        base_topic: topic prefix of telemetry and serial sensors, ``""``: ``florete/<node>``.
        discovery_prefix: Home Assistant discovery prefix, ``""`` for no discovery.
        peer_read: filters peers may subscribe to here (their ``in`` mappings).
        peer_write: filters peers may publish to here (their ``out`` mappings).
        mappings: the ``[[mqtt.mappings]]`` tables.
        serial_sensors: the ``[[mqtt.serial_sensors]]`` tables.
    """

    broker: BrokerAddress | None
    username: str
    password: str = dataclasses.field(repr=False)
    password_file: Path | None
    tls_ca: Path | None
    client_id: str
    protocol: str
    keepalive: float
    max_inflight: int
    outbox_max_messages: int
    outbox_max_bytes: int
    telemetry: bool
    telemetry_interval: float
    base_topic: str
    discovery_prefix: str
    peer_read: tuple[str, ...]
    peer_write: tuple[str, ...]
    mappings: tuple[TopicMapping, ...]
    serial_sensors: tuple[SerialSensor, ...]


# --- topics -------------------------------------------------------------------------------------


def _check_text(text: str, what: str) -> None:
    if not isinstance(text, str):
        raise SettingError(f"{what} must be text, got {type(text).__name__}")
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise SettingError(f"{what} {text!r} is not valid UTF-8") from None
    if not 0 < size <= MAX_TOPIC_BYTES:
        raise SettingError(f"{what} must be 1..{MAX_TOPIC_BYTES} bytes of UTF-8, got {size}")
    if "\0" in text:
        raise SettingError(f"{what} {text!r} holds a NUL character")


def check_topic(topic: str) -> None:
    """Check a topic name (MQTT 3.1.1 §4.7.3): 1..65535 bytes of UTF-8, no NUL, no wildcard.

    Raises:
        SettingError: the topic breaks a rule (the message says which).
    """
    _check_text(topic, "topic")
    if "+" in topic or "#" in topic:
        raise SettingError(f"topic {topic!r} holds a wildcard (+ or #)")


def check_filter(pattern: str) -> None:
    """Check a topic filter (MQTT 3.1.1 §4.7.1): ``#`` only as the whole last level, ``+``
    only as a whole level.

    Raises:
        SettingError: the filter breaks a rule.
    """
    _check_text(pattern, "topic filter")
    levels = pattern.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise SettingError(f"topic filter {pattern!r}: '#' must be the whole last level")
        if "+" in level and level != "+":
            raise SettingError(f"topic filter {pattern!r}: '+' must be a whole level")


def topic_matches(pattern: str, topic: str) -> bool:
    """True when ``topic`` matches the filter ``pattern`` (MQTT 3.1.1 §4.7; a leading wildcard
    does not match a topic starting with ``$``, §4.7.2)."""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    want, have = pattern.split("/"), topic.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have) or (level != "+" and level != have[i]):
            return False
    return len(want) == len(have)


def filter_covers(outer: str, inner: str) -> bool:
    """True when every topic that filter ``inner`` matches is also matched by ``outer``.

    Used to check a peer's subscription against ``mqtt.peer_read``: ``a/#`` covers ``a/+/b``
    and ``a``; ``a/+`` does not cover ``a/#``.
    """
    if outer[:1] in ("+", "#") and inner.startswith("$"):
        return False
    want, have = outer.split("/"), inner.split("/")
    for i, level in enumerate(want):
        if level == "#":
            return True
        if i >= len(have):
            return False
        if have[i] == "#":
            return False
        if level != "+" and (have[i] == "+" or level != have[i]):
            return False
    return len(want) == len(have)


def parse_patterns(raw: object) -> tuple[str, ...]:
    """A list of topic filters (or one comma-separated string), each checked.

    Raises:
        SettingError: not a list of strings, or a filter is invalid.
    """
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise SettingError(f"expected a list of topic filters, got {type(raw).__name__}")
    patterns = tuple(dict.fromkeys(i.strip() for i in items if i.strip()))
    for pattern in patterns:
        check_filter(pattern)
    return patterns


# --- broker -------------------------------------------------------------------------------------


def parse_broker(raw: object) -> BrokerAddress | None:
    """Parse ``mqtt.broker``: ``""`` (no broker: the bridge is off), ``mqtt://host[:port]`` or
    ``mqtts://host[:port]`` (TLS); an IPv6 host in brackets (``mqtt://[::1]:1883``).

    Raises:
        SettingError: another scheme, a user or password in the URL (use ``mqtt.username`` and
            ``mqtt.password_file``: the URL is shown in logs and the API), a path or query, no
            host, or a port outside 1..65535.
    """
    if not isinstance(raw, str):
        raise SettingError(
            f"expected a URL such as mqtt://127.0.0.1:1883, got {type(raw).__name__}"
        )
    text = raw.strip()
    if not text:
        return None
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as err:
        raise SettingError(f"invalid broker URL: {err}") from None
    if url.scheme not in ("mqtt", "mqtts"):
        raise SettingError(f"broker URL must start with mqtt:// or mqtts://, got {text!r}")
    if url.username is not None or url.password is not None:
        raise SettingError(
            "broker URL must not hold credentials: set mqtt.username and mqtt.password_file"
        )
    if url.path not in ("", "/") or url.query or url.fragment:
        raise SettingError(f"broker URL takes no path, query or fragment, got {text!r}")
    host = url.hostname or ""
    if not host:
        raise SettingError(f"broker URL has no host: {text!r}")
    if port == 0:
        raise SettingError("broker port must be 1..65535")
    if ":" in host:
        ipaddress.ip_address(host)
    tls = url.scheme == "mqtts"
    return BrokerAddress(text, host, port or (8883 if tls else 1883), tls)


# --- tables -------------------------------------------------------------------------------------


def _table(raw: object, index: int, what: str) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise SettingError(f"[{index}]: expected a table ([[{what}]]), got {type(raw).__name__}")
    return raw


def _unknown(table: Mapping[str, Any], known: Sequence[str], index: int) -> None:
    extra = sorted(set(table) - set(known))
    if extra:
        raise SettingError(f"[{index}]: unknown key {extra[0]!r} (known: {', '.join(known)})")


def _str(table: Mapping[str, Any], key: str, index: int, default: str | None = None) -> str:
    value = table.get(key, default)
    if value is None:
        raise SettingError(f"[{index}].{key}: required")
    if not isinstance(value, str):
        raise SettingError(f"[{index}].{key}: expected a string, got {type(value).__name__}")
    return value


def _qos(table: Mapping[str, Any], index: int, default: int) -> int:
    value = table.get("qos", default)
    if type(value) is not int or value not in (0, 1):
        hint = " (QoS 2 is not bridged: use 1, at least once)" if value == 2 else ""
        raise SettingError(f"[{index}].qos: must be 0 or 1, got {value!r}{hint}")
    return value


def _flag(table: Mapping[str, Any], key: str, index: int) -> bool:
    value = table.get(key, False)
    if not isinstance(value, bool):
        raise SettingError(f"[{index}].{key}: expected true or false, got {value!r}")
    return value


def _prefix(table: Mapping[str, Any], key: str, index: int) -> str:
    value = _str(table, key, index, "")
    if "+" in value or "#" in value or "\0" in value:
        raise SettingError(f"[{index}].{key}: a prefix holds no wildcard or NUL, got {value!r}")
    return value


_MAPPING_KEYS = ("pattern", "direction", "qos", "local_prefix", "remote_prefix", "peers")


def parse_mappings(raw: object) -> tuple[TopicMapping, ...]:
    """Parse the ``[[mqtt.mappings]]`` tables.

    Keys: ``pattern`` (required), ``direction`` (``in``, ``out``, ``both``; required), ``qos``
    (0 or 1, default 1), ``local_prefix`` and ``remote_prefix`` (default ``""``), ``peers``
    (list of node IDs or names, default: every trusted peer).

    Raises:
        SettingError: ``[i].key: reason`` for the first problem found.
    """
    if not isinstance(raw, list | tuple):
        raise SettingError(
            f"expected a list of tables ([[mqtt.mappings]]), got {type(raw).__name__}"
        )
    mappings = []
    for index, item in enumerate(raw):
        table = _table(item, index, "mqtt.mappings")
        _unknown(table, _MAPPING_KEYS, index)
        direction = _str(table, "direction", index)
        if direction not in ("in", "out", "both"):
            raise SettingError(f"[{index}].direction: must be in, out or both, got {direction!r}")
        peers = table.get("peers", [])
        if not isinstance(peers, list) or not all(isinstance(p, str) and p for p in peers):
            raise SettingError(f"[{index}].peers: expected a list of node IDs or names")
        mapping = TopicMapping(
            pattern=_str(table, "pattern", index),
            direction=direction,  # type: ignore[arg-type]  # checked just above
            qos=_qos(table, index, 1),
            local_prefix=_prefix(table, "local_prefix", index),
            remote_prefix=_prefix(table, "remote_prefix", index),
            peers=tuple(dict.fromkeys(peers)),
        )
        for side, text in (("local", mapping.local_filter), ("remote", mapping.remote_filter)):
            try:
                check_filter(text)
            except ValueError as err:
                raise SettingError(f"[{index}].pattern: {side} filter: {err}") from None
        mappings.append(mapping)
    return tuple(mappings)


_SENSOR_KEYS = ("port", "baudrate", "format", "topic", "qos", "retain", "split")


def parse_serial_sensors(raw: object) -> tuple[SerialSensor, ...]:
    """Parse the ``[[mqtt.serial_sensors]]`` tables (keys: see :class:`SerialSensor`; ``port``
    is required).

    Raises:
        SettingError: ``[i].key: reason`` for the first problem found, or two tables naming the
            same port.
    """
    if not isinstance(raw, list | tuple):
        raise SettingError(
            f"expected a list of tables ([[mqtt.serial_sensors]]), got {type(raw).__name__}"
        )
    sensors: list[SerialSensor] = []
    for index, item in enumerate(raw):
        table = _table(item, index, "mqtt.serial_sensors")
        _unknown(table, _SENSOR_KEYS, index)
        port = _str(table, "port", index)
        if not port.strip():
            raise SettingError(f"[{index}].port: must not be empty")
        if any(s.port == port for s in sensors):
            raise SettingError(f"[{index}].port: {port} is already read by another table")
        baud = table.get("baudrate", 9600)
        if type(baud) is not int or not 50 <= baud <= 4_000_000:
            raise SettingError(f"[{index}].baudrate: expected 50..4000000 baud, got {baud!r}")
        fmt = _str(table, "format", index, "auto")
        if fmt not in ("auto", "json", "nmea", "kv"):
            raise SettingError(f"[{index}].format: must be auto, json, nmea or kv, got {fmt!r}")
        topic = _str(table, "topic", index, "")
        if topic:
            try:
                check_topic(topic)
            except ValueError as err:
                raise SettingError(f"[{index}].topic: {err}") from None
        sensors.append(
            SerialSensor(
                port=port,
                baudrate=baud,
                format=fmt,  # type: ignore[arg-type]  # checked just above
                topic=topic,
                qos=_qos(table, index, 0),
                retain=_flag(table, "retain", index),
                split=_flag(table, "split", index),
            )
        )
    return tuple(sensors)
