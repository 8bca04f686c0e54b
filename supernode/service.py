"""The supernode service of one agent: membership commands, and pods through the supernode.

One :class:`Supernode` per daemon. When this node is a member (``<state dir>/supernode/
config.json`` exists) it runs a :class:`~supernode.member.Membership`; pysyncobj is imported only
then. It creates, joins and leaves the supernode, applies, lists and deletes its pods, and shows
it as a status and as one Node; the mesh methods it answers the other agents are in
:mod:`supernode.methods`.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import (
    AlreadyExistsError,
    BadRequestError,
    FloreteError,
    ManifestError,
    NotFoundError,
)
from agent.identity import Identity, short_id
from agent.mesh import Mesh
from agent.reconciler import Reconciler
from agent.runtimes import RuntimeRegistry
from agent.store import StoredPod
from supernode.errors import AlreadyMemberError, NoQuorumError, NotMemberError
from supernode.events import EventsReader, member_events, merge, relabel, supernode_uids
from supernode.methods import MeshMethods
from supernode.pods import (
    PLACEMENT_ANNOTATION,
    SUPERNODE_ANNOTATION,
    is_supernode_pod,
    member_object,
    pod_object,
    record_for,
)
from supernode.proxy import LogOpener
from supernode.state import PodRecord, pod_key
from supernode.vouching import Vouching

if TYPE_CHECKING:
    from supernode.member import Membership

__all__ = ["Supernode"]

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
ASK_TIMEOUT = 3.0
"""Seconds to wait for another node's answer: its pods, or ``supernode.info`` when joining."""


