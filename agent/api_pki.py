"""The agent's own small CA for API clients (``kubectl``) and the TLS contexts of the TCP API.

The TCP API (``api.listen``) requires mutual TLS. So that ``florete-agent kubeconfig`` works with
no PKI of the operator's own, the agent keeps a CA of its own under ``<state_dir>/api-pki/``
(mode 0700):

* ``ca.key`` / ``ca.crt``: an ECDSA P-256 CA (``basicConstraints CA:TRUE, pathlen:0``); the key
  never leaves this directory (mode 0600).
* ``server.key`` / ``server.crt``: the API's server certificate, issued by that CA for one DNS
  name, :attr:`ApiPki.server_name` (the node ID in lower case, a valid 63-character DNS label).

Client certificates are issued from a certificate signing request (RFC 2986) that the client
made with its own key (:meth:`ApiPki.issue_client`), so no private key ever crosses the API.

The TCP listener keeps presenting the node's identity certificate (``identity/node.crt``) to
clients that do not ask for :attr:`ApiPki.server_name` by SNI (RFC 6066 §3); clients that do
(``tls-server-name`` in a kubeconfig) get the CA-issued certificate, which Go's and OpenSSL's
host-name checks accept. Client certificates are accepted when issued by the agent's CA or by
``api.tls_client_ca``. ECDSA P-256 rather than Ed25519: every TLS stack kubectl and other
clients are built with supports it.

Validity: certificates start at the Unix epoch, because boards without a real-time clock boot
there; the CA and server certificates never expire (RFC 5280 §4.1.2.5), client certificates
expire after the number of days asked for. There is no revocation list: to withdraw every client
certificate, stop the agent and remove ``api-pki/`` (a new CA is made at the next start).
"""

from __future__ import annotations

import datetime
import logging
import os
import secrets
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent.errors import BadRequestError, ConfigError
from agent.identity import Identity

log = logging.getLogger(__name__)

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_NEVER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
#: Longest client certificate validity accepted, in days (about ten years).
MAX_CLIENT_DAYS = 3650
_MIN_RSA_BITS = 2048


