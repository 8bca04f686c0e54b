"""Events through the supernode: a supernode pod's events under its supernode uid, a member's
answer limited to the pods placed on it and bounded in size, and the merged list that kubectl's
field selectors (``kubectl describe pod``) filter."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any, cast

import pytest

from agent.errors import BadRequestError, RemoteError
from agent.identity import node_id_from_public_key
from agent.kube_select import Selector
from agent.mesh import Mesh
from agent.store import StoredPod
from supernode.errors import NotMemberError
from supernode.events import (
    member_events,
    merge,
    page,
    placed_events,
    placed_uids,
    relabel,
    supernode_uids,
)
from supernode.methods import PAGE_BYTES, MeshMethods
from supernode.pods import local_manifest, record_for
from supernode.service import Supernode
from supernode.state import PodRecord

ME, OTHER, STRANGER = (node_id_from_public_key(bytes([n]) * 32) for n in (1, 2, 3))


def record(name: str, uid: str, member: str = ME) -> PodRecord:
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {"containers": [{"name": "main", "command": ["true"]}]},
    }
    made = record_for(manifest, "default", uid, "rover")
    made.member = member
    return made


def stored(local_uid: str, placed: PodRecord | None, name: str = "") -> StoredPod:
    """A pod in a member's store: the copy of ``placed``, or a plain pod named ``name``."""
    if placed is not None:
        manifest = local_manifest(placed, "rover")
        name = placed.name
    else:
        manifest = {"metadata": {"name": name}, "spec": {"containers": []}}
    return StoredPod("default", name, local_uid, manifest, 0.0, 1, None, None, {})


def event(pod: str, pod_uid: str, at: int, reason: str = "Started") -> dict[str, Any]:
    """An Event object as a member's events route makes it (``agent.api``)."""
    stamp = f"2025-01-01T00:00:{at:02d}Z"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": f"{pod}.{at:x}", "namespace": "default", "uid": f"{pod_uid}.{at:x}"},
        "involvedObject": {"kind": "Pod", "namespace": "default", "name": pod, "uid": pod_uid},
        "reason": reason,
        "message": f"{reason} {pod}",
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
    }


def describe_selector(name: str, uid: str) -> Selector:
    """The field selector of ``kubectl describe pod NAME`` (``GetFieldSelector``)."""
    fields = (
        f"involvedObject.name={name},involvedObject.namespace=default,"
        f"involvedObject.kind=Pod,involvedObject.uid={uid}"
    )
    return Selector.parse(None, fields, "events")


# --- uids -------------------------------------------------------------------------------------


def test_a_supernode_pods_events_take_its_supernode_uid() -> None:
    far = record("far", "s-far")
    pods = [stored("l-far", far), stored("l-own", None, name="own")]
    uids = supernode_uids(pods)
    assert uids == {"l-far": "s-far"}
    original = event("far", "l-far", 1)
    relabelled = relabel(original, uids)
    assert relabelled["involvedObject"]["uid"] == "s-far"
    assert original["involvedObject"]["uid"] == "l-far"  # the input is left alone
    assert relabelled["metadata"] == original["metadata"]
    own = event("own", "l-own", 2)
    assert relabel(own, uids) == own
    assert relabel({"reason": "x"}, uids) == {"reason": "x"}  # no involvedObject at all


def test_a_member_answers_only_for_the_current_placements_on_it() -> None:
    here, moved, old = record("here", "s-here"), record("moved", "s-moved", OTHER), record("o", "s")
    records = {"here": here, "moved": moved, "o": record("o", "s-new")}  # o: placed again since
    pods = [
        stored("l-here", here),
        stored("l-moved", moved),  # its copy here is being stopped: placed on the other member
        stored("l-old", old),  # a copy of an earlier pod of that name
        stored("l-own", None, name="own"),  # this member's own pod
        stored("l-gone", record("gone", "s-gone")),  # no longer in the supernode
    ]
    uids = placed_uids(pods, lambda ns, name: records.get(name), ME)
    assert uids == {"l-here": "s-here"}


def test_placed_events_are_filtered_by_kubectl_describes_selector() -> None:
    uids = {"l-far": "s-far", "l-next": "s-next"}
    events = [
        event("far", "l-far", 1, "Scheduled"),
        event("next", "l-next", 2),
        event("own", "l-own", 3),  # not a supernode pod's: never sent
        event("far", "l-far", 4),
    ]
    everything = placed_events(events, uids, Selector.parse(None, None, "events"))
    assert [e["involvedObject"]["name"] for e in everything] == ["far", "next", "far"]
    described = placed_events(events, uids, describe_selector("far", "s-far"))
    assert [(e["reason"], e["involvedObject"]["uid"]) for e in described] == [
        ("Scheduled", "s-far"),
        ("Started", "s-far"),
    ]
    assert placed_events(events, uids, describe_selector("far", "l-far")) == []


# --- pages and merging ------------------------------------------------------------------------


