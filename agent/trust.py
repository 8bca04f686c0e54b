"""The trust store: the peer nodes this node talks to, pinned by certificate.

A peer is trusted by its node ID (derived from its certificate's Ed25519 key, see
:mod:`agent.identity`) together with the exact certificate: a secure session accepts a peer only
when the certificate it proves in TLS has the pinned fingerprint. Revoking a peer keeps its row
(state ``revoked``) so that the operator sees it, refuses new sessions at once and closes live
ones through the listeners (:meth:`TrustStore.add_listener`).

Peers live in the ``peers`` table of the :class:`~agent.store.Store`; every change is committed
with ``synchronous=FULL``, so a peer the operator was told is revoked stays revoked after a power
cut.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from agent.errors import LocalError
from agent.identity import (
    NODE_ID_URI_PREFIX,
    certificate_fingerprint,
    node_id_from_certificate,
    verify_self_signed,
)
from agent.store import Store, StoredPeer

__all__ = ["SOURCES", "InvalidCertificateError", "Peer", "TrustListener", "TrustStore"]

_log = logging.getLogger(__name__)

Peer = StoredPeer
"""A trusted (or revoked) peer: node_id, name, certificate (DER), fingerprint, state, added_at,
source (see :class:`agent.store.StoredPeer`)."""

TrustListener = Callable[[Peer], None]
"""Called with a peer's new record after every change to it (added, re-trusted, revoked)."""

SOURCES = ("manual", "pairing")
"""How a peer may come to be trusted."""

MAX_CERTIFICATE = 16 * 1024
"""Largest certificate accepted, bytes (a node certificate is about 400 bytes of DER)."""


class InvalidCertificateError(LocalError):
    """A certificate given to the trust store is not a valid node certificate (the message says
    why: not PEM or DER, not Ed25519, a broken self-signature, an ID that contradicts the key)."""

    code = "certificate_invalid"
    reason = "Invalid"
    http_status = 422


def _load(data: bytes) -> x509.Certificate:
    if len(data) > MAX_CERTIFICATE:
        raise InvalidCertificateError(
            f"certificate is {len(data)} bytes, more than {MAX_CERTIFICATE}"
        )
    pem = data.lstrip().startswith(b"-----BEGIN")
    try:
        if pem:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as err:
        form = "PEM" if pem else "DER"
        raise InvalidCertificateError(f"not a readable {form} X.509 certificate: {err}") from err


def _validate(cert: x509.Certificate) -> str:
    """Return the node ID of a self-signed Ed25519 node certificate, or raise why it is not one."""
    try:
        node_id = node_id_from_certificate(cert)
    except ValueError as err:
        raise InvalidCertificateError(f"not a node certificate: {err}") from err
    try:
        verify_self_signed(cert)
    except (ValueError, TypeError, InvalidSignature) as err:
        reason = str(err) or "signature does not verify with the certificate's own key"
        raise InvalidCertificateError(
            f"certificate of node {node_id} is not self-signed: {reason}"
        ) from err
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return node_id
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith(NODE_ID_URI_PREFIX) and uri[len(NODE_ID_URI_PREFIX) :] != node_id:
            raise InvalidCertificateError(
                f"certificate claims node {uri[len(NODE_ID_URI_PREFIX) :]} but its key is "
                f"node {node_id}'s"
            )
    return node_id


def _common_name(cert: x509.Certificate) -> str | None:
    for attr in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME):
        value = attr.value
        return value if isinstance(value, str) else value.decode("utf-8", "replace")
    return None


class TrustStore:
    """The peers this node trusts, over the agent's :class:`~agent.store.Store`.

    Methods are synchronous (one small SQLite transaction each) and meant for the event loop's
    thread; listeners run inside the call that made the change.

    Args:
        store: the agent's database.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._listeners: list[TrustListener] = []
        self.version = 0
        """Counts the changes made through this object (add, revoke); starts at 0."""

    def add(self, cert: bytes, *, source: str, name: str | None = None) -> Peer:
        """Trust the node that ``cert`` belongs to (re-trusting it if it was revoked).

        Adding a peer that is already trusted with the same certificate changes nothing; a new
        certificate for the same node ID replaces the pinned one.

        Args:
            cert: the peer's self-signed node certificate, PEM or DER.
            source: ``"manual"`` or ``"pairing"``.
            name: the peer's human name; the certificate's CN (or the node ID) by default.

        Returns:
            The stored peer, state ``"trusted"``.

        Raises:
            InvalidCertificateError: ``cert`` is not PEM/DER, its key is not Ed25519, it is not
                validly self-signed, or its subjectAltName claims another node ID.
            LocalError: ``source`` is not one of :data:`SOURCES`.
        """
        if source not in SOURCES:
            raise LocalError(f"trust source must be one of {', '.join(SOURCES)}, got {source!r}")
        parsed = _load(cert)
        node_id = _validate(parsed)
        fingerprint = certificate_fingerprint(parsed)
        existing = self._store.get_peer(node_id)
        label = name or _common_name(parsed) or node_id
        if (
            existing is not None
            and existing.state == "trusted"
            and existing.fingerprint == fingerprint
            and (name is None or existing.name == name)
        ):
            return existing
        peer = Peer(
            node_id=node_id,
            name=label,
            certificate=parsed.public_bytes(serialization.Encoding.DER),
            fingerprint=fingerprint,
            state="trusted",
            added_at=time.time(),
            source=source,
        )
        self._store.put_peer(peer)
        _log.info("trusting node %s (%s), source %s", node_id, label, source)
        self._changed(peer)
        return peer

    def revoke(self, node_id: str) -> Peer:
        """Stop trusting a peer: new sessions are refused and live ones closed (by listeners).

        Args:
            node_id: the peer's node ID in display form.

        Returns:
            The stored peer, state ``"revoked"``.

        Raises:
            NotFoundError: no peer has this node ID.
        """
        peer = self._store.set_peer_state(node_id, "revoked")
        _log.info("revoked node %s (%s)", node_id, peer.name)
        self._changed(peer)
        return peer

    def get(self, node_id: str) -> Peer | None:
        """Return the peer (trusted or revoked) with this node ID, or None."""
        return self._store.get_peer(node_id)

    def peers(self) -> list[Peer]:
        """Return every peer, trusted and revoked, ordered by name."""
        return self._store.list_peers()

    def trusted(self) -> list[Peer]:
        """Return the trusted peers, ordered by name."""
        return self._store.list_peers("trusted")

    def is_trusted(self, node_id: str, fingerprint: str) -> bool:
        """Return True when ``node_id`` is trusted and pinned to the certificate ``fingerprint``.

        Args:
            node_id: node ID in display form.
            fingerprint: certificate fingerprint as :func:`agent.identity.certificate_fingerprint`
                formats it.
        """
        peer = self._store.get_peer(node_id)
        return peer is not None and peer.state == "trusted" and peer.fingerprint == fingerprint

    def add_listener(self, listener: TrustListener) -> Callable[[], None]:
        """Call ``listener(peer)`` after every change to a peer made through this object.

        Returns:
            A function that removes the listener (idempotent).
        """
        self._listeners.append(listener)

        def remove() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return remove

    def _changed(self, peer: Peer) -> None:
        self.version += 1
        for listener in list(self._listeners):
            try:
                listener(peer)
            except Exception:  # a broken listener must not undo a committed change
                _log.exception("trust listener %r failed on a change to %s", listener, peer.node_id)
