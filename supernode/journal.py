"""A durable Raft journal for pysyncobj: what a member acknowledges survives a power cut.

Raft keeps ``currentTerm``, ``votedFor`` and ``log[]`` "on stable storage before responding to
RPCs" (Ongaro and Ousterhout, *In Search of an Understandable Consensus Algorithm*, 2014,
Figure 2): a member that acknowledged an entry, or granted a vote, and then forgets it after a
power cut can let a committed entry be overwritten, or two leaders be elected in one term.
pysyncobj's own ``FileJournal`` writes entries into an mmap and its term and vote with
write-and-rename, and syncs neither; its header (the end of the last record) and the records
live in pages the kernel may write in any order, so a cut can also leave a journal that no
longer loads. :class:`DurableJournal` replaces it:

* **Entries** are appended to ``raft.log`` as records ``<len:u32 crc32:u32 idx:u64 term:u64>
  command`` (little-endian; CRC-32 over idx, term and command). :meth:`DurableJournal.sync`
  makes them durable with one ``fdatasync`` for everything written since the last sync (group
  commit). :class:`supernode.raft.RaftNode` calls it before any message leaves the node and
  at the end of every tick and delivery, so no answer (an AppendEntries success, a vote) and
  no result of a change (the API's answer) exists before the entries it reflects are on disk.
* **Loading** stops at the first record that is incomplete or fails its CRC and truncates the
  file there: such a record was being written when the power went, after the last sync, so
  nobody was ever told of it.
* **Term, vote and commit index** live in ``raft.log.meta`` (JSON), replaced durably (write a
  temporary file, fsync it, rename, fsync the directory) at once when the term or vote
  changes — before pysyncobj sends the vote or request it belongs to — and within a second
  when only the commit index moved (it is not needed for safety: a member relearns it).
* **Compaction** (dropping the entries a snapshot covers) writes the remaining records to a new
  file and replaces the journal durably. pysyncobj writes the snapshot (``raft.dump``, made
  here or received from the leader) with a rename; :func:`durable_replace` takes the place of
  that rename, so a snapshot is on disk before the journal entries it replaces are dropped.

Importing this module installs both: pysyncobj's journal factory accepts a
:class:`DurableJournal` as ``SyncObjConf.journalFile`` (and builds its own from anything
else, as before), and its serializer renames durably. A journal of pysyncobj's format left by
an earlier version (``raft.journal``) is converted on first open.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pysyncobj.serializer
import pysyncobj.syncobj
from pysyncobj.journal import FileJournal, Journal
from pysyncobj.pickle import to_bytes

__all__ = ["DurableJournal", "durable_replace", "fsync_directory"]

log = logging.getLogger(__name__)

MAGIC = b"FLORETE-RAFT-1\n\x00"
"""The journal file's first 16 bytes: format and version."""
_RECORD = struct.Struct("<IIQQ")  # command length, CRC-32, index, term
Entry = tuple[bytes, int, int]
"""A pysyncobj log entry: (command, index, term)."""


