"""A running member: the Raft node on the event loop, and the loops that act on its state.

Tasks, all owned here and cancelled by :meth:`Membership.stop`:

* **tick** — :meth:`RaftNode.tick` every ``timing.tick`` seconds, and at once after Raft
  messages or proposals (a wake-up event), with the set of members the mesh has an established
  session to on a link that is up.
* **senders**, one per member — Raft messages are queued per member (at most
  :data:`OUTBOX_BYTES`, oldest dropped: Raft resends what is lost) and sent in batches of up
  to :data:`BATCH_BYTES` as one ``supernode.raft`` mesh request, one in flight per member, so
  batches grow by themselves on a slow link.
* **report** — every ``timing.report_interval``: this member's report (capacity, runtimes,
  labels, devices) is sent to every member as a ``supernode.report`` request, and the timing
  is derived again from the RTT and loss of the links to the members.
* **leader** — while this node leads: first a ``barrier`` command (so that everything earlier
  terms committed is applied), then placement rounds (:func:`supernode.failover.plan_round`)
  whenever the state, a report or the liveness changed, one round in flight at a time.
* **local** — :func:`supernode.failover.local_plan` applied to this member's reconciler. Held
  back after a start until Raft has caught up with a leader (or, with no leader reachable,
  :data:`AUTONOMY_AFTER`), so a member back from a reboot starts nothing another member runs.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from agent.errors import AlreadyExistsError, FloreteError, NotFoundError
from agent.identity import short_id
from agent.mesh import Mesh
from agent.reconciler import Reconciler
from agent.runtimes import RuntimeRegistry
from agent.store import StoredPod
from supernode.errors import NoQuorumError, ProposalError
from supernode.failover import FailureDetector, local_plan, plan_round
from supernode.placement import MemberReport
from supernode.pods import is_supernode_pod, local_manifest, local_pod
from supernode.raft import RaftNode, decode_message
from supernode.report import build_report
from supernode.state import SupernodeState
from supernode.timing import LossWindow, Timing, TimingTracker, derive, worst
from supernode.vouching import Vouching

__all__ = ["AUTONOMY_AFTER", "RAFT_METHOD", "REPORT_METHOD", "Membership"]

log = logging.getLogger(__name__)

RAFT_METHOD = "supernode.raft"
REPORT_METHOD = "supernode.report"
BATCH_BYTES = 48 * 1024
"""Largest batch of Raft messages in one mesh request (the mesh's limit is 64 KiB)."""
OUTBOX_BYTES = 256 * 1024
"""Raft bytes queued per member before the oldest are dropped."""
AUTONOMY_AFTER = 15.0
"""Seconds after a start without reaching a leader before a member runs its pods anyway."""


class _Outbox:
    """Encoded Raft messages waiting for one member."""

    def __init__(self) -> None:
        self.items: collections.deque[tuple[float, bytes]] = collections.deque()
        self.size = 0
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def put(self, now: float, data: bytes) -> None:
        self.items.append((now, data))
        self.size += len(data)
        while self.size > OUTBOX_BYTES and len(self.items) > 1:
            self.size -= len(self.items.popleft()[1])
        self.ready.set()

    def take(self, now: float, max_age: float) -> list[bytes]:
        """A batch of at most :data:`BATCH_BYTES`, skipping messages older than ``max_age``."""
        batch: list[bytes] = []
        size = 0
        while self.items:
            queued, data = self.items[0]
            if batch and size + len(data) > BATCH_BYTES:
                break
            self.items.popleft()
            self.size -= len(data)
            if now - queued <= max_age:
                batch.append(data)
                size += len(data)
        if not self.items:
            self.ready.clear()
        return batch


def _elapsed_since(event: asyncio.Event, timeout: float) -> Coroutine[Any, Any, None]:
    async def wait() -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await event.wait()
        event.clear()

    return wait()


class Membership:
    """This node's part in one supernode while it is a member (or joining).

    Args:
        me: this node's ID.
        my_name: this node's name.
        mesh: the mesh (sessions to the other members).
        reconciler: this node's reconciler (the pods placed here run in it).
        runtimes: this node's runtimes (reported as healthy or not).
        labels: this node's configured labels.
        others: node IDs of the other members as last known.
        files: directory of the Raft journal and snapshot (None: in memory).
        name: the supernode's name (for logs until the state has it).
        quiet: joining: no elections until a leader was heard (see :class:`RaftNode`).
        on_nodes: called with every member's node ID when the Raft configuration changed.
        vouching: keeps the trust store in step with the committed members (None: not done).
        certificate: this node's certificate (PEM), proposed for its own member record when
            that has none (a member from before members carried one).
    """

    def __init__(
        self,
        *,
        me: str,
        my_name: str,
        mesh: Mesh,
        reconciler: Reconciler,
        runtimes: RuntimeRegistry,
        labels: dict[str, str],
        others: set[str],
        files: Path | None,
        name: str = "",
        quiet: bool = False,
        on_nodes: Callable[[set[str]], None] = lambda nodes: None,
        vouching: Vouching | None = None,
        certificate: str = "",
    ) -> None:
        loop = asyncio.get_running_loop()
        self.me = me
        self.my_name = my_name
        self.mesh = mesh
        self.reconciler = reconciler
        self.runtimes = runtimes
        self.labels = labels
        self.name = name
        self.state = SupernodeState()
        self.tracker = TimingTracker(derive(None))
        self.detector = FailureDetector(loop.time())
        self.reports: dict[str, MemberReport] = {}
        self.started = loop.time()
        self.gate_open = False
        self._on_nodes = on_nodes
        self.vouching = vouching
        self.certificate = certificate
        self._cert_term = -1
        self._wake = asyncio.Event()
        self._ticked = asyncio.Event()
        self._leader_wake = asyncio.Event()
        self._local_wake = asyncio.Event()
        self._outboxes: dict[str, _Outbox] = {}
        self._reporting: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._logged: set[str] = set()
        self._leader: str | None = None
        self._loss: dict[tuple[str, str, str], LossWindow] = {}
        self.raft = RaftNode(
            me,
            others,
            self.state,
            self.tracker.current,
            self._send,
            files=files,
            quiet=quiet,
            on_applied=self._applied,
            on_nodes=self._nodes_changed,
        )

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Start the tick, report, leader and local loops."""
        await self._report_once()
        for coro, name in (
            (self._tick_loop(), "supernode-tick"),
            (self._report_loop(), "supernode-report"),
            (self._leader_loop(), "supernode-leader"),
            (self._local_loop(), "supernode-local"),
        ):
            self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def stop(self) -> None:
        """Cancel every task and close the Raft journal (no goodbye: members see silence)."""
        tasks = [*self._tasks, *self._reporting.values()]
        tasks += [o.task for o in self._outboxes.values() if o.task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self.raft.destroy()

    def end_quiet(self) -> None:
        """A joining node was admitted: use the real timeouts (elections allowed)."""
        self.raft.set_timing(self.tracker.current)

    @staticmethod
    def now() -> float:
        """The event loop's clock (what the failure detector uses), seconds."""
        return asyncio.get_running_loop().time()

    @property
    def timing(self) -> Timing:
        """The timing in force."""
        return self.tracker.current

    # ----------------------------------------------------------------- Raft plumbing

    def _send(self, node_id: str, data: bytes) -> bool:
        outbox = self._outboxes.get(node_id)
        if outbox is None:
            outbox = self._outboxes[node_id] = _Outbox()
        if outbox.task is None or outbox.task.done():
            outbox.task = asyncio.get_running_loop().create_task(
                self._sender(node_id, outbox), name=f"supernode-send-{short_id(node_id)}"
            )
        outbox.put(time.monotonic(), data)
        return True

    async def _sender(self, node_id: str, outbox: _Outbox) -> None:
        while True:
            await outbox.ready.wait()
            timing = self.timing
            batch = outbox.take(time.monotonic(), timing.election_max)
            if not batch:
                continue
            try:
                await self.mesh.request(node_id, RAFT_METHOD, batch, max(1.0, timing.election_max))
            except FloreteError as err:
                self._log_once(f"send {node_id}", "raft to %s: %s", short_id(node_id), err)
                await asyncio.sleep(timing.heartbeat)

    def receive(self, node_id: str, batch: list[bytes]) -> None:
        """Raft messages from ``node_id`` (a ``supernode.raft`` request's body)."""
        delivered = False
        for data in batch:
            try:
                message = decode_message(data)
            except FloreteError as err:
                self._log_once(f"decode {node_id}", "raft from %s: %s", short_id(node_id), err)
                continue
            delivered = self.raft.deliver(node_id, message) or delivered
        if delivered:
            self.detector.heard(node_id, asyncio.get_running_loop().time())
        self._wake.set()

    def _connected(self) -> set[str]:
        return {
            link["nodeID"]
            for link in self.mesh.links()
            if link["state"] == "established" and link["up"] and link["nodeID"]
        }

    def _applied(self) -> None:
        self._leader_wake.set()
        self._local_wake.set()

    def _nodes_changed(self, nodes: set[str]) -> None:
        for node_id in set(self._outboxes) - nodes:
            outbox = self._outboxes.pop(node_id)
            if outbox.task is not None:
                outbox.task.cancel()
        self._on_nodes({self.me, *nodes})

    async def _tick_loop(self) -> None:
        while True:
            self.raft.tick(self._connected())
            if self.vouching is not None and self.state.name:
                self.vouching.sync(self.state.members, self.raft.nodes)
            leader = self.raft.leader
            if leader != self._leader:
                self._leader = leader
                log.info(
                    "supernode %s: leader is %s (term %d)",
                    self.state.name or self.name,
                    "none" if leader is None else short_id(leader),
                    self.raft.term,
                )
                self._leader_wake.set()
                self._local_wake.set()
            self._ticked.set()
            await _elapsed_since(self._wake, self.timing.tick)

    async def until(self, condition: Callable[[], bool], every: float = 0.1) -> None:
        """Return once ``condition()`` holds, checked after ticks and at least every ``every``
        seconds (wrap in ``asyncio.timeout`` for a deadline)."""
        while not condition():
            await _elapsed_since(self._ticked, every)

    async def propose(
        self,
        command: dict[str, Any],
        timeout: float | None = None,  # noqa: ASYNC109 (a deadline per change)
    ) -> dict[str, Any]:
        """Commit a command and return the state machine's result.

        Raises:
            NoQuorumError: no leader, or no commit within ``timeout`` (default: three election
                timeouts, at least 5 s); the change may still be applied later.
            AlreadyExistsError, NotFoundError, ProposalError: the state machine refused it.
        """
        wait = timeout if timeout is not None else max(5.0, 3 * self.timing.election_max)
        future = self.raft.propose(json.dumps(command, sort_keys=True))
        self._wake.set()
        try:
            async with asyncio.timeout(wait):
                result: dict[str, Any] = await future
        except TimeoutError:
            raise NoQuorumError(
                f"the supernode did not commit the change within {wait:g} s (no majority of "
                "members reachable?); it may still be applied later"
            ) from None
        error = result.get("error")
        if error == "already_exists":
            raise AlreadyExistsError(str(result.get("message")))
        if error == "not_found":
            raise NotFoundError(str(result.get("message")))
        if error is not None:
            raise ProposalError(f"{error}: {result.get('message')}")
        return result

    # ----------------------------------------------------------------- reports and timing

    async def _report_once(self) -> None:
        fingerprints = await self.runtimes.fingerprints()
        terminal = {}
        for stored in self.reconciler.store.list_pods():
            if is_supernode_pod(stored):
                phase = self.reconciler.pod_object(stored)["status"].get("phase")
                if phase in ("Succeeded", "Failed"):
                    terminal[f"{stored.namespace}/{stored.name}"] = phase
        report = build_report(
            self.me,
            self.my_name,
            self.labels,
            {name: fp.healthy for name, fp in fingerprints.items()},
            terminal,
        )
        if report != self.reports.get(self.me):
            self._leader_wake.set()
        self.reports[self.me] = report

    async def _report_loop(self) -> None:
        while True:
            await asyncio.sleep(self.timing.report_interval)
            await self._report_once()
            self._retime()
            body = self.reports[self.me].to_wire()
            connected = self._connected()
            for node_id in sorted(self.raft.others & connected):
                task = self._reporting.get(node_id)
                if task is None or task.done():
                    self._reporting[node_id] = asyncio.get_running_loop().create_task(
                        self._send_report(node_id, body)
                    )

    async def _send_report(self, node_id: str, body: dict[str, Any]) -> None:
        try:
            await self.mesh.request(node_id, REPORT_METHOD, body, 2 * self.timing.report_interval)
        except FloreteError as err:
            self._log_once(f"report {node_id}", "report to %s: %s", short_id(node_id), err)

    def take_report(self, node_id: str, report: MemberReport) -> None:
        """A report arrived from member ``node_id`` (already checked to be its own)."""
        self.detector.heard(node_id, asyncio.get_running_loop().time())
        if self.reports.get(node_id) != report:
            self._leader_wake.set()
        self.reports[node_id] = report

    def link_samples(self) -> dict[str, dict[str, Any]]:
        """Per member, the link the mesh uses for it: ``{"link", "rttSeconds", "loss"}``."""
        best: dict[str, dict[str, Any]] = {}
        for link in self.mesh.links():
            node_id = link["nodeID"]
            if link["state"] != "established" or node_id not in self.raft.others:
                continue
            key = (not link["up"], link["cost"], link["rttSeconds"] or float("inf"))
            current = best.get(node_id)
            if current is None or key < current["key"]:
                window = self._loss.get((node_id, link["name"], link["address"]))
                best[node_id] = {
                    "key": key,
                    "link": link["name"],
                    "rttSeconds": link["rttSeconds"],
                    "loss": 0.0 if window is None else window.loss,
                }
        return {n: {k: v for k, v in d.items() if k != "key"} for n, d in best.items()}

    def _retime(self) -> None:
        """Derive the timing again from the links to the members that answer now. A member
        that fell silent does not count (the ARQ retransmits to a dead peer, which is no
        loss of the link), and its loss window starts over when it is back."""
        now = self.now()
        answering = {
            n for n in self.raft.others if self.detector.silence(n, now) <= self.timing.election_min
        }
        for link in self.mesh.links():
            key = (link["nodeID"], link["name"], link["address"])
            if link["state"] == "established" and link["up"] and link["nodeID"] in answering:
                window = self._loss.setdefault(key, LossWindow())
                window.update(link["retransmissions"], link["loss"])
            else:
                self._loss.pop(key, None)
        samples = [
            (d["rttSeconds"], d["loss"])
            for node_id, d in self.link_samples().items()
            if node_id in answering
        ]
        if self.tracker.update(*worst(samples)):
            log.info("supernode timing now: %s", self.timing.describe())
            if not self.raft.quiet:
                self.raft.set_timing(self.timing)

    # ----------------------------------------------------------------- leading

    def leader_contact(self) -> bool:
        """This node leads, or heard from the leader within the longest election timeout."""
        if self.raft.is_leader:
            return True
        leader = self.raft.leader
        now = asyncio.get_running_loop().time()
        return leader is not None and self.detector.silence(leader, now) <= self.timing.election_max

    async def _leader_loop(self) -> None:
        barrier_term = -1
        while True:
            await _elapsed_since(self._leader_wake, max(0.2, 2 * self.timing.heartbeat))
            if not self.raft.is_leader:
                barrier_term = -1
                continue
            try:
                if barrier_term != self.raft.term:
                    term = self.raft.term
                    await self.propose({"op": "barrier"})
                    barrier_term = term
                now = asyncio.get_running_loop().time()
                silence = {n: self.detector.silence(n, now) for n in self.state.members}
                command = plan_round(
                    self.state,
                    self.me,
                    self.reports,
                    silence,
                    self.timing.failover_after,
                    time.time(),
                )
                if command is not None:
                    self._log_round(command)
                    await self.propose(command)
            except FloreteError as err:
                self._log_once("round", "placement round not committed: %s", err)

    def _log_round(self, command: dict[str, Any]) -> None:
        for node_id in command["down"]:
            log.warning("supernode: member %s is lost: its pods move", self._name(node_id))
        for node_id in command["up"]:
            log.info("supernode: member %s is back", self._name(node_id))
        for item in command["place"]:
            log.info("supernode: pod %s placed on %s", item["key"], self._name(item["member"]))

    def _name(self, node_id: str) -> str:
        member = self.state.members.get(node_id)
        return member.name if member else short_id(node_id)

    # ----------------------------------------------------------------- this member's pods

    def local_pods(self) -> list[StoredPod]:
        """The supernode pods in this member's store."""
        return [s for s in self.reconciler.store.list_pods() if is_supernode_pod(s)]

    async def _local_loop(self) -> None:
        autonomy = max(AUTONOMY_AFTER, 3 * self.timing.failover_after)
        while True:
            await _elapsed_since(self._local_wake, 1.0)
            if not self.gate_open:
                waited = asyncio.get_running_loop().time() - self.started
                if not (self.raft.ready and self.leader_contact()) and waited < autonomy:
                    continue
                self.gate_open = True
                log.info(
                    "supernode: %s; running the pods placed here",
                    "caught up with the leader"
                    if self.raft.ready
                    else f"no leader reachable for {waited:.0f} s (offline autonomy)",
                )
            try:
                await self.apply_local()
                await self._own_certificate()
            except FloreteError as err:
                self._log_once("local", "supernode: local pods: %s", err)

    async def _own_certificate(self) -> None:
        """Put this member's certificate into its record when it has none (it joined before
        members carried one), so that the other members can vouch for it."""
        mine = self.state.members.get(self.me)
        if mine is None or mine.certificate or not self.certificate or not self.raft.ready:
            return
        if self.leader_contact() and self._cert_term != self.raft.term:
            self._cert_term = self.raft.term  # once a term: members of an older version refuse
            cmd = {"op": "member_cert", "node_id": self.me, "certificate": self.certificate}
            await self.propose(cmd)

    async def apply_local(self) -> None:
        """One pass of :func:`local_plan` over this member's reconciler."""
        stored = {f"{s.namespace}/{s.name}": s for s in self.local_pods()}
        held = {key for key, s in stored.items() if s.uid in self.reconciler.held}
        plan = local_plan(
            self.state,
            self.me,
            {key: local_pod(s) for key, s in stored.items()},
            held,
            leader_contact=self.leader_contact(),
        )
        for key in plan.release:
            self.reconciler.release(stored[key].uid)
        for key, grace in plan.delete:
            log.info("supernode: pod %s is no longer placed here: stopping it", key)
            with contextlib.suppress(NotFoundError):
                await self.reconciler.delete(stored[key].namespace, stored[key].name, grace)
        name = self.state.name
        for record in plan.create:
            try:
                await self.reconciler.create(local_manifest(record, name), record.namespace)
            except FloreteError as err:
                self._log_once(f"create {record.key}", "supernode: pod %s: %s", record.key, err)
        for record in plan.update:
            try:
                await self.reconciler.update(local_manifest(record, name), record.namespace)
            except FloreteError as err:
                self._log_once(f"update {record.key}", "supernode: pod %s: %s", record.key, err)
        for record in plan.gone:
            command = {"op": "pod_gone", "namespace": record.namespace, "name": record.name}
            with contextlib.suppress(FloreteError):
                await self.propose({**command, "uid": record.uid})

    def _log_once(self, key: str, message: str, *args: object) -> None:
        """The first failure of a kind at WARNING, repeats at DEBUG."""
        level = logging.DEBUG if key in self._logged else logging.WARNING
        self._logged.add(key)
        log.log(level, message, *args)
