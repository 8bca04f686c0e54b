"""Node identity: an Ed25519 key, a self-signed X.509 certificate and the node ID derived from it.

The node ID is self-certifying, in the manner of a Syncthing device ID
(https://docs.syncthing.net/dev/device-ids.html): whoever proves possession of the private key
proves the ID, so no authority is needed. Its text form is built as Syncthing builds its own, except
that the digest covers the raw 32-byte Ed25519 public key rather than the whole certificate (so a
reissued certificate keeps the ID):

1. ``SHA-256(public key)``: 32 bytes.
2. Base32 (RFC 4648 §6, alphabet ``A-Z2-7``) without ``=`` padding: 52 characters.
3. Four blocks of 13 characters, each followed by a Luhn mod 32 check character (Syncthing's
   variant in lib/protocol/luhn.go: factors 1, 2, 1, … from the left): 56 characters.
4. Eight groups of 7 joined by ``-``, e.g. ``P56IOI7-MZJNU2Y-IQGDREY-DM2MGTI-...``.

On disk (``<state_dir>/identity/``, mode 0700):

* ``node.key``: the private key, PKCS #8 PEM, unencrypted, mode 0600.
* ``node.crt``: a self-signed certificate, PEM. CN is the node's name at creation; a
  subjectAltName URI ``urn:florete:node:<node ID>`` carries the ID. The name may change later
  (``node.name``); the certificate is not reissued for that, as the ID, not the CN, identifies.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from agent.errors import ConfigError

__all__ = [
    "NODE_ID_URI_PREFIX",
    "Identity",
    "certificate_fingerprint",
    "load_or_create_identity",
    "node_id_from_certificate",
    "node_id_from_public_key",
    "parse_node_id",
    "short_id",
]

_log = logging.getLogger(__name__)

NODE_ID_URI_PREFIX = "urn:florete:node:"
"""Prefix of the subjectAltName URI that carries the node ID in a node certificate."""

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"  # RFC 4648 §6
_BLOCK = 13  # base32 characters per check character
_GROUP = 7  # characters per dash-separated display group
_ID_CHARS = 4 * (_BLOCK + 1)  # 56
# Characters that are not in the alphabet but are read for the letters they look like (as
# Syncthing's untypeoify does); the check characters still validate the result.
_LOOKALIKES = str.maketrans({"0": "O", "1": "I", "8": "B"})
# RFC 5280 §4.1.2.5: 99991231235959Z means "no well-defined expiration date". Any finite
# validity (100 years, say) would only add a date on which an unattended node stops talking;
# trust comes from pinning the node ID, and a node is retired by removing it from trust stores.
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
# Boards without a real-time clock boot at the Unix epoch until NTP runs; starting validity
# there keeps their own and their peers' certificates "valid" whatever the clock says.
_NOT_BEFORE = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)


@dataclass(frozen=True)
class Identity:
    """This node's identity, as loaded from or created in the state dir.

    Attributes:
        node_id: the node ID in display form (56 characters in 8 dash-separated groups of 7).
        name: the human name (``node.name``, the hostname by default). Not authenticated.
        private_key: the Ed25519 private key.
        certificate: the self-signed certificate of ``private_key``'s public key.
        key_path: ``<state_dir>/identity/node.key`` (for ``ssl.SSLContext.load_cert_chain``).
        cert_path: ``<state_dir>/identity/node.crt``.
    """

    node_id: str
    name: str
    private_key: Ed25519PrivateKey = field(repr=False)
    certificate: x509.Certificate = field(repr=False)
    key_path: Path
    cert_path: Path

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate's DER bytes; see :func:`certificate_fingerprint`."""
        return certificate_fingerprint(self.certificate)


def certificate_fingerprint(cert: x509.Certificate) -> str:
    """Return the SHA-256 fingerprint of a certificate's DER encoding.

    The format is the one ``openssl x509 -noout -fingerprint -sha256`` prints, so an operator can
    compare it by eye: 32 upper-case hex byte pairs joined by ``:`` (95 characters).

    Args:
        cert: any X.509 certificate.

    Returns:
        The fingerprint, e.g. ``"3A:0F:…:C2"``.
    """
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def _luhn32(block: str) -> str:
    """Return the check character of ``block`` (characters of ``_ALPHABET``).

    Syncthing's Luhn mod N variant (lib/protocol/luhn.go): weights 1, 2, 1, 2, … from the
    left, each weighted code point reduced to ``q + r`` where ``(q, r) = divmod(w * c, 32)``, and
    the check is the code point that brings the sum to a multiple of 32. Both weightings are
    permutations of 0..31, so any single substituted character changes the check.
    """
    total = 0
    for i, char in enumerate(block):
        quotient, remainder = divmod((1 + i % 2) * _ALPHABET.index(char), 32)
        total += quotient + remainder
    return _ALPHABET[-total % 32]


