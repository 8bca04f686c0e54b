"""Pods through the supernode: scheduling fields, requests, local manifests and objects."""

from __future__ import annotations

from typing import Any

import pytest

from agent.errors import ManifestError
from agent.store import StoredPod
from supernode.pods import local_manifest, local_pod, member_object, pod_object, record_for
from supernode.state import SupernodeState


def manifest(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "cam", "annotations": {"florete.io/devices": "camera"}},
        "spec": {
            "containers": [
                {"name": "a", "image": "busybox", "resources": {"requests": {"cpu": "250m"}}},
                {"name": "b", "command": ["true"], "resources": {"limits": {"memory": "64Mi"}}},
            ],
            "initContainers": [
                {"name": "i", "command": ["true"], "resources": {"requests": {"cpu": "1"}}}
            ],
            **spec,
        },
    }


def test_record_takes_the_scheduling_fields_apart() -> None:
    record = record_for(
        manifest(nodeName="board-2", nodeSelector={"disk": "ssd"}, restartPolicy="Never"),
        "default",
        "u1",
        "rover",
        now=5.0,
    )
    assert (record.pinned, record.node_selector) == ("board-2", {"disk": "ssd"})
    assert "nodeName" not in record.manifest["spec"]
    assert "nodeSelector" not in record.manifest["spec"]
    assert (record.cpu_millis, record.memory_bytes) == (1000, 64 * 2**20)  # init container wins
    assert (record.runtime, record.devices, record.restart_policy) == (
        "podman",
        ["camera"],
        "Never",
    )
    assert record_for(manifest(nodeName="rover"), "default", "u", "rover").pinned == ""
    plain = manifest()
    plain["spec"]["containers"] = [{"name": "a", "command": ["true"]}]
    assert record_for(plain, None, "u", "rover", default_runtime="systemd").runtime == "systemd"


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"spec": {"nodeSelector": "ssd"}}, "spec.nodeSelector: expected a map"),
        ({"spec": {"nodeSelector": {"bad key!": "x"}}}, "is not a valid label key"),
        (
            {"metadata": {"name": "cam", "annotations": {"florete.io/devices": "Cam"}}},
            "device class",
        ),
        ({"metadata": {"name": "cam", "annotations": {"florete.io/placement": "x"}}}, "set by the"),
        ({"metadata": {"name": "cam", "namespace": "other"}}, "does not match the namespace"),
        ({"spec": {"containers": []}}, "spec.containers"),
    ],
)
def test_invalid_manifests_name_the_field(change: dict[str, Any], problem: str) -> None:
    body = manifest()
    for key, value in change.items():
        body[key] = {**body[key], **value}
    with pytest.raises(ManifestError, match=problem.replace("[", r"\[")):
        record_for(body, "default", "u", "rover")


def test_local_manifest_and_back() -> None:
    record = record_for(manifest(), "default", "u1", "rover")
    record.generation = 3
    local = local_manifest(record, "rover")
    annotations = local["metadata"]["annotations"]
    assert annotations["florete.io/supernode"] == "rover"
    assert annotations["florete.io/placement"] == "u1/3"
    assert local["spec"]["runtimeClassName"] == "podman"
    stored = StoredPod("default", "cam", "local-uid", local, 1.0, 1, None, None, {})
    seen = local_pod(stored)
    assert (seen.key, seen.uid, seen.generation, seen.terminating) == (
        "default/cam",
        "u1",
        3,
        False,
    )
    assert seen.annotations == {"florete.io/devices": "camera"}
    shown = member_object({"metadata": local["metadata"], "spec": local["spec"]}, record)
    assert shown["metadata"]["uid"] == "u1"
    assert "florete.io/supernode" not in shown["metadata"]["annotations"]


def test_objects_from_the_state_alone() -> None:
    state = SupernodeState()
    state.apply({"op": "create", "name": "rover", "node_id": "A", "member_name": "a", "at": 0.0})
    record = record_for(manifest(nodeSelector={"disk": "ssd"}), "default", "u1", "rover")
    record.reason = "0/1 members are available: 1 member didn't match nodeSelector."
    pending = pod_object(record, state, reachable=True)
    assert pending["status"]["phase"] == "Pending"
    assert pending["status"]["conditions"][0]["message"] == record.reason
    assert pending["spec"]["nodeSelector"] == {"disk": "ssd"}
    record.member, record.reason = "A", ""
    lost = pod_object(record, state, reachable=False)
    assert (lost["status"]["phase"], lost["status"]["reason"]) == ("Unknown", "NodeLost")
    assert lost["spec"]["nodeName"] == "a"
