"""The trust store: adding node certificates, precise refusals, revocation, durability."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from agent.errors import LocalError, NotFoundError
from agent.identity import Identity, _make_certificate, load_or_create_identity
from agent.store import Store
from agent.trust import InvalidCertificateError, Peer, TrustStore

DER = serialization.Encoding.DER
PEM = serialization.Encoding.PEM


@pytest.fixture
def node(tmp_path: Path) -> Identity:
    return load_or_create_identity(tmp_path / "peer", "peer-one")


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state" / "agent.db")


@pytest.fixture
def trust(store: Store) -> TrustStore:
    return TrustStore(store)


def test_add_pem_derives_id_name_and_fingerprint(trust: TrustStore, node: Identity) -> None:
    peer = trust.add(node.certificate.public_bytes(PEM), source="manual")
    assert peer.node_id == node.node_id
    assert peer.name == "peer-one"
    assert peer.fingerprint == node.fingerprint
    assert peer.certificate == node.certificate.public_bytes(DER)
    assert (peer.state, peer.source) == ("trusted", "manual")
    assert trust.get(node.node_id) == peer
    assert trust.trusted() == [peer]
    assert trust.is_trusted(node.node_id, node.fingerprint)
    assert not trust.is_trusted(node.node_id, "00:" * 31 + "00")


def test_add_der_with_a_name_and_is_idempotent(trust: TrustStore, node: Identity) -> None:
    first = trust.add(node.certificate.public_bytes(DER), source="pairing", name="robot")
    assert (first.name, first.source) == ("robot", "pairing")
    assert trust.add(node.certificate.public_bytes(DER), source="pairing") == first
    assert trust.version == 1


def test_peers_survive_reopen(tmp_path: Path, node: Identity) -> None:
    path = tmp_path / "db" / "agent.db"
    first = Store(path)
    TrustStore(first).add(node.certificate.public_bytes(PEM), source="manual")
    first.close()
    again = TrustStore(Store(path))
    assert again.is_trusted(node.node_id, node.fingerprint)


def test_revoke_keeps_the_row_and_notifies(trust: TrustStore, node: Identity) -> None:
    seen: list[Peer] = []
    remove = trust.add_listener(seen.append)
    trust.add(node.certificate.public_bytes(PEM), source="manual")
    revoked = trust.revoke(node.node_id)
    assert revoked.state == "revoked"
    assert trust.get(node.node_id) == revoked
    assert trust.trusted() == []
    assert not trust.is_trusted(node.node_id, node.fingerprint)
    assert [p.state for p in seen] == ["trusted", "revoked"]
    assert trust.version == 2
    remove()
    remove()
    trust.add(node.certificate.public_bytes(PEM), source="manual")
    assert trust.is_trusted(node.node_id, node.fingerprint)
    assert len(seen) == 2


def test_a_failing_listener_does_not_undo_the_change(
    trust: TrustStore, node: Identity, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(peer: Peer) -> None:
        raise RuntimeError("listener bug")

    trust.add_listener(broken)
    trust.add(node.certificate.public_bytes(PEM), source="manual")
    assert trust.is_trusted(node.node_id, node.fingerprint)
    assert "trust listener" in caplog.text


def test_revoke_unknown_peer(trust: TrustStore, node: Identity) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        trust.revoke(node.node_id)


def test_new_certificate_for_the_same_key_replaces_the_pin(
    trust: TrustStore, node: Identity
) -> None:
    trust.add(node.certificate.public_bytes(PEM), source="manual")
    reissued = _make_certificate(node.private_key, "renamed", node.node_id)
    peer = trust.add(reissued.public_bytes(PEM), source="manual")
    assert peer.name == "renamed"
    assert not trust.is_trusted(node.node_id, node.fingerprint)
    assert trust.is_trusted(node.node_id, peer.fingerprint)


def _ec_certificate() -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ec")])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
        .sign(key, hashes.SHA256())
    )


def _signed_by_other_key(node: Identity) -> bytes:
    other = Ed25519PrivateKey.generate()
    cert = (
        x509.CertificateBuilder()
        .subject_name(node.certificate.subject)
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "someone else")]))
        .public_key(node.private_key.public_key())
        .serial_number(2)
        .not_valid_before(datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC))
        .sign(other, algorithm=None)
    )
    return cert.public_bytes(DER)


def _tampered(node: Identity) -> bytes:
    der = bytearray(node.certificate.public_bytes(DER))
    der[-1] ^= 0x01  # last byte of the signature
    return bytes(der)


def test_refusals_are_precise(trust: TrustStore, node: Identity, tmp_path: Path) -> None:
    other = load_or_create_identity(tmp_path / "other", "other")
    lying = _make_certificate(node.private_key, "liar", other.node_id).public_bytes(PEM)
    cases = [
        (b"hello", "not a readable DER X.509 certificate"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "readable PEM"),
        (b"\x30" * 20_000, "more than 16384"),
        (
            _ec_certificate().public_bytes(PEM),
            "not a node certificate: certificate key is .*, not Ed25519",
        ),
        (_tampered(node), "is not self-signed"),
        (_signed_by_other_key(node), "is not self-signed"),
        (lying, f"claims node {other.node_id} but its key is node {node.node_id}'s"),
    ]
    for data, reason in cases:
        with pytest.raises(InvalidCertificateError, match=reason):
            trust.add(data, source="manual")
    assert trust.trusted() == []
    assert trust.version == 0


def test_unknown_source(trust: TrustStore, node: Identity) -> None:
    with pytest.raises(LocalError, match="manual, pairing"):
        trust.add(node.certificate.public_bytes(PEM), source="mdns")
