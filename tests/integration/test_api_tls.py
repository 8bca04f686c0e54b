"""The optional TCP API of the daemon: mutual TLS only, pinned to the node's certificate."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.apiclient import ApiClient
from agent.errors import ApiError
from tests.integration.conftest import Agent
from tests.pki import Pki

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_tcp_api_serves_only_clients_with_a_trusted_certificate(
    make_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    pki = Pki(tmp_path)
    port = free_port()
    agent = make_agent(
        {"FLORETE_API_LISTEN": f"127.0.0.1:{port}", "FLORETE_API_TLS_CLIENT_CA": str(pki.client_ca)}
    )
    node_cert = agent.state_dir / "identity" / "node.crt"
    node_id = json.loads(agent.cli("status", "-o", "json").stdout)["status"]["nodeID"]

    def context(with_cert: bool) -> ssl.SSLContext:
        # the client pins the node's self-signed certificate; its name is the node id, not a host
        ctx = ssl.create_default_context(cafile=node_cert)
        ctx.check_hostname = False
        if with_cert:
            ctx.load_cert_chain(pki.client_cert, pki.client_key)
        return ctx

    with ApiClient.tcp("127.0.0.1", port, context(with_cert=True)) as client:
        node = client.request("GET", "/api/v1/nodes")["items"][0]
    assert node["metadata"]["labels"]["florete.io/node-id"] == node_id
    with ApiClient.tcp("127.0.0.1", port, context(with_cert=False)) as client:
        with pytest.raises(ApiError) as caught:
            client.request("GET", "/api/v1/nodes")
    assert caught.value.status == 0
    with socket.create_connection(("127.0.0.1", port)) as plain:
        plain.sendall(b"GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\n\r\n")
        plain.settimeout(5)
        assert b"HTTP/1.1 200" not in plain.recv(4096)
