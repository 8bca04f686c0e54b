"""Raft through pysyncobj, carried over the agents' authenticated sessions, ticked by asyncio.

pysyncobj (the Raft library Patroni uses) does the consensus: elections, log replication,
commitment, membership changes (``dynamicMembershipChange``), the journal and snapshots. This
module gives it three things of ours:

* **a transport** (:class:`MeshTransport`, a ``pysyncobj.transport.Transport``): pysyncobj's
  messages (plain dicts) are encoded as CBOR and handed to a ``send(node_id, bytes)`` callable
  — the supernode service sends them as mesh requests over the members' mutually authenticated
  TLS sessions (:meth:`agent.mesh.Mesh.request`). pysyncobj's own TCP transport, an
  unauthenticated port, is never used. Nodes are the members' node IDs; a node counts as
  connected while the mesh has an established session to it whose link is up. Messages from
  nodes outside the current Raft configuration are dropped.
* **a clock**: ``autoTick=False`` — no pysyncobj thread. The service calls :meth:`RaftNode.tick`
  from the event loop every few tens of milliseconds and right after messages arrive, so the
  Raft state, the mesh and the reconciler share one thread and need no locks; a tick only does
  bookkeeping and queues messages (pysyncobj's poller has no sockets to wait on).
* **the state machine**: one replicated method, ``apply(command_json)``, on a
  ``SyncObjConsumer`` that wraps :class:`~supernode.state.SupernodeState`. Commands and
  snapshots carry only JSON text, so pysyncobj's pickles hold built-in types only.

* **durability**: the journal is a :class:`~supernode.journal.DurableJournal`, synced (one
  ``fdatasync`` for what changed) before any message leaves this node and at the end of every
  tick and delivery: an entry is on disk before this member acknowledges it, and before a
  change's result reaches the caller; term and vote are stored durably before the vote or
  request that carries them is sent.

pysyncobj pickles log entries and snapshots between members; pickles are only ever read from
members of the supernode, authenticated by their certificates, which are trusted to place
workloads here anyway.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import cbor2
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated
from pysyncobj.node import Node
from pysyncobj.transport import Transport

from agent.errors import RemoteProtocolError
from supernode.errors import NoQuorumError, ProposalError
from supernode.journal import DurableJournal
from supernode.state import SupernodeState
from supernode.timing import Timing

__all__ = ["MeshTransport", "RaftNode", "decode_message", "encode_message"]

log = logging.getLogger(__name__)

MESSAGE_TYPES = frozenset(
    {
        "request_vote",
        "response_vote",
        "append_entries",
        "next_node_idx",
        "apply_command",
        "apply_command_response",
        "timeout_now",
    }
)
"""pysyncobj message types a member may send."""

BATCH_BYTES = 16 * 1024
"""pysyncobj's AppendEntries and snapshot chunk size: every message stays far below the mesh's
64 KiB message limit."""

_FAIL_TEXT = {
    FAIL_REASON.QUEUE_FULL: "too many changes are queued",
    FAIL_REASON.MISSING_LEADER: "there is no leader (an election is under way, or no majority "
    "of members is reachable)",
    FAIL_REASON.DISCARDED: "a new leader was elected before the change was committed",
    FAIL_REASON.NOT_LEADER: "the leader changed before the change was committed",
    FAIL_REASON.LEADER_CHANGED: "the leader changed before the change was committed",
    FAIL_REASON.REQUEST_DENIED: "the change was refused (another membership change is under way)",
    FAIL_REASON.UNKNOWN_OUTCOME: "the outcome is unknown; check before trying again",
}


def _plain(value: Any) -> Any:
    """pysyncobj's messages as CBOR-able plain data: tuples become lists."""
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def encode_message(message: dict[str, Any]) -> bytes:
    """One pysyncobj message as CBOR bytes."""
    return bytes(cbor2.dumps(_plain(message)))


def decode_message(data: bytes) -> dict[str, Any]:
    """Decode a pysyncobj message from a member.

    Raises:
        RemoteProtocolError: not CBOR, not a map, or an unknown message type.
    """
    try:
        message = cbor2.loads(data)
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as err:
        raise RemoteProtocolError(f"raft message is not CBOR: {err}") from None
    if not isinstance(message, dict) or message.get("type") not in MESSAGE_TYPES:
        raise RemoteProtocolError("raft message is not a map with a known type")
    return message


