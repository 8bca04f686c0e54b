"""The durable Raft journal: records, torn tails, compaction, conversion; and with real pysyncobj
members, that nothing leaves a member before its journal is synced and that what was
acknowledged survives a power cut of every member at once (a model of the disk keeps only what
was fsynced), and a kill -9 of a member process."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pysyncobj.journal import FileJournal

from supernode.journal import MAGIC, DurableJournal
from supernode.raft import RaftNode
from supernode.state import SupernodeState
from supernode.timing import derive
from tests.unit.test_supernode_raft import Wire, command

CMD = b"\x01cmd"


def test_entries_term_vote_and_commit_survive_reopening(tmp_path: Path) -> None:
    journal = DurableJournal(tmp_path / "raft.log")
    for idx in range(1, 6):
        journal.add(CMD + bytes([idx]), idx, 2)
    journal.setCurrentTerm(3, "node-b")
    journal.setRaftCommitIndex(4)
    journal.onOneSecondTimer()
    assert journal.dirty
    journal.sync()
    assert not journal.dirty
    assert journal.syncs == 1  # five entries, one fdatasync
    journal.sync()
    assert journal.syncs == 1  # nothing new: no write
    journal._destroy()
    again = DurableJournal(tmp_path / "raft.log")
    assert len(again) == 5
    assert again[0] == (CMD + b"\x01", 1, 2)
    assert again[1:3] == [(CMD + b"\x02", 2, 2), (CMD + b"\x03", 3, 2)]
    assert (again.getCurrentTerm(), again.getVotedForNodeId(), again.getRaftCommitIndex()) == (
        3,
        "node-b",
        4,
    )
    assert stat.S_IMODE((tmp_path / "raft.log").stat().st_mode) == 0o600
    again._destroy()


def test_a_torn_tail_is_dropped_and_the_rest_kept(tmp_path: Path) -> None:
    path = tmp_path / "raft.log"
    journal = DurableJournal(path)
    for idx in range(1, 4):
        journal.add(CMD, idx, 1)
    journal._destroy()
    whole = path.read_bytes()
    # the power went while the last record was being written: only part of it reached the disk
    path.write_bytes(whole[:-2])
    assert len(DurableJournal(path)) == 2
    assert path.stat().st_size < len(whole)
    # a record whose bytes are wrong (a page of the old contents) fails its CRC
    path.write_bytes(whole[:-1] + b"\xff")
    again = DurableJournal(path)
    assert [e[1] for e in again] == [1, 2]
    again.add(CMD, 3, 1)  # appending goes on from the last good record
    again._destroy()
    assert [e[1] for e in DurableJournal(path)] == [1, 2, 3]


def test_truncation_and_compaction_persist(tmp_path: Path) -> None:
    path = tmp_path / "raft.log"
    journal = DurableJournal(path)
    for idx in range(1, 11):
        journal.add(CMD, idx, 1)
    journal.deleteEntriesFrom(8)  # a follower's conflicting tail
    journal.add(CMD, 9, 2)
    journal.deleteEntriesTo(3)  # a snapshot covers 1..3
    assert not journal.dirty  # rewritten and replaced durably
    journal._destroy()
    assert [(e[1], e[2]) for e in DurableJournal(path)] == [(i, 1) for i in range(4, 9)] + [(9, 2)]
    journal = DurableJournal(path)
    journal.clear()
    journal.add(CMD, 20, 3)
    journal._destroy()
    assert [e[1] for e in DurableJournal(path)] == [20]
    assert not (tmp_path / "raft.log.tmp").exists()


def test_a_foreign_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "raft.log").write_bytes(b"something else")
    with pytest.raises(OSError, match="not a florete Raft journal"):
        DurableJournal(tmp_path / "raft.log")


# pysyncobj's journal reads its meta file without closing it (journal.py MetaStorer.getMeta)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_pysyncobj_journal_is_converted(tmp_path: Path) -> None:
    old = FileJournal(str(tmp_path / "raft.journal"))
    for idx in range(1, 4):
        old.add(CMD, idx, 5)
    old.setCurrentTerm(6, "node-a")
    old.setRaftCommitIndex(3)
    old.onOneSecondTimer()
    old._destroy()
    journal = DurableJournal(tmp_path / "raft.log")
    assert [(e[1], e[2]) for e in journal] == [(1, 5), (2, 5), (3, 5)]
    assert (journal.getCurrentTerm(), journal.getVotedForNodeId()) == (6, "node-a")
    assert journal.getRaftCommitIndex() == 3
    assert not (tmp_path / "raft.journal").exists()
    assert not (tmp_path / "raft.journal.meta").exists()
    journal._destroy()
    assert (tmp_path / "raft.log").read_bytes().startswith(MAGIC)


class Disk:
    """What a power cut leaves on the disk: each file as of its last fsync or fdatasync, under
    the names its directory had at the directory's last fsync (nothing else written back: the
    worst case a journal must survive)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.synced: dict[int, bytes] = {}
        self.names: dict[str, dict[str, int]] = {}
        self.calls = 0
        real_fsync, real_fdatasync = os.fsync, os.fdatasync

        def fsync(fd: int) -> None:
            real_fsync(fd)
            self._record(fd)

        def fdatasync(fd: int) -> None:
            real_fdatasync(fd)
            self._record(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "fdatasync", fdatasync)

    def _record(self, fd: int) -> None:
        self.calls += 1
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            path = os.readlink(f"/proc/self/fd/{fd}")
            self.names[path] = {e.name: e.inode() for e in os.scandir(path) if e.is_file()}
        else:
            self.synced[info.st_ino] = os.pread(fd, info.st_size, 0)

    def image(self, directory: Path, into: Path) -> None:
        """Write what the power cut leaves of ``directory`` into ``into``."""
        into.mkdir(parents=True)
        for name, inode in self.names.get(str(directory.resolve()), {}).items():
            (into / name).write_bytes(self.synced.get(inode, b""))


