"""Tests for agent.identity: node ID format and check characters, key and certificate files."""

from __future__ import annotations

import logging
import multiprocessing
import re
import stat
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ConfigError
from agent.identity import (
    NODE_ID_URI_PREFIX,
    _publish,
    certificate_fingerprint,
    load_or_create_identity,
    node_id_from_public_key,
    parse_node_id,
    short_id,
)

ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
ID_RE = re.compile(r"^[A-Z2-7]{7}(-[A-Z2-7]{7}){7}$")
# Syncthing's own test vector (lib/protocol/deviceid_test.go): same encoding and check characters.
SYNCTHING_ID = "P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-MGL3BXN-PQ6W5BM-TBBZ4TJ-XZWICQ2"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_node_id_format_and_determinism() -> None:
    node_id = node_id_from_public_key(bytes(range(32)))
    assert ID_RE.match(node_id)
    assert node_id == node_id_from_public_key(bytes(range(32)))
    assert node_id != node_id_from_public_key(bytes(32))


def test_node_id_rejects_wrong_key_length() -> None:
    with pytest.raises(ValueError, match="32 bytes, got 31"):
        node_id_from_public_key(bytes(31))


def test_parse_accepts_syncthing_id_and_its_forms() -> None:
    compact = SYNCTHING_ID.replace("-", "")
    spaced = " ".join(SYNCTHING_ID.split("-"))
    lookalikes = "p561017mzjnu2yiqgdreydm2mgtimgl3bxnpq6w5bmt88z4tjxzwicq2"
    for form in (SYNCTHING_ID, compact, compact.lower(), spaced, f"  {spaced}\n", lookalikes):
        assert parse_node_id(form) == SYNCTHING_ID


@given(st.binary(min_size=32, max_size=32))
def test_parse_round_trip(pub: bytes) -> None:
    node_id = node_id_from_public_key(pub)
    assert parse_node_id(node_id) == node_id
    assert parse_node_id(node_id.lower().replace("-", "")) == node_id


def test_every_single_substitution_is_caught() -> None:
    """Exhaustive over the first check block (13 characters + check): 14 x 31 substitutions."""
    compact = SYNCTHING_ID.replace("-", "")
    for pos in range(14):
        for char in ALPHABET:
            if char == compact[pos]:
                continue
            typo = compact[:pos] + char + compact[pos + 1 :]
            with pytest.raises(ValueError, match="check character mismatch in groups 1-2"):
                parse_node_id(typo)


@given(st.binary(min_size=32, max_size=32), st.integers(0, 55), st.sampled_from(ALPHABET))
def test_substitution_anywhere_is_caught(pub: bytes, pos: int, char: str) -> None:
    compact = node_id_from_public_key(pub).replace("-", "")
    if compact[pos] != char:
        with pytest.raises(ValueError, match="check character mismatch"):
            parse_node_id(compact[:pos] + char + compact[pos + 1 :])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "expected 56 characters"),
        (SYNCTHING_ID[:-1], "got 55"),
        # The 52-character form without check characters is refused: it cannot catch typos.
        ("P56IOI7MZJNU2IQGDREYDM2MGTMGL3BXNPQ6W5BTBBZ4TJXZWICQ", "got 52"),
        (SYNCTHING_ID.replace("MZJNU2Y", "MZJNU9Y"), r"'9' \(group 2\) is not a base32"),
    ],
)
def test_parse_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_node_id(text)


def test_short_id() -> None:
    assert short_id(SYNCTHING_ID.lower()) == "P56IOI7"
    with pytest.raises(ValueError, match="node ID"):
        short_id("nope")


def test_create_then_reload(tmp_path: Path) -> None:
    first = load_or_create_identity(tmp_path / "state", "board-1")
    directory = tmp_path / "state" / "identity"
    assert first.key_path == directory / "node.key"
    assert first.cert_path == directory / "node.crt"
    assert mode(directory) == 0o700
    assert mode(first.key_path) == 0o600
    assert first.key_path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert sorted(p.name for p in directory.iterdir()) == ["node.crt", "node.key"]

    again = load_or_create_identity(tmp_path / "state", "board-1")
    assert again.node_id == first.node_id
    assert again.fingerprint == first.fingerprint
    assert ID_RE.match(first.node_id)
    pub = first.private_key.public_key().public_bytes_raw()
    assert first.node_id == node_id_from_public_key(pub)