class MeshTransport(Transport):  # type: ignore[misc]  # pysyncobj has no type hints
    """pysyncobj's transport over a ``send(node_id, bytes) -> bool`` callable.

    Args:
        send: queues one encoded message for a member; returns False when it cannot be sent
            (no session), as pysyncobj expects.
        nodes: node IDs of the other members.
        on_nodes: called with the node IDs after pysyncobj added or dropped a node (a
            membership change was applied).
        before_send: called before each message is handed to ``send`` (the journal's sync).
    """

    def __init__(
        self,
        send: Callable[[str, bytes], bool],
        nodes: Iterable[str],
        on_nodes: Callable[[set[str]], None],
        before_send: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(None, None, [])
        self._send = send
        self._on_nodes = on_nodes
        self._before_send = before_send
        self.nodes: dict[str, Node] = {n: Node(n) for n in nodes}
        self.connected: set[str] = set()

    def addNode(self, node: Node) -> None:
        """pysyncobj added a member."""
        self.nodes[node.id] = node
        self._on_nodes(set(self.nodes))

    def dropNode(self, node: Node) -> None:
        """pysyncobj removed a member."""
        self.nodes.pop(node.id, None)
        if node.id in self.connected:
            self.connected.discard(node.id)
            self._onNodeDisconnected(node)
        self._on_nodes(set(self.nodes))

    def send(self, node: Node, message: dict[str, Any]) -> bool:
        """Encode and queue ``message`` for ``node``; False when it is not connected."""
        if node.id not in self.connected:
            return False
        self._before_send()
        return self._send(node.id, encode_message(message))

    def set_connected(self, node_ids: set[str]) -> None:
        """Tell pysyncobj which members are reachable now (called before every tick)."""
        for node_id in sorted(set(self.nodes) & (node_ids - self.connected)):
            self.connected.add(node_id)
            self._onNodeConnected(self.nodes[node_id])
        for node_id in sorted(self.connected - node_ids):
            self.connected.discard(node_id)
            node = self.nodes.get(node_id)
            if node is not None:
                self._onNodeDisconnected(node)

    def deliver(self, node_id: str, message: dict[str, Any]) -> bool:
        """Hand one decoded message from ``node_id`` to pysyncobj; False (dropped) when the
        sender is not in the Raft configuration."""
        node = self.nodes.get(node_id)
        if node is None:
            return False
        self._onMessageReceived(node, message)
        return True


class _Replicated(SyncObjConsumer):  # type: ignore[misc]
    """The consumer pysyncobj replicates: one method, applying a command to the state."""

    def __init__(self, state: SupernodeState, on_applied: Callable[[], None]) -> None:
        super().__init__()
        self.state = state
        self.on_applied = on_applied

    @replicated  # type: ignore[untyped-decorator]
    def apply(self, command: str) -> dict[str, Any]:
        result = self.state.apply_json(command)
        self.on_applied()
        return result

    def _serialize(self) -> dict[str, str]:
        return {"state": self.state.to_json()}

    def _deserialize(self, data: dict[str, str]) -> None:
        loaded = SupernodeState.from_json(data["state"])
        for field in ("name", "created_at", "members", "pods", "applied"):
            setattr(self.state, field, getattr(loaded, field))
        self.on_applied()


def _conf(
    timing: Timing, journal: DurableJournal | None, files: Path | None, quiet: bool
) -> SyncObjConf:
    election_min = 3600.0 if quiet else timing.election_min
    election_max = 3601.0 if quiet else timing.election_max
    return SyncObjConf(
        autoTick=False,
        dynamicMembershipChange=True,
        appendEntriesUseBatch=False,
        commandsWaitLeader=False,
        appendEntriesPeriod=timing.heartbeat,
        raftMinTimeout=election_min,
        raftMaxTimeout=election_max,
        leaderFallbackTimeout=timing.election_max,
        connectionTimeout=election_max,
        appendEntriesBatchSizeBytes=BATCH_BYTES,
        logCompactionBatchSize=BATCH_BYTES,
        useFork=False,
        journalFile=journal,  # our journal object: see supernode.journal
        fullDumpFile=str(files / "raft.dump") if files is not None else None,
    )


class RaftNode:
    """One member's Raft node: a pysyncobj ``SyncObj`` with our transport and state machine.

    Args:
        me: this member's node ID.
        others: node IDs of the other members (the current configuration as last known;
            membership changes in the log are replayed on top).
        state: the state machine to replicate into.
        timing: timeouts to start with (:meth:`set_timing` changes them later).
        send: queues an encoded message for a member (see :class:`MeshTransport`).
        files: directory for the journal (``raft.log``, ``raft.log.meta``) and the snapshot
            (``raft.dump``); None keeps them in memory (tests).
        quiet: start without elections (a joining node that has not heard a leader yet must
            not disrupt the members with a higher term); :meth:`set_timing` ends it.
        on_applied: called after each applied command (in a tick).
        on_nodes: called with the member node IDs when the configuration changed.
    """

    def __init__(
        self,
        me: str,
        others: Iterable[str],
        state: SupernodeState,
        timing: Timing,
        send: Callable[[str, bytes], bool],
        *,
        files: Path | None = None,
        quiet: bool = False,
        on_applied: Callable[[], None] = lambda: None,
        on_nodes: Callable[[set[str]], None] = lambda nodes: None,
    ) -> None:
        others = sorted(set(others) - {me})
        self.me = me
        self.state = state
        self.journal = DurableJournal(files / "raft.log") if files is not None else None
        self.transport = MeshTransport(send, others, on_nodes, self.sync)
        self._consumer = _Replicated(state, on_applied)
        self._conf = _conf(timing, self.journal, files, quiet)
        self._syncobj = SyncObj(
            Node(me),
            [Node(n) for n in others],
            self._conf,
            consumers=[self._consumer],
            transport=self.transport,
        )
        self.quiet = quiet

    # ----------------------------------------------------------------- driving

    def tick(self, connected: set[str]) -> None:
        """One pysyncobj tick: timers, elections, commits, applies, sends."""
        self.transport.set_connected(connected)
        self._syncobj.doTick(0.0)
        self.sync()

    def deliver(self, node_id: str, message: dict[str, Any]) -> bool:
        """Process one message from ``node_id`` (see :meth:`MeshTransport.deliver`).

        Returns:
            False when the sender is not a member (the message was dropped).
        """
        try:
            return self.transport.deliver(node_id, message)
        except (KeyError, TypeError, ValueError, IndexError) as err:
            log.warning("raft message %s from %s rejected: %s", message.get("type"), node_id, err)
            return True
        finally:
            self.sync()

    def sync(self) -> None:
        """Make the journal's changes durable (see :mod:`supernode.journal`); called before
        every message this node sends and after every tick and delivery."""
        if self.journal is not None:
            self.journal.sync()

    def set_timing(self, timing: Timing) -> None:
        """Use new timeouts from now on (pysyncobj reads its configuration live); ends quiet
        mode."""
        conf = self._conf
        conf.appendEntriesPeriod = timing.heartbeat
        conf.raftMinTimeout = timing.election_min
        conf.raftMaxTimeout = timing.election_max
        conf.leaderFallbackTimeout = timing.election_max
        conf.connectionTimeout = timing.election_max
        self.quiet = False

    def destroy(self) -> None:
        """Close the journal; the node sends nothing more."""
        self._syncobj.destroy()

    # ----------------------------------------------------------------- state

    @property
    def is_leader(self) -> bool:
        """This node is the leader (of its term; another may have taken over)."""
        return bool(self._syncobj._isLeader())

    @property
    def leader(self) -> str | None:
        """Node ID of the leader this node knows, or None."""
        node = self._syncobj._getLeader()
        return None if node is None else str(node.id)

    @property
    def term(self) -> int:
        """The current Raft term."""
        return int(self._syncobj.raftCurrentTerm)

    @property
    def has_quorum(self) -> bool:
        """A majority of the configuration is connected (as this node sees it)."""
        return bool(self._syncobj.hasQuorum)

    @property
    def ready(self) -> bool:
        """This node has applied everything the leader had committed when it first heard it
        (pysyncobj's ``isReady``)."""
        return bool(self._syncobj.isReady())

    @property
    def nodes(self) -> set[str]:
        """Node IDs of every member of the configuration, this one included."""
        return {self.me, *self.transport.nodes}

    @property
    def others(self) -> set[str]:
        """Node IDs of the other members."""
        return set(self.transport.nodes)

    def status(self) -> dict[str, Any]:
        """Raft figures for ``supernode status``: role, term, indexes."""
        raw = self._syncobj.getStatus()
        role = {0: "follower", 1: "candidate", 2: "leader"}.get(raw["state"], "unknown")
        return {
            "role": role,
            "term": raw["raft_term"],
            "commitIndex": raw["commit_idx"],
            "lastApplied": raw["last_applied"],
            "logLength": raw["log_len"],
            "quorum": raw["has_quorum"],
        }

    # ----------------------------------------------------------------- changes

    def propose(self, command: str) -> asyncio.Future[dict[str, Any]]:
        """Propose a command (JSON text); pysyncobj forwards it to the leader.

        Returns:
            A future with the state machine's result once the command is committed and applied
            here; it fails with :class:`NoQuorumError` (no leader) or :class:`ProposalError`.
        """
        future = self._future()
        self._consumer.apply(command, callback=self._resolver(future))
        return future

    def add_member(self, node_id: str) -> asyncio.Future[Any]:
        """Add ``node_id`` to the configuration (one change at a time, as pysyncobj requires)."""
        future = self._future()
        self._syncobj.addNodeToCluster(Node(node_id), callback=self._resolver(future))
        return future

    def remove_member(self, node_id: str) -> asyncio.Future[Any]:
        """Remove ``node_id`` from the configuration (not the leader itself)."""
        future = self._future()
        self._syncobj.removeNodeFromCluster(Node(node_id), callback=self._resolver(future))
        return future

    def transfer_leadership(self) -> asyncio.Future[Any]:
        """Ask the most up-to-date follower to take over (Raft's TimeoutNow)."""
        future = self._future()
        self._syncobj.transferLeadership(callback=self._resolver(future))
        return future

    @staticmethod
    def _future() -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    @staticmethod
    def _resolver(future: asyncio.Future[Any]) -> Callable[[Any, int], None]:
        def resolve(result: Any, error: int) -> None:
            if future.done():
                return
            if error == FAIL_REASON.SUCCESS:
                future.set_result(result)
            elif error == FAIL_REASON.MISSING_LEADER:
                future.set_exception(NoQuorumError(f"no change possible: {_FAIL_TEXT[error]}"))
            else:
                text = _FAIL_TEXT.get(error, f"pysyncobj error {error}")
                future.set_exception(ProposalError(f"change not committed: {text}"))

        return resolve
