"""The ``[mqtt]`` config section: broker URL, mappings, serial sensors, patterns, secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import Config, describe_config, load_config
from agent.errors import ConfigError
from agent.mqtt.client import read_password
from agent.mqtt.settings import (
    filter_covers,
    parse_broker,
    parse_mappings,
    parse_serial_sensors,
    topic_matches,
)

ENV = {"FLORETE_STATE_DIR": "/tmp/florete-test-state", "HOME": "/nonexistent"}


def load(tmp_path: Path, text: str, **env: str) -> Config:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return load_config({"config": str(path)}, {**ENV, **env}, is_root=False)


def test_bridge_is_off_by_default_and_on_with_the_environment() -> None:
    assert load_config({}, ENV, is_root=False).mqtt.broker is None
    cfg = load_config({}, {**ENV, "FLORETE_MQTT_BROKER": "mqtts://[::1]"}, is_root=False)
    assert cfg.mqtt.broker is not None
    assert (cfg.mqtt.broker.host, cfg.mqtt.broker.port, cfg.mqtt.broker.tls) == ("::1", 8883, True)
    assert cfg.sources["mqtt.broker"] == "environment (FLORETE_MQTT_BROKER)"


@pytest.mark.parametrize(
    ("url", "error"),
    [
        ("tcp://host", "must start with mqtt:// or mqtts://"),
        ("mqtt://user:secret@host", "must not hold credentials"),
        ("mqtt://host:99999", "invalid broker URL"),
        ("mqtt://host/path", "no path"),
        ("mqtt://:1883", "no host"),
    ],
)
def test_bad_broker_urls_are_refused(url: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_broker(url)


def test_mappings_parse_with_defaults(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[[mqtt.mappings]]\npattern = "sensors/#"\ndirection = "out"\nremote_prefix = "a/"\n'
        '[[mqtt.mappings]]\npattern = ""\ndirection = "in"\nqos = 0\n'
        'local_prefix = "here/t"\nremote_prefix = "there/t"\npeers = ["gw", "gw"]\n',
    )
    first, second = cfg.mqtt.mappings
    assert (first.local_filter, first.remote_filter, first.qos, first.peers) == (
        "sensors/#",
        "a/sensors/#",
        1,
        (),
    )
    assert (second.local_filter, second.remote_filter, second.peers) == (
        "here/t",
        "there/t",
        ("gw",),
    )


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ('pattern = "a/#"', r"\[0\]\.direction: required"),
        ('pattern = "a/#"\ndirection = "up"', "must be in, out or both"),
        ('pattern = "a/#"\ndirection = "in"\nqos = 2', "QoS 2 is not bridged"),
        ('pattern = "a/#/b"\ndirection = "in"', "'#' must be the whole last level"),
        ('pattern = "a"\ndirection = "in"\nlocal_prefix = "x/+/"', "prefix holds no wildcard"),
        ('pattern = "a"\ndirection = "in"\nfoo = 1', "unknown key 'foo'"),
        ('pattern = "a"\ndirection = "in"\npeers = "gw"', "list of node IDs"),
        ('pattern = ""\ndirection = "in"', "must be 1..65535 bytes"),
    ],
)
def test_bad_mappings_name_the_key(tmp_path: Path, table: str, error: str) -> None:
    with pytest.raises(ConfigError, match=rf"agent.toml: mqtt.mappings: .*{error}"):
        load(tmp_path, f"[[mqtt.mappings]]\n{table}\n")


def test_serial_sensors_parse_and_refuse_mistakes() -> None:
    (sensor,) = parse_serial_sensors([{"port": "/dev/ttyUSB0", "format": "nmea", "qos": 1}])
    assert (sensor.name, sensor.baudrate, sensor.format, sensor.qos) == ("ttyUSB0", 9600, "nmea", 1)
    with pytest.raises(ValueError, match=r"\[1\]\.port: /dev/x is already read"):
        parse_serial_sensors([{"port": "/dev/x"}, {"port": "/dev/x"}])
    with pytest.raises(ValueError, match="format: must be auto, json, nmea or kv"):
        parse_serial_sensors([{"port": "/dev/x", "format": "csv"}])
    with pytest.raises(ValueError, match="topic: topic 'a/#' holds a wildcard"):
        parse_serial_sensors([{"port": "/dev/x", "topic": "a/#"}])
    with pytest.raises(ValueError, match="baudrate"):
        parse_serial_sensors([{"port": "/dev/x", "baudrate": "fast"}])


def test_password_is_never_shown_and_not_set_twice(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[mqtt]\npassword = "hunter2"\n')
    rows = {key: value for key, value, _ in describe_config(cfg)}
    assert rows["mqtt.password"] == "(set)"
    assert "hunter2" not in repr(cfg)
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: set, and so is mqtt\.password"):
        load(tmp_path, '[mqtt]\npassword = "x"\n', FLORETE_MQTT_PASSWORD_FILE="/etc/p")


def test_peer_read_and_write_patterns_are_checked(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[mqtt]\npeer_write = ["site/#", "cmd/+"]\n')
    assert cfg.mqtt.peer_write == ("site/#", "cmd/+")
    with pytest.raises(ConfigError, match=r"mqtt\.peer_read: topic filter 'a#'"):
        load(tmp_path, '[mqtt]\npeer_read = ["a#"]\n')


@pytest.mark.parametrize(
    ("pattern", "topic", "matches"),
    [
        ("a/#", "a", True),
        ("a/#", "a/b/c", True),
        ("a/+", "a/b", True),
        ("a/+", "a/b/c", False),
        ("#", "$SYS/x", False),
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
    ],
)
def test_topic_matching(pattern: str, topic: str, matches: bool) -> None:
    assert topic_matches(pattern, topic) is matches


@pytest.mark.parametrize(
    ("outer", "inner", "covers"),
    [
        ("#", "a/+/b", True),
        ("a/#", "a", True),
        ("a/#", "a/+/#", True),
        ("a/+", "a/#", False),
        ("a/+", "a/b", True),
        ("a/b", "a/+", False),
        ("#", "$SYS/#", False),
        ("sensors/#", "cmd/#", False),
    ],
)
def test_filter_cover(outer: str, inner: str, covers: bool) -> None:
    assert filter_covers(outer, inner) is covers


def test_mappings_must_be_tables() -> None:
    with pytest.raises(ValueError, match=r"\[0\]: expected a table"):
        parse_mappings(["sensors/#"])


def test_password_file_first_line_and_a_precise_error(tmp_path: Path) -> None:
    secret = tmp_path / "mqtt.pass"
    secret.write_text("s3cret\nignored\n")
    assert read_password(secret) == "s3cret"
    with pytest.raises(ConfigError, match=r"mqtt\.password_file: cannot read .*missing"):
        read_password(tmp_path / "missing")
