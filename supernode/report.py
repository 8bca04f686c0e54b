"""This member's report: capacity, load, runtimes, labels, devices, finished pods.

Devices are counted per class: ``serial`` (``/dev/ttyUSB*``, ``/dev/ttyACM*``: USB serial
adapters and radios) and ``camera`` (V4L2 capture devices: ``/sys/class/video4linux/video*``
whose ``index`` is 0, one per physical camera). A node label
``devices.florete.io/<class>: "<count>"`` (``[node] labels`` in the config) sets the count of a
class by hand, for devices that cannot be detected (a GPIO header, a CAN bus) or to keep one
for the host.
"""

from __future__ import annotations

import glob
import os
import platform
from collections.abc import Mapping
from pathlib import Path

import psutil

from supernode.placement import MemberReport

__all__ = ["DEVICE_LABEL_PREFIX", "build_report", "detect_devices", "member_labels"]

DEVICE_LABEL_PREFIX = "devices.florete.io/"
MAX_PODS = 110
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm"}


def detect_devices(
    dev: Path = Path("/dev"), sys_video: Path = Path("/sys/class/video4linux")
) -> dict[str, int]:
    """Device class -> units found on this machine (classes with none are left out)."""
    found: dict[str, int] = {}
    serial = [p for pattern in ("ttyUSB*", "ttyACM*") for p in glob.glob(str(dev / pattern))]
    if serial:
        found["serial"] = len(serial)
    cameras = 0
    for node in glob.glob(str(sys_video / "video*")):
        try:
            index = (Path(node) / "index").read_text().strip()
        except OSError:
            index = "0"
        cameras += index == "0"
    if cameras:
        found["camera"] = cameras
    return found


def member_labels(name: str, node_id: str, labels: Mapping[str, str]) -> dict[str, str]:
    """A member's labels: the configured ones plus the well-known node labels."""
    arch = platform.machine()
    return {
        **labels,
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": _ARCH.get(arch, arch),
        "florete.io/node-id": node_id,
    }


def devices_with_labels(detected: Mapping[str, int], labels: Mapping[str, str]) -> dict[str, int]:
    """Detected devices, with counts set by ``devices.florete.io/<class>`` labels (a label
    whose value is not a non-negative integer is ignored)."""
    devices = dict(detected)
    for key, value in labels.items():
        if key.startswith(DEVICE_LABEL_PREFIX) and value.isdigit():
            devices[key[len(DEVICE_LABEL_PREFIX) :]] = int(value)
    return {k: v for k, v in devices.items() if v > 0}


def build_report(
    node_id: str,
    name: str,
    labels: Mapping[str, str],
    runtimes: Mapping[str, bool],
    terminal: Mapping[str, str],
    devices: Mapping[str, int] | None = None,
) -> MemberReport:
    """This member's report, measured now.

    Args:
        node_id: this node's ID.
        name: this node's name.
        labels: the configured node labels (``[node] labels``).
        runtimes: runtime name -> healthy (from the runtimes' fingerprints).
        terminal: ``"namespace/name"`` -> phase of its supernode pods that ended.
        devices: device counts (default: :func:`detect_devices`), before label overrides.
    """
    cores = os.cpu_count() or 1
    memory = psutil.virtual_memory()
    load = os.getloadavg()[0]
    return MemberReport(
        node_id=node_id,
        name=name,
        cpu_millis=cores * 1000,
        memory_bytes=int(memory.total),
        memory_available=int(memory.available),
        cpu_idle=max(0.0, min(1.0, 1.0 - load / cores)),
        max_pods=MAX_PODS,
        runtimes=dict(runtimes),
        labels=member_labels(name, node_id, labels),
        devices=devices_with_labels(detect_devices() if devices is None else devices, labels),
        terminal=dict(terminal),
    )
