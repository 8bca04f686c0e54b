"""Supernode benchmark: leader election and pod failover times beside the configured timeouts.

Three ``florete-agent run`` in three namespaces of a :class:`tests.netbed.NetBed` (one LAN
bridge, mDNS on), all trusting each other, form the supernode ``bench`` (``supernode create``
and ``join`` through the API). Pods are host processes ``sleep <marker>``; where a pod runs is
read from each namespace's process list. Each run kills one member as a board dies (every
process in its namespace, SIGKILL), measures, restarts it and waits until it is back:

* **member killed** (a follower with pods): seconds until each of its pods runs in another
  member's namespace. Beside it: the survivors' ``failover after`` timeout (goal <= 5 s).
* **leader killed**: seconds until a survivor reports a new leader (polled every 20 ms),
  beside the election timeout range (goal <= 2 s on a LAN), and until the old leader's pods
  run elsewhere.

Medians over the runs (``quick``: 2 runs each; else 5). Nothing leaves the namespaces made here;
they are deleted with every process in them at the end, also on failure or Ctrl-C.

Before that, the cost of the durable Raft journal (no test bed needed): three Raft members in
one process (real pysyncobj, messages through the event loop) commit changes one after the
other, with their journals in memory and then on disk (``/var/tmp``), synced before every
message (:mod:`supernode.journal`); the table shows the median commit time of each and the
journal syncs per commit. ``python -m bench.supernode [--full]``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from agent.apiclient import ApiClient
from agent.errors import ApiError, FloreteError
from tests.netbed import NetBed, NetNode, netbed_available

GROUP = "/apis/florete.io/v1alpha1"
MARKER = 810000
PODS = 12
GOAL_ELECTION = 2.0
GOAL_FAILOVER = 5.0


class _Member:
    """One agent in one namespace."""

    def __init__(self, node: NetNode, root: Path) -> None:
        self.node = node
        self.name = node.name
        self.state_dir = root / node.name
        self.log = root / f"{node.name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLORETE_")},
            "FLORETE_STATE_DIR": str(self.state_dir),
            "FLORETE_INTERFACES": "eth0",
            "FLORETE_LINK_PORT": "4737",
            "FLORETE_MDNS": "on",
            "FLORETE_NODE_NAME": self.name,
            "FLORETE_LOG_LEVEL": "info",
        }
        argv = self.node.argv([sys.executable, "-m", "agent.cli", "run"])
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(argv, env=env, stdout=log, stderr=log)
        _until(f"{self.name} serving", self._serving, 30)

    def _serving(self) -> bool:
        try:
            self.request("GET", "/version")
        except (FloreteError, OSError):
            return False
        return True

    def request(self, method: str, path: str, body: Any = None) -> Any:
        with ApiClient(self.state_dir / "agent.sock", timeout=60) as client:
            return client.request(method, path, body=body)

    def kill(self) -> float:
        """Every process in the namespace gets SIGKILL (a board losing power); returns when."""
        died = time.monotonic()
        for pid in self.node.run(["ip", "netns", "pids", self.node.ns], check=False).split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        if self.process is not None:
            self.process.wait()
            self.process = None
        return died

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = self.request("GET", f"{GROUP}/supernode")["status"]
        return result

    def running(self) -> set[int]:
        """Markers of the pods whose process runs in this namespace."""
        found = set()
        for pid in self.node.run(["ip", "netns", "pids", self.node.ns], check=False).split():
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if len(argv) >= 2 and argv[0].endswith(b"sleep") and argv[1].isdigit():
                found.add(int(argv[1]) - MARKER)
        return found


def _until(what: str, predicate: Callable[[], bool], timeout: float, every: float = 0.02) -> float:
    started = time.monotonic()
    while True:
        try:
            if predicate():
                return time.monotonic() - started
        except (FloreteError, OSError, KeyError):
            pass
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"{what}: not within {timeout:g} s")
        time.sleep(every)


def _pod(i: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"b{i}"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "c", "command": ["sleep", str(MARKER + i)]}],
        },
    }


@contextlib.contextmanager
def _supernode(count: int) -> Iterator[list[_Member]]:
    root = Path(tempfile.mkdtemp(prefix="flbsn-"))
    try:
        with NetBed() as bed:
            members = [_Member(bed.add_node(f"m{i}"), root) for i in range(count)]
            for m in members:
                m.start()
            pems = {
                m.name: m.request("GET", f"{GROUP}/certificate")["certificate"] for m in members
            }
            for m in members:
                for other in members:
                    if other is not m:
                        body = {"certificate": pems[other.name]}
                        m.request("POST", f"{GROUP}/peers", body)
            for m in members:
                want = {o.name for o in members if o is not m}
                _until(f"{m.name} sessions", functools.partial(_sees, m, want), 60, 0.2)
            members[0].request("POST", f"{GROUP}/supernode", {"name": "bench"})
            for m in members[1:]:
                m.request("POST", f"{GROUP}/supernode/join", {"name": "bench"})
            for i in range(PODS):
                members[0].request("POST", "/api/v1/namespaces/default/pods", _pod(i))
            _until("pods running", lambda: _once(members, range(PODS)), 60, 0.1)
            yield members
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _sees(member: _Member, names: set[str]) -> bool:
    return names <= _sessions(member)


def _sessions(member: _Member) -> set[str]:
    items = member.request("GET", f"{GROUP}/links")["items"]
    return {k["peerName"] for k in items if k["state"] == "established" and k["up"]}


def _once(members: list[_Member], pods: range) -> bool:
    seen: list[int] = []
    for m in members:
        if m.process is not None:
            seen += sorted(m.running())
    return sorted(seen) == list(pods)


def _leader(member: _Member) -> str | None:
    found = (member.status().get("leader") or {}).get("name")
    return str(found) if found else None


def _back(member: _Member, members: list[_Member]) -> bool:
    st = member.status()
    up = all(m["health"] == "up" for m in st["members"]) and len(st["members"]) == len(members)
    return bool(st["leaderContact"] and st["ready"] and up)


def _run(members: list[_Member], kill_leader: bool) -> dict[str, float]:
    chief = _leader(members[0])
    candidates = [m for m in members if (m.name == chief) == kill_leader]
    victim = max(candidates, key=lambda m: len(m.running()))  # a follower with pods
    if not victim.running():
        raise TimeoutError(f"{victim.name} runs no pod: nothing to fail over")
    others = [m for m in members if m is not victim]
    deciding = next((m for m in others if m.name == chief), others[0])  # who places the pods
    timing = deciding.status()["timing"]
    died = victim.kill()
    result = {
        "election_min": timing["electionTimeoutSeconds"][0],
        "election_max": timing["electionTimeoutSeconds"][1],
        "failover_after": timing["failoverAfterSeconds"],
    }
    if kill_leader:
        names = {m.name for m in others}
        _until("new leader", lambda: _leader(others[0]) in names, 30)
        result["election"] = time.monotonic() - died
    _until("pods elsewhere", lambda: _once(members, range(PODS)), 60)
    result["failover"] = time.monotonic() - died
    victim.start()
    _until(f"{victim.name} back", lambda: _back(victim, members), 90, 0.2)
    _until("pods once", lambda: _once(members, range(PODS)), 30, 0.1)
    return result


async def _commits(files: Path | None, count: int) -> tuple[list[float], float]:
    """Commit ``count`` changes one after the other on three in-process members; returns each
    commit's seconds and the journal syncs per commit (0 in memory)."""
    import asyncio

    from supernode.raft import RaftNode, decode_message
    from supernode.state import SupernodeState
    from supernode.timing import derive

    ids = ["a", "b", "c"]
    nodes: dict[str, RaftNode] = {}
    loop = asyncio.get_running_loop()

    def sender(src: str) -> Callable[[str, bytes], bool]:
        def send(dst: str, data: bytes) -> bool:
            loop.call_soon(lambda: nodes[dst].deliver(src, decode_message(data)))
            return True

        return send

    for node_id in ids:
        where = None if files is None else files / node_id
        if where is not None:
            where.mkdir(parents=True)
        nodes[node_id] = RaftNode(
            node_id, ids, SupernodeState(), derive(None), sender(node_id), files=where
        )

    async def tick() -> None:
        while True:
            for node_id, node in nodes.items():
                node.tick(set(ids) - {node_id})
            await asyncio.sleep(0.002)

    ticker = loop.create_task(tick())
    try:
        while not any(n.is_leader for n in nodes.values()):  # noqa: ASYNC110 (the ticker drives them)
            await asyncio.sleep(0.01)
        leader = next(n for n in nodes.values() if n.is_leader)
        before = sum(n.journal.syncs for n in nodes.values() if n.journal)
        took = []
        for i in range(count):
            command = {"op": "member_add", "node_id": f"N{i}", "name": "x", "at": 1.0}
            started = time.perf_counter()
            await leader.propose(json.dumps(command))
            took.append(time.perf_counter() - started)
        syncs = sum(n.journal.syncs for n in nodes.values() if n.journal) - before
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        for node in nodes.values():
            node.destroy()
    return took, syncs / count


