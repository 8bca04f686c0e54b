"""Secure neighbour sessions: mutual TLS 1.3 over a reliable stream, carrying typed messages.

Protocol, over any :class:`link_drivers.api.ReliableStream` (ARCHITECTURE.md §4):

1. **Preamble** (plaintext, one stream message each way, sent at once by both sides): a CBOR map
   ``{"v": 1, "id": <node ID>, "name": <name>, "fp": <certificate fingerprint>}`` of at most
   512 bytes (:class:`~agent.messages.Preamble`). It is a claim, not a proof; a malformed one
   closes the session with :class:`~agent.errors.RemoteProtocolError`.
2. **Trust decision.** A peer whose claimed ID is not trusted, is revoked, or is pinned to another
   fingerprint puts the session in state ``untrusted``: from then on only plaintext
   :class:`~agent.messages.PairingMessage` s pass, in both directions (received ones go to the
   pairing handler; everything else is dropped and counted), and the peer sees nothing else.
3. **TLS 1.3** (RFC 8446) with :class:`ssl.MemoryBIO`: the side with the smaller node ID (string
   order of the display form) is the client. Both present their node certificate and Ed25519 key
   and require the peer's (``CERT_REQUIRED``). The only trust anchor is the certificate pinned for
   the claimed ID (``cadata``, ``VERIFY_X509_PARTIAL_CHAIN`` since it is a self-signed leaf; no
   hostname check), so another key cannot pass. After the handshake the node ID is derived again
   from the certificate the peer proved and must equal the claim, with the pinned fingerprint.
   TLS records travel as stream messages; the server sends no session tickets (bytes a 9600-baud
   radio would waste: no resumption is used). The handshake is about 1.5 KiB in three flights.
4. **Established**: each message is ``length (2 bytes, big-endian) + CBOR`` inside TLS.
   Messages sent during one event-loop step share one TLS record (one stream message, up to
   :data:`STREAM_CHUNK` bytes), written when the step ends: 22 bytes of record overhead and one
   encryption for a burst instead of per message, and no delay for a lone message.
   :meth:`SecureSession.close` sends :class:`~agent.messages.Goodbye` then a TLS close_notify,
   so the peer reports the session closed at once rather than after a link timeout.

Certificate failures are logged as one WARNING naming the peer's short ID and the reason, with no
traceback and no key material.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import ssl
from collections.abc import Awaitable, Callable, MutableMapping
from types import TracebackType
from typing import Any, NoReturn

from cryptography import x509

from agent.errors import FloreteError, LocalError, LocalProtocolError, RemoteError
from agent.errors import RemoteProtocolError as ProtocolError
from agent.identity import Identity, certificate_fingerprint, node_id_from_certificate, short_id
from agent.messages import (
    MAX_REASON,
    Goodbye,
    Message,
    PairingMessage,
    Preamble,
    UnknownMessageTypeError,
    decode,
    decode_preamble,
    encode,
    encode_preamble,
)
from agent.stepping import Rest, step
from agent.trust import Peer, TrustStore
from link_drivers.api import ReliableStream

__all__ = [
    "HandshakeTimeoutError",
    "PairingHandler",
    "PeerRejectedError",
    "SecureSession",
    "SessionClosedError",
    "SessionMetrics",
    "SessionState",
    "open_session",
]

log = logging.getLogger(__name__)

STREAM_CHUNK = 16 * 1024
"""Plaintext bytes per TLS record (the TLS 1.3 maximum, RFC 8446 section 5.1): messages sent in
one loop step are written as soon as they reach it, and a stream message carries at most one
full record (this plus 22 bytes)."""
CLOSE_TIMEOUT = 2.0
"""Seconds :meth:`SecureSession.close` waits for the goodbye to be acknowledged."""

_LENGTH = 2  # bytes of the length prefix of a message inside TLS
_RECORD_OVERHEAD = 22  # bytes TLS 1.3 adds to a record (RFC 8446 section 5.2)


class SessionState(enum.Enum):
    """Where a session is in its life (see the module docstring)."""

    PREAMBLE = "preamble"
    HANDSHAKE = "handshake"
    ESTABLISHED = "established"
    UNTRUSTED = "untrusted"
    CLOSED = "closed"


# Every state change of a session, as (state, event) -> new state (STYLE.md item 2).
_TRANSITIONS: dict[tuple[SessionState, str], SessionState] = {
    (SessionState.PREAMBLE, "peer_trusted"): SessionState.HANDSHAKE,
    (SessionState.PREAMBLE, "peer_untrusted"): SessionState.UNTRUSTED,
    (SessionState.HANDSHAKE, "peer_verified"): SessionState.ESTABLISHED,
    **{(state, "close"): SessionState.CLOSED for state in SessionState},
}


class SessionClosedError(LocalError):
    """The session is closed (by either side, by a revocation or because the link broke); the
    message says why. Raised by operations on it and by a pending :meth:`SecureSession.receive`."""

    code = "session_closed"


class PeerRejectedError(RemoteError):
    """The peer failed authentication (its certificate is not the one pinned for the ID it claims,
    or it claims this node's own ID), or it refused ours."""

    code = "peer_rejected"


class HandshakeTimeoutError(RemoteError):
    """Preamble and TLS handshake did not complete in time (a peer that does not trust this node
    stays silent, as does a dead link)."""

    code = "handshake_timeout"


@dataclasses.dataclass
class SessionMetrics:
    """Counters of one session, or of many when the caller passes one object to several.

    Attributes:
        messages_sent: messages sent (pairing ones included).
        messages_received: messages delivered to the caller or the pairing handler.
        dropped: messages received and discarded: from an untrusted peer outside the pairing range
            (TLS records included), or of an unknown type from a trusted one.
        protocol_errors: malformed preambles, messages or TLS records.
        rejected: failed authentications (certificate failures and refused claims).
        timeouts: handshakes that timed out.
    """

    messages_sent: int = 0
    messages_received: int = 0
    dropped: int = 0
    protocol_errors: int = 0
    rejected: int = 0
    timeouts: int = 0


PairingHandler = Callable[["SecureSession", PairingMessage], Awaitable[None]]
"""Called for each pairing message an untrusted peer sends: ``await handler(session, message)``."""


class _PeerLog(logging.LoggerAdapter[logging.Logger]):
    """Prefixes log lines with ``[peer=<short id>]``."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        return f"[peer={self.extra['peer'] if self.extra else '?'}] {msg}", kwargs


def _tls_reason(err: ssl.SSLError) -> str:
    """A one-line reason for a TLS failure (never key material: OpenSSL reasons only)."""
    if isinstance(err, ssl.SSLCertVerificationError):
        return f"its certificate is not the one pinned for it ({err.verify_message})"
    reason = (err.reason or "").lower()
    if "alert" in reason:
        return f"it refused the handshake ({reason.replace('_', ' ')})"
    return f"TLS error ({reason.replace('_', ' ') or err})"


class SecureSession:
    """A session with one neighbour; get one with :func:`open_session`.

    Use as an async context manager (exit closes it). One task at a time may await
    :meth:`receive`; any number may :meth:`send`.

    Attributes:
        peer_id: the peer's node ID (proved by TLS once ``established``; only claimed while
            ``untrusted``).
        peer_name: the name the peer announced (not authenticated).
        peer_fingerprint: the fingerprint of the peer's certificate (proved once established).
        is_client: True when this side was the TLS client.
        metrics: the session's counters.
        close_reason: why the session closed, or None while it is open.
    """

    def __init__(
        self,
        stream: ReliableStream,
        identity: Identity,
        trust: TrustStore,
        pairing_handler: PairingHandler | None,
        metrics: SessionMetrics,
    ) -> None:
        self._stream = stream
        self._identity = identity
        self._trust = trust
        self._pairing_handler = pairing_handler
        self.metrics = metrics
        self.state = SessionState.PREAMBLE
        self.peer_id = ""
        self.peer_name = ""
        self.peer_fingerprint = ""
        self.is_client = False
        self.close_reason: str | None = None
        self._log = _PeerLog(log, {"peer": "?"})
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls: ssl.SSLObject | None = None
        self._plain = bytearray()
        self._peer_eof = False
        self._unsent = bytearray()  # TLS output not yet taken by the stream
        self._pending = bytearray()  # messages sent in this loop step, not yet given to TLS
        self._write_soon: asyncio.Handle | None = None
        self._draining: asyncio.Task[None] | None = None  # a stream send that waits for room
        self._send_lock = asyncio.Lock()
        self._waiter: asyncio.Task[Any] | None = None  # the task awaiting the stream
        self._waiter_cancelled = False  # _request_close cancelled that wait
        self._receiving = False
        self._abort: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._abort_reason = ""
        self._abort_farewell: str | None = None
        self._closing = False
        self._closed = asyncio.Event()
        self._unlisten: Callable[[], None] | None = None
        self._pinned: Peer | None = None

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> SecureSession:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, reason: str = "closing") -> None:
        """Close the session: Goodbye and TLS close_notify to the peer, then close the stream.

        Waits at most :data:`CLOSE_TIMEOUT` seconds for the peer to acknowledge; idempotent.
        An untrusted peer gets no goodbye (it sees nothing but pairing messages).

        Args:
            reason: sent in the Goodbye for the peer's log, at most 256 characters.
        """
        await self._finish(f"closed by this node ({reason})", farewell=reason)

    def _advance(self, event: str) -> None:
        try:
            self.state = _TRANSITIONS[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(
                f"session: event {event!r} is not allowed in state {self.state.value}"
            ) from None

    def _request_close(self, reason: str, farewell: str | None) -> None:
        """Make the session close at the next await of receive or close (safe in callbacks).

        Args:
            reason: why, for this side (``close_reason``).
            farewell: the Goodbye reason for the peer, or None to send no Goodbye.
        """
        if not self._abort.done():
            self._abort_reason, self._abort_farewell = reason, farewell
            self._abort.set_result(True)
            if self._waiter is not None and not self._waiter_cancelled:
                self._waiter_cancelled = True  # _next_record takes this cancellation back
                self._waiter.cancel()

    async def _finish(self, reason: str, *, farewell: str | None) -> None:
        """Tear the session down once; later callers wait for the first to finish."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        self._request_close(reason, farewell)
        reason, farewell = self._abort_reason, self._abort_farewell  # the first request wins
        established = self.state is SessionState.ESTABLISHED
        self._advance("close")
        self.close_reason = reason
        if self._unlisten is not None:
            self._unlisten()
        try:
            if farewell is not None and established and self._tls is not None:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await self._send_goodbye(farewell)
        except (FloreteError, ssl.SSLError, TimeoutError) as err:
            self._log.debug("goodbye not delivered: %s", err)
        finally:
            if self._write_soon is not None:
                self._write_soon.cancel()
            if self._draining is not None:
                self._draining.cancel()
            await self._stream.aclose()
            self._closed.set()

    async def _send_goodbye(self, reason: str) -> None:
        assert self._tls is not None
        data = encode(Goodbye(reason[:MAX_REASON]))
        async with self._send_lock:
            if self._draining is not None:
                await asyncio.wait((self._draining,))
            if self._write_soon is not None:
                self._write_soon.cancel()
                self._write_soon = None
            self._pending += len(data).to_bytes(_LENGTH, "big") + data  # after what was sent
            self._tls.write(self._pending)
            self._pending.clear()
            with contextlib.suppress(ssl.SSLWantReadError):
                self._tls.unwrap()  # queues close_notify; the peer's is not awaited
            await self._flush()
        await self._stream.drain()

    # ----------------------------------------------------------------- opening

    async def _open(self, handshake_timeout: float) -> None:
        try:
            async with asyncio.timeout(handshake_timeout):
                await self._exchange_preambles()
                if self.state is SessionState.HANDSHAKE:
                    await self._handshake()
        except TimeoutError as err:
            stage = self.state.value
            self.metrics.timeouts += 1
            self._log.warning(
                "session not established within %.1f s (stuck in %s; does the peer trust this "
                "node?)",
                handshake_timeout,
                stage,
            )
            await self._finish("handshake timeout", farewell=None)
            raise HandshakeTimeoutError(
                f"no session with {self._peer_label()} within {handshake_timeout} s "
                f"(stuck in {stage})"
            ) from err
        except BaseException as err:
            await self._finish(f"opening failed: {err}", farewell=None)
            raise
        if self.state is SessionState.ESTABLISHED:
            self._log.info("session established with %s (%s)", self.peer_id, self.peer_name)

    def _peer_label(self) -> str:
        return short_id(self.peer_id) if self.peer_id else "an unidentified peer"

    async def _exchange_preambles(self) -> None:
        mine = Preamble(self._identity.node_id, self._identity.name, self._identity.fingerprint)
        await self._stream_send(encode_preamble(mine))
        data = await self._next_record()
        try:
            preamble = decode_preamble(data)
        except ProtocolError as err:
            self.metrics.protocol_errors += 1
            self._log.warning("closing: bad preamble: %s", err)
            raise
        self.peer_id, self.peer_name = preamble.node_id, preamble.name
        self.peer_fingerprint = preamble.fingerprint
        self._log = _PeerLog(log, {"peer": short_id(preamble.node_id)})
        if preamble.node_id == self._identity.node_id:
            self.metrics.rejected += 1
            self._log.warning("refused: the peer claims this node's own ID")
            raise PeerRejectedError("peer claims this node's own node ID")
        peer = self._trust.get(preamble.node_id)
        if (
            peer is not None
            and peer.state == "trusted"
            and peer.fingerprint == preamble.fingerprint
        ):
            self._advance("peer_trusted")
            self._pinned = peer
            self._unlisten = self._trust.add_listener(self._on_trust_change)
            return
        why = (
            "unknown node"
            if peer is None
            else "revoked"
            if peer.state != "trusted"
            else "certificate differs from the pinned one"
        )
        self._advance("peer_untrusted")
        self._log.info(
            "node %s (%r) is not trusted (%s): only pairing messages pass",
            preamble.node_id,
            preamble.name,
            why,
        )

    def _context(self, pinned: Peer) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT if self.is_client else ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.load_cert_chain(self._identity.cert_path, self._identity.key_path)
        ctx.load_verify_locations(cadata=pinned.certificate)
        if not self.is_client:
            ctx.num_tickets = 0
        return ctx

    async def _handshake(self) -> None:
        pinned = self._pinned
        assert pinned is not None
        self.is_client = self._identity.node_id < self.peer_id
        tls = self._context(pinned).wrap_bio(
            self._incoming, self._outgoing, server_side=not self.is_client
        )
        self._tls = tls
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                async with self._send_lock:
                    await self._flush()
                self._incoming.write(await self._next_record())
            except ssl.SSLError as err:
                await self._send_alert()
                raise self._reject(_tls_reason(err)) from None
        async with self._send_lock:
            await self._flush()
        self._verify_peer(tls, pinned)
        self._advance("peer_verified")

    async def _send_alert(self) -> None:
        """Deliver the TLS alert OpenSSL wrote, so the peer fails now rather than time out."""
        with contextlib.suppress(FloreteError, TimeoutError):
            async with asyncio.timeout(CLOSE_TIMEOUT):
                async with self._send_lock:
                    await self._flush()
                await self._stream.drain()

    def _verify_peer(self, tls: ssl.SSLObject, pinned: Peer) -> None:
        der = tls.getpeercert(binary_form=True)
        if der is None:
            raise self._reject("it presented no certificate")
        try:
            cert = x509.load_der_x509_certificate(der)
            proven = node_id_from_certificate(cert)
        except ValueError as err:
            raise self._reject(f"its certificate is not a node certificate ({err})") from None
        if proven != self.peer_id:
            raise self._reject(f"its certificate proves node {short_id(proven)}, not the claim")
        if certificate_fingerprint(cert) != pinned.fingerprint:
            raise self._reject("its certificate is not the pinned one")

    def _reject(self, reason: str) -> PeerRejectedError:
        self.metrics.rejected += 1
        self._log.warning("refused: %s", reason)
        return PeerRejectedError(f"node {self._peer_label()} refused: {reason}")

    # ----------------------------------------------------------------- stream I/O

    async def _stream_send(self, data: bytes) -> None:
        try:
            await self._stream.send(data)
        except LocalError as err:
            self._request_close(f"link stream broke: {err}", None)
            raise SessionClosedError(f"session with {self._peer_label()}: {err}") from err

    async def _flush(self) -> None:
        """Send what TLS wrote, in order (call with the send lock held)."""
        self._unsent += self._outgoing.read()
        while self._unsent:
            chunk = bytes(self._unsent[: STREAM_CHUNK + _RECORD_OVERHEAD])
            await self._stream_send(chunk)
            del self._unsent[: len(chunk)]

    def _write_pending(self) -> None:
        """Encrypt the messages sent so far as one TLS record and hand it to the stream now.

        Called when the event-loop step that sent them ends, or at once when they fill a record.
        A stream send that has to wait for room is finished by a task; later messages wait in
        :meth:`send` until it is done. A stream that broke closes the session.
        """
        if self._write_soon is not None:
            self._write_soon.cancel()
            self._write_soon = None
        if not self._pending or self._tls is None or self.state is not SessionState.ESTABLISHED:
            return
        self._tls.write(self._pending)
        self._pending.clear()
        self._unsent += self._outgoing.read()
        while self._unsent and self._draining is None:
            chunk = bytes(self._unsent[: STREAM_CHUNK + _RECORD_OVERHEAD])
            try:
                rest = step(self._stream.send(chunk))
            except LocalError as err:
                self._unsent.clear()
                self._request_close(f"link stream broke: {err}", None)
                return
            if rest is not None:
                self._draining = asyncio.get_running_loop().create_task(
                    self._drain(rest, len(chunk)), name="session-drain"
                )
                return
            del self._unsent[: len(chunk)]

    async def _drain(self, rest: Rest, sent: int) -> None:
        """Finish a stream send that waited for room, then send what TLS wrote meanwhile."""
        try:
            await rest
            del self._unsent[:sent]
            while self._unsent:
                chunk = bytes(self._unsent[: STREAM_CHUNK + _RECORD_OVERHEAD])
                await self._stream.send(chunk)
                del self._unsent[: len(chunk)]
        except LocalError as err:
            self._unsent.clear()
            self._request_close(f"link stream broke: {err}", None)
        finally:
            self._draining = None

    async def _next_record(self) -> bytes:
        """Next stream message; raise SessionClosedError once the session is told to close.

        The stream is awaited in the caller's task, with no task of its own: a close requested
        meanwhile cancels that wait (and :meth:`_request_close` takes that cancellation back
        here, as ``asyncio.timeout`` does), and a caller cancelled while waiting loses no message
        (the stream hands a message out only to a caller that returns with it).
        """
        if self._abort.done():
            await self._close_now()
        task = asyncio.current_task()
        self._waiter = task
        ours = False
        try:
            try:
                data = await self._stream.receive()
            finally:  # from here on a close request must not cancel this task
                ours, self._waiter, self._waiter_cancelled = self._waiter_cancelled, None, False
        except asyncio.CancelledError:
            if not ours or task is None or task.uncancel() > 0:
                raise
            await self._close_now()
        except LocalError as err:
            await self._finish(f"link stream broke: {err}", farewell=None)
            raise SessionClosedError(self._closed_message()) from err
        if self._abort.done():
            await self._close_now()
        return data

    async def _close_if_requested(self) -> None:
        """If the session was told to close, finish closing it and raise SessionClosedError."""
        if self._abort.done():
            await self._close_now()

    async def _close_now(self) -> NoReturn:
        await self._finish(self._abort_reason, farewell=self._abort_farewell)
        raise SessionClosedError(self._closed_message())

    def _closed_message(self) -> str:
        reason = self.close_reason or self._abort_reason
        return f"session with {self._peer_label()} closed: {reason}"

    def _check_open(self) -> None:
        if self._closing or self._abort.done():
            raise SessionClosedError(self._closed_message())

    def _on_trust_change(self, peer: Peer) -> None:
        if peer.node_id == self.peer_id and not (
            peer.state == "trusted" and peer.fingerprint == self.peer_fingerprint
        ):
            self._log.info("closing: the peer is no longer trusted")
            self._request_close("peer revoked", "revoked")

    # ----------------------------------------------------------------- messages

    async def send(self, message: Message) -> None:
        """Send one message (encrypted once established; plaintext pairing only when untrusted).

        Once established, the message is queued and leaves when the current event-loop step
        ends, in one TLS record with the others sent in that step; this waits only while the
        stream pushes back. A link that breaks as the record is handed over closes the session
        (the next call reports it), as a message in flight may always be lost with the link.

        Raises:
            SessionClosedError: the session is closed or closing, or the link broke.
            LocalProtocolError: the message cannot be encoded (see :func:`agent.messages.encode`),
                the session is not open yet, or it is untrusted and the message is not a
                :class:`~agent.messages.PairingMessage`.
        """
        self._check_open()
        data = encode(message)
        if self.state is SessionState.UNTRUSTED:
            if not isinstance(message, PairingMessage):
                raise LocalProtocolError(
                    f"only pairing messages may go to untrusted node {self._peer_label()}"
                )
            async with self._send_lock:
                await self._stream_send(data)
        elif self.state is SessionState.ESTABLISHED and self._tls is not None:
            while self._draining is not None:  # the stream pushes back: queue behind it
                await asyncio.wait((self._draining,))
                self._check_open()
            self._pending += len(data).to_bytes(_LENGTH, "big") + data
            if len(self._pending) >= STREAM_CHUNK:
                self._write_pending()
            elif self._write_soon is None:
                self._write_soon = asyncio.get_running_loop().call_soon(self._write_pending)
        else:
            raise LocalProtocolError(f"cannot send in session state {self.state.value}")
        self.metrics.messages_sent += 1

    async def receive(self) -> Message:
        """Wait for the peer's next message.

        In state ``untrusted`` this never returns a message: it passes the peer's pairing
        messages to the pairing handler and drops the rest, until the session closes.

        Returns:
            The next message other than :class:`~agent.messages.Goodbye` (which closes the
            session and raises).

        Raises:
            SessionClosedError: the session closed (goodbye or close_notify from the peer, local
                close, revocation, broken link).
            RemoteProtocolError: the peer sent a malformed message or TLS record (the session
                is closed).
            LocalProtocolError: another task is already awaiting ``receive``.
        """
        if self._receiving:
            raise LocalProtocolError("another task is already awaiting receive()")
        self._receiving = True
        try:
            if self.state is SessionState.UNTRUSTED:
                await self._serve_untrusted()
            return await self._receive_established()
        finally:
            self._receiving = False

    async def _serve_untrusted(self) -> NoReturn:
        while True:
            data = await self._next_record()
            try:
                message = decode(data)
            except ProtocolError:
                message = None
            if isinstance(message, PairingMessage) and self._pairing_handler is not None:
                self.metrics.messages_received += 1
                await self._pairing_handler(self, message)
            else:
                self.metrics.dropped += 1
                self._log.debug("dropped %d bytes from an untrusted peer", len(data))

    async def _receive_established(self) -> Message:
        while True:
            if self._abort.done():
                await self._close_now()
            try:
                message = self._next_message()
            except UnknownMessageTypeError as err:
                self.metrics.dropped += 1
                self._log.debug("dropped a message: %s", err)
                continue
            except ProtocolError as err:
                self.metrics.protocol_errors += 1
                self._log.warning("closing: %s", err)
                await self._finish(f"protocol error: {err}", farewell="protocol error")
                raise
            except ssl.SSLError as err:
                self.metrics.protocol_errors += 1
                self._log.warning("closing: %s", _tls_reason(err))
                await self._finish("TLS error", farewell=None)
                raise ProtocolError(f"{self._peer_label()}: {_tls_reason(err)}") from None
            except EOFError:
                await self._finish("peer closed TLS", farewell=None)
                raise SessionClosedError(self._closed_message()) from None
            if isinstance(message, Goodbye):
                await self._finish(f"peer said goodbye ({message.reason})", farewell=None)
                raise SessionClosedError(self._closed_message())
            if message is not None:
                self.metrics.messages_received += 1
                return message
            self._incoming.write(await self._next_record())

    def _next_message(self) -> Message | None:
        """Return the next whole message, decrypting what arrived if none is complete yet, or
        None if none is.

        Raises:
            EOFError: the peer sent close_notify.
            ssl.SSLError: a record failed to decrypt.
            RemoteProtocolError: a message is malformed.
        """
        plain = self._plain
        if len(plain) < _LENGTH or len(plain) < _LENGTH + int.from_bytes(plain[:_LENGTH], "big"):
            self._decrypt()
        size = int.from_bytes(plain[:_LENGTH], "big")  # <= MAX_MESSAGE_SIZE by design
        if len(plain) < _LENGTH + size:
            if self._peer_eof:
                raise EOFError
            return None
        data = bytes(plain[_LENGTH : _LENGTH + size])
        del plain[: _LENGTH + size]
        return decode(data)

    def _decrypt(self) -> None:
        """Append the plaintext of every whole TLS record received to ``_plain``."""
        tls, incoming = self._tls, self._incoming
        assert tls is not None
        while not self._peer_eof and (incoming.pending or tls.pending()):
            try:
                chunk = tls.read(STREAM_CHUNK)
            except ssl.SSLWantReadError:
                break  # a partial record: the rest comes with the next stream message
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:  # close_notify: deliver what came before it first
                self._peer_eof = True
            self._plain += chunk


