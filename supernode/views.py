"""The supernode as API objects: its ``Supernode`` status and its one Kubernetes ``Node``.

* :func:`status_object` — what ``supernode status`` prints: members (role, health, last heard,
  link, capacity, pods), leader, term, quorum, timing, aggregated capacity, placements.
* :func:`node_object` — the supernode as one Node of ``/api/v1/nodes``: capacity and
  allocatable summed over the members (allocatable over the members that are up), conditions
  ``Ready`` (a leader with a majority is reachable) and ``MembersDown``, and the members in the
  annotation ``florete.io/members`` (JSON), which ``get nodes`` prints beneath the supernode.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.podstatus import rfc3339
from supernode.placement import MemberReport, Usage

if TYPE_CHECKING:
    from supernode.member import Membership

__all__ = ["MEMBERS_ANNOTATION", "node_object", "status_object"]

MEMBERS_ANNOTATION = "florete.io/members"


def _cpu(millis: int) -> str:
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _capacity(reports: list[MemberReport]) -> dict[str, str]:
    return {
        "cpu": _cpu(sum(r.cpu_millis for r in reports)),
        "memory": f"{sum(r.memory_bytes for r in reports) // 1024}Ki",
        "pods": str(sum(r.max_pods for r in reports)),
    }


def _members(m: Membership, reachable: Callable[[str], bool]) -> list[dict[str, Any]]:
    now = m.now()
    links = m.link_samples()
    leader = m.raft.leader
    out = []
    for node_id, member in sorted(m.state.members.items(), key=lambda kv: kv[1].name):
        report = m.reports.get(node_id)
        placed = m.state.placed_on(node_id)
        usage = Usage.of(placed)
        silence = 0.0 if node_id == m.me else m.detector.silence(node_id, now)
        if member.down_since is not None:
            health = "down"
        elif node_id == m.me or silence <= m.timing.failover_after:
            health = "up"
        else:
            health = "unreachable"
        out.append(
            {
                "nodeID": node_id,
                "name": member.name,
                "role": "leader" if node_id == leader else "follower",
                "health": health,
                "reachable": reachable(node_id),
                "downSince": None if member.down_since is None else rfc3339(member.down_since),
                "lastHeardSecondsAgo": round(silence, 2),
                "link": links.get(node_id),
                "capacity": None if report is None else _capacity([report]),
                "requested": {
                    "cpu": _cpu(usage.cpu_millis),
                    "memory": f"{usage.memory_bytes // 1024}Ki",
                    "pods": str(usage.pods),
                },
                "runtimes": None if report is None else dict(report.runtimes),
                "devices": None if report is None else dict(report.devices),
                "labels": None if report is None else dict(report.labels),
            }
        )
    return out


def status_object(m: Membership, my_name: str, reachable: Callable[[str], bool]) -> dict[str, Any]:
    """The ``Supernode`` object of ``GET /apis/florete.io/v1alpha1/supernode``."""
    state = m.state
    members = _members(m, reachable)
    up = [
        m.reports[d["nodeID"]] for d in members if d["health"] == "up" and d["nodeID"] in m.reports
    ]
    leader = m.raft.leader
    leader_name = next((d["name"] for d in members if d["nodeID"] == leader), None)
    placements = []
    for pod in state.ordered_pods():
        member = state.members.get(pod.member)
        placements.append(
            {
                "namespace": pod.namespace,
                "name": pod.name,
                "member": member.name if member else "",
                "nodeID": pod.member,
                "generation": pod.generation,
                "deleting": pod.deleting,
                "reason": pod.reason,
                "pinned": pod.pinned,
            }
        )
    timing = m.timing
    return {
        "apiVersion": "florete.io/v1alpha1",
        "kind": "Supernode",
        "metadata": {"name": state.name},
        "status": {
            "nodeID": m.me,
            "name": my_name,
            "ready": m.gate_open,
            "leader": {"nodeID": leader, "name": leader_name} if leader else None,
            "leaderContact": m.leader_contact(),
            **m.raft.status(),
            "timing": {
                "rttSeconds": timing.rtt,
                "loss": timing.loss,
                "heartbeatSeconds": timing.heartbeat,
                "electionTimeoutSeconds": [timing.election_min, timing.election_max],
                "failoverAfterSeconds": timing.failover_after,
                "reportIntervalSeconds": timing.report_interval,
                "summary": timing.describe(),
            },
            "capacity": _capacity([r for r in m.reports.values() if r.node_id in state.members]),
            "allocatable": _capacity(up),
            "members": members,
            "placements": placements,
        },
    }


def node_object(m: Membership, reachable: Callable[[str], bool]) -> dict[str, Any]:
    """The supernode as one ``Node``."""
    state = m.state
    members = _members(m, reachable)
    reports = [r for r in m.reports.values() if r.node_id in state.members]
    up = [
        m.reports[d["nodeID"]] for d in members if d["health"] == "up" and d["nodeID"] in m.reports
    ]
    down = [d["name"] for d in members if d["health"] != "up"]
    arches = {r.labels.get("kubernetes.io/arch", "") for r in reports}
    labels = {
        "kubernetes.io/hostname": state.name,
        "kubernetes.io/os": "linux",
        "florete.io/supernode": "true",
    }
    if len(arches) == 1:
        labels["kubernetes.io/arch"] = arches.pop()
    leader = m.raft.leader
    leader_name = next((d["name"] for d in members if d["nodeID"] == leader), "?")
    ready = m.leader_contact()
    now = rfc3339(time.time())
    summary = [
        {
            "name": d["name"],
            "nodeID": d["nodeID"],
            "ready": d["health"] == "up",
            "leader": d["role"] == "leader",
        }
        for d in members
    ]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": state.name,
            "uid": str(
                uuid.uuid5(uuid.NAMESPACE_URL, f"florete:supernode:{state.name}:{state.created_at}")
            ),
            "labels": labels,
            "annotations": {MEMBERS_ANNOTATION: json.dumps(summary, separators=(",", ":"))},
            "creationTimestamp": rfc3339(state.created_at),
        },
        "spec": {},
        "status": {
            "capacity": _capacity(reports),
            "allocatable": _capacity(up),
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "LeaderReachable" if ready else "NoQuorum",
                    "message": (
                        f"leader {leader_name}, term {m.raft.term}, "
                        f"{len(members) - len(down)}/{len(members)} members up"
                        if ready
                        else "no leader with a majority of members is reachable from this member"
                    ),
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                },
                {
                    "type": "MembersDown",
                    "status": "True" if down else "False",
                    "reason": "MembersDown" if down else "AllMembersUp",
                    "message": ", ".join(down) if down else "every member is up",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                },
            ],
            "addresses": [{"type": "Hostname", "address": state.name}],
            "nodeInfo": {
                "architecture": labels.get("kubernetes.io/arch", ""),
                "operatingSystem": "linux",
                "kubeletVersion": f"v{__version__}-florete-supernode",
                "containerRuntimeVersion": ",".join(
                    sorted({n for r in reports for n, ok in r.runtimes.items() if ok})
                ),
                "kernelVersion": "",
                "osImage": "",
                "bootID": "",
                "machineID": "",
                "systemUUID": "",
                "kubeProxyVersion": "",
            },
        },
    }
