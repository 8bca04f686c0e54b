"""Server-side printing for ``kubectl get``: content negotiation and ``meta.k8s.io/v1`` Tables.

``kubectl get`` asks for ``Accept: application/json;as=Table;v=v1;g=meta.k8s.io, ...,
application/json`` and prints the columns the server returns (with ``-o wide``, also those of
priority 1). The columns follow the API server's printers (``pkg/printers/internalversion/
printers.go``): pods ``NAME READY STATUS RESTARTS AGE [IP NODE NOMINATED NODE READINESS
GATES]``, nodes ``NAME STATUS ROLES AGE VERSION [INTERNAL-IP EXTERNAL-IP OS-IMAGE
KERNEL-VERSION CONTAINER-RUNTIME]``, events ``LAST SEEN TYPE REASON OBJECT MESSAGE [...]``,
namespaces ``NAME STATUS AGE``. Each row carries the object's metadata
(``PartialObjectMetadata``), or the whole object with ``includeObject=Object``, so that kubectl's
``--show-labels``, ``-L`` and ``--sort-by`` work.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agent.errors import BadRequestError, LocalError
from agent.httproute import Request
from agent.render import age, pod_row, pod_status_text

TABLE_CONTENT_TYPE = "application/json;as=Table;v=v1;g=meta.k8s.io"
_TABLE_VERSIONS = frozenset({"v1", "v1beta1"})

IncludeObject = Literal["None", "Metadata", "Object"]


class NotAcceptableError(LocalError):
    """The client accepts no representation the API can produce (HTTP 406)."""

    code = "not_acceptable"
    reason = "NotAcceptable"
    http_status = 406


@dataclass(frozen=True)
class Shape:
    """How to answer a read: plain objects, or a Table with rows carrying ``include``."""

    table: bool = False
    include: IncludeObject = "Metadata"


def negotiate(request: Request) -> Shape:
    """Pick the representation from the ``Accept`` header (RFC 9110 §12.5.1) and query.

    Media ranges are taken in the client's order (kubectl lists its preference first); a Table
    is chosen for ``application/json;as=Table;g=meta.k8s.io;v=v1`` (or ``v1beta1``), plain JSON
    for ``application/json``, ``*/*`` or ``application/*``. Protobuf and
    ``PartialObjectMetadata`` ranges are skipped. No header means plain JSON.

    Raises:
        NotAcceptableError: no listed range is one the API produces.
        BadRequestError: ``includeObject`` is not ``None``, ``Metadata`` or ``Object``.
    """
    raw = request.query.get("includeObject") or "Metadata"
    include: IncludeObject
    if raw == "None":
        include = "None"
    elif raw == "Object":
        include = "Object"
    elif raw == "Metadata":
        include = "Metadata"
    else:
        raise BadRequestError("includeObject must be None, Metadata or Object")
    header = request.header("accept")
    if not header:
        return Shape()
    for item in header.split(","):
        media, *raw_params = (part.strip() for part in item.split(";"))
        params = dict(p.partition("=")[::2] for p in raw_params)
        media = media.lower()
        if media not in ("application/json", "application/*", "*/*"):
            continue
        wanted = params.get("as")
        if wanted is None:
            return Shape()
        if (
            wanted == "Table"
            and params.get("g") == "meta.k8s.io"
            and params.get("v") in _TABLE_VERSIONS
        ):
            return Shape(table=True, include=include)
    raise NotAcceptableError(
        f"only application/json and Tables (as=Table;g=meta.k8s.io;v=v1) are served, not {header}"
    )


Column = tuple[str, str, int, str]  # name, type, priority, description
_NAME_COLUMN: Column = ("Name", "string", 0, "Name must be unique within a namespace.")


def _age_of(obj: Mapping[str, Any], now: float) -> str:
    return age((obj.get("metadata") or {}).get("creationTimestamp"), now)


def _pod_cells(pod: Mapping[str, Any], now: float) -> list[Any]:
    name, ready, _status, restarts, pod_age, ip, node = pod_row(pod, wide=True, now=now)
    gates = (pod.get("spec") or {}).get("readinessGates") or []
    return [
        name,
        ready,
        pod_status_text(pod),
        restarts,
        pod_age,
        ip,
        node,
        (pod.get("status") or {}).get("nominatedNodeName") or "<none>",
        f"0/{len(gates)}" if gates else "<none>",
    ]


