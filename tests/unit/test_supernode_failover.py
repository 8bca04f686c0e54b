"""Failover rules: the detector, the leader's rounds per restartPolicy, and a member's plan."""

from __future__ import annotations

from typing import Any

from supernode.failover import FailureDetector, LocalPod, local_plan, plan_round
from supernode.placement import MemberReport
from supernode.state import PodRecord, SupernodeState

FAILOVER = 2.5


def report(node_id: str, **fields: Any) -> MemberReport:
    base: dict[str, Any] = {
        "node_id": node_id,
        "name": node_id.lower(),
        "cpu_millis": 2000,
        "memory_bytes": 2**32,
        "memory_available": 2**31,
        "cpu_idle": 0.5,
        "max_pods": 110,
        "runtimes": {"process": True},
        "labels": {},
        "devices": {},
    }
    return MemberReport(**{**base, **fields})


def supernode(*pods: PodRecord, members: str = "ABC") -> SupernodeState:
    state = SupernodeState()
    state.apply({"op": "create", "name": "r", "node_id": "A", "member_name": "a", "at": 0.0})
    for node_id in members[1:]:
        state.apply({"op": "member_add", "node_id": node_id, "name": node_id.lower(), "at": 0.0})
    for pod in pods:
        member = pod.member
        pod.member = ""
        assert state.apply({"op": "pod_create", "pod": pod.to_dict()}) == {"ok": True}
        if member:
            item = {"key": pod.key, "uid": pod.uid, "generation": 0, "member": member, "reason": ""}
            state.apply(
                {
                    "op": "round",
                    "at": 0.0,
                    "down": [],
                    "up": [],
                    "place": [item],
                    "hold": [],
                    "gone": [],
                }
            )
    return state


def pod(name: str, member: str = "", **fields: Any) -> PodRecord:
    manifest = {"metadata": {"name": name}, "spec": {}}
    return PodRecord(
        "default", name, f"uid-{name}", manifest, float(len(name)), member=member, **fields
    )


def reports(*node_ids: str) -> dict[str, MemberReport]:
    return {n: report(n) for n in node_ids}


def test_detector_counts_from_start_and_restarts() -> None:
    detector = FailureDetector(10.0)
    assert detector.silence("B", 12.0) == 2.0
    detector.heard("B", 11.0)
    detector.heard("B", 10.5)
    assert detector.silence("B", 14.0) == 3.0
    detector.restart(20.0)
    assert detector.silence("B", 21.0) == 1.0
    assert detector.silence("C", 21.0) == 1.0


def test_nothing_to_do_is_none() -> None:
    state = supernode(pod("web", "B"))
    silence = {"B": 0.1, "C": 0.1}
    assert plan_round(state, "A", reports("A", "B", "C"), silence, FAILOVER, 1.0) is None


def test_lost_member_pods_move_per_restart_policy() -> None:
    state = supernode(
        pod("always", "B"),
        pod("never", "B", restart_policy="Never"),
        pod("done", "B", restart_policy="OnFailure"),
        pod("failing", "B", restart_policy="OnFailure"),
        pod("pinned", "B", pinned="b"),
        pod("gone", "B", deleting=True),
    )
    state.pods["default/gone"].deleting = True
    last = {"B": report("B", terminal={"default/done": "Succeeded"}), **reports("A", "C")}
    command = plan_round(state, "A", last, {"B": 9.0, "C": 0.2}, FAILOVER, 100.0)
    assert command is not None
    assert command["down"] == ["B"]
    moved = {item["key"]: item["member"] for item in command["place"]}
    assert set(moved) == {"default/always", "default/failing"}
    assert set(moved.values()) <= {"A", "C"}
    held = {item["key"]: item["reason"] for item in command["hold"]}
    assert "restartPolicy Never" in held["default/never"]
    assert "succeeded" in held["default/done"]
    assert "pinned" in held["default/pinned"]
    assert command["gone"] == [{"key": "default/gone", "uid": "uid-gone"}]
    state.apply(command)
    assert state.members["B"].down_since == 100.0
    assert plan_round(state, "A", last, {"B": 9.0, "C": 0.2}, FAILOVER, 101.0) is None
    back = plan_round(state, "A", last, {"B": 0.1, "C": 0.2}, FAILOVER, 102.0)
    assert back is not None
    assert back["up"] == ["B"]
    assert not back["place"]


def test_pending_pods_are_placed_with_capacity_accounted() -> None:
    pods = [pod(f"p{i}", cpu_millis=800) for i in range(5)]
    state = supernode(*pods, members="AB")
    command = plan_round(state, "A", reports("A", "B"), {"B": 0.0}, FAILOVER, 1.0)
    assert command is not None
    placed = [item["member"] for item in command["place"]]
    assert sorted(placed) == ["A", "A", "B", "B"]
    (held,) = command["hold"]
    assert held["reason"] == "0/2 members are available: 2 members have insufficient cpu."
    state.apply(command)
    again = plan_round(state, "A", reports("A", "B"), {"B": 0.0}, FAILOVER, 2.0)
    assert again is None


def test_members_not_reported_yet_wait() -> None:
    state = supernode(pod("web"))
    command = plan_round(state, "A", {}, {"B": 0.0, "C": 0.0}, FAILOVER, 1.0)
    assert command is not None
    assert command["hold"][0]["reason"] == (
        "0/3 members are available: 3 members have not reported yet."
    )


def local(key: str, generation: int = 1, uid: str = "", **fields: Any) -> LocalPod:
    name = key.split("/")[1]
    return LocalPod(key, uid or f"uid-{name}", generation, False, {}, {}, **fields)


def test_local_plan_creates_only_with_leader_contact() -> None:
    state = supernode(pod("web", "B"))
    assert local_plan(state, "B", {}, set(), leader_contact=False).create == []
    assert [p.key for p in local_plan(state, "B", {}, set(), leader_contact=True).create] == [
        "default/web"
    ]


def test_local_plan_releases_deletes_updates_and_reports_gone() -> None:
    state = supernode(
        pod("mine", "B"), pod("moved", "C"), pod("old", "B"), pod("bye", "B"), pod("held", "B")
    )
    state.pods["default/bye"].deleting = True
    state.pods["default/bye"].grace = 4.0
    have = {
        "default/mine": local("default/mine"),
        "default/moved": local("default/moved"),
        "default/old": local("default/old", generation=0),
        "default/held": local("default/held"),
        "default/stray": local("default/stray"),
    }
    plan = local_plan(state, "B", have, {"default/held"}, leader_contact=False)
    assert plan.release == ["default/held"]
    assert plan.delete == [("default/moved", None), ("default/stray", None)]
    assert [p.key for p in plan.update] == ["default/old"]
    assert [p.key for p in plan.gone] == ["default/bye"]
    have["default/bye"] = local("default/bye")
    plan = local_plan(state, "B", have, set(), leader_contact=True)
    assert ("default/bye", 4.0) in plan.delete


def test_local_copy_of_another_pod_of_the_same_name_is_replaced() -> None:
    state = supernode(pod("web", "B"))
    plan = local_plan(
        state, "B", {"default/web": local("default/web", uid="old")}, set(), leader_contact=True
    )
    assert plan.delete == [("default/web", None)]
    assert not plan.create
