"""The neighbour table: observations, link state from sessions, goodbyes, snapshots."""

from __future__ import annotations

import json
import secrets

import pytest

from agent.identity import node_id_from_public_key
from agent.neighbours import NeighbourChange, NeighbourTable, TrustState


def _id() -> str:
    return node_id_from_public_key(secrets.token_bytes(32))


class Clock:
    """A monotonic and a wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def mono(self) -> float:
        return self.now

    def wall(self) -> float:
        return 1_700_000_000.0 + self.now


OWN = _id()
PEER = _id()
FP = "AB:" * 31 + "AB"
UDP = [("10.99.0.2", 7946, "eth0"), ("fe80::1%eth0", 7946, "eth0")]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def changes() -> list[NeighbourChange]:
    return []


@pytest.fixture
def table(clock: Clock, changes: list[NeighbourChange]) -> NeighbourTable:
    t = NeighbourTable(OWN, clock=clock.mono, wall_clock=clock.wall)
    t.add_listener(changes.append)
    return t


def _observe(table: NeighbourTable, **overrides: object) -> None:
    args: dict[str, object] = {
        "name": "bravo",
        "fingerprint": FP,
        "link": "udp",
        "source": "mdns",
        "addresses": UDP,
        "capabilities": {"rt": "process"},
        "version": 1,
    }
    args.update(overrides)
    table.observe(PEER, **args)  # type: ignore[arg-type]


def _state(table: NeighbourTable) -> str:
    node = table.get(PEER)
    assert node is not None
    return node.state


def kinds(changes: list[NeighbourChange]) -> list[str]:
    return [c.kind for c in changes]


def test_own_id_is_never_added(table: NeighbourTable, changes: list[NeighbourChange]) -> None:
    assert table.observe(OWN, name="me", fingerprint=FP, link="udp", source="mdns") is None
    assert table.link_up(OWN, "udp") is None
    assert len(table) == 0
    assert not changes


def test_observation_is_idempotent_and_only_discovers(
    table: NeighbourTable, changes: list[NeighbourChange], clock: Clock
) -> None:
    _observe(table)
    clock.now += 5
    _observe(table)
    assert kinds(changes) == ["added"]
    node = table.get(PEER)
    assert node is not None
    assert node.state == "discovered"
    assert not node.up
    assert node.first_seen == 100.0
    assert node.last_seen == 105.0
    assert node.links["udp"].source == "mdns"
    assert node.links["udp"].announced
    assert node.addresses == {"udp": UDP}


def test_observation_replaces_addresses_and_notifies_changes(
    table: NeighbourTable, changes: list[NeighbourChange]
) -> None:
    moved = [("10.99.0.9", 7946, "eth0")]
    _observe(table)
    _observe(table, addresses=moved)
    _observe(table, addresses=moved, name="bravo2", capabilities=None)
    node = table.get(PEER)
    assert node is not None
    assert node.addresses["udp"] == [("10.99.0.9", 7946, "eth0")]
    assert node.name == "bravo2"
    assert node.capabilities == {"rt": "process"}
    assert kinds(changes) == ["added", "updated", "updated"]


def test_only_sessions_bring_links_up_and_down(
    table: NeighbourTable, changes: list[NeighbourChange], clock: Clock
) -> None:
    _observe(table)
    table.link_up(PEER, "udp", cost=1.0, rtt=0.004)
    clock.now += 1
    table.link_up(PEER, "udp", rtt=0.005)  # a keepalive answer: no new event
    node = table.get(PEER)
    assert node is not None
    assert node.up
    assert node.state == "up"
    assert node.links["udp"].rtt == 0.005
    assert node.links["udp"].cost == 1.0
    _observe(table)  # discovery while up changes nothing
    assert node.links["udp"].up
    assert node.links["udp"].source == "session"
    table.link_down(PEER, "udp", "keepalive timeout")
    table.link_down(PEER, "udp", "keepalive timeout")  # already down: nothing
    assert _state(table) == "down"
    assert node.links["udp"].reason == "keepalive timeout"
    assert kinds(changes) == ["added", "up", "down"]


def test_withdrawn_announcement_does_not_touch_liveness(
    table: NeighbourTable, changes: list[NeighbourChange]
) -> None:
    _observe(table)
    table.link_up(PEER, "udp")
    table.withdraw(PEER, "udp")
    node = table.get(PEER)
    assert node is not None
    assert node.up
    assert not node.links["udp"].announced
    _observe(table)
    assert node.links["udp"].announced
    assert kinds(changes) == ["added", "up", "withdrawn", "updated"]


def test_goodbye_marks_every_link_down_at_once(
    table: NeighbourTable, changes: list[NeighbourChange]
) -> None:
    _observe(table)
    table.link_up(PEER, "udp")
    table.link_up(PEER, "serial_radio:/dev/ttyUSB0")
    table.goodbye(PEER)
    table.goodbye(PEER)  # said already: nothing
    node = table.get(PEER)
    assert node is not None
    assert node.state == "gone"
    assert not node.up
    assert {s.reason for s in node.links.values()} == {"goodbye"}
    assert kinds(changes) == ["added", "up", "up", "down", "down", "goodbye"]
    _observe(table)  # heard again: no longer gone
    assert _state(table) == "down"


def test_session_before_discovery_adds_the_node(
    table: NeighbourTable, changes: list[NeighbourChange]
) -> None:
    table.link_up(PEER, "serial_radio:/dev/ttyUSB0", name="bravo")
    node = table.get(PEER)
    assert node is not None
    assert node.name == "bravo"
    assert node.fingerprint == ""
    assert node.links["serial_radio:/dev/ttyUSB0"].source == "session"
    assert kinds(changes) == ["added", "up"]


def test_unknown_nodes_and_links_are_ignored(
    table: NeighbourTable, changes: list[NeighbourChange]
) -> None:
    table.link_down(PEER, "udp", "x")
    table.withdraw(PEER, "udp")
    table.goodbye(PEER)
    assert not table.remove(PEER)
    assert not changes


def test_remove_forgets(table: NeighbourTable, changes: list[NeighbourChange]) -> None:
    _observe(table)
    assert table.remove(PEER)
    assert PEER not in table
    assert kinds(changes) == ["added", "removed"]


def test_snapshot_is_json_ready_with_trust_from_the_callable(clock: Clock) -> None:
    trust: dict[str, TrustState] = {PEER: "trusted"}
    table = NeighbourTable(
        OWN, lambda i: trust.get(i, "untrusted"), clock=clock.mono, wall_clock=clock.wall
    )
    _observe(table)
    other = _id()
    table.observe(other, name="alpha", fingerprint=FP, link="udp", source="mdns")
    clock.now += 2.5
    table.link_up(PEER, "udp", rtt=0.01)
    snap = json.loads(json.dumps(table.snapshot()))
    assert [n["name"] for n in snap] == ["alpha", "bravo"]
    bravo = snap[1]
    assert bravo["trust"] == "trusted"
    assert snap[0]["trust"] == "untrusted"
    assert bravo["state"] == "up"
    assert snap[0]["state"] == "discovered"
    assert bravo["addresses"]["udp"][1] == {
        "host": "fe80::1%eth0",
        "port": 7946,
        "interface": "eth0",
    }
    assert bravo["links"]["udp"]["rttSeconds"] == 0.01
    assert bravo["firstSeen"] == "2023-11-14T22:15:00.000+00:00"
    assert bravo["lastSeen"] == "2023-11-14T22:15:02.500+00:00"
    assert snap[0]["lastSeenAgoSeconds"] == 2.5
    trust[PEER] = "revoked"
    assert table.snapshot()[1]["trust"] == "revoked"


def test_a_failing_listener_does_not_break_the_table(
    table: NeighbourTable, changes: list[NeighbourChange], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(_change: NeighbourChange) -> None:
        raise RuntimeError("boom")

    remove = table.add_listener(broken)
    _observe(table)
    assert "boom" in caplog.text
    assert kinds(changes) == ["added"]
    remove()
    remove()
    _observe(table, name="other")
    assert kinds(changes) == ["added", "updated"]


def test_own_id_must_be_valid() -> None:
    with pytest.raises(ValueError, match="expected 56"):
        NeighbourTable("nope")
