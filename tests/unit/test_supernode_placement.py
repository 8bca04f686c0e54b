"""Placement: each filter, the Pending message, the spread, and report decoding."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from agent.errors import RemoteProtocolError
from supernode.placement import MemberReport, Usage, choose, parse_devices
from supernode.state import PodRecord

GIB = 2**30


def report(node_id: str, **fields: Any) -> MemberReport:
    base: dict[str, Any] = {
        "node_id": node_id,
        "name": node_id.lower(),
        "cpu_millis": 2000,
        "memory_bytes": 4 * GIB,
        "memory_available": 3 * GIB,
        "cpu_idle": 0.5,
        "max_pods": 110,
        "runtimes": {"process": True, "podman": False},
        "labels": {"kubernetes.io/hostname": node_id.lower()},
        "devices": {},
    }
    return MemberReport(**{**base, **fields})


def pod(**fields: Any) -> PodRecord:
    return PodRecord("default", "p", "u", {"metadata": {"name": "p"}}, 1.0, **fields)


def test_best_member_by_free_share_then_node_id() -> None:
    members = [report("B"), report("A"), report("C", cpu_idle=0.9)]
    assert choose(pod(), members, {}) == ("C", "")
    assert choose(pod(), members[:2], {}) == ("A", "")
    busy = {"A": Usage(pods=5)}
    assert choose(pod(), members[:2], busy) == ("B", "")


@pytest.mark.parametrize(
    ("needs", "member", "reason"),
    [
        ({"pinned": "b"}, {}, "1 member is not the pinned member"),
        ({"node_selector": {"disk": "ssd"}}, {}, "1 member didn't match nodeSelector"),
        ({"runtime": "podman"}, {}, "1 member has runtime podman unhealthy"),
        ({"runtime": "systemd"}, {}, "1 member lacks runtime systemd"),
        ({"cpu_millis": 2500}, {}, "1 member has insufficient cpu"),
        ({"memory_bytes": 5 * GIB}, {}, "1 member has insufficient memory"),
        ({"memory_bytes": 3 * GIB + 1}, {}, "1 member has insufficient memory"),
        ({}, {"max_pods": 0}, "1 member has too many pods"),
        ({"devices": ["camera"]}, {"devices": {"serial": 1}}, "1 member lacks device camera"),
    ],
)
def test_each_filter_names_itself(
    needs: dict[str, Any], member: dict[str, Any], reason: str
) -> None:
    assert choose(pod(**needs), [report("A", **member)], {}) == (
        None,
        f"0/1 members are available: {reason}.",
    )


def test_filters_that_pass() -> None:
    wanted = pod(
        pinned="a",
        node_selector={"kubernetes.io/hostname": "a"},
        cpu_millis=1000,
        memory_bytes=GIB,
        devices=["serial", "serial"],
    )
    assert choose(wanted, [report("A", devices={"serial": 2})], {}) == ("A", "")
    used = {"A": Usage(devices=Counter({"serial": 1}))}
    assert choose(wanted, [report("A", devices={"serial": 2})], used)[0] is None


def test_pending_message_counts_reasons_and_unavailable_members() -> None:
    members = [report("A"), report("B"), report("C", runtimes={"process": False})]
    target, message = choose(pod(node_selector={"x": "y"}), members, {}, {"D": "is down"})
    assert target is None
    assert message == (
        "0/4 members are available: 3 members didn't match nodeSelector, 1 member is down."
    )


def test_round_trip_and_bad_reports() -> None:
    good = report("A", devices={"camera": 1}, terminal={"default/x": "Succeeded"})
    assert MemberReport.from_wire(good.to_wire()) == good
    for bad in (
        None,
        {**good.to_wire(), "cpu_millis": "2"},
        {**good.to_wire(), "cpu_idle": 2.0},
        {**good.to_wire(), "devices": {"camera": -1}},
        {**good.to_wire(), "runtimes": {"process": 1}},
        {k: v for k, v in good.to_wire().items() if k != "labels"},
    ):
        with pytest.raises(RemoteProtocolError):
            MemberReport.from_wire(bad)


def test_device_annotation() -> None:
    assert parse_devices("serial, camera,serial") == ["camera", "serial", "serial"]
    for bad in ("", "Camera", "cam era", "a,,b"):
        with pytest.raises(ValueError, match=r"florete\.io/devices"):
            parse_devices(bad)
