"""Pods between the API, the replicated state and a member's own reconciler.

* :func:`record_for` turns a Pod manifest applied to the supernode into a
  :class:`~supernode.state.PodRecord`: the scheduling fields (``spec.nodeName`` pins it to a
  member, ``spec.nodeSelector`` selects members by label, annotation ``florete.io/devices``
  asks for devices) are taken out and checked here; the rest is validated as on any node.
* :func:`local_manifest` is what the member a pod is placed on applies to its own reconciler:
  the manifest plus the annotations ``florete.io/supernode`` (the supernode's name) and
  ``florete.io/placement`` (``<supernode uid>/<generation>``), by which the member recognises
  its supernode pods after a restart and tells an old placement from the current one.
* :func:`pod_object` renders a record as a Kubernetes Pod when the member running it cannot be
  asked (Pending, or its member is unreachable: phase ``Unknown``, reason ``NodeLost``).
"""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Mapping
from typing import Any

from agent.errors import ManifestError
from agent.manifest import parse_pod, pod_to_manifest
from agent.podspec import Pod
from agent.podstatus import rfc3339
from agent.store import StoredPod
from supernode.failover import LocalPod
from supernode.placement import DEVICES_ANNOTATION, parse_devices
from supernode.state import PodRecord, SupernodeState

__all__ = [
    "PLACEMENT_ANNOTATION",
    "SUPERNODE_ANNOTATION",
    "local_manifest",
    "local_pod",
    "pod_object",
    "record_for",
]

SUPERNODE_ANNOTATION = "florete.io/supernode"
PLACEMENT_ANNOTATION = "florete.io/placement"
_OURS = (SUPERNODE_ANNOTATION, PLACEMENT_ANNOTATION)
_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


def _requests(pod: Pod) -> tuple[int, int]:
    """The pod's effective CPU (millicores) and memory (bytes) requests, as the Kubernetes
    scheduler computes them: the larger of the app containers' sum and any init container's."""
    cpu = sum(c.requests.cpu_millis or 0 for c in pod.spec.containers)
    memory = sum(c.requests.memory_bytes or 0 for c in pod.spec.containers)
    for c in pod.spec.init_containers:
        cpu = max(cpu, c.requests.cpu_millis or 0)
        memory = max(memory, c.requests.memory_bytes or 0)
    return cpu, memory


def _node_selector(raw: Any) -> tuple[dict[str, str], list[str]]:
    if raw is None or raw == {}:
        return {}, []
    if not isinstance(raw, dict):
        return {}, ["spec.nodeSelector: expected a map of label keys to values"]
    problems = []
    for key, value in raw.items():
        if not isinstance(key, str) or not _LABEL_KEY.match(key):
            problems.append(f"spec.nodeSelector: {key!r} is not a valid label key")
        elif not isinstance(value, str) or not _LABEL_VALUE.match(value):
            problems.append(f"spec.nodeSelector[{key}]: {value!r} is not a valid label value")
    return ({str(k): str(v) for k, v in raw.items()} if not problems else {}), problems


def record_for(
    manifest: Mapping[str, Any],
    namespace: str | None,
    uid: str,
    supernode: str,
    default_runtime: str = "",
    now: float | None = None,
) -> PodRecord:
    """Validate a Pod applied to the supernode and build its record (unplaced).

    Args:
        manifest: the Pod object as sent to the API.
        namespace: the request path's namespace (the manifest's must match when set).
        uid: the uid to give it.
        supernode: the supernode's name (``spec.nodeName`` equal to it means "any member").
        default_runtime: ``runtime.default`` of this member, used when the pod names none and
            the automatic choice would otherwise apply.
        now: creation time (default: the clock).

    Returns:
        The record.

    Raises:
        ManifestError: the manifest is invalid (every problem, with its field path).
    """
    if not isinstance(manifest, Mapping):
        raise ManifestError(["a Pod must be a mapping"])
    spec = manifest.get("spec")
    body = copy.deepcopy(dict(manifest))
    selector, problems = _node_selector(
        spec.get("nodeSelector") if isinstance(spec, dict) else None
    )
    pinned = ""
    if isinstance(spec, dict):
        pinned = spec.get("nodeName") or ""
        body["spec"] = {k: v for k, v in spec.items() if k not in ("nodeName", "nodeSelector")}
        if pinned and not isinstance(pinned, str):
            problems.append("spec.nodeName: expected a string")
            pinned = ""
    if pinned == supernode:
        pinned = ""
    meta = body.get("metadata")
    if isinstance(meta, dict) and namespace is not None and not meta.get("namespace"):
        body["metadata"] = {**meta, "namespace": namespace}
    try:
        pod = parse_pod(body)
    except ManifestError as err:
        raise ManifestError([*problems, *err.errors]) from None
    if namespace is not None and pod.metadata.namespace != namespace:
        problems.append(
            f'metadata.namespace: the namespace of the object ("{pod.metadata.namespace}") '
            f'does not match the namespace of the request ("{namespace}")'
        )
    devices: list[str] = []
    wanted = pod.metadata.annotations.get(DEVICES_ANNOTATION)
    if wanted is not None:
        try:
            devices = parse_devices(wanted)
        except ValueError as err:
            problems.append(f"metadata.annotations[{DEVICES_ANNOTATION}]: {err}")
    for key in _OURS:
        if key in pod.metadata.annotations:
            problems.append(f"metadata.annotations[{key}]: set by the supernode, not by users")
    if problems:
        raise ManifestError(problems)
    cpu, memory = _requests(pod)
    containers = (*pod.spec.init_containers, *pod.spec.containers)
    runtime = pod.spec.runtime_class_name or default_runtime
    if not runtime:
        runtime = "podman" if any(c.image for c in containers) else "process"
    return PodRecord(
        namespace=pod.metadata.namespace,
        name=pod.metadata.name,
        uid=uid,
        manifest=pod_to_manifest(pod),
        created_at=time.time() if now is None else now,
        node_selector=selector,
        pinned=pinned,
        cpu_millis=cpu,
        memory_bytes=memory,
        runtime=runtime,
        devices=devices,
        restart_policy=pod.spec.restart_policy,
        grace=float(pod.spec.termination_grace_period_seconds),
    )


