"""Human output of the CLI: ``get`` tables and ``describe`` text, as kubectl prints them.

Pure functions from Kubernetes-shaped dicts (what the API returns) to text. The STATUS column and
ages follow kubectl (``pkg/printers/internalversion/printers.go`` ``printPod`` and
``apimachinery/pkg/util/duration.HumanDuration``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent.podstatus import parse_rfc3339


def human_duration(seconds: float) -> str:
    """Format an age as kubectl does: ``45s``, ``3m20s``, ``5h``, ``2d3h``, ``400d``."""
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m{s % 60}s" if s % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return f"{days}d{hours % 24}h" if hours % 24 else f"{days}d"
    return f"{days}d"


def age(timestamp: str | None, now: float | None = None) -> str:
    """Age of an RFC 3339 timestamp, or ``<unknown>``."""
    ts = parse_rfc3339(timestamp)
    if ts is None:
        return "<unknown>"
    return human_duration((now or time.time()) - ts)


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces, like kubectl's tabwriter."""
    all_rows = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in all_rows
    ]
    return "\n".join(lines)


def _terminated_text(term: Mapping[str, Any]) -> str:
    if term.get("reason"):
        return str(term["reason"])
    if term.get("signal"):
        return f"Signal:{term['signal']}"
    return f"ExitCode:{term.get('exitCode', 0)}"


def pod_status_text(pod: Mapping[str, Any]) -> str:
    """The STATUS column of ``kubectl get pods`` for one pod."""
    status = pod.get("status") or {}
    reason = status.get("reason") or status.get("phase") or "Unknown"
    inits = status.get("initContainerStatuses") or []
    initializing = False
    for i, cs in enumerate(inits):
        state = cs.get("state") or {}
        term = state.get("terminated")
        if term and term.get("exitCode") == 0:
            continue
        initializing = True
        waiting = state.get("waiting")
        if term:
            reason = "Init:" + _terminated_text(term)
        elif waiting and waiting.get("reason") not in (None, "", "PodInitializing"):
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{i}/{len(inits)}"
        break
    if not initializing:
        has_running = False
        for cs in reversed(status.get("containerStatuses") or []):
            state = cs.get("state") or {}
            if (state.get("waiting") or {}).get("reason"):
                reason = state["waiting"]["reason"]
            elif state.get("terminated"):
                reason = _terminated_text(state["terminated"])
            elif state.get("running") and cs.get("ready"):
                has_running = True
        if reason == "Completed" and has_running:
            reason = "Running"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        reason = "Terminating"
    return str(reason)


def pod_row(pod: Mapping[str, Any], wide: bool, now: float | None = None) -> list[str]:
    """One row of ``get pods``: NAME READY STATUS RESTARTS AGE [IP NODE]."""
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    containers = (pod.get("spec") or {}).get("containers") or []
    ready = sum(1 for cs in statuses if cs.get("ready"))
    restarts = sum(int(cs.get("restartCount", 0)) for cs in statuses)
    restart_text = str(restarts)
    last = [
        parse_rfc3339(((cs.get("lastState") or {}).get("terminated") or {}).get("finishedAt"))
        for cs in statuses
    ]
    finished = [t for t in last if t is not None]
    if restarts and finished:
        restart_text += f" ({human_duration((now or time.time()) - max(finished))} ago)"
    row = [
        pod["metadata"]["name"],
        f"{ready}/{len(containers)}",
        pod_status_text(pod),
        restart_text,
        age(pod["metadata"].get("creationTimestamp"), now),
    ]
    if wide:
        row += [status.get("podIP") or "<none>", (pod.get("spec") or {}).get("nodeName", "<none>")]
    return row


def pods_table(
    pods: Sequence[Mapping[str, Any]],
    wide: bool = False,
    all_namespaces: bool = False,
    now: float | None = None,
) -> str:
    """The ``get pods`` table, or ``No resources found`` text."""
    if not pods:
        return "No resources found"
    headers = ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    if wide:
        headers += ["IP", "NODE"]
    rows = [pod_row(p, wide, now) for p in pods]
    if all_namespaces:
        headers.insert(0, "NAMESPACE")
        rows = [
            [p["metadata"].get("namespace", "default"), *r] for p, r in zip(pods, rows, strict=True)
        ]
    return table(headers, rows)


def nodes_table(nodes: Sequence[Mapping[str, Any]], now: float | None = None) -> str:
    """The ``get nodes`` table: NAME STATUS ROLES AGE VERSION; a supernode's members (its
    ``florete.io/members`` annotation) follow it on rows of their own, indented."""
    rows = []
    for node in nodes:
        conditions = (node.get("status") or {}).get("conditions") or []
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
        info = (node.get("status") or {}).get("nodeInfo") or {}
        rows.append(
            [
                node["metadata"]["name"],
                "Ready" if ready else "NotReady",
                "<none>",
                age(node["metadata"].get("creationTimestamp"), now),
                info.get("kubeletVersion", ""),
            ]
        )
        members = (node["metadata"].get("annotations") or {}).get("florete.io/members")
        for member in json.loads(members) if members else []:
            role = "member,leader" if member.get("leader") else "member"
            status = "Ready" if member.get("ready") else "NotReady"
            rows.append([f"  └ {member.get('name', '?')}", status, role, "", ""])
    return table(["NAME", "STATUS", "ROLES", "AGE", "VERSION"], rows)