def test_certificate_verifies_and_carries_id(tmp_path: Path) -> None:
    ident = load_or_create_identity(tmp_path, "board-1")
    cert = ident.certificate
    pub = cert.public_key()
    assert isinstance(pub, Ed25519PublicKey)
    pub.verify(cert.signature, cert.tbs_certificate_bytes)  # raises InvalidSignature if not
    assert cert.issuer == cert.subject
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert [a.value for a in cn] == ["board-1"]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    assert uris == [NODE_ID_URI_PREFIX + ident.node_id]
    assert cert.not_valid_after_utc.year == 9999
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", ident.fingerprint)
    assert ident.fingerprint == certificate_fingerprint(cert)


def test_serials_are_random(tmp_path: Path) -> None:
    one = load_or_create_identity(tmp_path / "a", "n").certificate.serial_number
    two = load_or_create_identity(tmp_path / "b", "n").certificate.serial_number
    assert one != two


def test_open_key_mode_is_fixed_with_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ident = load_or_create_identity(tmp_path, "n")
    ident.key_path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="agent.identity"):
        again = load_or_create_identity(tmp_path, "n")
    assert again.node_id == ident.node_id
    assert mode(ident.key_path) == 0o600
    assert "node.key had mode 0644" in caplog.text


def test_corrupt_key_names_file(tmp_path: Path) -> None:
    ident = load_or_create_identity(tmp_path, "n")
    ident.key_path.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=re.escape(str(ident.key_path))):
        load_or_create_identity(tmp_path, "n")


def test_corrupt_certificate_names_file(tmp_path: Path) -> None:
    ident = load_or_create_identity(tmp_path, "n")
    ident.cert_path.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match=re.escape(str(ident.cert_path))):
        load_or_create_identity(tmp_path, "n")


def test_certificate_of_another_key_is_refused(tmp_path: Path) -> None:
    mine = load_or_create_identity(tmp_path / "a", "n")
    other = load_or_create_identity(tmp_path / "b", "n")
    mine.cert_path.write_bytes(other.cert_path.read_bytes())
    with pytest.raises(ConfigError, match="certificate is for node"):
        load_or_create_identity(tmp_path / "a", "n")


def test_missing_certificate_is_reissued_for_same_id(tmp_path: Path) -> None:
    ident = load_or_create_identity(tmp_path, "n")
    ident.cert_path.unlink()
    again = load_or_create_identity(tmp_path, "n")
    assert again.node_id == ident.node_id
    assert again.cert_path.exists()


def test_certificate_without_key_is_an_error(tmp_path: Path) -> None:
    ident = load_or_create_identity(tmp_path, "n")
    ident.key_path.unlink()
    with pytest.raises(ConfigError, match=r"node\.key: missing while node\.crt exists"):
        load_or_create_identity(tmp_path, "n")


def test_publish_is_first_writer_wins(tmp_path: Path) -> None:
    target = tmp_path / "node.key"
    assert _publish(target, b"first", 0o600)
    assert not _publish(target, b"second", 0o600)
    assert target.read_bytes() == b"first"
    assert mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["node.key"]


def _start(state_dir: str, barrier: Barrier, queue: multiprocessing.Queue[tuple[str, str]]) -> None:
    barrier.wait()
    ident = load_or_create_identity(Path(state_dir), "n")
    queue.put((ident.node_id, ident.fingerprint))


def test_concurrent_first_start_agrees(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue[tuple[str, str]] = ctx.Queue()
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_start, args=(str(tmp_path), barrier, queue)) for _ in range(4)]
    for proc in procs:
        proc.start()
    results = {queue.get(timeout=60) for _ in procs}
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    on_disk = load_or_create_identity(tmp_path, "n")
    assert results == {(on_disk.node_id, on_disk.fingerprint)}