def journal_cost(count: int = 200) -> None:
    """Print the commit time with the journal in memory and durable on disk."""
    import asyncio

    print(f"supernode: Raft commit, 3 members in one process, {count} changes (medians)")
    root = Path(tempfile.mkdtemp(prefix="flbench-raft-", dir="/var/tmp"))
    try:
        memory, _ = asyncio.run(_commits(None, count))
        disk, syncs = asyncio.run(_commits(root, count))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    mem_ms, disk_ms = statistics.median(memory) * 1e3, statistics.median(disk) * 1e3
    print(f"  journal in memory (no durability)    {mem_ms:6.2f} ms per commit")
    print(
        f"  durable journal (fdatasync, /var/tmp) {disk_ms:6.2f} ms per commit, "
        f"{syncs:.1f} syncs per commit over 3 members; x{disk_ms / mem_ms:.2f}"
    )


def main(quick: bool = True) -> None:
    """Print the tables (see the module docstring); ``quick`` does 2 runs per case, else 5."""
    journal_cost()
    print()
    print(f"supernode: failover on a LAN bridge, 3 members, {PODS} pods (medians)")
    reason = netbed_available()
    if reason is not None:
        print(f"  unavailable: {reason}")
        return
    runs = 2 if quick else 5
    follower: list[dict[str, float]] = []
    leader: list[dict[str, float]] = []
    try:
        with _supernode(3) as members:
            for _ in range(runs):
                follower.append(_run(members, kill_leader=False))
                leader.append(_run(members, kill_leader=True))
    except (TimeoutError, ApiError, FloreteError, OSError, subprocess.SubprocessError) as err:
        print(f"  unavailable: {err}")
        return

    def med(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    def verdict(value: float, goal: float) -> str:
        return f"<= {goal:g} s goal: {'met' if value <= goal else 'MISSED'}"

    table = [
        ("measure", "ours", "configured", "goal"),
        (
            "leader killed -> new leader",
            f"{med(leader, 'election'):.2f} s",
            f"election {med(leader, 'election_min'):.2f}-{med(leader, 'election_max'):.2f} s",
            verdict(med(leader, "election"), GOAL_ELECTION),
        ),
        (
            "member killed -> its pods Running elsewhere",
            f"{med(follower, 'failover'):.2f} s",
            f"failover after {med(follower, 'failover_after'):.2f} s",
            verdict(med(follower, "failover"), GOAL_FAILOVER),
        ),
        (
            "leader killed -> its pods Running elsewhere",
            f"{med(leader, 'failover'):.2f} s",
            f"failover after {med(leader, 'failover_after'):.2f} s",
            verdict(med(leader, "failover"), GOAL_FAILOVER),
        ),
    ]
    width = [max(len(r[i]) for r in table) for i in range(4)]
    for row in table:
        print("  " + "   ".join(c.ljust(w) for c, w in zip(row, width, strict=True)).rstrip())
    for label, rows in (("member killed", follower), ("leader killed", leader)):
        each = ", ".join(f"{r['failover']:.2f}" for r in rows)
        print(f"  {label}, each run: pods elsewhere {each} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="5 runs per case instead of 2")
    main(quick=not parser.parse_args().full)
