"""The ``mqtt.deliver`` body check, and the telemetry and Home Assistant discovery payloads."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import BadRequestError
from agent.mqtt.forwarder import BATCH_MESSAGES, _parse
from agent.mqtt.telemetry import SENSORS, Telemetry, object_id, sample

NODE = "GSQXCUN-LCL657Y-QL3D6D7-BKQXEWU-EHTXA54-43OBEUI-7ODU2ZM-AYFCRAZ"


def test_a_good_body_parses() -> None:
    body = {"qos": 1, "epoch": "e", "messages": [[1, "a", b"x", False], [5, "b", b"", True]]}
    assert _parse(body) == (1, "e", [(1, "a", b"x", False), (5, "b", b"", True)])


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([], "expected a map"),
        ({"qos": 2, "epoch": "e", "messages": []}, "qos must be 0 or 1"),
        ({"qos": True, "epoch": "e", "messages": []}, "qos must be 0 or 1"),
        ({"qos": 1, "epoch": "", "messages": []}, "epoch must be text"),
        ({"qos": 1, "epoch": "e", "messages": [[1, "a", "text", False]]}, "payload bytes"),
        (
            {"qos": 1, "epoch": "e", "messages": [[2, "a", b"", False], [2, "a", b"", False]]},
            "does not increase",
        ),
        (
            {"qos": 0, "epoch": "", "messages": [[0, "a", b""]] * (BATCH_MESSAGES + 1)},
            "list of <= 256",
        ),
    ],
)
def test_bad_bodies_are_bad_requests(body: Any, error: str) -> None:
    with pytest.raises(BadRequestError, match=error):
        _parse(body)


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.binary(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=12,
)


@given(plain)
def test_any_plain_body_parses_or_is_a_bad_request(body: Any) -> None:
    try:
        _parse(body)
    except BadRequestError:
        pass


def test_telemetry_sample_has_every_sensor_key() -> None:
    links = [{"up": True, "rttSeconds": 0.004, "loss": 0.02}, {"up": False, "rttSeconds": 0.001}]
    figures = sample({"Running": 2, "Failed": 1}, links)
    assert {s.key for s in SENSORS} <= set(figures)
    assert (figures["pods_running"], figures["pods_failed"], figures["pods_pending"]) == (2, 1, 0)
    assert (figures["links_up"], figures["link_rtt_ms"], figures["link_loss_percent"]) == (
        1,
        4.0,
        2.0,
    )
    assert 0 <= figures["memory_percent"] <= 100


def test_home_assistant_discovery_configs() -> None:
    telemetry = Telemetry(NODE, "board-1", "florete/board-1", "homeassistant", dict, list)
    configs = dict(telemetry.discovery())
    oid = object_id(NODE)
    assert oid == "florete_gsqxcun"
    config = json.loads(configs[f"homeassistant/sensor/{oid}/temperature_celsius/config"])
    assert config["state_topic"] == "florete/board-1/telemetry"
    assert config["value_template"] == "{{ value_json.temperature_celsius }}"
    assert config["device_class"] == "temperature"
    assert config["availability_topic"] == "florete/board-1/availability"
    assert config["unique_id"] == f"{oid}_temperature_celsius"
    assert config["device"]["identifiers"] == [oid]
    assert len(configs) == len(SENSORS)
    assert Telemetry(NODE, "b", "f/b", "", dict, list).discovery() == []