def test_pages_are_bounded_and_cover_every_event_once() -> None:
    events = [event(f"p{i}", f"u{i:03d}", i % 60, "x" * 500) for i in range(200)]
    limit = 10_000
    seen: list[str] = []
    after: str | None = None
    pages = 0
    while True:
        items, more = page(events, after, limit)
        pages += 1
        assert len(json.dumps(items)) <= limit + 2 * len(items)  # the separators aside
        seen += [e["metadata"]["uid"] for e in items]
        if not more:
            break
        after = items[-1]["metadata"]["uid"]
    assert sorted(seen) == seen == sorted(e["metadata"]["uid"] for e in events)
    assert pages > 10
    huge = event("big", "u", 1, "y" * (2 * limit))
    assert page([huge], None, limit) == ([huge], False)  # one event always goes
    assert page([huge, event("b", "v", 2)], None, limit) == ([huge], True)


def test_merge_is_oldest_first_and_once_each() -> None:
    mine = [event("here", "l1", 5), event("here", "l1", 20)]
    theirs = [event("far", "l2", 1), event("far", "l2", 20), event("here", "l1", 5)]
    merged = merge(mine, theirs)
    assert [(e["involvedObject"]["name"], e["firstTimestamp"][-3:-1]) for e in merged] == [
        ("far", "01"),
        ("here", "05"),
        ("here", "20"),  # a tie: the earlier list first
        ("far", "20"),
    ]
    assert merge() == []


# --- asking members ---------------------------------------------------------------------------


class Mesh2:
    """A mesh whose ``supernode.events`` answers come from a member's :class:`MeshMethods`."""

    def __init__(self, methods: MeshMethods, fail_after: int | None = None) -> None:
        self.methods = methods
        self.asked: list[dict[str, Any]] = []
        self.answers: list[dict[str, Any]] = []
        self.fail_after = fail_after

    async def request(self, node_id: str, method: str, body: Any, timeout: float) -> Any:  # noqa: ASYNC109
        assert (node_id, method) == (OTHER, "supernode.events")
        if self.fail_after is not None and len(self.asked) >= self.fail_after:
            raise RemoteError("the member does not answer")
        self.asked.append(body)
        answer = await self.methods._on_events(ME, body)
        self.answers.append(answer)
        return answer


def member_b(events: list[dict[str, Any]], records: list[PodRecord]) -> MeshMethods:
    """:class:`MeshMethods` of member B, which runs ``records`` and recorded ``events``."""
    pods = [stored(f"l-{r.name}", r) for r in records]
    by_name = {r.name: r for r in records}
    membership = SimpleNamespace(raft=SimpleNamespace(others={ME}), local_pods=lambda: pods)
    node = SimpleNamespace(
        me=OTHER,
        member=lambda: membership,
        record=lambda ns, name: by_name.get(name),
    )
    methods = MeshMethods(cast(Supernode, node))

    async def reader(namespace: str | None) -> list[dict[str, Any]]:
        assert namespace in (None, "default")
        return events

    methods.serve_events(reader)
    return methods


async def test_a_member_is_asked_page_by_page() -> None:
    records = [record(f"p{i}", f"s{i}", OTHER) for i in range(40)]
    events = [event(r.name, f"l-{r.name}", n, "x" * 2000) for n, r in enumerate(records)]
    events.append(event("own", "l-own", 50))  # B's own pod: not the supernode's
    mesh = Mesh2(member_b(events, records))
    got = await member_events(cast(Mesh, mesh), OTHER, None, None, 1.0)
    assert sorted(e["involvedObject"]["uid"] for e in got) == sorted(f"s{i}" for i in range(40))
    assert len(mesh.asked) >= 40 * 2000 // PAGE_BYTES
    assert mesh.asked[0] == {"namespace": None, "fieldSelector": None, "after": None}
    for asked, answer in zip(mesh.asked[1:], mesh.answers, strict=False):
        assert asked["after"] == answer["items"][-1]["metadata"]["uid"]
        assert answer["more"] is True
        assert len(json.dumps(answer)) < PAGE_BYTES + 100
    assert mesh.answers[-1]["more"] is False
    described = await member_events(
        cast(Mesh, Mesh2(member_b(events, records))),
        OTHER,
        "default",
        "involvedObject.name=p7,involvedObject.uid=s7",
        1.0,
    )
    assert [e["involvedObject"]["name"] for e in described] == ["p7"]


async def test_a_member_that_stops_answering_gives_what_it_gave() -> None:
    records = [record(f"p{i}", f"s{i}", OTHER) for i in range(40)]
    events = [event(r.name, f"l-{r.name}", n, "x" * 2000) for n, r in enumerate(records)]
    mesh = Mesh2(member_b(events, records), fail_after=1)
    got = await member_events(cast(Mesh, mesh), OTHER, None, None, 1.0)
    assert 0 < len(got) < 40
    silent = Mesh2(member_b(events, records), fail_after=0)
    assert await member_events(cast(Mesh, silent), OTHER, None, None, 1.0) == []


async def test_events_are_answered_only_to_members_and_checked() -> None:
    methods = member_b([event("p", "l-p", 1)], [record("p", "s-p", OTHER)])
    with pytest.raises(NotMemberError):
        await methods._on_events(STRANGER, {})
    with pytest.raises(BadRequestError, match="expected"):
        await methods._on_events(ME, [])
    with pytest.raises(BadRequestError, match="strings"):
        await methods._on_events(ME, {"namespace": 3})
    with pytest.raises(BadRequestError, match="field label not supported"):
        await methods._on_events(ME, {"fieldSelector": "spec.nodeName=x"})
    answer = await methods._on_events(ME, {})
    assert [e["involvedObject"]["uid"] for e in answer["items"]] == ["s-p"]
    assert answer["more"] is False