def _node_cells(node: Mapping[str, Any], now: float) -> list[Any]:
    status = node.get("status") or {}
    ready = any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in status.get("conditions") or []
    )
    state = "Ready" if ready else "NotReady"
    if (node.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    labels = (node.get("metadata") or {}).get("labels") or {}
    prefix = "node-role.kubernetes.io/"
    roles = sorted(k[len(prefix) :] for k in labels if k.startswith(prefix))
    addresses = {a.get("type"): a.get("address") for a in status.get("addresses") or []}
    info = status.get("nodeInfo") or {}
    return [
        node["metadata"]["name"],
        state,
        ",".join(roles) or "<none>",
        _age_of(node, now),
        info.get("kubeletVersion", ""),
        addresses.get("InternalIP") or "<none>",
        addresses.get("ExternalIP") or "<none>",
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _event_cells(event: Mapping[str, Any], now: float) -> list[Any]:
    involved = event.get("involvedObject") or {}
    source = event.get("source") or {}
    return [
        age(event.get("lastTimestamp"), now),
        event.get("type", ""),
        event.get("reason", ""),
        f"{str(involved.get('kind', '')).lower()}/{involved.get('name', '')}",
        involved.get("fieldPath", ""),
        ", ".join(filter(None, (source.get("component"), source.get("host")))),
        event.get("message", ""),
        age(event.get("firstTimestamp"), now),
        int(event.get("count", 1)),
        event["metadata"]["name"],
    ]


def _namespace_cells(namespace: Mapping[str, Any], now: float) -> list[Any]:
    return [
        namespace["metadata"]["name"],
        (namespace.get("status") or {}).get("phase", "Active"),
        _age_of(namespace, now),
    ]


@dataclass(frozen=True)
class _Printer:
    columns: tuple[Column, ...]
    cells: Callable[[Mapping[str, Any], float], list[Any]]


_PRINTERS: Mapping[str, _Printer] = {
    "pods": _Printer(
        (
            _NAME_COLUMN,
            (
                "Ready",
                "string",
                0,
                "The aggregate readiness state of this pod for serving traffic.",
            ),
            ("Status", "string", 0, "The aggregate status of the containers in this pod."),
            ("Restarts", "string", 0, "The number of times the containers have restarted."),
            ("Age", "string", 0, "Time since the pod was created."),
            ("IP", "string", 1, "IP address allocated to the pod."),
            ("Node", "string", 1, "Name of the node the pod runs on."),
            ("Nominated Node", "string", 1, "Node nominated by a preemption, if any."),
            ("Readiness Gates", "string", 1, "Pod readiness gates."),
        ),
        _pod_cells,
    ),
    "nodes": _Printer(
        (
            _NAME_COLUMN,
            ("Status", "string", 0, "The status of the node."),
            ("Roles", "string", 0, "The roles of the node."),
            ("Age", "string", 0, "Time since the node's certificate was made."),
            ("Version", "string", 0, "florete-agent version reported by the node."),
            ("Internal-IP", "string", 1, "The node's internal address."),
            ("External-IP", "string", 1, "The node's external address."),
            ("OS-Image", "string", 1, "The operating system the node runs."),
            ("Kernel-Version", "string", 1, "The node's kernel version."),
            ("Container-Runtime", "string", 1, "The runtimes the agent offers."),
        ),
        _node_cells,
    ),
    "events": _Printer(
        (
            ("Last Seen", "string", 0, "Time since the event was last seen."),
            ("Type", "string", 0, "Normal or Warning."),
            ("Reason", "string", 0, "Why the event was recorded."),
            ("Object", "string", 0, "The object the event is about."),
            ("Subobject", "string", 1, "The part of the object, if any."),
            ("Source", "string", 1, "Who recorded the event."),
            ("Message", "string", 0, "What happened."),
            ("First Seen", "string", 1, "Time since the event was first seen."),
            ("Count", "integer", 1, "How often the event was seen."),
            ("Name", "string", 1, _NAME_COLUMN[3]),
        ),
        _event_cells,
    ),
    "namespaces": _Printer(
        (
            _NAME_COLUMN,
            ("Status", "string", 0, "The phase of the namespace."),
            ("Age", "string", 0, "Time since the namespace was first used."),
        ),
        _namespace_cells,
    ),
}


def table(
    resource: str,
    objects: Sequence[Mapping[str, Any]],
    resource_version: str,
    include: IncludeObject = "Metadata",
    now: float | None = None,
) -> dict[str, Any]:
    """Render objects as a ``meta.k8s.io/v1`` ``Table``.

    Args:
        resource: plural resource name: ``pods``, ``nodes``, ``events`` or ``namespaces``.
        objects: the objects, one row each, in order.
        resource_version: the list's ``metadata.resourceVersion``.
        include: what each row's ``object`` holds: nothing, ``PartialObjectMetadata`` or the
            whole object.
        now: the time ages are computed against (seconds since the epoch); now by default.

    Raises:
        KeyError: ``resource`` has no printer (a programming error).
    """
    printer = _PRINTERS[resource]
    moment = time.time() if now is None else now
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": printer.cells(obj, moment)}
        if include == "Object":
            row["object"] = obj
        elif include == "Metadata":
            row["object"] = {
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": obj.get("metadata") or {},
            }
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": [
            {
                "name": name,
                "type": kind,
                "format": "name" if name == "Name" else "",
                "description": text,
                "priority": priority,
            }
            for name, kind, priority, text in printer.columns
        ],
        "rows": rows,
    }