async def test_nothing_is_sent_before_the_journal_is_synced(tmp_path: Path) -> None:
    wire = Wire()
    unsynced: list[str] = []
    ids = ["a", "b", "c"]
    for node_id in ids:
        (tmp_path / node_id).mkdir()
        node = wire.add(node_id, ids, files=tmp_path / node_id)
        inner = node.transport._send

        def checked(dst: str, data: bytes, me: str = node_id, send=inner) -> bool:  # type: ignore[no-untyped-def]
            journal = wire.nodes[me].journal
            if journal is not None and journal.dirty:
                unsynced.append(me)
            result: bool = send(dst, data)
            return result

        node.transport._send = checked
    async with _ticking(wire):
        await wire.until(lambda: len(wire.leaders()) == 1)
        (leader,) = wire.leaders()
        follower = next(n for n in ids if n != leader)
        for n in range(10):
            await wire.nodes[follower if n % 2 else leader].propose(command(n))
    assert unsynced == []
    syncs = {n: node.journal.syncs for n, node in wire.nodes.items() if node.journal}
    assert all(count >= 10 for count in syncs.values()), syncs
    for node in wire.nodes.values():
        node.destroy()


class _ticking:
    """Tick the wire's members every 10 ms while inside (the ``wire`` fixture's ticker)."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire
        self.task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            for node_id, node in list(self.wire.nodes.items()):
                node.tick(self.wire.connected(node_id))
            await asyncio.sleep(0.01)

    async def __aenter__(self) -> None:
        self.task = asyncio.create_task(self._run())

    async def __aexit__(self, *exc: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


async def test_acknowledged_changes_survive_a_power_cut_of_every_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = Disk(monkeypatch)
    ids = ["a", "b", "c"]
    wire = Wire()
    for node_id in ids:
        (tmp_path / node_id).mkdir()
        wire.add(node_id, ids, files=tmp_path / node_id)
    async with _ticking(wire):
        await wire.until(lambda: len(wire.leaders()) == 1)
        (leader,) = wire.leaders()
        for n in range(8):
            await wire.nodes[leader].propose(command(n))
        for node in wire.nodes.values():  # a snapshot: the dump replaces journal entries
            node._syncobj.forceLogCompaction()
        await wire.until(lambda: all((tmp_path / n / "raft.dump").exists() for n in ids))
        await asyncio.sleep(0.2)
        for n in range(8, 16):
            await wire.nodes[leader].propose(command(n))
        in_flight = [wire.nodes[leader].propose(command(n)) for n in range(16, 20)]
        # the power goes now, on every member at once
        for node_id in ids:
            disk.image(tmp_path / node_id, tmp_path / "after" / node_id)
    for future in in_flight:
        future.cancel()
    for node in wire.nodes.values():
        node.destroy()

    back = Wire()
    for node_id in ids:
        back.add(node_id, ids, files=tmp_path / "after" / node_id)
    acked = {f"N{n}" for n in range(16)}
    async with _ticking(back):
        await back.until(lambda: len(back.leaders()) == 1)
        (leader,) = back.leaders()
        await back.nodes[leader].propose(command(99))  # commits everything before it
        await back.until(lambda: all("N99" in s.members for s in back.states.values()))
    for node_id, state in back.states.items():
        assert acked <= set(state.members), (node_id, sorted(state.members))
    assert len({s.to_json() for s in back.states.values()}) == 1
    for node in back.nodes.values():
        node.destroy()
    assert disk.calls > 0


MEMBER = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from supernode.raft import RaftNode
    from supernode.state import SupernodeState
    from supernode.timing import derive

    async def main() -> None:
        node = RaftNode("a", [], SupernodeState(), derive(None), lambda d, b: True,
                        files=Path(sys.argv[1]))
        async def tick() -> None:
            while True:
                node.tick(set())
                await asyncio.sleep(0.005)
        task = asyncio.create_task(tick())
        while not node.is_leader:
            await asyncio.sleep(0.01)
        n = 0
        while True:
            cmd = {"op": "member_add", "node_id": f"N{n}", "name": "x", "at": 1.0}
            await node.propose(json.dumps(cmd))
            print(n, flush=True)
            n += 1

    asyncio.run(main())
    """
)


def test_acknowledged_changes_survive_kill_9(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2]
    process = subprocess.Popen(
        [sys.executable, "-c", MEMBER, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=root,
        text=True,
    )
    assert process.stdout is not None
    acked = -1
    while acked < 30:
        line = process.stdout.readline()
        assert line, "the member process ended"
        acked = int(line)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    wanted = {f"N{n}" for n in range(acked + 1)}
    state = SupernodeState()
    node = RaftNode("a", [], state, derive(None), lambda d, b: True, files=tmp_path)
    try:
        for _ in range(500):  # ticked without a loop: it elects itself and applies its log
            node.tick(set())
            if wanted <= set(state.members):
                break
            time.sleep(0.01)
        assert wanted <= set(state.members)
    finally:
        node.destroy()
        process.stdout.close()
