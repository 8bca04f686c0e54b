"""Throwaway PKI for tests of mutual TLS: two CAs, a server and a client certificate."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    usage: x509.ObjectIdentifier | None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=usage is None, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer:
        ski = x509.SubjectKeyIdentifier.from_public_key(issuer[1].public_key())
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
        builder = builder.add_extension(san, critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


class Pki:
    """Throwaway server CA, client CA and certificates, as PEM files."""

    def __init__(self, directory: Path) -> None:
        keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("sca", "cca", "s", "c")}
        server_ca = _cert("server CA", keys["sca"], None, None)
        client_ca = _cert("client CA", keys["cca"], None, None)
        server = _cert(
            "agent", keys["s"], (server_ca, keys["sca"]), ExtendedKeyUsageOID.SERVER_AUTH
        )
        self.client = _cert(
            "ops", keys["c"], (client_ca, keys["cca"]), ExtendedKeyUsageOID.CLIENT_AUTH
        )
        self.server_ca, _ = _write(directory, "server-ca", server_ca, keys["sca"])
        self.client_ca, _ = _write(directory, "client-ca", client_ca, keys["cca"])
        self.server_cert, self.server_key = _write(directory, "server", server, keys["s"])
        self.client_cert, self.client_key = _write(directory, "client", self.client, keys["c"])

    def client_context(self, with_cert: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.server_ca)
        if with_cert:
            context.load_cert_chain(self.client_cert, self.client_key)
        return context
