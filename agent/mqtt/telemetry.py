"""Node telemetry on MQTT, with Home Assistant discovery and an availability topic.

Topics, under ``<base>`` (``mqtt.base_topic``, default ``florete/<node name>``):

* ``<base>/availability``: ``online`` (retained) after each connect; the connection's last
  will sets ``offline`` (retained) when the agent dies, and a clean stop publishes it too.
* ``<base>/telemetry``: every ``mqtt.telemetry_interval`` seconds a retained JSON object
  (see :func:`sample`).
* ``<discovery prefix>/sensor/<object id>/<key>/config``: one retained Home Assistant MQTT
  discovery config per figure (https://www.home-assistant.io/integrations/mqtt/#mqtt-discovery:
  ``state_topic``, ``value_template``, ``unique_id``, ``device``, ``availability_topic``),
  sent after each connect and again when Home Assistant announces itself on
  ``<discovery prefix>/status`` with ``online`` (its birth message).
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import psutil

from agent import __version__

__all__ = ["SENSORS", "Sensor", "Telemetry", "sample", "temperature"]

_SENSOR_PREFERENCE = ("cpu_thermal", "soc_thermal", "coretemp", "k10temp", "acpitz")


@dataclasses.dataclass(frozen=True)
class Sensor:
    """One figure of the telemetry object, as Home Assistant sees it.

    Attributes:
        key: key in the telemetry JSON.
        name: display name.
        unit: unit of measurement, ``""`` for none.
        device_class: Home Assistant device class, ``""`` for none.
        icon: Material Design icon, ``""`` for the device class's.
    """

    key: str
    name: str
    unit: str = ""
    device_class: str = ""
    icon: str = ""


SENSORS = (
    Sensor("cpu_percent", "CPU", "%", icon="mdi:cpu-64-bit"),
    Sensor("memory_percent", "Memory", "%", icon="mdi:memory"),
    Sensor("memory_used_bytes", "Memory used", "B", "data_size"),
    Sensor("temperature_celsius", "Temperature", "°C", "temperature"),
    Sensor("pods_running", "Pods running", icon="mdi:cube-outline"),
    Sensor("pods_pending", "Pods pending", icon="mdi:cube-scan"),
    Sensor("pods_failed", "Pods failed", icon="mdi:cube-off-outline"),
    Sensor("links_up", "Links up", icon="mdi:lan-connect"),
    Sensor("link_rtt_ms", "Best link RTT", "ms", "duration"),
    Sensor("link_loss_percent", "Worst link loss", "%", icon="mdi:lan-disconnect"),
)


def temperature() -> float | None:
    """CPU or SoC temperature in °C (a known CPU sensor first, else the hottest reading), or
    None when the machine has no readable sensor (a VM)."""
    try:
        sensors = psutil.sensors_temperatures()
    except (OSError, AttributeError):
        return None
    for name in _SENSOR_PREFERENCE:
        if sensors.get(name):
            return round(max(t.current for t in sensors[name]), 1)
    readings = [t.current for entries in sensors.values() for t in entries]
    return round(max(readings), 1) if readings else None


def sample(pod_phases: Mapping[str, int], links: list[dict[str, Any]]) -> dict[str, Any]:
    """One telemetry object.

    Args:
        pod_phases: pod phase -> number of pods (``Running``, ``Pending``, ``Failed``, ...).
        links: the mesh's links (:meth:`agent.mesh.Mesh.links`).

    Returns:
        ``cpu_percent`` (since the previous sample), ``memory_percent``, ``memory_used_bytes``,
        ``temperature_celsius`` (None without a sensor), ``pods`` (phase -> count) and
        ``pods_running``/``pods_pending``/``pods_failed``, ``links_up``, ``link_rtt_ms`` (best
        RTT of the up links, None without one), ``link_loss_percent`` (worst loss of the up
        links), ``time`` (Unix seconds).
    """
    memory = psutil.virtual_memory()
    up = [link for link in links if link.get("up")]
    rtts = [link["rttSeconds"] for link in up if link.get("rttSeconds") is not None]
    return {
        "cpu_percent": psutil.cpu_percent(interval=None),
        "memory_percent": memory.percent,
        "memory_used_bytes": memory.total - memory.available,
        "temperature_celsius": temperature(),
        "pods": dict(pod_phases),
        "pods_running": pod_phases.get("Running", 0),
        "pods_pending": pod_phases.get("Pending", 0),
        "pods_failed": pod_phases.get("Failed", 0),
        "links_up": len(up),
        "link_rtt_ms": round(min(rtts) * 1000, 2) if rtts else None,
        "link_loss_percent": round(max((link.get("loss", 0.0) for link in up), default=0) * 100, 1),
        "time": round(time.time(), 3),
    }


def object_id(node_id: str) -> str:
    """A Home Assistant object id from a node ID: ``florete_`` and the short ID in lower case."""
    return "florete_" + re.sub(r"[^a-z0-9]", "", node_id.split("-", 1)[0].lower())


class Telemetry:
    """Builds the telemetry messages of this node.

    Args:
        node_id: this node's ID.
        node_name: its name (the device name in Home Assistant).
        base_topic: ``<base>``.
        discovery_prefix: Home Assistant's prefix, ``""`` for no discovery.
        pod_phases: returns pod phase -> count.
        links: returns the mesh's links.
    """

    def __init__(
        self,
        node_id: str,
        node_name: str,
        base_topic: str,
        discovery_prefix: str,
        pod_phases: Callable[[], Mapping[str, int]],
        links: Callable[[], list[dict[str, Any]]],
    ) -> None:
        self.node_id = node_id
        self.node_name = node_name
        self.availability_topic = f"{base_topic}/availability"
        self.state_topic = f"{base_topic}/telemetry"
        self.discovery_prefix = discovery_prefix
        self.ha_status_topic = f"{discovery_prefix}/status" if discovery_prefix else ""
        self._pod_phases = pod_phases
        self._links = links
        psutil.cpu_percent(interval=None)  # the first call only starts the measurement

    def state(self) -> bytes:
        """The telemetry payload (JSON)."""
        return json.dumps(sample(self._pod_phases(), self._links()), separators=(",", ":")).encode()

    def discovery(self) -> list[tuple[str, bytes]]:
        """``(topic, payload)`` of every Home Assistant discovery config (publish retained)."""
        if not self.discovery_prefix:
            return []
        oid = object_id(self.node_id)
        device = {
            "identifiers": [oid],
            "name": self.node_name,
            "manufacturer": "Florete",
            "model": "florete-agent",
            "sw_version": __version__,
        }
        configs = []
        for sensor in SENSORS:
            config: dict[str, Any] = {
                "name": sensor.name,
                "unique_id": f"{oid}_{sensor.key}",
                "object_id": f"{oid}_{sensor.key}",
                "state_topic": self.state_topic,
                "value_template": "{{ value_json.%s }}" % sensor.key,  # noqa: UP031 (Jinja braces)
                "state_class": "measurement",
                "availability_topic": self.availability_topic,
                "payload_available": "online",
                "payload_not_available": "offline",
                "device": device,
            }
            if sensor.unit:
                config["unit_of_measurement"] = sensor.unit
            if sensor.device_class:
                config["device_class"] = sensor.device_class
            if sensor.icon:
                config["icon"] = sensor.icon
            topic = f"{self.discovery_prefix}/sensor/{oid}/{sensor.key}/config"
            configs.append((topic, json.dumps(config, separators=(",", ":")).encode()))
        return configs