def fsync_directory(path: Path) -> None:
    """Make the names in directory ``path`` durable (after a create or a rename).

    Raises:
        OSError: the directory cannot be opened or synced.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_replace(source: str | Path, target: str | Path) -> None:
    """Rename ``source`` over ``target`` so that after a power cut ``target`` is either the
    old file or all of the new one: fsync the data, rename, fsync the directory.

    Raises:
        OSError: as ``os.fsync`` and ``os.replace`` raise.
    """
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(source, target)
    fsync_directory(Path(target).resolve().parent)


def _record(command: bytes, idx: int, term: int) -> bytes:
    body = struct.pack("<QQ", idx, term) + command
    return _RECORD.pack(len(command), zlib.crc32(body), idx, term) + command


def _parse(data: bytes) -> tuple[list[Entry], list[int], int]:
    """Records of a journal file -> (entries, the offset of each, the end of the last good)."""
    entries: list[Entry] = []
    offsets: list[int] = []
    offset = len(MAGIC)
    while offset + _RECORD.size <= len(data):
        length, crc, idx, term = _RECORD.unpack_from(data, offset)
        end = offset + _RECORD.size + length
        if end > len(data):
            break
        command = data[offset + _RECORD.size : end]
        if zlib.crc32(struct.pack("<QQ", idx, term) + command) != crc:
            break
        entries.append((command, idx, term))
        offsets.append(offset)
        offset = end
    return entries, offsets, offset


class DurableJournal(Journal):  # type: ignore[misc]  # pysyncobj has no type hints
    """pysyncobj's ``Journal`` interface over an append-only file of CRC-checked records.

    Args:
        path: the journal file (created, mode 0600, with its directory's entry synced);
            the meta file is ``path`` + ``.meta``.

    Attributes:
        syncs: how many times :meth:`sync` wrote to the disk (for benchmarks and tests).

    Raises:
        OSError: the file cannot be created, read or written (on every method).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.meta_path = path.with_name(path.name + ".meta")
        self.syncs = 0
        self.dirty = False
        self._meta_saved = True
        legacy = path.with_name("raft.journal")
        if not path.exists() and legacy.exists():
            self._convert(legacy)
        created = not path.exists()
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        data = _read_all(self._fd)
        if not data.startswith(MAGIC):
            if data.strip(b"\x00"):
                os.close(self._fd)
                raise OSError(f"{path} is not a florete Raft journal")
            data = MAGIC
            os.pwrite(self._fd, MAGIC, 0)
        self._entries, self._offsets, self._end = _parse(data)
        if self._end < len(data):
            log.warning(
                "raft journal %s: dropped %d bytes after the last complete record (written "
                "when the power went, never acknowledged)",
                path,
                len(data) - self._end,
            )
        os.ftruncate(self._fd, self._end)
        os.fsync(self._fd)
        if created:
            fsync_directory(path.parent)
        self._meta = self._read_meta()

    # ----------------------------------------------------------------- entries

    def add(self, command: bytes | str, idx: int, term: int) -> None:
        """Append one entry (durable after the next :meth:`sync`)."""
        data = to_bytes(command)
        record = _record(data, idx, term)
        os.pwrite(self._fd, record, self._end)
        self._entries.append((data, idx, term))
        self._offsets.append(self._end)
        self._end += len(record)
        self.dirty = True

    def clear(self) -> None:
        """Drop every entry (durable after the next :meth:`sync`)."""
        self._truncate(0)

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        """Drop the entries from position ``entryFrom`` on (a follower's conflicting tail)."""
        self._truncate(entryFrom)

    def deleteEntriesTo(self, entryTo: int) -> None:
        """Drop the entries before position ``entryTo`` (a snapshot covers them); durable at
        once: the file is rewritten and replaced."""
        kept = self._entries[entryTo:]
        tmp = self.path.with_name(self.path.name + ".tmp")
        records = b"".join(_record(*entry) for entry in kept)
        with tmp.open("wb") as file:
            file.write(MAGIC + records)
        durable_replace(tmp, self.path)
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_RDWR)
        self._entries, self._offsets, self._end = _parse(MAGIC + records)
        self.dirty = False

    def _truncate(self, position: int) -> None:
        if position >= len(self._entries):
            return
        self._end = self._offsets[position] if position > 0 else len(MAGIC)
        os.ftruncate(self._fd, self._end)
        del self._entries[position:]
        del self._offsets[position:]
        self.dirty = True

    def __getitem__(self, item: int | slice) -> Any:
        return self._entries[item]

    def __len__(self) -> int:
        return len(self._entries)

    def sync(self) -> None:
        """Make every change since the last sync durable (one ``fdatasync``); nothing to do
        when there was none."""
        if self.dirty:
            os.fdatasync(self._fd)
            self.dirty = False
            self.syncs += 1

    def flush(self) -> None:
        """pysyncobj's name for :meth:`sync`."""
        self.sync()

    def _destroy(self) -> None:
        if self._fd < 0:
            return
        self.sync()
        if not self._meta_saved:
            self._store_meta()
        os.close(self._fd)
        self._fd = -1

    # ----------------------------------------------------------------- term, vote, commit

    def _read_meta(self) -> dict[str, Any]:
        try:
            meta = json.loads(self.meta_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as err:
            raise OSError(f"raft journal meta {self.meta_path} is unreadable: {err}") from err
        return meta if isinstance(meta, dict) else {}

    def _store_meta(self) -> None:
        tmp = self.meta_path.with_name(self.meta_path.name + ".tmp")
        tmp.write_text(json.dumps(self._meta))
        durable_replace(tmp, self.meta_path)
        self._meta_saved = True

    def setCurrentTerm(self, term: int, votedForNodeId: str | None) -> None:
        """Store the term and the vote durably, at once (before the message that tells)."""
        self._meta["term"] = term
        self._meta["votedFor"] = votedForNodeId
        self._store_meta()

    def getCurrentTerm(self) -> int:
        """The stored term (0 at first)."""
        return int(self._meta.get("term", 0))

    def getVotedForNodeId(self) -> str | None:
        """The node voted for in the stored term, or None."""
        vote = self._meta.get("votedFor")
        return vote if isinstance(vote, str) else None

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:
        """Remember the commit index; stored within a second (:meth:`onOneSecondTimer`)."""
        if self._meta.get("commitIndex") != raftCommitIndex:
            self._meta["commitIndex"] = raftCommitIndex
            self._meta_saved = False

    def getRaftCommitIndex(self) -> int:
        """The stored commit index (1 at first, as pysyncobj expects)."""
        return int(self._meta.get("commitIndex", 1))

    def onOneSecondTimer(self) -> None:
        """Store a changed commit index."""
        if not self._meta_saved:
            self._store_meta()

    # ----------------------------------------------------------------- conversion

    def _convert(self, legacy: Path) -> None:
        """Take over a journal in pysyncobj's format (``raft.journal`` and its ``.meta``)."""
        old = FileJournal(str(legacy))
        try:
            entries = [old[i] for i in range(len(old))]
            meta = {
                "term": old.getCurrentTerm(),
                "votedFor": old.getVotedForNodeId(),
                "commitIndex": old.getRaftCommitIndex(),
            }
        finally:
            old._destroy()
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("wb") as file:
            file.write(MAGIC + b"".join(_record(to_bytes(c), i, t) for c, i, t in entries))
        durable_replace(tmp, self.path)
        self._meta = meta
        self._store_meta()
        for stale in (legacy, legacy.with_name(legacy.name + ".meta")):
            with contextlib.suppress(FileNotFoundError):
                stale.unlink()
        log.info("raft journal %s: converted %d entries from %s", self.path, len(entries), legacy)


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    return os.pread(fd, size, 0) if size else b""


def _install() -> None:
    """Let pysyncobj use a :class:`DurableJournal` given as ``journalFile``, and rename its
    snapshots durably."""
    create: Callable[[Any], Journal] = pysyncobj.syncobj.createJournal
    if getattr(create, "durable", False):
        return

    def create_journal(journal_file: Any = None) -> Journal:
        if isinstance(journal_file, Journal):
            return journal_file
        return create(journal_file)

    create_journal.durable = True  # type: ignore[attr-defined]
    pysyncobj.syncobj.createJournal = create_journal
    pysyncobj.serializer.atomicReplace = durable_replace


_install()
