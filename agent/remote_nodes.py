"""Nodes for the devices that remote runtimes run workloads on (a phone behind the android
runtime), shown next to the agent's own node in ``GET /api/v1/nodes``.

A runtime with the ``remote`` capability whose fingerprint names a ``node_name`` and a ``host``
(the device is configured) becomes one Node. Its Ready condition follows the runtime's health:
``True`` while the device answers, ``Unknown`` while it does not (as the Kubernetes node
controller marks a node whose kubelet stopped posting status), with the node controller's
``unreachable`` taint. Capacity and nodeInfo come from the fingerprint's attributes (``cpus``,
``memory_bytes``, ``arch``, ``kernel``, ``android``, ``model``, ``boot_id``), the last known
ones while the device is away.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from agent import __version__
from agent.podstatus import rfc3339
from agent.runtimes import RuntimeRegistry
from wri_plugins.api import Fingerprint

#: Pods a bridged device admits, shown as capacity (the kubelet's default ``maxPods``).
MAX_PODS = 110


async def remote_nodes(
    registry: RuntimeRegistry, bridge: str, started_at: float
) -> list[dict[str, Any]]:
    """The Nodes of the configured remote runtimes' devices.

    Args:
        registry: the agent's runtimes (fingerprints are cached there for 10 s).
        bridge: this agent's node name, the device's bridge.
        started_at: when this agent started (seconds since the epoch), the nodes' creation.

    Returns:
        Node objects, by runtime name.
    """
    nodes = []
    for name, runtime in sorted(registry.runtimes.items()):
        if not runtime.capabilities.remote:
            continue
        fingerprint = await registry.fingerprint(name)
        attrs = fingerprint.attributes
        if attrs.get("node_name") and attrs.get("host"):
            nodes.append(node_object(name, fingerprint, bridge, started_at))
    return nodes


def node_object(
    runtime: str, fingerprint: Fingerprint, bridge: str, started_at: float
) -> dict[str, Any]:
    """One device's Node (see the module docstring).

    Args:
        runtime: the remote runtime's name.
        fingerprint: its fingerprint, with ``node_name`` and ``host`` attributes.
        bridge: the agent's node name.
        started_at: the Node's creation time, seconds since the epoch.
    """
    attrs = fingerprint.attributes
    name, host = attrs["node_name"], attrs["host"]
    arch = attrs.get("arch", "")
    memory = attrs.get("memory_bytes", "")
    capacity = {"pods": str(MAX_PODS)}
    if attrs.get("cpus", "").isdigit():
        capacity["cpu"] = attrs["cpus"]
    if memory.isdigit():
        capacity["memory"] = f"{int(memory) // 1024}Ki"
    ready = {
        "type": "Ready",
        "status": "True" if fingerprint.healthy else "Unknown",
        "reason": "RuntimeReachable" if fingerprint.healthy else "NodeStatusUnknown",
        "message": fingerprint.description,
        "lastHeartbeatTime": rfc3339(time.time()) if fingerprint.healthy else None,
        "lastTransitionTime": rfc3339(started_at),
    }
    labels = {
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "florete.io/runtime": runtime,
        "florete.io/bridge": bridge,
    }
    if arch:
        labels["kubernetes.io/arch"] = arch
    android = attrs.get("android", "")
    os_image = f"Android {android} {attrs.get('model', '')}".strip() if android else "Linux"
    spec: dict[str, Any] = {}
    if not fingerprint.healthy:
        spec["taints"] = [
            {"key": "node.kubernetes.io/unreachable", "effect": "NoSchedule"},
        ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"florete:{bridge}:{runtime}:{host}")),
            "labels": labels,
            "annotations": {"florete.io/address": host},
            "creationTimestamp": rfc3339(started_at),
        },
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": capacity,
            "conditions": [ready],
            "addresses": [
                {"type": "InternalIP", "address": host.rsplit(":", 1)[0]},
                {"type": "Hostname", "address": name},
            ],
            "nodeInfo": {
                "architecture": arch,
                "operatingSystem": "linux",
                "kernelVersion": attrs.get("kernel", ""),
                "osImage": os_image,
                "kubeletVersion": f"v{__version__}-florete",
                "containerRuntimeVersion": runtime,
                "bootID": attrs.get("boot_id", ""),
                "machineID": "",
                "systemUUID": "",
                "kubeProxyVersion": "",
            },
        },
    }
