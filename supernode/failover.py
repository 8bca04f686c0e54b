"""Failover rules without I/O: who is down, what moves where, and what a member runs.

Three pieces, each a pure function of its inputs (times are arguments, never read):

* :class:`FailureDetector` — when each member was last heard from (any Raft message or
  report). A member silent for longer than the failover timeout is *lost*.
* :func:`plan_round` — the leader's placement round, as one ``round`` command for
  :class:`~supernode.state.SupernodeState`: lost members marked down, members heard again marked
  up, pods of lost members placed elsewhere (per restartPolicy, below), Pending pods placed,
  deletions on lost members finished.
* :func:`local_plan` — what one member does with its own runtime to match the committed state:
  create the pods placed on it, stop those placed elsewhere or deleted, report deletions done.

Consistency rules (docs/supernode.md has the user's version):

* Only committed placements start pods, and only a leader with a majority commits, so the
  minority side of a partition never starts a replacement; its members keep running what they
  have (offline autonomy). When the partition heals, a member learns the placements it missed
  and stops every pod now placed elsewhere: afterwards each pod runs exactly once.
* ``restartPolicy: Always`` — a lost member's pods are placed elsewhere. During a partition the
  minority copy and the replacement both run (at least once); after the heal, exactly once.
* ``OnFailure`` — as Always, unless the lost member last reported the pod ``Succeeded``.
* ``Never`` — never started twice (at most once): a lost member's pods keep their placement,
  with reason ``NodeLost``; if the member comes back they are still its own.
* Pinned pods (``spec.nodeName``) stay with their member.
* A member with no contact to a leader (just restarted, or in the minority) creates no pod it
  is not already running; it only runs, releases or stops what it has.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Set
from typing import Any

from supernode.placement import MemberReport, Usage, choose
from supernode.state import PodRecord, SupernodeState

__all__ = ["FailureDetector", "LocalPlan", "LocalPod", "local_plan", "plan_round"]


class FailureDetector:
    """Last-heard times per member (a heartbeat failure detector).

    Args:
        now: the time the detector starts, seconds (any monotonic clock). A member never heard
            counts as heard at this time, so a node that just started gives every member one
            full timeout before calling it lost.
    """

    def __init__(self, now: float) -> None:
        self._start = now
        self._heard: dict[str, float] = {}

    def heard(self, node_id: str, now: float) -> None:
        """Something arrived from ``node_id`` at ``now``."""
        if now > self._heard.get(node_id, float("-inf")):
            self._heard[node_id] = now

    def silence(self, node_id: str, now: float) -> float:
        """Seconds since ``node_id`` was last heard (or since the detector started)."""
        return max(0.0, now - self._heard.get(node_id, self._start))

    def restart(self, now: float) -> None:
        """Start over: every member gets a full timeout from ``now`` (leadership was just won
        or the node just joined)."""
        self._start = now
        self._heard = {k: max(v, now) for k, v in self._heard.items()}

    def forget(self, node_id: str) -> None:
        """Drop a member that left."""
        self._heard.pop(node_id, None)


def _lost_reason(pod: PodRecord, state: SupernodeState) -> str:
    member = state.members.get(pod.member)
    return f"NodeLost: member {member.name if member else pod.member} is down"


def plan_round(
    state: SupernodeState,
    me: str,
    reports: Mapping[str, MemberReport],
    silence: Mapping[str, float],
    failover_after: float,
    at: float,
) -> dict[str, Any] | None:
    """The leader's decisions for one round, or None when there is nothing to change.

    Args:
        state: the committed state.
        me: the leader's node ID (always counted as up).
        reports: node ID -> latest report, the leader's own included.
        silence: node ID -> seconds since it was last heard (missing: never, counts as lost).
        failover_after: seconds of silence after which a member is lost.
        at: wall-clock time for the command (seconds since the epoch).

    Returns:
        A ``round`` command (see :class:`~supernode.state.SupernodeState`), or None.
    """
    alive = {
        node_id
        for node_id in state.members
        if node_id == me or silence.get(node_id, float("inf")) <= failover_after
    }
    down = sorted(n for n, m in state.members.items() if n not in alive and m.down_since is None)
    up = sorted(n for n, m in state.members.items() if n in alive and m.down_since is not None)
    candidates = [reports[n] for n in sorted(alive) if n in reports]
    unavailable = {n: "is down" for n in state.members if n not in alive}
    unavailable |= {n: "has not reported yet" for n in alive if n not in reports}
    usage: dict[str, Usage] = {}
    for pod in state.pods.values():
        if pod.member in alive:
            usage.setdefault(pod.member, Usage()).add(pod)

    place: list[dict[str, Any]] = []
    hold: list[dict[str, Any]] = []
    gone: list[dict[str, str]] = []

    def keep(pod: PodRecord, reason: str) -> None:
        if reason != pod.reason:
            hold.append(
                {"key": pod.key, "uid": pod.uid, "generation": pod.generation, "reason": reason}
            )

    for pod in state.ordered_pods():
        if pod.deleting:
            if not pod.member or pod.member not in alive:
                gone.append({"key": pod.key, "uid": pod.uid})
            continue
        if pod.member in alive:
            continue
        if pod.member:  # placed on a lost member
            if pod.pinned:
                keep(pod, _lost_reason(pod, state) + "; the pod is pinned to it")
                continue
            if pod.restart_policy == "Never":
                keep(pod, _lost_reason(pod, state) + "; restartPolicy Never: not started again")
                continue
            last = reports.get(pod.member)
            if (
                pod.restart_policy == "OnFailure"
                and last
                and last.terminal.get(pod.key) == ("Succeeded")
            ):
                keep(pod, _lost_reason(pod, state) + "; the pod had succeeded there")
                continue
        target, message = choose(pod, candidates, usage, unavailable)
        if target is None:
            keep(pod, (_lost_reason(pod, state) + "; " if pod.member else "") + message)
            continue
        usage.setdefault(target, Usage()).add(pod)
        place.append(
            {
                "key": pod.key,
                "uid": pod.uid,
                "generation": pod.generation,
                "member": target,
                "reason": "",
            }
        )
    if not (down or up or place or hold or gone):
        return None
    return {
        "op": "round",
        "at": at,
        "down": down,
        "up": up,
        "place": place,
        "hold": hold,
        "gone": gone,
    }


@dataclasses.dataclass(frozen=True)
class LocalPod:
    """A supernode pod as this member's own store has it.

    Attributes:
        key: ``"namespace/name"``.
        uid: the supernode uid it was created for ("" if unknown).
        generation: the placement generation it was created for (-1 if unknown).
        terminating: its local deletion is under way.
        labels: its labels.
        annotations: its annotations, without the ones the supernode adds.
    """

    key: str
    uid: str
    generation: int
    terminating: bool
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclasses.dataclass
class LocalPlan:
    """What a member does next (see :func:`local_plan`).

    Attributes:
        create: pods placed here that do not exist locally (only with leader contact).
        release: held pods (not started since the agent started) that are still placed here.
        delete: ``(key, grace or None)`` of local pods no longer placed here; None: the pod's
            own grace period.
        update: pods whose local copy has other labels, annotations or placement generation.
        gone: deleting pods placed here that no longer exist locally (to report as gone).
    """

    create: list[PodRecord] = dataclasses.field(default_factory=list)
    release: list[str] = dataclasses.field(default_factory=list)
    delete: list[tuple[str, float | None]] = dataclasses.field(default_factory=list)
    update: list[PodRecord] = dataclasses.field(default_factory=list)
    gone: list[PodRecord] = dataclasses.field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.create or self.release or self.delete or self.update or self.gone)


def local_plan(
    state: SupernodeState,
    me: str,
    local: Mapping[str, LocalPod],
    held: Set[str],
    *,
    leader_contact: bool,
) -> LocalPlan:
    """What member ``me`` must do so that its runtime matches the committed state.

    Args:
        state: the committed state as this member knows it.
        me: this member's node ID.
        local: key -> the supernode pods in this member's store.
        held: keys of local pods not started yet since the agent started (see
            :meth:`agent.reconciler.Reconciler.start`).
        leader_contact: this member hears from a leader with a majority (or is it): only then
            does it create pods; without, it runs (releases) or stops what it has.

    Returns:
        The plan; empty when the member is in step.
    """
    plan = LocalPlan()
    mine = {pod.key: pod for pod in state.placed_on(me)}
    for key, pod in mine.items():
        copy = local.get(key)
        if pod.deleting:
            if copy is None:
                plan.gone.append(pod)
            elif not copy.terminating:
                plan.delete.append((key, pod.grace))
            continue
        if copy is None:
            if leader_contact:
                plan.create.append(pod)
            continue
        if copy.terminating:
            continue
        if copy.uid and copy.uid != pod.uid:  # another pod of the same name: replace it
            plan.delete.append((key, None))
            continue
        if key in held:
            plan.release.append(key)
        meta = pod.manifest.get("metadata") or {}
        if (
            copy.generation != pod.generation
            or dict(copy.labels) != (meta.get("labels") or {})
            or dict(copy.annotations) != (meta.get("annotations") or {})
        ):
            plan.update.append(pod)
    for key, copy in sorted(local.items()):
        if key not in mine and not copy.terminating:
            plan.delete.append((key, None))
    return plan
