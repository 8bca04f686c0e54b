"""Trust passed on by a supernode: its members trust each other's certificates.

A board joins through one member it trusts; that member *vouches* for it by putting the
certificate its authenticated session with the board is pinned to into the ``member_add``
command (:mod:`supernode.state`). Once committed, every member trusts the certificates of the
committed members with the source ``supernode:NAME`` (:meth:`agent.trust.TrustStore.vouch`),
and the joiner trusts the members' certificates from the join's answer, so Raft and the other
supernode traffic flow between members that were never paired.

:func:`plan` is the rule, pure: from the committed members, the Raft configuration and the
trust store's peers it returns what to trust and what to withdraw. :class:`Vouching` applies
it to the trust store. A node's trust through the supernode ends when it is in neither the
committed members nor the Raft configuration (a leaving member stays trusted until it is out of
the configuration, since it still has to ask a member to take it out); a person's trust
(``manual``, ``pairing``) is never touched, and a revoked peer is never trusted again here.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import textwrap
from collections.abc import Iterable, Mapping
from typing import Any

from agent.errors import FloreteError
from agent.identity import short_id
from agent.trust import Peer, TrustStore, supernode_source
from supernode.state import Member

__all__ = ["Plan", "Vouching", "certificates_of", "pem", "plan"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the trust store should do for one supernode.

    Attributes:
        vouch: the members to trust (their certificate is known), by node ID.
        withdraw: node IDs whose trust through the supernode ends.
    """

    vouch: tuple[Member, ...] = ()
    withdraw: tuple[str, ...] = ()


def plan(
    me: str,
    source: str,
    members: Mapping[str, Member],
    nodes: Iterable[str],
    peers: Iterable[Peer],
) -> Plan:
    """The trust changes that make the trust store agree with the supernode.

    Args:
        me: this node's ID (never vouched for or withdrawn).
        source: the supernode's trust source, ``supernode:NAME``.
        members: the committed members (node ID -> member).
        nodes: the node IDs of the Raft configuration.
        peers: the trust store's peers.

    Returns:
        The members with a certificate that are not trusted here with it yet (nor revoked:
        :meth:`~agent.trust.TrustStore.vouch` refuses those, and is told anyway so that it is
        said), and the peers trusted through ``source`` that are neither members nor in the
        Raft configuration.
    """
    keep = set(members) | set(nodes)
    known = {p.node_id: p for p in peers}
    vouch = []
    for node_id, member in sorted(members.items()):
        if node_id == me or not member.certificate:
            continue
        peer = known.get(node_id)
        if peer is None or peer.state != "trusted" or peer.source == source:
            vouch.append(member)
    withdraw = sorted(
        p.node_id
        for p in known.values()
        if p.source == source and p.state == "trusted" and p.node_id not in keep and p.node_id != me
    )
    return Plan(tuple(vouch), tuple(withdraw))


def pem(der: bytes) -> str:
    """A DER certificate as PEM text (what member records carry)."""
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


def certificates_of(members: Iterable[Member]) -> list[dict[str, str]]:
    """The members' certificates as the join's answer carries them:
    ``[{"nodeID", "name", "certificate"}]`` (members without one left out)."""
    return [
        {"nodeID": m.node_id, "name": m.name, "certificate": m.certificate}
        for m in members
        if m.certificate
    ]


class Vouching:
    """Keeps the trust store in step with the supernode ``name`` (see the module docstring).

    Args:
        trust: this node's trust store.
        me: this node's ID.
        name: the supernode's name.
    """

    def __init__(self, trust: TrustStore, me: str, name: str) -> None:
        self.trust = trust
        self.me = me
        self.name = name
        self.source = supernode_source(name)
        self._seen: tuple[Any, ...] | None = None
        self._refused: set[str] = set()

    def sync(self, members: Mapping[str, Member], nodes: Iterable[str]) -> None:
        """Apply :func:`plan` when the members, their certificates or the configuration
        changed since the last call (cheap to call on every tick)."""
        node_set = frozenset(nodes)
        seen = (
            tuple(sorted((m.node_id, m.name, m.certificate) for m in members.values())),
            node_set,
            self.trust.version,
        )
        if seen == self._seen:
            return
        changes = plan(self.me, self.source, members, node_set, self.trust.peers())
        for member in changes.vouch:
            self.vouch(member.node_id, member.name, member.certificate)
        for node_id in changes.withdraw:
            self.trust.withdraw(node_id, self.source)
        self._seen = (seen[0], seen[1], self.trust.version)

    def vouch(self, node_id: str, name: str, certificate: str) -> Peer | None:
        """Trust one member's certificate (from the state or a join's answer); a refusal
        (revoked here, a certificate that is not the node's) is logged once, not raised."""
        if node_id == self.me:
            return None
        try:
            peer = self.trust.vouch(
                certificate.encode(), node_id=node_id, source=self.source, name=name or None
            )
        except FloreteError as err:
            self._refuse(node_id, f"its certificate is refused: {err}")
            return None
        if peer is None:
            self._refuse(
                node_id,
                "it is revoked here, so the supernode does not trust it again (pair with it, "
                "or `peers add` its certificate, to trust it again)",
            )
        else:
            self._refused.discard(node_id)
        return peer

    def take_answer(self, answer: Any) -> int:
        """Trust the members' certificates in a join's answer (``{"certificates": [...]}``);
        malformed items are skipped. Returns how many are trusted."""
        items = answer.get("certificates") if isinstance(answer, dict) else None
        trusted = 0
        for item in items if isinstance(items, list) else []:
            if not isinstance(item, dict):
                continue
            node_id, name, cert = (item.get(k) for k in ("nodeID", "name", "certificate"))
            if isinstance(node_id, str) and isinstance(cert, str) and cert:
                found = self.vouch(node_id, name if isinstance(name, str) else "", cert)
                trusted += found is not None
        return trusted

    def withdraw_all(self) -> None:
        """This node left the supernode: withdraw every trust it gave."""
        for peer in self.trust.withdraw_all(self.source):
            log.info("supernode %s: no longer trusting %s", self.name, peer.name)

    def _refuse(self, node_id: str, why: str) -> None:
        level = logging.DEBUG if node_id in self._refused else logging.WARNING
        self._refused.add(node_id)
        log.log(
            level, "supernode %s: not trusting member %s: %s", self.name, short_id(node_id), why
        )
