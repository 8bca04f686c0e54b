"""The replicated state of a supernode: members and pod placements, changed only by commands.

This is the state machine that Raft (:mod:`supernode.raft`) replicates: every member applies the
same committed commands in the same order and so holds the same :class:`SupernodeState`. It is
pure and deterministic (no clock, no randomness, no I/O: times travel inside the commands), and
one table, :data:`_OPS`, lists every command and the transition it makes.

Commands are JSON objects ``{"op": NAME, ...}``:

=================  ===========================================================================
``create``         ``name, node_id, member_name, at`` (``certificate``): the first command of a
                   new supernode.
``member_add``     ``node_id, name, at`` (``certificate``): a node joined (idempotent: a known
                   member is renamed, and gets the certificate if one is given).
``member_cert``    ``node_id, certificate``: a member's certificate, for a member that joined
                   before members carried one (it proposes its own).
``member_remove``  ``node_id``: a member left; its pods lose their placement (to be placed again).
``pod_create``     ``pod``: a :class:`PodRecord` as a dict; refused if the name is taken.
``pod_meta``       ``namespace, name, labels, annotations``: the only mutable part of a pod.
``pod_delete``     ``namespace, name, grace``: an unplaced pod goes at once; a placed one
                   is marked deleting until its member reports it gone.
``pod_gone``       ``namespace, name, uid``: the member stopped it (or the leader gave up on a
                   dead member); the record is removed.
``barrier``        nothing: a new leader commits one before deciding, so that everything
                   earlier terms committed has been applied.
``round``          the leader's decisions of one placement round (see :meth:`_round`): members
                   down or up, placements, reasons, pods gone. Each item names the generation it
                   was decided on and is skipped if the pod changed since (a stale decision).
=================  ===========================================================================

A command never raises: malformed or refused commands return ``{"error": CODE, "message": TEXT}``
(codes ``invalid``, ``already_exists``, ``not_found``, ``conflict``) and change nothing, since a
command that raised inside Raft's apply would stop the member's log. Success is ``{"ok": True}``
plus command-specific fields.

A member's ``certificate`` (PEM text, "" when unknown) is what the other members trust it by
(:mod:`supernode.vouching`): the member that admitted it put there the certificate its
authenticated session with it is pinned to. The state machine does not read certificates; the
members check each one against the member's node ID before trusting it.

The placement ``generation`` of a pod is its fencing token: it grows by one each time the pod is
placed, so a member can tell an old placement from the current one after a partition.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["Member", "PodRecord", "SupernodeState", "pod_key"]

RESTART_POLICIES = ("Always", "OnFailure", "Never")


class _Invalid(ValueError):
    """A command field is missing or of the wrong type (the message names it)."""


def pod_key(namespace: str, name: str) -> str:
    """The key of a pod in :attr:`SupernodeState.pods`: ``"namespace/name"``."""
    return f"{namespace}/{name}"


def _get(obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    """``obj[key]`` if it is of ``kind`` (a bool is not taken for a number)."""
    if not isinstance(obj, Mapping) or key not in obj:
        raise _Invalid(f"{key}: required")
    value = obj[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise _Invalid(f"{key}: wrong type {type(value).__name__}")
    return value


def _str(obj: Mapping[str, Any], key: str) -> str:
    value: str = _get(obj, key, str)
    return value


def _num(obj: Mapping[str, Any], key: str) -> float:
    return float(_get(obj, key, (int, float)))


def _int(obj: Mapping[str, Any], key: str) -> int:
    value: int = _get(obj, key, int)
    return value


def _certificate(obj: Mapping[str, Any]) -> str:
    """The optional ``certificate`` field: PEM text or ""."""
    value = obj.get("certificate", "")
    if not isinstance(value, str):
        raise _Invalid("certificate: wrong type")
    if value and not value.lstrip().startswith("-----BEGIN CERTIFICATE-----"):
        raise _Invalid("certificate: expected PEM text")
    return value


def _str_map(obj: Mapping[str, Any], key: str) -> dict[str, str]:
    value = _get(obj, key, dict)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise _Invalid(f"{key}: expected a map of strings")
    return dict(value)


def _str_list(obj: Mapping[str, Any], key: str) -> list[str]:
    value = _get(obj, key, list)
    if not all(isinstance(v, str) for v in value):
        raise _Invalid(f"{key}: expected a list of strings")
    return list(value)


@dataclasses.dataclass
class Member:
    """A member of the supernode.

    Attributes:
        node_id: its node ID (the Raft node ID too).
        name: its node name.
        joined_at: when it joined, seconds since the epoch (the proposer's clock).
        down_since: when the leader declared it lost (its pods were moved), or None while up.
        certificate: its node certificate, PEM text ("" when not known: a member from before
            members carried one).
    """

    node_id: str
    name: str
    joined_at: float
    down_since: float | None = None
    certificate: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The member as a JSON object."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Member:
        """Build from :meth:`to_dict` output; raises ValueError when malformed."""
        down = obj.get("down_since")
        if down is not None and not isinstance(down, int | float):
            raise _Invalid("down_since: wrong type")
        cert = _certificate(obj)
        return cls(_str(obj, "node_id"), _str(obj, "name"), _num(obj, "joined_at"), down, cert)


@dataclasses.dataclass
class PodRecord:
    """A pod applied to the supernode, with what placing it needs and where it is placed.

    Attributes:
        namespace: namespace.
        name: name.
        uid: the supernode's uid of the pod (UUID4 string, fixed at creation).
        manifest: the validated manifest without ``spec.nodeName`` and ``spec.nodeSelector``
            (those are scheduling fields, kept apart below).
        created_at: creation time, seconds since the epoch.
        node_selector: labels a member must carry (``spec.nodeSelector``).
        pinned: member name or node ID the pod is pinned to (``spec.nodeName``), "" for any.
        cpu_millis: CPU requested, millicores (the pod's effective request).
        memory_bytes: memory requested, bytes.
        runtime: the runtime it needs on its member (``runtimeClassName`` or the automatic one).
        devices: device classes it needs, one entry per device (``florete.io/devices``).
        restart_policy: ``Always``, ``OnFailure`` or ``Never`` (decides failover, see
            :mod:`supernode.failover`).
        member: node ID of the member it is placed on, "" while unplaced (Pending).
        generation: placement generation (fencing token), +1 on every placement.
        deleting: deletion was requested; the member stops it and reports it gone.
        grace: seconds between SIGTERM and SIGKILL for the deletion.
        reason: why it is unplaced or left on a lost member (the scheduler's message), or "".
    """

    namespace: str
    name: str
    uid: str
    manifest: dict[str, Any]
    created_at: float
    node_selector: dict[str, str] = dataclasses.field(default_factory=dict)
    pinned: str = ""
    cpu_millis: int = 0
    memory_bytes: int = 0
    runtime: str = "process"
    devices: list[str] = dataclasses.field(default_factory=list)
    restart_policy: str = "Always"
    member: str = ""
    generation: int = 0
    deleting: bool = False
    grace: float = 30.0
    reason: str = ""

    @property
    def key(self) -> str:
        """``"namespace/name"``."""
        return pod_key(self.namespace, self.name)

    def to_dict(self) -> dict[str, Any]:
        """The record as a JSON object."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> PodRecord:
        """Build from :meth:`to_dict` output.

        Raises:
            ValueError: a field is missing, of the wrong type or out of range.
        """
        record = cls(
            namespace=_str(obj, "namespace"),
            name=_str(obj, "name"),
            uid=_str(obj, "uid"),
            manifest=dict(_get(obj, "manifest", dict)),
            created_at=_num(obj, "created_at"),
            node_selector=_str_map(obj, "node_selector"),
            pinned=_str(obj, "pinned"),
            cpu_millis=_int(obj, "cpu_millis"),
            memory_bytes=_int(obj, "memory_bytes"),
            runtime=_str(obj, "runtime"),
            devices=_str_list(obj, "devices"),
            restart_policy=_str(obj, "restart_policy"),
            member=_str(obj, "member"),
            generation=_int(obj, "generation"),
            deleting=_get(obj, "deleting", bool),
            grace=_num(obj, "grace"),
            reason=_str(obj, "reason"),
        )
        if not (record.namespace and record.name and record.uid):
            raise _Invalid("namespace, name and uid must not be empty")
        if record.restart_policy not in RESTART_POLICIES:
            raise _Invalid(f"restart_policy: must be one of {', '.join(RESTART_POLICIES)}")
        if record.cpu_millis < 0 or record.memory_bytes < 0 or record.grace < 0:
            raise _Invalid("cpu_millis, memory_bytes and grace must not be negative")
        return record


Result = dict[str, Any]


def _error(code: str, message: str) -> Result:
    return {"error": code, "message": message}


_OK: Result = {"ok": True}


@dataclasses.dataclass
class SupernodeState:
    """Members and pods of one supernode; changed only by :meth:`apply`.

    Attributes:
        name: the supernode's name ("" before ``create`` was applied).
        created_at: when it was created, seconds since the epoch.
        members: node ID -> member.
        pods: ``"namespace/name"`` -> pod record.
        applied: number of commands applied (successful or not); grows by one each.
    """

    name: str = ""
    created_at: float = 0.0
    members: dict[str, Member] = dataclasses.field(default_factory=dict)
    pods: dict[str, PodRecord] = dataclasses.field(default_factory=dict)
    applied: int = 0

    # ----------------------------------------------------------------- queries

    def placed_on(self, node_id: str) -> list[PodRecord]:
        """The pods placed on the member ``node_id`` (deleting ones included), by key."""
        return sorted((p for p in self.pods.values() if p.member == node_id), key=_by_key)

    def ordered_pods(self) -> list[PodRecord]:
        """Every pod, oldest first (then by key): the order placement considers them in."""
        return sorted(self.pods.values(), key=lambda p: (p.created_at, p.key))

    def member_by_name(self, name: str) -> Member | None:
        """The member with node ID or node name ``name``, or None."""
        if name in self.members:
            return self.members[name]
        return next((m for m in self.members.values() if m.name == name), None)

    # ----------------------------------------------------------------- persistence

    def to_json(self) -> str:
        """The whole state as canonical JSON (sorted keys)."""
        return json.dumps(
            {
                "name": self.name,
                "created_at": self.created_at,
                "members": [m.to_dict() for m in self.members.values()],
                "pods": [p.to_dict() for p in self.pods.values()],
                "applied": self.applied,
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> SupernodeState:
        """Inverse of :meth:`to_json`.

        Raises:
            ValueError: not a state document.
        """
        obj = json.loads(text)
        members = [Member.from_dict(m) for m in _get(obj, "members", list)]
        pods = [PodRecord.from_dict(p) for p in _get(obj, "pods", list)]
        return cls(
            name=_str(obj, "name"),
            created_at=_num(obj, "created_at"),
            members={m.node_id: m for m in members},
            pods={p.key: p for p in pods},
            applied=_int(obj, "applied"),
        )

    # ----------------------------------------------------------------- transitions

    def apply_json(self, command: str) -> Result:
        """:meth:`apply` for a command in JSON text (what Raft carries)."""
        try:
            decoded = json.loads(command)
        except (ValueError, TypeError) as err:
            self.applied += 1
            return _error("invalid", f"command is not JSON: {err}")
        return self.apply(decoded)

    def apply(self, command: Any) -> Result:
        """Apply one committed command (see the module docstring); never raises.

        Returns:
            ``{"ok": True, ...}``, or ``{"error": CODE, "message": TEXT}`` with the state unchanged.
        """
        self.applied += 1
        if not isinstance(command, Mapping) or not isinstance(command.get("op"), str):
            return _error("invalid", 'a command is a JSON object with a string "op"')
        op = _OPS.get(command["op"])
        if op is None:
            return _error("invalid", f"unknown command {command['op']!r}")
        try:
            return op(self, command)
        except _Invalid as err:
            return _error("invalid", f"{command['op']}: {err}")

    def _create(self, cmd: Mapping[str, Any]) -> Result:
        name, node_id = _str(cmd, "name"), _str(cmd, "node_id")
        member_name, at = _str(cmd, "member_name"), _num(cmd, "at")
        if self.name:
            return _error("already_exists", f'this supernode is already "{self.name}"')
        if not name or not node_id:
            raise _Invalid("name and node_id must not be empty")
        self.name, self.created_at = name, at
        self.members[node_id] = Member(node_id, member_name, at, certificate=_certificate(cmd))
        return dict(_OK)

    def _member_add(self, cmd: Mapping[str, Any]) -> Result:
        node_id, name, at = _str(cmd, "node_id"), _str(cmd, "name"), _num(cmd, "at")
        certificate = _certificate(cmd)
        if not node_id:
            raise _Invalid("node_id must not be empty")
        known = self.members.get(node_id)
        if known is not None:
            known.name, known.down_since = name, None
            known.certificate = certificate or known.certificate
            return {"ok": True, "added": False}
        self.members[node_id] = Member(node_id, name, at, certificate=certificate)
        return {"ok": True, "added": True}

    def _member_cert(self, cmd: Mapping[str, Any]) -> Result:
        node_id, certificate = _str(cmd, "node_id"), _certificate(cmd)
        member = self.members.get(node_id)
        if member is None:
            return _error("not_found", f"no member {node_id}")
        if not certificate:
            raise _Invalid("certificate must not be empty")
        member.certificate = certificate
        return dict(_OK)

    def _member_remove(self, cmd: Mapping[str, Any]) -> Result:
        node_id = _str(cmd, "node_id")
        if self.members.pop(node_id, None) is None:
            return _error("not_found", f"no member {node_id}")
        moved = 0
        for pod in self.placed_on(node_id):
            pod.member, pod.reason = "", "its member left the supernode"
            moved += 1
        return {"ok": True, "unplaced": moved}

    def _pod_create(self, cmd: Mapping[str, Any]) -> Result:
        record = PodRecord.from_dict(_get(cmd, "pod", dict))
        if record.key in self.pods:
            return _error("already_exists", f'pods "{record.name}" already exists')
        record.member, record.generation, record.deleting = "", 0, False
        self.pods[record.key] = record
        return dict(_OK)

    def _pod_meta(self, cmd: Mapping[str, Any]) -> Result:
        pod = self._pod(cmd)
        if pod is None:
            return _not_found(cmd)
        metadata = dict(pod.manifest.get("metadata") or {})
        for field in ("labels", "annotations"):
            value = _str_map(cmd, field)
            if value:
                metadata[field] = value
            else:
                metadata.pop(field, None)
        pod.manifest = {**pod.manifest, "metadata": metadata}
        return dict(_OK)

    def _pod_delete(self, cmd: Mapping[str, Any]) -> Result:
        grace = _num(cmd, "grace")
        pod = self._pod(cmd)
        if pod is None:
            return _not_found(cmd)
        if not pod.member:
            del self.pods[pod.key]
            return {"ok": True, "removed": True}
        pod.deleting, pod.grace = True, max(0.0, grace)
        return {"ok": True, "removed": False}

    def _pod_gone(self, cmd: Mapping[str, Any]) -> Result:
        uid = _str(cmd, "uid")
        pod = self._pod(cmd)
        if pod is None or pod.uid != uid:
            return _not_found(cmd)
        del self.pods[pod.key]
        return dict(_OK)

    def _pod(self, cmd: Mapping[str, Any]) -> PodRecord | None:
        return self.pods.get(pod_key(_str(cmd, "namespace"), _str(cmd, "name")))

    def _barrier(self, cmd: Mapping[str, Any]) -> Result:
        return dict(_OK)

    def _round(self, cmd: Mapping[str, Any]) -> Result:
        """The leader's decisions: ``at``; ``down``/``up``: node IDs; ``place``: items
        ``{key, uid, generation, member, reason}`` (member "" unplaces); ``hold``: items
        ``{key, uid, generation, reason}`` (only the reason changes); ``gone``: items
        ``{key, uid}``. Stale items (pod gone, uid or generation changed, member unknown) are
        skipped and counted."""
        at = _num(cmd, "at")
        lists = {k: _get(cmd, k, list) for k in ("down", "up", "place", "hold", "gone")}
        for item in [*lists["place"], *lists["hold"], *lists["gone"]]:
            _str(item, "key"), _str(item, "uid")
        for item in [*lists["place"], *lists["hold"]]:
            _int(item, "generation")
        for item in lists["place"]:
            _str(item, "member"), _str(item, "reason")
        for item in lists["hold"]:
            _str(item, "reason")
        if not all(isinstance(n, str) for n in [*lists["down"], *lists["up"]]):
            raise _Invalid("down and up: expected lists of node IDs")
        for node_id in lists["down"]:
            member = self.members.get(node_id)
            if member is not None and member.down_since is None:
                member.down_since = at
        for node_id in lists["up"]:
            member = self.members.get(node_id)
            if member is not None:
                member.down_since = None
        stale = 0
        for item in lists["place"]:
            pod = self._current(item)
            if pod is None or (item["member"] and item["member"] not in self.members):
                stale += 1
                continue
            pod.member, pod.reason = item["member"], item["reason"]
            pod.generation += 1
        for item in lists["hold"]:
            pod = self._current(item)
            if pod is None:
                stale += 1
                continue
            pod.reason = item["reason"]
        for item in lists["gone"]:
            pod = self.pods.get(item["key"])
            if pod is None or pod.uid != item["uid"]:
                stale += 1
                continue
            del self.pods[pod.key]
        return {"ok": True, "stale": stale}

    def _current(self, item: Mapping[str, Any]) -> PodRecord | None:
        pod = self.pods.get(item["key"])
        if pod is None or pod.uid != item["uid"] or pod.generation != item["generation"]:
            return None
        return pod


def _by_key(pod: PodRecord) -> str:
    return pod.key


def _not_found(cmd: Mapping[str, Any]) -> Result:
    return _error("not_found", f'pods "{cmd.get("name")}" not found')


_OPS: dict[str, Callable[[SupernodeState, Mapping[str, Any]], Result]] = {
    "create": SupernodeState._create,
    "member_add": SupernodeState._member_add,
    "member_cert": SupernodeState._member_cert,
    "member_remove": SupernodeState._member_remove,
    "pod_create": SupernodeState._pod_create,
    "pod_meta": SupernodeState._pod_meta,
    "pod_delete": SupernodeState._pod_delete,
    "pod_gone": SupernodeState._pod_gone,
    "barrier": SupernodeState._barrier,
    "round": SupernodeState._round,
}
"""Every command and its transition; a command not listed here is refused as ``invalid``."""
