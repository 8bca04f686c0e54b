"""The MQTT bridge: the local broker, topic mappings across the mesh, store-and-forward, serial
sensors and node telemetry (docs/mqtt.md).

Imported by :mod:`agent.config` for its settings, so this package's import stays light: the
bridge (and paho-mqtt with it) is loaded only when ``mqtt.broker`` is set, through
``from agent.mqtt import Bridge``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agent.mqtt.settings import MqttConfig

if TYPE_CHECKING:
    from agent.mqtt.bridge import Bridge

__all__ = ["Bridge", "MqttConfig"]


def __getattr__(name: str) -> Any:
    if name == "Bridge":
        from agent.mqtt.bridge import Bridge

        return Bridge
    raise AttributeError(f"module 'agent.mqtt' has no attribute {name!r}")
