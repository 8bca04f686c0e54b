"""Live figures of the machine the agent runs on: CPU, memory, temperature, boot time.

Reported under ``status.host`` by ``GET /apis/florete.io/v1alpha1/agent`` (the TUI's overview
shows them). Every figure comes from psutil, which reads ``/proc`` and ``/sys``; a figure the
machine does not offer (no thermal sensor in a VM) is None, never an error.
"""

from __future__ import annotations

import os
from typing import Any

import psutil

from agent.podstatus import rfc3339

__all__ = ["host_stats", "temperature_celsius"]

# Sensor names that measure the CPU or the SoC, best first: Raspberry Pi and most ARM boards
# (cpu_thermal, soc_thermal), Intel (coretemp), AMD (k10temp), generic ACPI (acpitz).
_PREFERRED_SENSORS = ("cpu_thermal", "cpu-thermal", "soc_thermal", "coretemp", "k10temp", "acpitz")


def temperature_celsius() -> float | None:
    """The CPU or SoC temperature in degrees Celsius, or None when no sensor is readable.

    The first sensor found in a fixed preference order wins (its hottest reading); otherwise
    the hottest reading of any sensor.
    """
    try:
        sensors = psutil.sensors_temperatures()
    except (OSError, AttributeError):  # AttributeError: psutil has no sensors on this OS
        return None
    for name in _PREFERRED_SENSORS:
        readings = [t.current for t in sensors.get(name, [])]
        if readings:
            return round(max(readings), 1)
    every = [t.current for readings in sensors.values() for t in readings]
    return round(max(every), 1) if every else None


def host_stats() -> dict[str, Any]:
    """CPU, memory, temperature and boot time of this machine, JSON-ready.

    Returns:
        ``{"cpuCount": int, "cpuPercent": float (0-100, all CPUs, since the previous call),
        "loadAverage": [float, float, float] (1, 5, 15 minutes), "memoryTotalBytes": int,
        "memoryAvailableBytes": int, "temperatureCelsius": float | None,
        "bootTime": RFC 3339 UTC}``. The first call after the agent starts measures the CPU
        from the import of this module.
    """
    memory = psutil.virtual_memory()
    return {
        "cpuCount": os.cpu_count() or 1,
        "cpuPercent": psutil.cpu_percent(interval=None),
        "loadAverage": [round(x, 2) for x in os.getloadavg()],
        "memoryTotalBytes": memory.total,
        "memoryAvailableBytes": memory.available,
        "temperatureCelsius": temperature_celsius(),
        "bootTime": rfc3339(psutil.boot_time()),
    }


# psutil measures CPU use between two calls: take the first sample now, so that the first
# report is a real figure rather than 0.0.
psutil.cpu_percent(interval=None)
