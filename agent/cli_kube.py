"""``florete-agent kubeconfig``: a kubeconfig with which the real ``kubectl`` talks to this agent.

The command makes an ECDSA P-256 key here, asks the agent (over its Unix socket, so only a user
who may use the socket can get one) to certify it with the agent's own API CA, and prints a
kubeconfig with the client certificate, the key, the CA and the agent's mutual-TLS address
(``api.listen``), or writes it to a file with mode 0600. See docs/kubectl.md.

Examples::

    florete-agent kubeconfig > ~/.kube/board.yaml           # then: KUBECONFIG=~/.kube/board.yaml
    florete-agent kubeconfig --file ~/.kube/config --user ci --days 30
    florete-agent kubeconfig --server https://board.local:6443 --file board.yaml
"""

from __future__ import annotations

import argparse
import base64
import getpass
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.errors import ConfigError

__all__ = ["add_parsers", "build_kubeconfig"]

Client = Callable[[argparse.Namespace], Any]
_PATH = "/apis/florete.io/v1alpha1/clientcertificates"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def build_kubeconfig(
    status: dict[str, Any], key_pem: bytes, user: str, server: str | None = None
) -> dict[str, Any]:
    """The kubeconfig (``clientcmd/api/v1`` ``Config``) for an issued client certificate.

    Args:
        status: the ``status`` of the agent's ``ClientCertificate`` answer.
        key_pem: the client's private key, PEM.
        user: the certified user name.
        server: an ``https://host:port`` URL to use instead of the agent's own address.
    """
    cluster = str(status["cluster"])
    user_name = f"{user}@{cluster}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster,
                "cluster": {
                    "server": server or status["server"],
                    "certificate-authority-data": _b64(status["certificateAuthority"].encode()),
                    "tls-server-name": status["tlsServerName"],
                },
            }
        ],
        "users": [
            {
                "name": user_name,
                "user": {
                    "client-certificate-data": _b64(status["certificate"].encode()),
                    "client-key-data": _b64(key_pem),
                },
            }
        ],
        "contexts": [
            {
                "name": cluster,
                "context": {"cluster": cluster, "user": user_name, "namespace": "default"},
            }
        ],
        "current-context": cluster,
        "preferences": {},
    }


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` with mode 0600, atomically (temporary file, fsync, rename)."""
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def cmd_kubeconfig(args: argparse.Namespace, client: Client) -> int:
    """Print or write a kubeconfig for this agent (see the module docstring)."""
    import yaml
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    if args.server and not args.server.startswith("https://"):
        raise ConfigError(f"--server must be an https:// URL, got {args.server!r}")
    user = args.user or getpass.getuser()
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user)]))
        .sign(key, hashes.SHA256())
    )
    answer = client(args).request(
        "POST",
        _PATH,
        body={
            "csr": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            "user": user,
            "days": args.days,
        },
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    text = yaml.safe_dump(
        build_kubeconfig(answer["status"], key_pem, user, args.server), sort_keys=False
    )
    if args.file:
        _write_private(Path(args.file), text)
        print(
            f"wrote {args.file} (mode 0600): user {user}, valid until "
            f"{answer['status']['notAfter']}; use it with KUBECONFIG={args.file} kubectl get pods",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return 0


def add_parsers(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    client: Client,
) -> None:
    """Register ``kubeconfig`` on ``subparsers``.

    Args:
        subparsers: the top-level subparsers.
        common: the parent parser with ``--state-dir``, ``--socket`` and friends.
        client: builds an API client from the parsed arguments.
    """
    p = subparsers.add_parser(
        "kubeconfig",
        parents=[common],
        help="print a kubeconfig for kubectl (mutual TLS; needs api.listen)",
        description="Make a key, have the agent's CA certify it, and print a kubeconfig with "
        "which kubectl reaches this agent's mutual-TLS API (api.listen).",
    )
    p.add_argument("--user", help="user name to certify (default: your login name)")
    p.add_argument(
        "--days", type=int, default=365, help="validity of the client certificate (default 365)"
    )
    p.add_argument(
        "--server", help="https://host:port to put in the kubeconfig instead of api.listen"
    )
    p.add_argument("--file", help="write the kubeconfig to FILE (mode 0600) instead of stdout")
    p.set_defaults(func=lambda args: cmd_kubeconfig(args, client))