async def open_session(
    stream: ReliableStream,
    identity: Identity,
    trust: TrustStore,
    *,
    handshake_timeout: float = 10.0,
    pairing_handler: PairingHandler | None = None,
    metrics: SessionMetrics | None = None,
) -> SecureSession:
    """Run the preamble and, for a trusted peer, the TLS handshake over ``stream``.

    The session owns the stream from here on: it closes it when the session closes, and when
    opening fails.

    Args:
        stream: a connected reliable stream to the neighbour (e.g. an ``ArqStream``).
        identity: this node's identity (its ``cert_path``/``key_path`` are read for TLS; the key
            is never copied elsewhere).
        trust: the trust store that decides and pins peers; a revocation closes the session.
        handshake_timeout: seconds for preamble plus handshake.
        pairing_handler: receives pairing messages while the session is ``untrusted``.
        metrics: counters to add to (share one across sessions to aggregate); a new one if None.

    Returns:
        A session in state ``established`` or ``untrusted``.

    Raises:
        RemoteProtocolError: the peer's preamble is malformed.
        PeerRejectedError: the peer failed authentication or refused ours.
        HandshakeTimeoutError: not done within ``handshake_timeout``.
        SessionClosedError: the stream broke or closed meanwhile.
    """
    session = SecureSession(stream, identity, trust, pairing_handler, metrics or SessionMetrics())
    await session._open(handshake_timeout)
    return session