class Supernode:
    """See the module docstring.

    Args:
        mesh: the mesh.
        reconciler: this node's reconciler.
        runtimes: this node's runtimes.
        identity: this node's identity.
        state_dir: the agent's state dir (``supernode/`` holds the config and Raft files).
        labels: this node's configured labels (``[node] labels``).
        default_runtime: ``runtime.default``.
    """

    def __init__(
        self,
        mesh: Mesh,
        reconciler: Reconciler,
        runtimes: RuntimeRegistry,
        identity: Identity,
        state_dir: Path,
        labels: Mapping[str, str],
        default_runtime: str = "",
    ) -> None:
        self.mesh = mesh
        self.reconciler = reconciler
        self.runtimes = runtimes
        self.identity = identity
        self.me = identity.node_id
        self.dir = state_dir / "supernode"
        self.labels = dict(labels)
        self.default_runtime = default_runtime
        self.membership: Membership | None = None
        self._busy = asyncio.Lock()
        self._methods = MeshMethods(self)

    # ----------------------------------------------------------------- config

    @property
    def _config_path(self) -> Path:
        return self.dir / "config.json"

    def _read_config(self) -> dict[str, Any] | None:
        try:
            config = json.loads(self._config_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as err:
            log.error("supernode: cannot read %s: %s; not a member", self._config_path, err)  # noqa: TRY400
            return None
        if not isinstance(config, dict) or not isinstance(config.get("name"), str):
            return None
        return config

    def _write_config(self, name: str, members: set[str]) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self._config_path.with_suffix(".tmp")
        with tmp.open("w") as file:
            json.dump({"name": name, "members": sorted(members)}, file)
            file.flush()
            os.fsync(file.fileno())
        tmp.replace(self._config_path)

    def _clear_files(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(self.dir)

    def holds(self, stored: StoredPod) -> bool:
        """For :meth:`Reconciler.start`: hold this node's supernode pods while it is a member."""
        return is_supernode_pod(stored) and self._read_config() is not None

    @property
    def name(self) -> str | None:
        """The supernode's name, or None when this node is not a member."""
        if self.membership is None:
            return None
        return self.membership.state.name or (self._read_config() or {}).get("name")

    def member(self) -> Membership:
        """The running membership.

        Raises:
            NotMemberError: this node is not a member of a supernode.
        """
        if self.membership is None:
            raise NotMemberError("this node is not a member of a supernode")
        return self.membership

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Serve the mesh methods; resume membership if this node is a member."""
        self._methods.register()
        config = self._read_config()
        if config is not None:
            members = {m for m in config.get("members", []) if isinstance(m, str)}
            self.membership = await self._run(members - {self.me}, config["name"], quiet=False)
            log.info("supernode %s: member again, %d members known", config["name"], len(members))

    def serve_logs(self, opener: LogOpener) -> None:
        """Serve the logs of the supernode pods placed here to the other members (before
        :meth:`start`); ``opener`` opens a local pod's log, as this node's log route does."""
        self._methods.serve_logs(opener)

    def serve_events(self, reader: EventsReader) -> None:
        """Serve the events of the supernode pods placed here to the other members (before
        :meth:`start`); ``reader`` lists this node's events, as its events route does."""
        self._methods.serve_events(reader)

    async def stop(self) -> None:
        """Stop taking part (the membership stays: the next start resumes it)."""
        await self._methods.close()
        if self.membership is not None:
            await self.membership.stop()
            self.membership = None

    async def _run(self, others: set[str], name: str, *, quiet: bool) -> Membership:
        from supernode.member import Membership  # imports pysyncobj: only for members

        def nodes_changed(nodes: set[str]) -> None:
            if self._config_path.exists():
                self._write_config(name, nodes)

        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        membership = Membership(
            vouching=Vouching(self.mesh.trust, self.me, name),
            certificate=self.identity_pem(),
            me=self.me,
            my_name=self.identity.name,
            mesh=self.mesh,
            reconciler=self.reconciler,
            runtimes=self.runtimes,
            labels=self.labels,
            others=others,
            files=self.dir,
            name=name,
            quiet=quiet,
            on_nodes=nodes_changed,
        )
        await membership.start()
        return membership

    def identity_pem(self) -> str:
        """This node's certificate, PEM text."""
        return self.identity.cert_path.read_text()

    # ----------------------------------------------------------------- create, join, leave

    async def create(self, name: str) -> dict[str, Any]:
        """Create the supernode ``name`` with this node as its only member.

        Raises:
            BadRequestError: the name is not a DNS-1123 label.
            AlreadyMemberError: this node is a member already.
            NoQuorumError: this node could not elect itself (should not happen).
        """
        _check_name(name)
        async with self._busy:
            if self.membership is not None:
                raise AlreadyMemberError(f'this node is a member of supernode "{self.name}"')
            self._clear_files()
            membership = await self._run(set(), name, quiet=False)
            try:
                try:
                    async with asyncio.timeout(10 * membership.timing.election_max):
                        await membership.until(lambda: membership.raft.is_leader, 0.02)
                except TimeoutError:
                    raise NoQuorumError(
                        "this node did not become leader of its own supernode"
                    ) from None
                await membership.propose(
                    {
                        "op": "create",
                        "name": name,
                        "node_id": self.me,
                        "member_name": self.identity.name,
                        "certificate": self.identity_pem(),
                        "at": time.time(),
                    }
                )
                self._write_config(name, {self.me})
            except BaseException:
                await membership.stop()
                self._clear_files()
                raise
            self.membership = membership
        log.info("supernode %s created", name)
        return self.status()

    async def join(self, name: str, timeout: float = 30.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Join the supernode ``name`` through a neighbour that is a member of it.

        Raises:
            AlreadyMemberError: this node is a member already.
            NotMemberError: no neighbour with a session is a member of ``name``.
            NoQuorumError: the members did not admit this node within ``timeout`` seconds.
        """
        _check_name(name)
        async with self._busy:
            if self.membership is not None:
                raise AlreadyMemberError(f'this node is a member of supernode "{self.name}"')
            via, info = await self._find_member(name)
            self._clear_files()
            others = {m for m in info["members"] if isinstance(m, str)} - {self.me}
            membership = self.membership = await self._run(others, name, quiet=True)
            try:
                async with asyncio.timeout(timeout):
                    answer = await self.mesh.request(via, "supernode.join", {"name": name}, timeout)
                    if membership.vouching is not None:  # the members this node never met
                        membership.vouching.take_answer(answer)
                    await membership.until(
                        lambda: (
                            membership.raft.ready
                            and membership.state.name == name
                            and self.me in membership.state.members
                        )
                    )
                membership.end_quiet()
                self._write_config(name, membership.raft.nodes)
            except TimeoutError:
                await self._abandon(membership)
                raise NoQuorumError(
                    f'the members of "{name}" did not admit this node within {timeout:g} s'
                ) from None
            except BaseException:
                await self._abandon(membership)
                raise
        log.info("supernode %s: joined through %s", name, short_id(via))
        return self.status()

    async def _abandon(self, membership: Membership) -> None:
        self.membership = None
        await membership.stop()
        if membership.vouching is not None:
            membership.vouching.withdraw_all()
        self._clear_files()

    async def _find_member(self, name: str) -> tuple[str, dict[str, Any]]:
        asked = []
        for node_id in sorted(
            {k["nodeID"] for k in self.mesh.links() if k["state"] == "established"}
        ):
            try:
                info = await self.mesh.request(node_id, "supernode.info", None, ASK_TIMEOUT)
            except FloreteError:
                continue
            asked.append(short_id(node_id))
            if isinstance(info, dict) and info.get("member") and info.get("name") == name:
                if isinstance(info.get("members"), list):
                    return node_id, info
        where = (
            f"asked {', '.join(asked)}" if asked else "no neighbour has a session with this node"
        )
        raise NotMemberError(f'no neighbour is a member of supernode "{name}" ({where})')

    async def leave(self, timeout: float = 60.0, force: bool = False) -> None:  # noqa: ASYNC109
        """Leave the supernode: its pods move to other members first (like a drain); the last
        member dissolves it and keeps its pods as ordinary pods of this node.

        Args:
            timeout: seconds for the whole leave.
            force: forget the membership here without asking the others (they are gone, or
                removed this node already); this node's supernode pods stay as its own pods.

        Raises:
            NotMemberError: this node is not a member.
            NoQuorumError: the other members could not commit the change in ``timeout``.
        """
        async with self._busy:
            membership = self.member()
            try:
                async with asyncio.timeout(timeout):
                    if membership.raft.others and not force:
                        await self._leave(membership)
                    else:
                        await self._dissolve(membership)
            except TimeoutError:
                raise NoQuorumError(f"could not leave within {timeout:g} s; try again") from None
            await membership.stop()
            if membership.vouching is not None:  # trust from pairing or by hand stays
                membership.vouching.withdraw_all()
            self.membership = None
            self._clear_files()
        log.info("left the supernode")

    async def _leave(self, membership: Membership) -> None:
        if self.me in membership.state.members:
            await membership.propose({"op": "member_remove", "node_id": self.me})
        # the local loop stops them: they are placed elsewhere now
        await membership.until(lambda: not membership.local_pods())
        while membership.raft.is_leader:
            with contextlib.suppress(FloreteError):
                await membership.raft.transfer_leadership()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(membership.timing.election_max):
                    await membership.until(lambda: not membership.raft.is_leader)
        while True:
            others = sorted(membership.raft.others)
            for node_id in others:
                with contextlib.suppress(FloreteError):
                    await self.mesh.request(node_id, "supernode.leave", None, 10.0)
                    return
            await asyncio.sleep(0.5)

    async def _dissolve(self, membership: Membership) -> None:
        for stored in membership.local_pods():
            manifest = copy.deepcopy(stored.manifest)
            annotations = manifest["metadata"].get("annotations") or {}
            for key in (SUPERNODE_ANNOTATION, PLACEMENT_ANNOTATION):
                annotations.pop(key, None)
            if not annotations:
                manifest["metadata"].pop("annotations", None)
            self.reconciler.release(stored.uid)
            with contextlib.suppress(FloreteError):
                await self.reconciler.update(manifest, stored.namespace)

    # ----------------------------------------------------------------- pods

    def record(self, namespace: str, name: str) -> PodRecord | None:
        """The supernode's record of a pod, or None (not a member, or no such pod)."""
        if self.membership is None:
            return None
        return self.membership.state.pods.get(pod_key(namespace, name))

    async def create_pod(
        self, manifest: dict[str, Any], namespace: str, dry_run: bool = False
    ) -> dict[str, Any]:
        """Apply a pod to the supernode; the leader places it.

        Raises:
            ManifestError: invalid manifest; AlreadyExistsError: the name is taken;
            NoQuorumError: no majority to commit it.
        """
        m = self.member()
        record = record_for(
            manifest, namespace, str(uuid.uuid4()), self.name or "", self.default_runtime
        )
        if record.key in m.state.pods:
            raise AlreadyExistsError(f'pods "{record.name}" already exists')
        if not dry_run:
            await m.propose({"op": "pod_create", "pod": record.to_dict()})
            record = m.state.pods.get(record.key, record)
        return pod_object(record, m.state, reachable=True)

    async def update_pod(
        self, manifest: dict[str, Any], namespace: str, dry_run: bool = False
    ) -> dict[str, Any]:
        """Change a supernode pod's labels and annotations (its spec is immutable).

        Raises:
            ManifestError: invalid, or the spec changed; NotFoundError: no such pod.
        """
        m = self.member()
        record = record_for(manifest, namespace, "-", self.name or "", self.default_runtime)
        existing = self.record(record.namespace, record.name)
        if existing is None:
            raise NotFoundError(f'pods "{record.name}" not found')
        same = (
            record.manifest["spec"] == existing.manifest["spec"]
            and record.node_selector == existing.node_selector
            and record.pinned in ("", existing.pinned, self._member_name(existing.member))
        )
        if not same:
            raise ManifestError(
                [
                    "spec: Forbidden: pod updates may not change fields other than "
                    "metadata.labels and metadata.annotations; delete the pod and apply it again"
                ]
            )
        meta = record.manifest["metadata"]
        if not dry_run and meta != existing.manifest["metadata"]:
            await m.propose(
                {
                    "op": "pod_meta",
                    "namespace": record.namespace,
                    "name": record.name,
                    "labels": meta.get("labels") or {},
                    "annotations": meta.get("annotations") or {},
                }
            )
        return await self.get_pod(record.namespace, record.name)

    def _member_name(self, node_id: str) -> str:
        m = self.member()
        member = m.state.members.get(node_id)
        return member.name if member else ""

    async def delete_pod(self, namespace: str, name: str, grace: float | None) -> dict[str, Any]:
        """Delete a supernode pod: its member stops it, then it is gone.

        Raises:
            NotFoundError: no such pod; NoQuorumError: no majority to commit it.
        """
        m = self.member()
        record = self.record(namespace, name)
        if record is None:
            raise NotFoundError(f'pods "{name}" not found')
        obj = await self.get_pod(namespace, name)
        wait = record.grace if grace is None else grace
        command = {"op": "pod_delete", "namespace": namespace, "name": name, "grace": wait}
        await m.propose(command)
        obj.setdefault("metadata", {})["deletionGracePeriodSeconds"] = int(wait)
        return obj

    def _reachable(self, node_id: str) -> bool:
        return node_id == self.me or any(
            k["nodeID"] == node_id and k["state"] == "established" and k["up"]
            for k in self.mesh.links()
        )

    async def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        """A supernode pod as its member shows it (or from the state alone).

        Raises:
            NotFoundError: not a supernode pod.
        """
        m = self.member()
        record = self.record(namespace, name)
        if record is None:
            raise NotFoundError(f'pods "{name}" not found')
        obj: dict[str, Any] | None = None
        if record.member == self.me:
            with contextlib.suppress(NotFoundError):
                obj = self.reconciler.pod_object(self.reconciler.store.get_pod(namespace, name))
        elif record.member and self._reachable(record.member):
            with contextlib.suppress(FloreteError):
                body = {"namespace": namespace, "name": name}
                obj = await self.mesh.request(record.member, "supernode.pod", body, ASK_TIMEOUT)
        if isinstance(obj, dict) and _placed_as(obj, record):
            return member_object(obj, record)
        return pod_object(record, m.state, reachable=self._reachable(record.member))

    async def list_pods(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every supernode pod (of ``namespace``, or all), each as its member shows it."""
        m = self.member()
        records = [
            r for r in m.state.ordered_pods() if namespace is None or r.namespace == namespace
        ]
        seen: dict[str, dict[str, Any]] = {}
        for stored in m.local_pods():
            seen[pod_key(stored.namespace, stored.name)] = self.reconciler.pod_object(stored)
        members = sorted({r.member for r in records if r.member and r.member != self.me})
        asked = [n for n in members if self._reachable(n)]
        for items in await asyncio.gather(*(self._member_pods(n) for n in asked)):
            for item in items:
                meta = item.get("metadata") or {}
                seen.setdefault(pod_key(str(meta.get("namespace")), str(meta.get("name"))), item)
        objects = []
        for record in records:
            found = seen.get(record.key)
            if found is not None and _placed_as(found, record):
                objects.append(member_object(found, record))
            else:
                objects.append(pod_object(record, m.state, self._reachable(record.member)))
        return objects

    async def _member_pods(self, node_id: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        after: str | None = None
        try:
            while True:
                page = await self.mesh.request(
                    node_id, "supernode.pods", {"after": after}, ASK_TIMEOUT
                )
                items += [obj for obj in page.get("items", []) if isinstance(obj, dict)]
                if not page.get("more") or not items:
                    return items
                meta = items[-1].get("metadata") or {}
                after = pod_key(str(meta.get("namespace")), str(meta.get("name")))
        except (FloreteError, AttributeError) as err:
            log.debug("supernode: pods of %s: %s", short_id(node_id), err)
            return items

    async def list_events(
        self, mine: list[dict[str, Any]], namespace: str | None, field_selector: str | None
    ) -> list[dict[str, Any]]:
        """This node's events and those of the supernode pods on every reachable member (of
        ``namespace``, or all), oldest first; a supernode pod's events under its supernode uid.

        Args:
            mine: this node's own events of ``namespace``, as its events route lists them.
            namespace: the namespace, or None for all.
            field_selector: passed on to the members, which answer only what it selects (the
                caller still applies it to the whole list).

        Raises:
            NotMemberError: this node is not a member.
        """
        m = self.member()
        uids = supernode_uids(self.reconciler.store.list_pods(namespace))
        mine = [relabel(event, uids) for event in mine]
        members = {
            r.member
            for r in m.state.pods.values()
            if r.member and r.member != self.me and namespace in (None, r.namespace)
        }
        asked = [n for n in sorted(members) if self._reachable(n)]
        theirs = await asyncio.gather(
            *(member_events(self.mesh, n, namespace, field_selector, ASK_TIMEOUT) for n in asked)
        )
        return merge(mine, *theirs)

    # ----------------------------------------------------------------- status and node

    def status(self) -> dict[str, Any]:
        """The ``Supernode`` object ``supernode status`` shows (see :mod:`supernode.views`)."""
        from supernode.views import status_object

        return status_object(self.member(), self.identity.name, self._reachable)

    def node(self) -> dict[str, Any]:
        """The supernode as one Kubernetes Node, its members in annotations."""
        from supernode.views import node_object

        return node_object(self.member(), self._reachable)


def _check_name(name: str) -> None:
    if not _NAME.match(name or ""):
        raise BadRequestError(
            f"supernode name {name!r} must be a DNS-1123 label (lower-case letters, digits and "
            "'-', at most 63, starting and ending with a letter or digit)"
        )


def _placed_as(obj: Mapping[str, Any], record: PodRecord) -> bool:
    """A member's pod object is the current placement of ``record`` (not an old copy)."""
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    uid = str(annotations.get(PLACEMENT_ANNOTATION, "")).rpartition("/")[0]
    return uid == record.uid