def _display(chars: str) -> str:
    return "-".join(chars[i : i + _GROUP] for i in range(0, len(chars), _GROUP))


def node_id_from_public_key(pub: bytes) -> str:
    """Derive the node ID of an Ed25519 public key (see the module docstring for the steps).

    Args:
        pub: the raw 32-byte Ed25519 public key (RFC 8032 §5.1.5 encoding).

    Returns:
        The node ID in display form: 8 groups of 7 characters of ``A-Z2-7`` joined by ``-``.

    Raises:
        ValueError: ``pub`` is not 32 bytes long.
    """
    if len(pub) != 32:
        raise ValueError(f"an Ed25519 public key is 32 bytes, got {len(pub)}")
    b32 = base64.b32encode(hashlib.sha256(pub).digest()).decode("ascii").rstrip("=")
    blocks = (b32[i : i + _BLOCK] for i in range(0, len(b32), _BLOCK))
    return _display("".join(block + _luhn32(block) for block in blocks))


def parse_node_id(text: str) -> str:
    """Validate a node ID typed or pasted by a person and return its display form.

    Case, dashes and whitespace do not matter; ``0``, ``1`` and ``8`` are read as ``O``, ``I``
    and ``B`` (as Syncthing does). The four check characters must match, which catches every
    single mistyped character.

    Args:
        text: a node ID, e.g. ``"p56ioi7-mzjnu2y-…"`` or ``"P56IOI7 MZJNU2Y …"``.

    Returns:
        The node ID in display form (upper case, 8 groups of 7 joined by ``-``).

    Raises:
        ValueError: wrong length, a character outside the alphabet, or a check character that
            does not match (the message names the groups that hold the typo).
    """
    chars = "".join(text.split()).replace("-", "").upper().translate(_LOOKALIKES)
    if len(chars) != _ID_CHARS:
        raise ValueError(
            f"node ID {text!r}: expected {_ID_CHARS} characters (8 groups of {_GROUP}), "
            f"got {len(chars)}"
        )
    for pos, char in enumerate(chars):
        if char not in _ALPHABET:
            raise ValueError(
                f"node ID {text!r}: {char!r} (group {pos // _GROUP + 1}) is not a base32 "
                "character (A-Z, 2-7)"
            )
    for i in range(4):
        block = chars[i * (_BLOCK + 1) : (i + 1) * (_BLOCK + 1)]
        if _luhn32(block[:-1]) != block[-1]:
            raise ValueError(
                f"node ID {text!r}: check character mismatch in groups {2 * i + 1}-{2 * i + 2}: "
                "is there a typo there?"
            )
    return _display(chars)


def short_id(node_id: str) -> str:
    """Return the first group of a node ID (7 characters, 35 bits) for display.

    Short IDs are for people reading logs and tables; they may collide, so never key on them.

    Args:
        node_id: a node ID in any form :func:`parse_node_id` accepts.

    Raises:
        ValueError: ``node_id`` is not a valid node ID.
    """
    return parse_node_id(node_id)[:_GROUP]


def node_id_from_certificate(cert: x509.Certificate) -> str:
    """Derive the node ID from a certificate's public key (not from what the certificate says).

    Args:
        cert: a node certificate, e.g. a peer's, taken from a TLS session.

    Raises:
        ValueError: the certificate's key is not Ed25519.
    """
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):  # bad input from a peer: a value, not a type, error
        raise ValueError(f"certificate key is {type(key).__name__}, not Ed25519")  # noqa: TRY004
    return node_id_from_public_key(_raw(key))