def _kv(pairs: Mapping[str, str] | None) -> list[str]:
    return [f"{k}={v}" for k, v in sorted((pairs or {}).items())] or ["<none>"]


def _state_lines(title: str, state: Mapping[str, Any]) -> list[str]:
    if not state:
        return []
    kind, body = next(iter(state.items()))
    lines = [f"{title + ':':<16}{kind.capitalize()}"]
    for key in ("reason", "message", "exitCode", "signal", "startedAt", "finishedAt"):
        if body.get(key) not in (None, ""):
            label = {"exitCode": "Exit Code", "startedAt": "Started", "finishedAt": "Finished"}.get(
                key, key.capitalize()
            )
            lines.append(f"  {label + ':':<14}{body[key]}")
    return lines


def _probe_text(kind: str, probe: Mapping[str, Any]) -> str:
    if "exec" in probe:
        what = "exec " + str(probe["exec"].get("command", []))
    elif "httpGet" in probe:
        get = probe["httpGet"]
        what = (
            f"http-get {get.get('scheme', 'HTTP').lower()}://{get.get('host', '')}:"
            f"{get.get('port')}{get.get('path', '/')}"
        )
    else:
        what = f"tcp-socket :{probe.get('tcpSocket', {}).get('port')}"
    return (
        f"{kind + ':':<16}{what} delay={probe.get('initialDelaySeconds', 0)}s "
        f"timeout={probe.get('timeoutSeconds', 1)}s period={probe.get('periodSeconds', 10)}s "
        f"#success={probe.get('successThreshold', 1)} "
        f"#failure={probe.get('failureThreshold', 3)}"
    )


def _container_block(spec: Mapping[str, Any], status: Mapping[str, Any]) -> list[str]:
    lines = [f"  {spec['name']}:"]
    body = [
        f"Container ID:   {status.get('containerID', '')}",
        f"Image:          {spec.get('image') or '<host process>'}",
    ]
    command = [*spec.get("command", []), *spec.get("args", [])]
    if command:
        body.append("Command:        " + " ".join(command))
    body += _state_lines("State", status.get("state") or {})
    body += _state_lines("Last State", status.get("lastState") or {})
    body += [
        f"Ready:          {status.get('ready', False)}",
        f"Restart Count:  {status.get('restartCount', 0)}",
    ]
    limits = (spec.get("resources") or {}).get("limits") or {}
    if limits:
        body.append("Limits:")
        body += [f"  {k + ':':<14}{v}" for k, v in sorted(limits.items())]
    for key, kind in (
        ("livenessProbe", "Liveness"),
        ("readinessProbe", "Readiness"),
        ("startupProbe", "Startup"),
    ):
        if spec.get(key):
            body.append(_probe_text(kind, spec[key]))
    env = spec.get("env") or []
    if env:
        body.append("Environment:")
        for var in env:
            value = var.get("value")
            if value is None:
                field = (var.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath")
                value = f"({field})"
            body.append(f"  {var['name']}:  {value}")
    return lines + ["    " + line for line in body]


def describe_pod(
    pod: Mapping[str, Any], events: Sequence[Mapping[str, Any]], now: float | None = None
) -> str:
    """``describe pod`` text: metadata, status, containers, conditions and events."""
    meta, spec, status = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    lines = [
        f"Name:             {meta['name']}",
        f"Namespace:        {meta.get('namespace', 'default')}",
        f"Node:             {spec.get('nodeName', '<none>')}/{status.get('hostIP', '')}",
        f"Start Time:       {status.get('startTime', '<unknown>')}",
        "Labels:           " + "\n                  ".join(_kv(meta.get("labels"))),
        "Annotations:      " + "\n                  ".join(_kv(meta.get("annotations"))),
        f"Status:           {pod_status_text(pod)}",
        f"IP:               {status.get('podIP', '')}",
        f"Runtime Class:    {spec.get('runtimeClassName') or '<automatic>'}",
    ]
    statuses = {s["name"]: s for s in status.get("initContainerStatuses") or []}
    if spec.get("initContainers"):
        lines.append("Init Containers:")
        for c in spec["initContainers"]:
            lines += _container_block(c, statuses.get(c["name"], {}))
    statuses = {s["name"]: s for s in status.get("containerStatuses") or []}
    lines.append("Containers:")
    for c in spec.get("containers", []):
        lines += _container_block(c, statuses.get(c["name"], {}))
    lines.append("Conditions:")
    lines += table(
        ["  Type", "Status"],
        [[f"  {c['type']}", c["status"]] for c in status.get("conditions") or []],
    ).splitlines()
    lines.append(f"QoS Class:        {status.get('qosClass', '')}")
    lines.append(f"Restart Policy:   {spec.get('restartPolicy', 'Always')}")
    if not events:
        lines.append("Events:           <none>")
        return "\n".join(lines)
    lines.append("Events:")
    rows = []
    for ev in events:
        when = age(ev.get("lastTimestamp"), now)
        if ev.get("count", 1) > 1:
            when += f" (x{ev['count']} over {age(ev.get('firstTimestamp'), now)})"
        rows.append(
            [
                f"  {ev.get('type', '')}",
                ev.get("reason", ""),
                when,
                (ev.get("source") or {}).get("component", ""),
                ev.get("message", ""),
            ]
        )
    lines += table(["  Type", "Reason", "Age", "From", "Message"], rows).splitlines()
    return "\n".join(lines)
