"""The replicated state machine: every command's transition, refusals, garbage never raises."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from supernode.state import PodRecord, SupernodeState


def record(name: str = "web", **fields: Any) -> PodRecord:
    manifest = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {}}
    return PodRecord("default", name, f"uid-{name}", manifest, 1.0, **fields)


def created(*members: str) -> SupernodeState:
    state = SupernodeState()
    assert state.apply(
        {"op": "create", "name": "rover", "node_id": "A", "member_name": "a", "at": 5.0}
    ) == {"ok": True}
    for node_id in members:
        state.apply({"op": "member_add", "node_id": node_id, "name": node_id.lower(), "at": 6.0})
    return state


def place(state: SupernodeState, key: str, member: str) -> dict[str, Any]:
    pod = state.pods[key]
    item = {
        "key": key,
        "uid": pod.uid,
        "generation": pod.generation,
        "member": member,
        "reason": "",
    }
    return state.apply(
        {"op": "round", "at": 9.0, "down": [], "up": [], "place": [item], "hold": [], "gone": []}
    )


def test_create_once_then_members() -> None:
    state = created("B")
    assert state.name == "rover"
    assert set(state.members) == {"A", "B"}
    again = state.apply(
        {"op": "create", "name": "x", "node_id": "B", "member_name": "b", "at": 1.0}
    )
    assert again["error"] == "already_exists"
    assert state.apply({"op": "member_add", "node_id": "B", "name": "bee", "at": 7.0}) == {
        "ok": True,
        "added": False,
    }
    assert state.members["B"].name == "bee"
    assert state.applied == 4


def test_pods_created_placed_deleted_gone() -> None:
    state = created("B")
    assert state.apply({"op": "pod_create", "pod": record().to_dict()}) == {"ok": True}
    again = state.apply({"op": "pod_create", "pod": record().to_dict()})
    assert again == {"error": "already_exists", "message": 'pods "web" already exists'}
    assert place(state, "default/web", "B") == {"ok": True, "stale": 0}
    pod = state.pods["default/web"]
    assert (pod.member, pod.generation) == ("B", 1)
    assert state.placed_on("B") == [pod]
    deleted = state.apply({"op": "pod_delete", "namespace": "default", "name": "web", "grace": 3})
    assert deleted == {"ok": True, "removed": False}
    assert pod.deleting
    assert pod.grace == 3.0
    wrong = state.apply({"op": "pod_gone", "namespace": "default", "name": "web", "uid": "other"})
    assert wrong["error"] == "not_found"
    assert state.apply(
        {"op": "pod_gone", "namespace": "default", "name": "web", "uid": "uid-web"}
    ) == {"ok": True}
    assert state.pods == {}


def test_unplaced_pod_is_deleted_at_once() -> None:
    state = created()
    state.apply({"op": "pod_create", "pod": record().to_dict()})
    result = state.apply({"op": "pod_delete", "namespace": "default", "name": "web", "grace": 30})
    assert result == {"ok": True, "removed": True}
    missing = state.apply({"op": "pod_delete", "namespace": "default", "name": "web", "grace": 30})
    assert missing["error"] == "not_found"


def test_stale_round_items_are_skipped() -> None:
    state = created("B", "C")
    state.apply({"op": "pod_create", "pod": record().to_dict()})
    place(state, "default/web", "B")
    stale = {"key": "default/web", "uid": "uid-web", "generation": 0, "member": "C", "reason": ""}
    unknown = {"key": "default/web", "uid": "uid-web", "generation": 1, "member": "Z", "reason": ""}
    result = state.apply(
        {
            "op": "round",
            "at": 1.0,
            "down": ["C"],
            "up": [],
            "place": [stale, unknown],
            "hold": [],
            "gone": [],
        }
    )
    assert result == {"ok": True, "stale": 2}
    assert state.pods["default/web"].member == "B"
    assert state.members["C"].down_since == 1.0
    state.apply(
        {"op": "round", "at": 2.0, "down": [], "up": ["C"], "place": [], "hold": [], "gone": []}
    )
    assert state.members["C"].down_since is None


def test_member_remove_unplaces_its_pods() -> None:
    state = created("B")
    state.apply({"op": "pod_create", "pod": record().to_dict()})
    place(state, "default/web", "B")
    assert state.apply({"op": "member_remove", "node_id": "B"}) == {"ok": True, "unplaced": 1}
    pod = state.pods["default/web"]
    assert pod.member == ""
    assert pod.generation == 1
    assert "left" in pod.reason


def test_labels_and_annotations_change() -> None:
    state = created()
    state.apply({"op": "pod_create", "pod": record().to_dict()})
    command = {
        "op": "pod_meta",
        "namespace": "default",
        "name": "web",
        "labels": {"a": "1"},
        "annotations": {},
    }
    assert state.apply(command) == {"ok": True}
    assert state.pods["default/web"].manifest["metadata"] == {"name": "web", "labels": {"a": "1"}}


def test_invalid_commands_change_nothing() -> None:
    state = created()
    before = state.to_json()
    commands: list[Any] = [
        None,
        [],
        {"op": 3},
        {"op": "nope"},
        {"op": "pod_create", "pod": {"name": "x"}},
        {"op": "pod_create", "pod": {**record().to_dict(), "restart_policy": "Sometimes"}},
        {"op": "pod_create", "pod": {**record().to_dict(), "cpu_millis": True}},
        {"op": "round", "at": 1.0, "down": [1], "up": [], "place": [], "hold": [], "gone": []},
        {
            "op": "round",
            "at": 1.0,
            "down": ["A"],
            "up": [],
            "place": [{"key": "k"}],
            "hold": [],
            "gone": [],
        },
    ]
    for command in commands:
        assert "error" in state.apply(command)
    assert state.apply_json("{not json")["error"] == "invalid"
    after = json.loads(state.to_json())
    assert after.pop("applied") == json.loads(before).pop("applied") + 10
    assert after == {k: v for k, v in json.loads(before).items() if k != "applied"}


def test_json_round_trip() -> None:
    state = created("B")
    state.apply(
        {"op": "pod_create", "pod": record(devices=["camera"], node_selector={"a": "b"}).to_dict()}
    )
    place(state, "default/web", "B")
    copy = SupernodeState.from_json(state.to_json())
    assert copy == state


plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(
    op=st.sampled_from(
        [
            "create",
            "member_add",
            "member_cert",
            "member_remove",
            "pod_create",
            "pod_meta",
            "pod_delete",
            "pod_gone",
            "round",
            "x",
        ]
    ),
    fields=st.dictionaries(
        st.sampled_from(
            [
                "name",
                "node_id",
                "at",
                "pod",
                "namespace",
                "grace",
                "uid",
                "down",
                "place",
                "gone",
                "hold",
                "up",
                "labels",
                "annotations",
                "member_name",
                "certificate",
            ]
        ),
        plain,
    ),
)
def test_garbage_commands_never_raise(op: str, fields: dict[str, Any]) -> None:
    state = created("B")
    result = state.apply({**fields, "op": op})
    assert "ok" in result or "error" in result
    SupernodeState.from_json(state.to_json())
