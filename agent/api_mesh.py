"""API routes of the mesh under ``/apis/florete.io/v1alpha1/``: neighbours, links and peers.

* ``GET neighbours`` -> ``NeighbourList``: the neighbour table (:meth:`NeighbourTable.snapshot`).
* ``GET links`` -> ``LinkList``: every link with its session state and live metrics
  (``rxGoodputBytes``/``txGoodputBytes``: message bytes delivered in order / acknowledged in
  order, from the start of the link's current ARQ stream).
* ``GET peers`` -> ``PeerList``: the trust store (trusted and revoked peers).
* ``POST peers`` with ``{"certificate": "<PEM>", "name": "<optional>"}`` -> the ``Peer``
  (201): trust a node out of band, as an SSH ``known_hosts`` line or a WireGuard public key.
* ``DELETE peers/{nodeID}`` -> the ``Peer``, now revoked: its sessions close at once.
* ``POST neighbours/{name}/ping`` -> ``{"nodeID", "name", "link", "rttSeconds"}``: one
  ``mesh.ping`` request over the best link to the neighbour named by node ID, short ID or name.
* ``GET certificate`` -> ``{"certificate": "<PEM>"}``: this node's certificate, to give to
  another node's ``peers add``.
"""

from __future__ import annotations

import base64
import textwrap
from collections.abc import Callable
from typing import Any

from agent.errors import BadRequestError, NotFoundError
from agent.httproute import Handler, Request, Response
from agent.identity import Identity
from agent.mesh import Mesh
from agent.neighbours import NeighbourTable
from agent.store import StoredPeer
from agent.trust import TrustStore

__all__ = ["MeshApi", "peer_object"]

GROUP = "/apis/florete.io/v1alpha1"


def _pem(der: bytes) -> str:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


def peer_object(peer: StoredPeer) -> dict[str, Any]:
    """A trust-store entry as an API object (the certificate in PEM)."""
    return {
        "apiVersion": "florete.io/v1alpha1",
        "kind": "Peer",
        "metadata": {"name": peer.node_id},
        "spec": {"name": peer.name, "certificate": _pem(peer.certificate)},
        "status": {
            "state": peer.state,
            "fingerprint": peer.fingerprint,
            "addedAt": peer.added_at,
            "source": peer.source,
        },
    }


def _list(kind: str, items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": "florete.io/v1alpha1", "kind": kind, "items": items}


class MeshApi:
    """Handlers of the mesh routes.

    Args:
        mesh: the running mesh (None when no link is configured: links list empty).
        table: the neighbour table.
        trust: the trust store.
        identity: this node's identity (its certificate is exported).
    """

    def __init__(
        self, mesh: Mesh | None, table: NeighbourTable, trust: TrustStore, identity: Identity
    ) -> None:
        self.mesh = mesh
        self.table = table
        self.trust = trust
        self.identity = identity
        self.peer_addresses: Callable[[str], list[str]] | None = None
        """Set by the pairing service: node ID -> where it was met (``status.addresses``)."""

    def routes(self) -> list[tuple[str, str, Handler]]:
        """``(method, path template, handler)`` for :class:`agent.httproute.Router`."""
        return [
            ("GET", f"{GROUP}/neighbours", self.list_neighbours),
            ("POST", f"{GROUP}/neighbours/{{name}}/ping", self.ping),
            ("GET", f"{GROUP}/links", self.list_links),
            ("GET", f"{GROUP}/peers", self.list_peers),
            ("POST", f"{GROUP}/peers", self.add_peer),
            ("DELETE", f"{GROUP}/peers/{{name}}", self.revoke_peer),
            ("GET", f"{GROUP}/certificate", self.certificate),
        ]

    async def list_neighbours(self, request: Request) -> Response:
        """``GET neighbours``: the neighbour table."""
        return Response.json(_list("NeighbourList", self.table.snapshot()))

    def resolve(self, name: str) -> str:
        """The node ID of the neighbour ``name`` (a node ID, a short ID or a node name).

        Raises:
            NotFoundError: no neighbour by that name.
            BadRequestError: the name fits several neighbours.
        """
        found = {
            n.node_id
            for n in self.table.neighbours()
            if name in (n.node_id, n.name) or n.node_id.split("-", 1)[0] == name.upper()
        }
        if not found:
            raise NotFoundError(f'no neighbour "{name}"')
        if len(found) > 1:
            raise BadRequestError(f'"{name}" names {len(found)} neighbours: use the node ID')
        return found.pop()

    async def ping(self, request: Request) -> Response:
        """``POST neighbours/{name}/ping``: one request-response round trip."""
        if self.mesh is None:
            raise NotFoundError("no links are configured")
        return Response.json(await self.mesh.ping(self.resolve(request.params["name"])))

    async def list_links(self, request: Request) -> Response:
        """``GET links``: links with state and metrics."""
        items = self.mesh.links() if self.mesh is not None else []
        return Response.json(_list("LinkList", items))

    async def list_peers(self, request: Request) -> Response:
        """``GET peers``: every trusted or revoked peer."""
        items = [peer_object(p) for p in self.trust.peers()]
        if self.peer_addresses is not None:
            for item in items:
                item["status"]["addresses"] = self.peer_addresses(item["metadata"]["name"])
        return Response.json(_list("PeerList", items))

    async def add_peer(self, request: Request) -> Response:
        """``POST peers``: trust the certificate in the body.

        Raises:
            BadRequestError: the body has no ``certificate`` string.
            InvalidCertificateError: the certificate is not a node certificate (422).
        """
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("certificate"), str):
            raise BadRequestError('expected a JSON object {"certificate": "<PEM>"}')
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise BadRequestError("name: expected a string")
        peer = self.trust.add(body["certificate"].encode(), source="manual", name=name)
        return Response.json(peer_object(peer), status=201)

    async def revoke_peer(self, request: Request) -> Response:
        """``DELETE peers/{nodeID}``: revoke; live sessions with it close."""
        return Response.json(peer_object(self.trust.revoke(request.params["name"])))

    async def certificate(self, request: Request) -> Response:
        """``GET certificate``: this node's certificate in PEM."""
        pem = self.identity.cert_path.read_text()
        return Response.json({"nodeID": self.identity.node_id, "certificate": pem})
