"""The mesh methods of the supernode service: what one agent answers the other agents.

Each is answered only to authenticated peers (and the member-only ones only to members of the
Raft configuration):

* ``supernode.info`` — ``{"member", "name", "members", "leader"}``, asked by a joining node.
* ``supernode.join`` ``{"name"}`` — add the caller to the supernode (Raft configuration, then
  the member record) and answer the member list.
* ``supernode.leave`` — remove the caller from the Raft configuration (it asks another member,
  since a node removed from the configuration hears no more of it).
* ``supernode.raft`` — a batch of Raft messages; ``supernode.report`` — a member's report.
* ``supernode.pods`` ``{"after"}`` — this member's supernode pods as Pod objects (paged);
  ``supernode.pod`` ``{"namespace", "name"}`` — one of them, or None.
* ``supernode.log.open|read|close`` and ``supernode.exec`` — logs and exec of the supernode
  pods placed on this member, for the others (:mod:`supernode.proxy`).
* ``supernode.events`` ``{"namespace", "fieldSelector", "after"}`` — the events about the
  supernode pods placed on this member (paged; :mod:`supernode.events`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any

from agent.errors import BadRequestError, NotFoundError
from agent.identity import short_id
from agent.kube_select import Selector
from agent.mesh import PeerRequestHandler
from supernode.errors import NoQuorumError, NotMemberError, ProposalError
from supernode.events import EventsReader, page, placed_events, placed_uids
from supernode.placement import MemberReport
from supernode.pods import is_supernode_pod
from supernode.proxy import LogOpener, LogStreams, run_exec
from supernode.state import pod_key
from supernode.vouching import certificates_of, pem

if TYPE_CHECKING:
    from supernode.member import Membership
    from supernode.service import Supernode

__all__ = ["PAGE_BYTES", "MeshMethods"]

log = logging.getLogger(__name__)

PAGE_BYTES = 40_000
"""Pod or Event objects per ``supernode.pods`` or ``supernode.events`` answer, by JSON size (the
mesh's limit is 64 KiB)."""


class MeshMethods:
    """The ``supernode.*`` mesh methods of one agent (see the module docstring).

    Args:
        node: the agent's supernode service, whose membership, pods and runtimes the answers
            come from.
    """

    def __init__(self, node: Supernode) -> None:
        self.node = node
        self.log_streams: LogStreams | None = None
        self.events: EventsReader | None = None

    def serve_logs(self, opener: LogOpener) -> None:
        """Serve the logs of the supernode pods placed here (before :meth:`register`);
        ``opener`` opens a local pod's log, as this node's log route does."""

        async def placed_here(
            namespace: str, name: str, query: Mapping[str, list[str]]
        ) -> AsyncIterator[bytes]:
            self._placed_here(namespace, name)
            return await opener(namespace, name, query)

        self.log_streams = LogStreams(placed_here)

    def serve_events(self, reader: EventsReader) -> None:
        """Serve the events of the supernode pods placed here (before :meth:`register`);
        ``reader`` lists this node's events, as its events route does."""
        self.events = reader

    def register(self) -> None:
        """Serve the methods on the node's mesh (the log and event methods only after
        :meth:`serve_logs` and :meth:`serve_events`)."""
        mesh = self.node.mesh
        for method, handler in (
            ("supernode.info", self._on_info),
            ("supernode.join", self._on_join),
            ("supernode.leave", self._on_leave),
            ("supernode.raft", self._on_raft),
            ("supernode.report", self._on_report),
            ("supernode.pods", self._on_pods),
            ("supernode.pod", self._on_pod),
            ("supernode.exec", self._on_exec),
        ):
            mesh.on_peer_request(method, handler)
        if self.log_streams is not None:
            streams = self.log_streams
            for method, handler in (
                ("supernode.log.open", streams.on_open),
                ("supernode.log.read", streams.on_read),
                ("supernode.log.close", streams.on_close),
            ):
                mesh.on_peer_request(method, self._members_only(handler))
        if self.events is not None:
            mesh.on_peer_request("supernode.events", self._on_events)

    async def close(self) -> None:
        """Close the log streams still open for other members."""
        if self.log_streams is not None:
            await self.log_streams.close_all()

    def _members_only(self, handler: PeerRequestHandler) -> PeerRequestHandler:
        async def serve(peer: str, body: Any) -> Any:
            self._from_member(peer)
            return await handler(peer, body)

        return serve

    def _placed_here(self, namespace: str, name: str) -> None:
        record = self.node.record(namespace, name)
        if record is None or record.member != self.node.me:
            raise NotFoundError(f'supernode pod "{namespace}/{name}" is not placed on this member')

    def _from_member(self, peer: str) -> Membership:
        m = self.node.member()
        if peer not in m.raft.others:
            raise NotMemberError(f"node {short_id(peer)} is not a member of this supernode")
        return m

    async def _on_info(self, peer: str, body: Any) -> dict[str, Any]:
        m = self.node.membership
        if m is None:
            return {"member": False, "name": "", "members": [], "leader": None}
        return {
            "member": True,
            "name": self.node.name or "",
            "members": sorted(m.raft.nodes),
            "leader": m.raft.leader,
        }

    async def _on_join(self, peer: str, body: Any) -> dict[str, Any]:
        m = self.node.member()
        if not isinstance(body, dict) or body.get("name") != self.node.name:
            raise NotMemberError(
                f'this node is a member of "{self.node.name}", not of that supernode'
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10 * m.timing.election_max
        while peer not in m.raft.others:
            try:
                async with asyncio.timeout(max(1.0, deadline - loop.time())):
                    await m.raft.add_member(peer)
            except ProposalError as err:  # another change under way: try again
                if loop.time() > deadline:
                    raise
                log.debug("adding %s: %s; retrying", short_id(peer), err)
                await asyncio.sleep(0.2)
            except TimeoutError:
                raise NoQuorumError("the Raft configuration change did not commit") from None
        name = next((k["peerName"] for k in self.node.mesh.links() if k["nodeID"] == peer), "")
        command = {"op": "member_add", "node_id": peer, "name": name, "at": time.time()}
        trusted = self.node.mesh.trust.get(peer)  # what its session is pinned to: vouched for
        if trusted is not None and trusted.state == "trusted":
            command["certificate"] = pem(trusted.certificate)
        await m.propose(command)
        log.info("supernode %s: %s joined", self.node.name, name or short_id(peer))
        members = [x for x in m.state.members.values() if x.node_id != peer]
        certificates = certificates_of(members)
        if not any(c["nodeID"] == self.node.me for c in certificates):
            mine = {"nodeID": self.node.me, "name": self.node.identity.name}
            certificates.append({**mine, "certificate": self.node.identity_pem()})
        return {
            "name": self.node.name,
            "members": sorted(m.raft.nodes),
            "certificates": certificates,
        }

    async def _on_leave(self, peer: str, body: Any) -> None:
        m = self.node.member()
        if peer not in m.raft.others:
            return
        if m.raft.leader == peer:
            raise NoQuorumError("the leaving member still leads; it must hand over first")
        async with asyncio.timeout(10 * m.timing.election_max):
            await m.raft.remove_member(peer)
        if peer in m.state.members:
            with contextlib.suppress(NotFoundError):
                await m.propose({"op": "member_remove", "node_id": peer})

    async def _on_raft(self, peer: str, body: Any) -> None:
        m = self._from_member(peer)
        if not isinstance(body, list) or not all(isinstance(d, bytes) for d in body):
            raise BadRequestError("supernode.raft: expected a list of byte strings")
        m.receive(peer, body)

    async def _on_report(self, peer: str, body: Any) -> None:
        m = self._from_member(peer)
        report = MemberReport.from_wire(body)
        if report.node_id != peer:
            raise BadRequestError("supernode.report: a member reports only for itself")
        m.take_report(peer, report)

    async def _on_pods(self, peer: str, body: Any) -> dict[str, Any]:
        m = self._from_member(peer)
        after = body.get("after") if isinstance(body, dict) else None
        items: list[dict[str, Any]] = []
        size = 0
        for stored in sorted(m.local_pods(), key=lambda s: (s.namespace, s.name)):
            key = pod_key(stored.namespace, stored.name)
            if isinstance(after, str) and key <= after:
                continue
            obj = self.node.reconciler.pod_object(stored)
            size += len(json.dumps(obj))
            if items and size > PAGE_BYTES:
                return {"items": items, "more": True}
            items.append(obj)
        return {"items": items, "more": False}

    async def _on_events(self, peer: str, body: Any) -> dict[str, Any]:
        m = self._from_member(peer)
        if not isinstance(body, dict):
            raise BadRequestError("supernode.events: expected {namespace, fieldSelector, after}")
        namespace, fields, after = (body.get(k) for k in ("namespace", "fieldSelector", "after"))
        if not all(v is None or isinstance(v, str) for v in (namespace, fields, after)):
            raise BadRequestError("supernode.events: namespace, fieldSelector, after are strings")
        selector = Selector.parse(None, fields, "events")
        uids = placed_uids(m.local_pods(), self.node.record, self.node.me)
        if self.events is None or not uids:
            return {"items": [], "more": False}
        events = placed_events(await self.events(namespace), uids, selector)
        items, more = page(events, after, PAGE_BYTES)
        return {"items": items, "more": more}

    async def _on_pod(self, peer: str, body: Any) -> dict[str, Any] | None:
        self._from_member(peer)
        if not isinstance(body, dict):
            raise BadRequestError("supernode.pod: expected {namespace, name}")
        try:
            stored = self.node.reconciler.store.get_pod(
                str(body.get("namespace")), str(body.get("name"))
            )
        except NotFoundError:
            return None
        return self.node.reconciler.pod_object(stored) if is_supernode_pod(stored) else None

    async def _on_exec(self, peer: str, body: Any) -> dict[str, Any]:
        self._from_member(peer)
        if not isinstance(body, dict):
            raise BadRequestError("supernode.exec: expected {namespace, name, container, command}")
        namespace, name = str(body.get("namespace")), str(body.get("name"))
        try:
            self._placed_here(namespace, name)
        except NotFoundError as err:
            return {"error": {"status": 404, "reason": "NotFound", "message": err.message}}
        return await run_exec(self.node.reconciler.store, self.node.runtimes, body)
