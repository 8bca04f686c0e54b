"""pysyncobj through our transport, ticked by asyncio: election, replication, failover,
partitions, membership changes and the journal, with members in one event loop on a wire the
test controls (real pysyncobj, real timeouts: each case takes a few seconds)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.errors import RemoteProtocolError
from supernode.errors import NoQuorumError
from supernode.raft import RaftNode, decode_message, encode_message
from supernode.state import SupernodeState
from supernode.timing import derive


class Wire:
    """Members in one loop; ``cut`` isolates members, as a partition does."""

    def __init__(self) -> None:
        self.nodes: dict[str, RaftNode] = {}
        self.states: dict[str, SupernodeState] = {}
        self.cut: set[str] = set()
        self.dropped = 0

    def side(self, node_id: str) -> int:
        return 1 if node_id in self.cut else 0

    def add(
        self, node_id: str, others: list[str], files: Path | None = None, quiet: bool = False
    ) -> RaftNode:
        self.states[node_id] = SupernodeState()

        def send(dst: str, data: bytes) -> bool:
            asyncio.get_running_loop().call_soon(self.deliver, node_id, dst, data)
            return True

        node = RaftNode(
            node_id, others, self.states[node_id], derive(None), send, files=files, quiet=quiet
        )
        self.nodes[node_id] = node
        return node

    def deliver(self, src: str, dst: str, data: bytes) -> None:
        node = self.nodes.get(dst)
        if node is None or self.side(src) != self.side(dst):
            self.dropped += 1
            return
        node.deliver(src, decode_message(data))

    def connected(self, me: str) -> set[str]:
        return {n for n in self.nodes if n != me and self.side(n) == self.side(me)}

    def leaders(self, among: set[str] | None = None) -> set[str]:
        return {
            n for n, node in self.nodes.items() if node.is_leader and (among is None or n in among)
        }

    async def until(self, condition: Callable[[], bool], seconds: float = 10.0) -> None:
        async with asyncio.timeout(seconds):
            while not condition():  # noqa: ASYNC110 (the ticker task drives the nodes)
                await asyncio.sleep(0.02)


@pytest.fixture
async def wire() -> AsyncIterator[Wire]:
    w = Wire()

    async def ticker() -> None:
        while True:
            for node_id, node in list(w.nodes.items()):
                node.tick(w.connected(node_id))
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    yield w
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    for node in w.nodes.values():
        node.destroy()


def command(n: int) -> str:
    return json.dumps({"op": "member_add", "node_id": f"N{n}", "name": f"n{n}", "at": float(n)})


async def test_election_replication_and_leader_failover(wire: Wire) -> None:
    ids = ["a", "b", "c"]
    for node_id in ids:
        wire.add(node_id, ids)
    await wire.until(lambda: len(wire.leaders()) == 1)
    (leader,) = wire.leaders()
    follower = next(n for n in ids if n != leader)
    assert await wire.nodes[follower].propose(command(1)) == {"ok": True, "added": True}
    await wire.until(lambda: all("N1" in s.members for s in wire.states.values()))

    wire.cut = {leader}  # the old leader is alone: the others elect a new one
    rest = set(ids) - {leader}
    await wire.until(lambda: len(wire.leaders(rest)) == 1)
    (new,) = wire.leaders(rest)
    assert wire.nodes[new].term > 1
    assert await wire.nodes[new].propose(command(2)) == {"ok": True, "added": True}
    # the old leader cannot commit alone, and steps down
    with pytest.raises((NoQuorumError, TimeoutError)):
        async with asyncio.timeout(2.0):
            await wire.nodes[leader].propose(command(3))
    await wire.until(lambda: not wire.nodes[leader].is_leader)

    wire.cut = set()  # healed: the old leader catches up; its uncommitted change is gone
    await wire.until(lambda: all("N2" in s.members for s in wire.states.values()))
    await asyncio.sleep(0.5)
    assert all("N3" not in s.members for s in wire.states.values())
    assert len({s.to_json() for s in wire.states.values()}) == 1


async def test_a_member_joins_and_leaves(wire: Wire) -> None:
    ids = ["a", "b", "c"]
    for node_id in ids:
        wire.add(node_id, ids)
    await wire.until(lambda: len(wire.leaders()) == 1)
    await wire.nodes["a"].propose(command(1))
    joiner = wire.add("d", ids, quiet=True)
    await wire.nodes["b"].add_member("d")
    await wire.until(lambda: joiner.ready and "N1" in wire.states["d"].members)
    assert joiner.nodes == {"a", "b", "c", "d"}
    assert not joiner.is_leader
    joiner.set_timing(derive(None))
    (leader,) = wire.leaders()
    other = next(n for n in ids if n != leader)
    await wire.nodes[other].remove_member("d")
    await wire.until(
        lambda: all("d" not in node.nodes for n, node in wire.nodes.items() if n != "d")
    )


async def test_the_journal_survives_a_restart(wire: Wire, tmp_path: Path) -> None:
    node = wire.add("a", [], files=tmp_path)
    await wire.until(lambda: node.is_leader)
    for n in range(3):
        await node.propose(command(n))
    node.destroy()
    del wire.nodes["a"]
    again = wire.add("a", [], files=tmp_path)
    await wire.until(lambda: again.is_leader and len(wire.states["a"].members) == 3)
    assert again.term >= 2


def test_messages_are_cbor_of_plain_data() -> None:
    message = {"type": "append_entries", "entries": [(b"\x00cmd", 2, 1)], "term": 1}
    assert decode_message(encode_message(message)) == {
        "type": "append_entries",
        "entries": [[b"\x00cmd", 2, 1]],
        "term": 1,
    }
    for bad in (b"\xff", encode_message({"type": "steal"}), b"\x80"):
        with pytest.raises(RemoteProtocolError):
            decode_message(bad)


# pysyncobj leaves the snapshot it sends open (serializer.py getTransmissionData)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_late_member_gets_a_snapshot(wire: Wire, tmp_path: Path) -> None:
    ids = ["a", "b", "c"]
    for node_id in ids:
        (tmp_path / node_id).mkdir()
        wire.add(node_id, ids, files=tmp_path / node_id)
    await wire.until(lambda: len(wire.leaders()) == 1)
    (leader,) = wire.leaders()
    for n in range(5):
        await wire.nodes[leader].propose(command(n))
    for node in wire.nodes.values():
        node._syncobj.forceLogCompaction()
    await wire.until(lambda: (tmp_path / leader / "raft.dump").exists())
    await asyncio.sleep(0.3)
    for n in range(5, 7):  # entries after the snapshot
        await wire.nodes[leader].propose(command(n))
    assert wire.nodes[leader].status()["logLength"] < 5  # the log before it is gone
    (tmp_path / "d").mkdir()
    joiner = wire.add("d", ids, files=tmp_path / "d", quiet=True)
    await wire.nodes[leader].add_member("d")
    await wire.until(lambda: len(wire.states["d"].members) == 7)
    assert wire.states["d"].to_json() == wire.states[leader].to_json()
    assert joiner.ready