def _write_private(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` atomically (temporary file created with ``mode``, fsync, rename)."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _load_ec_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as err:
        raise ConfigError(f"{path}: not a readable unencrypted PEM private key: {err}") from err
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{path}: key is {type(key).__name__}, expected ECDSA; remove api-pki/")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError as err:
        raise ConfigError(f"{path}: not a PEM certificate: {err}; remove api-pki/") from err


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    """True when ``ca`` (this module's ECDSA CA) issued and signed ``cert``.

    Written with what cryptography 38 (Debian bookworm) offers:
    ``Certificate.verify_directly_issued_by`` came in 40.
    """
    ca_key = ca.public_key()
    algorithm = cert.signature_hash_algorithm
    if cert.issuer != ca.subject or not isinstance(ca_key, ec.EllipticCurvePublicKey):
        return False
    if algorithm is None:
        return False
    try:
        ca_key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
    except InvalidSignature:
        return False
    return True


def _key_id(key: ec.EllipticCurvePublicKey) -> x509.SubjectKeyIdentifier:
    return x509.SubjectKeyIdentifier.from_public_key(key)


@dataclass(frozen=True)
class IssuedCertificate:
    """A client certificate issued by :meth:`ApiPki.issue_client`.

    Attributes:
        certificate_pem: the client certificate, PEM.
        ca_pem: the agent's API CA certificate, PEM (the client's trust anchor for the server).
        not_after: expiry, seconds since the epoch.
    """

    certificate_pem: bytes
    ca_pem: bytes
    not_after: float


@dataclass(frozen=True)
class ApiPki:
    """The agent's API CA and server certificate (see the module docstring).

    Use :meth:`load_or_create`; only the daemon (which holds the state dir's lock) calls it.

    Attributes:
        directory: ``<state_dir>/api-pki``.
        server_name: the DNS name the server certificate is issued for; clients send it by SNI.
        ca_certificate: the CA certificate.
    """

    directory: Path
    server_name: str
    ca_certificate: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey = field(repr=False)

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate, PEM."""
        return self.ca_certificate.public_bytes(serialization.Encoding.PEM)

    @classmethod
    def load_or_create(cls, directory: Path, identity: Identity) -> ApiPki:
        """Load the API CA from ``directory``, creating the CA and server certificate if missing.

        Args:
            directory: where the files live (created with mode 0700).
            identity: this node's identity; its node ID names the CA and the server.

        Raises:
            ConfigError: a file exists but is corrupt or of the wrong kind (the message says to
                remove ``api-pki/``).
            OSError: the files cannot be read or written.
        """
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        server_name = identity.node_id.lower()
        ca_key_path, ca_cert_path = directory / "ca.key", directory / "ca.crt"
        if not ca_key_path.exists():
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _make_ca(key, identity.name)
            _write_private(ca_key_path, _key_pem(key), 0o600)
            _write_private(ca_cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            (directory / "server.crt").unlink(missing_ok=True)
            log.info("created the API client CA in %s", directory)
        pki = cls(directory, server_name, _load_cert(ca_cert_path), _load_ec_key(ca_key_path))
        pki._ensure_server_certificate()
        return pki

    def _ensure_server_certificate(self) -> None:
        cert_path, key_path = self.directory / "server.crt", self.directory / "server.key"
        if cert_path.exists() and key_path.exists():
            cert = _load_cert(cert_path)
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            if _issued_by(cert, self.ca_certificate) and names.get_values_for_type(
                x509.DNSName
            ) == [self.server_name]:
                return
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._issue(
            key.public_key(),
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.server_name)]),
            _NEVER,
            ExtendedKeyUsageOID.SERVER_AUTH,
            x509.SubjectAlternativeName([x509.DNSName(self.server_name)]),
        )
        _write_private(key_path, _key_pem(key), 0o600)
        _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        log.info("issued the API server certificate for %s", self.server_name)

    def issue_client(self, csr_pem: bytes, user: str, days: int) -> IssuedCertificate:
        """Issue a client certificate for the key of a certificate signing request.

        The subject is ``CN=<user>``, whatever the request asked for; only its public key and
        signature are used.

        Args:
            csr_pem: a PEM PKCS #10 request, signed by the key to certify (ECDSA P-256/P-384,
                Ed25519, or RSA of at least 2048 bits).
            user: the user name to certify (1-64 characters).
            days: validity in days, 1 to :data:`MAX_CLIENT_DAYS`.

        Raises:
            BadRequestError: the request does not parse, its signature is invalid, its key is of
                an unsupported kind, or ``user`` or ``days`` is out of range.
        """
        if not 1 <= len(user) <= 64 or not user.isprintable():
            raise BadRequestError("user must be 1-64 printable characters")
        if not 1 <= days <= MAX_CLIENT_DAYS:
            raise BadRequestError(f"days must be 1-{MAX_CLIENT_DAYS}, got {days}")
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as err:
            raise BadRequestError(f"csr: not a PEM certificate signing request: {err}") from err
        if not csr.is_signature_valid:
            raise BadRequestError("csr: its signature does not verify with its own key")
        key = csr.public_key()
        if not isinstance(
            key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey
        ):
            raise BadRequestError(f"csr: unsupported key type {type(key).__name__}")
        if isinstance(key, rsa.RSAPublicKey) and key.key_size < _MIN_RSA_BITS:
            raise BadRequestError(f"csr: RSA keys must have at least {_MIN_RSA_BITS} bits")
        not_after = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
        cert = self._issue(
            key,
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user)]),
            not_after,
            ExtendedKeyUsageOID.CLIENT_AUTH,
        )
        log.info("issued an API client certificate for %r, valid %d days", user, days)
        return IssuedCertificate(
            cert.public_bytes(serialization.Encoding.PEM), self.ca_pem, not_after.timestamp()
        )

    def _issue(
        self,
        key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey,
        subject: x509.Name,
        not_after: datetime.datetime,
        usage: x509.ObjectIdentifier,
        san: x509.SubjectAlternativeName | None = None,
    ) -> x509.Certificate:
        ca_key_id = _key_id(self.ca_key.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.ca_certificate.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(_EPOCH)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=isinstance(key, rsa.RSAPublicKey),
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_key_id),
                critical=False,
            )
        )
        if san is not None:
            builder = builder.add_extension(san, critical=False)
        return builder.sign(self.ca_key, hashes.SHA256())

    def server_context(self, identity: Identity, extra_client_ca: Path | None) -> ssl.SSLContext:
        """Build the TCP API's server context: TLS 1.3, client certificate required.

        Clients that send :attr:`server_name` by SNI get the CA-issued server certificate,
        others the node's identity certificate. Client certificates from the agent's CA and from
        ``extra_client_ca`` are accepted.

        Args:
            identity: this node's identity (its certificate is the default server certificate).
            extra_client_ca: ``api.tls_client_ca``, a PEM bundle, or None.

        Raises:
            ConfigError: a certificate, key or CA bundle cannot be loaded.
        """
        default = self._context(identity.cert_path, identity.key_path, extra_client_ca)
        named = self._context(
            self.directory / "server.crt", self.directory / "server.key", extra_client_ca
        )

        def choose(sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _: object) -> None:
            if name == self.server_name:
                sock.context = named

        default.sni_callback = choose
        return default

    def _context(self, cert: Path, key: Path, extra_client_ca: Path | None) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_cert_chain(cert, key)
        except OSError as err:  # ssl.SSLError is an OSError
            raise ConfigError(
                f"cannot load API TLS certificate {cert} with key {key}: {err}"
            ) from err
        context.load_verify_locations(cadata=self.ca_pem.decode("ascii"))
        if extra_client_ca is not None:
            try:
                context.load_verify_locations(cafile=extra_client_ca)
            except OSError as err:
                raise ConfigError(f"cannot load API client CA {extra_client_ca}: {err}") from err
        return context


def _make_ca(key: ec.EllipticCurvePrivateKey, node_name: str) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "florete-agent"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"API CA of {node_name}"[:64]),
        ]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_EPOCH)
        .not_valid_after(_NEVER)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(_key_id(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