def local_manifest(record: PodRecord, supernode: str) -> dict[str, Any]:
    """The manifest the member ``record`` is placed on applies to its reconciler."""
    manifest = copy.deepcopy(record.manifest)
    metadata = manifest.setdefault("metadata", {})
    annotations = dict(metadata.get("annotations") or {})
    annotations[SUPERNODE_ANNOTATION] = supernode
    annotations[PLACEMENT_ANNOTATION] = f"{record.uid}/{record.generation}"
    metadata["annotations"] = annotations
    spec = manifest.setdefault("spec", {})
    if record.runtime and not spec.get("runtimeClassName"):
        spec["runtimeClassName"] = record.runtime
    return manifest


def is_supernode_pod(stored: StoredPod, supernode: str | None = None) -> bool:
    """The stored pod was placed here by a supernode (by ``supernode`` if given)."""
    owner = (stored.manifest.get("metadata") or {}).get("annotations", {}).get(SUPERNODE_ANNOTATION)
    return owner is not None and (supernode is None or owner == supernode)


def local_pod(stored: StoredPod) -> LocalPod:
    """What :func:`supernode.failover.local_plan` needs to know about a local supernode pod."""
    metadata = stored.manifest.get("metadata") or {}
    annotations = dict(metadata.get("annotations") or {})
    uid, _, generation = annotations.get(PLACEMENT_ANNOTATION, "").rpartition("/")
    return LocalPod(
        key=f"{stored.namespace}/{stored.name}",
        uid=uid,
        generation=int(generation) if generation.isdigit() else -1,
        terminating=stored.deletion_at is not None,
        labels=dict(metadata.get("labels") or {}),
        annotations={k: v for k, v in annotations.items() if k not in _OURS},
    )


def scheduling_spec(record: PodRecord) -> dict[str, Any]:
    """The scheduling fields of the record as they go back into a Pod's ``spec``."""
    extra: dict[str, Any] = {}
    if record.node_selector:
        extra["nodeSelector"] = dict(record.node_selector)
    return extra


def pod_object(record: PodRecord, state: SupernodeState, reachable: bool) -> dict[str, Any]:
    """A Pod object for ``record`` made from the replicated state alone.

    Args:
        record: the pod.
        state: the state (for member names).
        reachable: its member answers (False: phase Unknown, reason NodeLost).
    """
    manifest = copy.deepcopy(record.manifest)
    metadata = {
        **manifest["metadata"],
        "uid": record.uid,
        "creationTimestamp": rfc3339(record.created_at),
    }
    spec = {**manifest["spec"], **scheduling_spec(record)}
    member = state.members.get(record.member)
    if member is not None:
        spec["nodeName"] = member.name
    if not record.member:
        status: dict[str, Any] = {
            "phase": "Pending",
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": record.reason or "waiting for the leader to place it",
                }
            ],
        }
    elif not reachable:
        status = {
            "phase": "Unknown",
            "reason": "NodeLost",
            "message": record.reason
            or f"member {spec.get('nodeName', record.member)} does not answer",
        }
    else:
        status = {"phase": "Pending", "reason": "ContainerCreating"}
    if record.deleting:
        metadata["deletionTimestamp"] = rfc3339(time.time())
        metadata["deletionGracePeriodSeconds"] = int(record.grace)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec, "status": status}


def member_object(obj: Mapping[str, Any], record: PodRecord) -> dict[str, Any]:
    """A member's own Pod object of a supernode pod, as the supernode shows it: the supernode's
    uid, the user's annotations and the scheduling fields."""
    out = copy.deepcopy(dict(obj))
    metadata = dict(out.get("metadata") or {})
    annotations = {
        k: v for k, v in (metadata.get("annotations") or {}).items() if k != SUPERNODE_ANNOTATION
    }
    if annotations:
        metadata["annotations"] = annotations
    else:
        metadata.pop("annotations", None)
    metadata["uid"] = record.uid
    out["metadata"] = metadata
    out["spec"] = {**(out.get("spec") or {}), **scheduling_spec(record)}
    return out
