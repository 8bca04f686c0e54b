"""API routes of pairing under ``/apis/florete.io/v1alpha1/`` (see docs/pairing.md).

* ``POST pairing`` with an optional ``{"supernode": "<name>"}`` -> ``{"code": "4821-0937",
  "uri": "florete://pair?...", "expiresAt", "expiresInSeconds", "maxFailures", "nodeID", "name",
  "supernode"}`` (201): show a new one-time code (the previous one stops working); the node
  announces ``pair=1.<n>`` over mDNS while it is shown. With ``supernode`` the code also invites
  the joiner into that supernode, of which this node must be a member (404 otherwise).
* ``GET pairing`` -> ``PairingStatus``: the shown code's state, failures, events and, once
  paired, the peer (never the code); ``supernode`` is ``{"name", "answer"}`` when inviting.
* ``DELETE pairing`` -> ``PairingStatus``: stop showing the code.
* ``POST pairing/join`` with ``{"code": "4821-0937" or a pairing URI, "peer": optional name,
  "acceptInvitation": optional bool, default true}`` -> ``{"nodeID", "name", "fingerprint",
  "address", "supernode"}``: pair with the neighbour that shows the code; a failed attempt is a
  403 ``Status`` whose message says why. ``supernode`` is the invitation that came with the
  code, ``{"name", "answer", "memberOf"}`` (answer ``accepted``, ``declined`` or ``member``), or
  null; accepting does not join: the client then asks ``POST supernode/join``.
* ``POST pairing/peers`` with ``{"certificate": PEM, "name": optional, "address": optional}``
  -> the ``Peer`` (201): trust a certificate exchanged over an authenticated channel (SSH
  pairing), with source ``pairing`` and the address it was reached at.
* ``POST peers/{name}/unpair`` -> ``{"peer": Peer, "notified": bool, "detail": str}``: tell the
  peer and revoke it; sessions close on both sides.

Every ``Peer`` object these routes return carries ``status.addresses``.
"""

from __future__ import annotations

from typing import Any

from agent.api_mesh import peer_object
from agent.errors import BadRequestError
from agent.httproute import Handler, Request, Response
from agent.pairing.code import parse_target
from agent.pairing.service import PairingService
from agent.store import StoredPeer

__all__ = ["PairingApi"]

GROUP = "/apis/florete.io/v1alpha1"
MAX_ADDRESS = 300
"""Longest address accepted in ``POST pairing/peers``, characters."""


class PairingApi:
    """Handlers of the pairing routes.

    Args:
        service: the running pairing service.
    """

    def __init__(self, service: PairingService) -> None:
        self.service = service

    def routes(self) -> list[tuple[str, str, Handler]]:
        """``(method, path template, handler)`` for :class:`agent.httproute.Router`."""
        return [
            ("POST", f"{GROUP}/pairing", self.show),
            ("GET", f"{GROUP}/pairing", self.status),
            ("DELETE", f"{GROUP}/pairing", self.cancel),
            ("POST", f"{GROUP}/pairing/join", self.join),
            ("POST", f"{GROUP}/pairing/peers", self.add_peer),
            ("POST", f"{GROUP}/peers/{{name}}/unpair", self.unpair),
        ]

    def peer(self, peer: StoredPeer) -> dict[str, Any]:
        """A ``Peer`` object with ``status.addresses``."""
        obj = peer_object(peer)
        obj["status"]["addresses"] = self.service.addresses(peer.node_id)
        return obj

    def _status(self) -> dict[str, Any]:
        return {
            "apiVersion": "florete.io/v1alpha1",
            "kind": "PairingStatus",
            **self.service.status(),
        }

    async def show(self, request: Request) -> Response:
        """``POST pairing``: a new code, maybe inviting into a supernode.

        Raises:
            BadRequestError: a body that is not an object, or ``supernode`` not a string.
        """
        body = request.json() if request.body else {}
        if not isinstance(body, dict):
            raise BadRequestError('expected a JSON object {"supernode": "<name>"} or nothing')
        invite = body.get("supernode")
        if invite is not None and not isinstance(invite, str):
            raise BadRequestError("supernode: expected a string")
        return Response.json(await self.service.show(invite), status=201)

    async def status(self, request: Request) -> Response:
        """``GET pairing``: the shown code's state."""
        return Response.json(self._status())

    async def cancel(self, request: Request) -> Response:
        """``DELETE pairing``: stop showing the code."""
        await self.service.cancel()
        return Response.json(self._status())

    async def join(self, request: Request) -> Response:
        """``POST pairing/join``: pair using a code shown elsewhere.

        Raises:
            BadRequestError: no ``code`` string, a bad ``peer`` or ``acceptInvitation``, or a
                malformed code.
        """
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("code"), str):
            raise BadRequestError('expected a JSON object {"code": "1234-5678"}')
        peer, accept = body.get("peer"), body.get("acceptInvitation", True)
        if peer is not None and not isinstance(peer, str):
            raise BadRequestError("peer: expected a string")
        if not isinstance(accept, bool):
            raise BadRequestError("acceptInvitation: expected true or false")
        target = parse_target(body["code"])
        result = await self.service.join(target, peer, accept_invitation=accept)
        return Response.json(result)

    async def add_peer(self, request: Request) -> Response:
        """``POST pairing/peers``: trust a certificate met over SSH.

        Raises:
            BadRequestError: no ``certificate`` string, or a bad ``name`` or ``address``.
            InvalidCertificateError: not a node certificate (422).
        """
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("certificate"), str):
            raise BadRequestError('expected a JSON object {"certificate": "<PEM>"}')
        name, address = body.get("name"), body.get("address")
        if name is not None and not isinstance(name, str):
            raise BadRequestError("name: expected a string")
        if address is not None and (
            not isinstance(address, str) or not 0 < len(address) <= MAX_ADDRESS
        ):
            raise BadRequestError(f"address: expected a string of 1-{MAX_ADDRESS} characters")
        peer = self.service.trust.add(body["certificate"].encode(), source="pairing", name=name)
        if address is not None:
            self.service.record_addresses(peer.node_id, [address])
        return Response.json(self.peer(peer), status=201)

    async def unpair(self, request: Request) -> Response:
        """``POST peers/{name}/unpair``: tell the peer, then revoke it."""
        result = await self.service.unpair(request.params["name"])
        peer = self.peer(result["peer"])
        return Response.json(
            {"peer": peer, "notified": result["notified"], "detail": result["detail"]}
        )