def _raw(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key (RFC 8032 §5.1.5).

    ``public_bytes_raw()`` says the same from cryptography 40 on; this form also runs on Debian
    bookworm's python3-cryptography 38, which the .deb depends on.
    """
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def verify_self_signed(cert: x509.Certificate) -> None:
    """Check that an Ed25519 certificate names itself as issuer and is signed by its own key.

    The check of cryptography's ``verify_directly_issued_by(cert)`` (cryptography >= 40),
    written with calls that cryptography 38 (Debian bookworm) has too.

    Raises:
        ValueError: the key is not Ed25519, or the issuer is not the subject.
        cryptography.exceptions.InvalidSignature: the signature does not verify with the
            certificate's own key.
    """
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"certificate key is {type(key).__name__}, not Ed25519")  # noqa: TRY004
    if cert.issuer != cert.subject:
        raise ValueError("the issuer name is not the subject name")
    key.verify(cert.signature, cert.tbs_certificate_bytes)


def certificate_not_before(cert: x509.Certificate) -> datetime.datetime:
    """The start of a certificate's validity, as an aware UTC datetime.

    cryptography 42 added ``not_valid_before_utc`` and deprecated the naive
    ``not_valid_before``; cryptography 38 (Debian bookworm) has only the naive one, in UTC.
    """
    aware = getattr(cert, "not_valid_before_utc", None)
    if isinstance(aware, datetime.datetime):
        return aware
    return cert.not_valid_before.replace(tzinfo=datetime.UTC)


def _make_certificate(key: Ed25519PrivateKey, name: str, node_id: str) -> x509.Certificate:
    # X.520 caps a CN at 64 characters (RFC 5280 ub-common-name); hostnames may be longer.
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    san = x509.SubjectAlternativeName(
        [x509.UniformResourceIdentifier(NODE_ID_URI_PREFIX + node_id)]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
        .add_extension(san, critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, algorithm=None)  # Ed25519 signs without a separate digest (RFC 8410 §6)
    )


def _publish(path: Path, data: bytes, mode: int) -> bool:
    """Write ``path`` atomically unless it exists; return False if another writer got there first.

    The bytes go to a private temporary file (created with ``mode``, so never readable by others
    even briefly), are synced, then hard-linked to ``path``: ``link(2)`` fails when the target
    exists, which makes the publication first-writer-wins where ``rename(2)`` would be last-wins.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def _ensure_private(path: Path, mode: int) -> None:
    """Remove group/other permissions from ``path``, warning when some were set."""
    current = stat.S_IMODE(path.stat().st_mode)
    if current & 0o077:
        _log.warning(
            "%s had mode %04o; set to %04o (if others could read it, the key may have leaked)",
            path,
            current,
            mode,
        )
        path.chmod(mode)


def _load_key(path: Path) -> Ed25519PrivateKey:
    _ensure_private(path, 0o600)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ConfigError(f"{path}: not a readable unencrypted PEM private key: {err}") from err
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: key is {type(key).__name__}, expected Ed25519")
    return key


def _load_certificate(path: Path, node_id: str) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cert_id = node_id_from_certificate(cert)
    except ValueError as err:
        raise ConfigError(f"{path}: not a valid Ed25519 PEM certificate: {err}") from err
    if cert_id != node_id:
        raise ConfigError(
            f"{path}: certificate is for node {cert_id}, not for the key of node {node_id}; "
            "remove it to have it reissued from the key"
        )
    return cert


def load_or_create_identity(state_dir: Path, name: str) -> Identity:
    """Load this node's identity from ``state_dir``, creating it at first start.

    Creation writes the key first, then the certificate, each first-writer-wins (see
    ``_publish``), so processes starting together all end with the same key and certificate,
    and a crash between the two leaves a key whose certificate is reissued at the next start.
    A key file readable by group or others is set back to 0600 with a WARNING rather than
    refused: an unattended node must come back up, and refusing would not undo a leak.

    Args:
        state_dir: the agent's state dir (created if missing; its mode is left alone).
        name: the node's human name; becomes the certificate CN when one is created.

    Returns:
        The identity; ``key_path`` and ``cert_path`` are under ``state_dir / "identity"``.

    Raises:
        ConfigError: a file is corrupt, holds a non-Ed25519 key, or the certificate belongs to
            another key; or ``node.crt`` exists without ``node.key`` (the message names the file).
        OSError: the files cannot be read or written.
    """
    directory = state_dir / "identity"
    key_path = directory / "node.key"
    cert_path = directory / "node.crt"
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _ensure_private(directory, 0o700)

    if not key_path.exists():
        if cert_path.exists():
            raise ConfigError(
                f"{key_path}: missing while {cert_path.name} exists; remove {cert_path} to create "
                "a new identity (the node ID will change)"
            )
        new_key = Ed25519PrivateKey.generate()
        pem = new_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        if _publish(key_path, pem, 0o600):
            _log.info("created node key %s", key_path)
    key = _load_key(key_path)
    node_id = node_id_from_public_key(_raw(key.public_key()))

    if not cert_path.exists():
        cert_pem = _make_certificate(key, name, node_id).public_bytes(serialization.Encoding.PEM)
        if _publish(cert_path, cert_pem, 0o644):
            _log.info("created node certificate %s for node %s", cert_path, node_id)
    cert = _load_certificate(cert_path, node_id)
    return Identity(node_id, name, key, cert, key_path, cert_path)
