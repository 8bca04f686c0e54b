"""The trust store: the peer nodes this node talks to, pinned by certificate.

A peer is trusted by its node ID (derived from its certificate's Ed25519 key, see
:mod:`agent.identity`) together with the exact certificate: a secure session accepts a peer only
when the certificate it proves in TLS has the pinned fingerprint. Revoking a peer keeps its row
(state ``revoked``) so that the operator sees it, refuses new sessions at once and closes live
ones through the listeners (:meth:`TrustStore.add_listener`).

Trust comes from a person (``manual``: ``peers add``; ``pairing``) or from a supernode this node
is a member of (``supernode:NAME``, see :meth:`TrustStore.vouch`): the members of a supernode
trust each other's certificates as its replicated state carries them. A person's word wins:
trust a person gave is never replaced or withdrawn by a supernode, and a peer a person revoked
is never trusted again by one (only ``peers add`` or pairing trust it again). Trust that came
from a supernode is withdrawn (the row deleted) when the peer or this node leaves it.

Peers live in the ``peers`` table of the :class:`~agent.store.Store`; every change is committed
with ``synchronous=FULL``, so a peer the operator was told is revoked stays revoked after a power
cut.
"""

from __future__ import annotations

import dataclasses
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

__all__ = [
    "SOURCES",
    "SUPERNODE_SOURCE",
    "InvalidCertificateError",
    "Peer",
    "TrustListener",
    "TrustStore",
    "supernode_source",
]

_log = logging.getLogger(__name__)

Peer = StoredPeer
"""A trusted (or revoked) peer: node_id, name, certificate (DER), fingerprint, state, added_at,
source (see :class:`agent.store.StoredPeer`)."""

TrustListener = Callable[[Peer], None]
"""Called with a peer's new record after every change to it (added, re-trusted, revoked)."""

SOURCES = ("manual", "pairing")
"""How a person makes a peer trusted (:meth:`TrustStore.add`)."""

SUPERNODE_SOURCE = "supernode:"
"""Prefix of the source of trust that a supernode gave (:meth:`TrustStore.vouch`)."""


def supernode_source(name: str) -> str:
    """The trust source of the supernode ``name``: ``"supernode:NAME"``."""
    return f"{SUPERNODE_SOURCE}{name}"


def _is_supernode_source(source: str) -> bool:
    return source.startswith(SUPERNODE_SOURCE) and len(source) > len(SUPERNODE_SOURCE)


_COLUMNS = "node_id, name, certificate, fingerprint, state, added_at, source"
"""The ``peers`` table's columns, in :class:`~agent.store.StoredPeer`'s order."""

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

        Adding a peer that is already trusted with the same certificate changes nothing (unless
        its trust came from a supernode: it becomes ``source``'s); a new certificate for the same
        node ID replaces the pinned one.

        Args:
            cert: the peer's self-signed node certificate, PEM or DER.
            source: ``"manual"`` or ``"pairing"`` (a supernode's trust: :meth:`vouch`).
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
            and existing.source in SOURCES  # a person's trust replaces a supernode's
        ):
            return existing
        return self._put(node_id, label, parsed, fingerprint, source)

    def vouch(
        self, cert: bytes, *, node_id: str, source: str, name: str | None = None
    ) -> Peer | None:
        """Trust a node because a supernode this node is a member of vouches for it.

        The rules (a person's word wins over a supernode's):

        * an unknown node is trusted with ``source``;
        * a node a person trusts (``manual``, ``pairing``) is left as it is, its pinned
          certificate included: returned unchanged;
        * a node trusted through a supernode gets this certificate, name and source;
        * a **revoked** node is not trusted again: None is returned (the caller says so).

        Args:
            cert: the node's self-signed certificate, PEM or DER.
            node_id: the node ID the supernode names it by; the certificate must prove it.
            source: ``supernode_source(NAME)``.
            name: the node's name (the certificate's CN by default).

        Returns:
            The stored peer (trusted), or None when it is revoked here.

        Raises:
            InvalidCertificateError: ``cert`` is not a node certificate, or not ``node_id``'s.
            LocalError: ``source`` is not a supernode's.
        """
        if not _is_supernode_source(source):
            raise LocalError(
                f"a supernode's trust source is {SUPERNODE_SOURCE}NAME, got {source!r}"
            )
        parsed = _load(cert)
        proved = _validate(parsed)
        if proved != node_id:
            raise InvalidCertificateError(
                f"the certificate given for node {node_id} is node {proved}'s"
            )
        existing = self._store.get_peer(node_id)
        if existing is not None and existing.state != "trusted":
            return None
        if existing is not None and existing.source in SOURCES:
            if existing.fingerprint != certificate_fingerprint(parsed):
                _log.warning(
                    "%s vouches for node %s (%s) with another certificate than the one pinned "
                    "here (source %s): keeping the pinned one",
                    source,
                    node_id,
                    existing.name,
                    existing.source,
                )
            return existing
        fingerprint = certificate_fingerprint(parsed)
        label = name or _common_name(parsed) or node_id
        if (
            existing is not None
            and existing.fingerprint == fingerprint
            and existing.name == label
            and existing.source == source
        ):
            return existing
        return self._put(node_id, label, parsed, fingerprint, source)

    def _put(
        self, node_id: str, label: str, cert: x509.Certificate, fingerprint: str, source: str
    ) -> Peer:
        """Store ``node_id`` as trusted by ``source``, tell the listeners and return it."""
        peer = Peer(
            node_id=node_id,
            name=label,
            certificate=cert.public_bytes(serialization.Encoding.DER),
            fingerprint=fingerprint,
            state="trusted",
            added_at=time.time(),
            source=source,
        )
        self._store.put_peer(peer)
        _log.info("trusting node %s (%s), source %s", node_id, label, source)
        self._changed(peer)
        return peer

    def withdraw(self, node_id: str, source: str) -> Peer | None:
        """Withdraw the trust ``source`` gave: the peer's row is deleted if (and only if) it is
        trusted with that source; live sessions with it close (by listeners).

        Args:
            node_id: the peer's node ID.
            source: the source whose trust ends, e.g. ``supernode_source(NAME)``.

        Returns:
            The peer as it was, with state ``"revoked"`` (what listeners got), or None when its
            trust did not come from ``source`` (nothing changed).
        """
        with self._store.transaction() as db:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM peers WHERE node_id = ? AND source = ? "
                "AND state = 'trusted'",
                (node_id, source),
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM peers WHERE node_id = ?", (node_id,))
        gone = dataclasses.replace(Peer(*row), state="revoked")
        _log.info("no longer trusting node %s (%s): %s withdrew it", node_id, gone.name, source)
        self._changed(gone)
        return gone

    def withdraw_all(self, source: str) -> list[Peer]:
        """:meth:`withdraw` every peer whose trust came from ``source``; returns them."""
        gone = []
        for peer in self._store.list_peers("trusted"):
            if peer.source == source:
                withdrawn = self.withdraw(peer.node_id, source)
                if withdrawn is not None:
                    gone.append(withdrawn)
        return gone

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
