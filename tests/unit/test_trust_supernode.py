"""Trust a supernode gives: vouching never overrides a person, and is withdrawn alone."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.errors import LocalError
from agent.identity import Identity, load_or_create_identity
from agent.store import Store
from agent.trust import InvalidCertificateError, Peer, TrustStore, supernode_source

PEM = serialization.Encoding.PEM
ROVER = supernode_source("rover")


@pytest.fixture
def node(tmp_path: Path) -> Identity:
    return load_or_create_identity(tmp_path / "peer", "peer-one")


@pytest.fixture
def other(tmp_path: Path) -> Identity:
    return load_or_create_identity(tmp_path / "other", "peer-two")


@pytest.fixture
def trust(tmp_path: Path) -> TrustStore:
    return TrustStore(Store(tmp_path / "state" / "agent.db"))


def pem(identity: Identity) -> bytes:
    return identity.certificate.public_bytes(PEM)


def test_vouch_trusts_an_unknown_node_with_the_supernode_as_source(
    trust: TrustStore, node: Identity
) -> None:
    seen: list[Peer] = []
    trust.add_listener(seen.append)
    peer = trust.vouch(pem(node), node_id=node.node_id, source=ROVER, name="b")
    assert peer is not None
    assert (peer.state, peer.source, peer.name) == ("trusted", "supernode:rover", "b")
    assert trust.is_trusted(node.node_id, node.fingerprint)
    assert trust.vouch(pem(node), node_id=node.node_id, source=ROVER, name="b") == peer
    assert seen == [peer]  # the second vouch changed nothing


def test_vouch_refuses_a_certificate_of_another_node_and_a_bad_source(
    trust: TrustStore, node: Identity, other: Identity
) -> None:
    with pytest.raises(InvalidCertificateError, match="is node"):
        trust.vouch(pem(other), node_id=node.node_id, source=ROVER)
    with pytest.raises(LocalError, match="supernode:NAME"):
        trust.vouch(pem(node), node_id=node.node_id, source="pairing")
    with pytest.raises(LocalError, match="supernode:NAME"):
        trust.vouch(pem(node), node_id=node.node_id, source="supernode:")
    with pytest.raises(LocalError):
        trust.add(pem(node), source=ROVER)  # a person's add takes a person's sources only
    assert trust.peers() == []


@pytest.mark.parametrize("source", ["manual", "pairing"])
def test_a_persons_trust_is_kept_and_never_withdrawn_by_a_supernode(
    trust: TrustStore, node: Identity, source: str
) -> None:
    given = trust.add(pem(node), source=source)
    assert trust.vouch(pem(node), node_id=node.node_id, source=ROVER, name="x") == given
    assert trust.withdraw(node.node_id, ROVER) is None
    assert trust.withdraw_all(ROVER) == []
    assert trust.get(node.node_id) == given


def test_a_person_trusting_a_vouched_node_takes_it_over(trust: TrustStore, node: Identity) -> None:
    trust.vouch(pem(node), node_id=node.node_id, source=ROVER)
    paired = trust.add(pem(node), source="pairing")
    assert paired.source == "pairing"
    assert trust.withdraw(node.node_id, ROVER) is None
    assert trust.is_trusted(node.node_id, node.fingerprint)


def test_a_revoked_node_is_not_trusted_again_by_a_supernode(
    trust: TrustStore, node: Identity
) -> None:
    trust.vouch(pem(node), node_id=node.node_id, source=ROVER)
    trust.revoke(node.node_id)  # unpair, or `peers revoke`
    assert trust.vouch(pem(node), node_id=node.node_id, source=ROVER) is None
    assert trust.get(node.node_id) is not None
    assert trust.get(node.node_id).state == "revoked"  # type: ignore[union-attr]
    assert trust.withdraw(node.node_id, ROVER) is None  # the revocation stays listed
    assert trust.add(pem(node), source="manual").state == "trusted"  # a person may


def test_withdraw_removes_only_that_supernodes_trust_and_tells_listeners(
    trust: TrustStore, node: Identity, other: Identity
) -> None:
    trust.vouch(pem(node), node_id=node.node_id, source=ROVER)
    trust.vouch(pem(other), node_id=other.node_id, source=supernode_source("truck"))
    seen: list[Peer] = []
    trust.add_listener(seen.append)
    gone = trust.withdraw_all(ROVER)
    assert [(p.node_id, p.state) for p in gone] == [(node.node_id, "revoked")]
    assert seen == gone  # sessions close as on a revocation
    assert trust.get(node.node_id) is None  # nothing left: it may be vouched for again
    assert trust.get(other.node_id) is not None
    assert trust.vouch(pem(node), node_id=node.node_id, source=ROVER) is not None


def test_withdrawn_trust_stays_withdrawn_after_reopen(tmp_path: Path, node: Identity) -> None:
    path = tmp_path / "db" / "agent.db"
    trust = TrustStore(Store(path))
    trust.vouch(pem(node), node_id=node.node_id, source=ROVER)
    trust.withdraw(node.node_id, ROVER)
    assert TrustStore(Store(path)).peers() == []
