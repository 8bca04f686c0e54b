"""The pairing protocol as sans-IO state machines (STYLE.md items 1, 2 and 7).

:class:`ShowFlow` runs on the node that shows a code, :class:`JoinFlow` on the node where it was
typed. Both take messages and the time in and return :data:`Action` s (messages to send, a peer to
trust, a session to close, a line to report); neither touches a socket or a clock. Every state
change goes through :func:`agent.pairing.states.advance`, the one table.

The exchange (kinds in :mod:`agent.pairing.wire`, keys in :mod:`agent.pairing.crypto`)::

    joiner                                             shower
      START  {pake A}                           ->       SHOWING -> ANSWERED
             <-  REPLY {pake B, confirm B}
    checks confirm B (else: ABORT wrong_code, FAILED)
      CONFIRM {confirm A, sealed identity A}    ->       checks confirm A (else: a failure)
                                                         trusts A; ANSWERED -> FINISHING
             <-  IDENTITY {sealed identity B}
    trusts B; PAIRED
      DONE                                      ->       FINISHING -> PAIRED

An invitation into a supernode (:mod:`agent.pairing.invite`) rides in the shower's sealed
identity, so only a joiner that proved the code reads it and nobody can alter it; the joiner's
answer rides in DONE. Neither changes a state: pairing succeeds or fails as without it.

Flows are keyed by stable identity (STYLE.md item 7): an attempt belongs to the node ID the
session claims, the SPAKE2 run binds both node IDs, and a sealed certificate must prove the same
ID, so what is trusted is exactly the node that knew the code. The shower stores trust before its
last message, so a lost DONE never leaves it behind; a joiner that never gets IDENTITY fails and
trusts nothing.

**Limits.** One attempt at a time (others are told ``busy``); an attempt has
``attempt_timeout`` seconds to finish; after the n-th failure the next attempt waits
``backoff * 2**(n-1)`` seconds (``rate_limited``), and after ``max_failures`` failures the code
burns. A typed code with a wrong check digit never gets here
(:func:`~agent.pairing.code.parse_code`). Nothing secret (code, keys, boxes) is ever part of
a :class:`Report`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

from cryptography import x509

from agent.errors import RemoteProtocolError
from agent.identity import certificate_fingerprint, node_id_from_certificate, short_id
from agent.messages import PairingMessage
from agent.pairing import wire
from agent.pairing.crypto import PairingKeys, Spake
from agent.pairing.invite import Invitation, answer, joiner_text, shower_text
from agent.pairing.states import SHOWER_TERMINAL, Event, State, advance

__all__ = [
    "Action",
    "Close",
    "JoinFlow",
    "Me",
    "PeerRef",
    "Report",
    "Send",
    "ShowFlow",
    "Trust",
    "no_code_abort",
]


@dataclasses.dataclass(frozen=True)
class Me:
    """This node, as pairing shows it: node ID, name and certificate (DER)."""

    node_id: str
    name: str
    certificate: bytes


@dataclasses.dataclass(frozen=True)
class PeerRef:
    """The other end of one pairing session.

    Attributes:
        key: identifies the session for the adapter (the session object itself).
        node_id: the node ID the session's preamble claims (proved only by pairing).
        name: the name it announced.
    """

    key: Hashable
    node_id: str
    name: str

    @property
    def label(self) -> str:
        """``name (SHORTID)`` for messages."""
        return f"{self.name} ({short_id(self.node_id)})"


@dataclasses.dataclass(frozen=True)
class Send:
    """Send ``message`` on ``peer``'s session."""

    peer: PeerRef
    message: PairingMessage


@dataclasses.dataclass(frozen=True)
class Trust:
    """Trust ``peer``: its certificate (DER) proved by the code, its name and fingerprint."""

    peer: PeerRef
    certificate: bytes
    name: str
    fingerprint: str


@dataclasses.dataclass(frozen=True)
class Close:
    """The pairing session with ``peer`` is done with (close it)."""

    peer: PeerRef


@dataclasses.dataclass(frozen=True)
class Report:
    """Something to tell the person (and the log): ``kind`` is one of ``attempt``, ``refused``,
    ``failed``, ``paired``, ``invitation``, ``burned``, ``expired``, ``cancelled``."""

    kind: str
    message: str


Action = Send | Trust | Close | Report


def _send(peer: PeerRef, message: wire.WireMessage) -> Send:
    return Send(peer, wire.encode(message))


def _seal(keys: PairingKeys, side: str, me: Me, supernode: str | None = None) -> bytes:
    return keys.seal(side, wire.encode_sealed(wire.Sealed(me.certificate, me.name, supernode)))


def _open_identity(
    keys: PairingKeys, side: str, box: bytes, peer: PeerRef
) -> tuple[Trust, str | None]:
    """Open the peer's sealed identity and check that its certificate proves the claimed ID.

    Returns:
        What to trust, and the supernode the box invites into (None: no invitation).

    Raises:
        RemoteProtocolError: the box does not authenticate, or holds no node certificate of
            ``peer.node_id``.
    """
    sealed = wire.decode_sealed(keys.open(side, box))
    try:
        cert = x509.load_der_x509_certificate(sealed.certificate)
        proven = node_id_from_certificate(cert)
    except ValueError as err:
        raise RemoteProtocolError(f"sealed certificate is not a node certificate: {err}") from err
    if proven != peer.node_id:
        raise RemoteProtocolError(
            f"sealed certificate is node {short_id(proven)}'s, not {short_id(peer.node_id)}'s"
        )
    trust = Trust(peer, sealed.certificate, sealed.name or peer.name, certificate_fingerprint(cert))
    return trust, sealed.supernode


def no_code_abort(me: Me) -> PairingMessage:
    """The answer to a START when this node shows no code at all."""
    return wire.encode(wire.Abort("no_code", f"{me.name} is not showing a pairing code"))


@dataclasses.dataclass
class _Attempt:
    peer: PeerRef
    keys: PairingKeys
    deadline: float


class ShowFlow:
    """The shower's side: one code, attempts in turn (see the module docstring).

    Args:
        me: this node.
        code: the 8-digit code shown (see :mod:`agent.pairing.code`).
        now: the current time, seconds (any monotonic clock, the same for every call).
        ttl: seconds the code is valid.
        max_failures: failed attempts after which the code burns (>= 1).
        attempt_timeout: seconds an attempt may take from START to CONFIRM.
        backoff: seconds to wait after the first failure (doubling after each further one).
        linger: seconds to wait for the joiner's DONE once its identity is trusted.
        invite: the supernode to invite the joiner into (None: pairing only); the caller
            checked that this node is a member (:func:`~agent.pairing.invite.check_inviter`).

    Attributes:
        state: the current :class:`State`.
        failures: failed attempts so far.
        expires_at: when the code expires (same clock as ``now``).
        paired: the peer trusted, once ``FINISHING`` or ``PAIRED``.
        answer: the joiner's answer to the invitation, once its DONE came (None before, or
            when DONE was lost).
    """

    def __init__(
        self,
        me: Me,
        code: str,
        now: float,
        *,
        ttl: float = 300.0,
        max_failures: int = 3,
        attempt_timeout: float = 15.0,
        backoff: float = 1.0,
        linger: float = 10.0,
        invite: str | None = None,
    ) -> None:
        self.me = me
        self.invite = invite
        self.answer: str | None = None
        self._code = code
        self.state = State.SHOWING
        self.expires_at = now + ttl
        self.max_failures = max(1, max_failures)
        self.failures = 0
        self.paired: Trust | None = None
        self._attempt_timeout = attempt_timeout
        self._backoff = backoff
        self._linger = linger
        self._attempt: _Attempt | None = None
        self._not_before = now
        self._linger_until: float | None = None

    def __repr__(self) -> str:  # never shows the code
        return f"<ShowFlow {self.state.value} failures={self.failures}/{self.max_failures}>"

    @property
    def attempt_peer(self) -> PeerRef | None:
        """The peer of the running attempt, or None."""
        return self._attempt.peer if self._attempt is not None else None

    def _advance(self, event: Event) -> None:
        self.state = advance(self.state, event)

    # ----------------------------------------------------------------- timers

    def get_timer(self) -> float | None:
        """The next time :meth:`handle_timer` has something to do, or None."""
        times = []
        if self.state in (State.SHOWING, State.ANSWERED):
            times.append(self.expires_at)
        if self.state is State.ANSWERED and self._attempt is not None:
            times.append(self._attempt.deadline)
        if self.state is State.FINISHING and self._linger_until is not None:
            times.append(self._linger_until)
        return min(times) if times else None

    def handle_timer(self, now: float) -> list[Action]:
        """Expire the code, time out the attempt, or stop lingering, as due at ``now``."""
        actions: list[Action] = []
        attempt = self._attempt
        if self.state is State.FINISHING and self._linger_until is not None:
            if now >= self._linger_until and attempt is not None:
                self._advance(Event.LINGER_OVER)
                self._attempt = None
                actions.append(Close(attempt.peer))
            return actions
        if self.state is State.ANSWERED and attempt is not None and now >= attempt.deadline:
            actions += self._fail(now, "timeout", "the attempt took too long", notify=True)
        if self.state in (State.SHOWING, State.ANSWERED) and now >= self.expires_at:
            attempt = self._attempt
            if attempt is not None:
                actions.append(_send(attempt.peer, self._refusal("expired")))
                actions.append(Close(attempt.peer))
                self._attempt = None
            self._advance(Event.EXPIRE)
            actions.append(Report("expired", "the pairing code expired"))
        return actions

    # ----------------------------------------------------------------- input

    def cancel(self, now: float) -> list[Action]:
        """Stop showing the code (nothing happens once the flow ended or is finishing)."""
        if self.state not in (State.SHOWING, State.ANSWERED):
            return []
        actions: list[Action] = []
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            actions += [_send(attempt.peer, self._refusal("cancelled")), Close(attempt.peer)]
        self._advance(Event.CANCEL)
        actions.append(Report("cancelled", "stopped showing the pairing code"))
        return actions

    def peer_closed(self, peer: PeerRef, now: float) -> list[Action]:
        """``peer``'s session closed: a running attempt by it fails; a finishing one is done."""
        attempt = self._attempt
        if attempt is None or attempt.peer.key != peer.key:
            return []
        if self.state is State.FINISHING:
            self._advance(Event.DONE)
            self._attempt = None
            return []
        return self._fail(now, "timeout", "its session closed", notify=False)

    def receive(self, peer: PeerRef, message: PairingMessage, now: float) -> list[Action]:
        """Handle one pairing message from ``peer``'s session.

        Returns:
            What to do; a message that is not valid in the current state is answered with an
            ABORT (and fails the attempt, if it came from the attempt's peer).
        """
        actions = self.handle_timer(now)
        current = self._attempt is not None and self._attempt.peer.key == peer.key
        try:
            parsed = wire.parse(message)
        except RemoteProtocolError as err:
            if current and self.state is State.FINISHING:
                return actions  # the joiner is trusted already: the linger ends the flow
            if current:
                return actions + self._fail(now, "protocol", str(err), notify=True)
            return [*actions, _send(peer, wire.Abort("protocol", str(err))), Close(peer)]
        if isinstance(parsed, wire.Start):
            return actions + self._on_start(peer, parsed, now)
        if not current:
            return actions  # a stray message from a session with no attempt: ignored
        if isinstance(parsed, wire.Confirm) and self.state is State.ANSWERED:
            return actions + self._on_confirm(parsed, now)
        if isinstance(parsed, wire.Done) and self.state is State.FINISHING:
            assert self._attempt is not None
            self._advance(Event.DONE)
            attempt, self._attempt = self._attempt, None
            actions.append(Close(attempt.peer))
            if self.invite is not None and parsed.supernode is not None:
                self.answer = parsed.supernode
                name = self.paired.name if self.paired is not None else attempt.peer.name
                text = shower_text(name, self.invite, parsed.supernode)
                actions.append(Report("invitation", text))
            return actions
        if isinstance(parsed, wire.Abort) and self.state is State.ANSWERED:
            reason = "it entered a wrong code" if parsed.code == "wrong_code" else parsed.message
            return actions + self._fail(now, parsed.code, reason, notify=False)
        if self.state is State.ANSWERED:
            what = type(parsed).__name__.upper()
            return actions + self._fail(now, "protocol", f"unexpected {what}", notify=True)
        return actions

    def _on_start(self, peer: PeerRef, start: wire.Start, now: float) -> list[Action]:
        refusal: str | None = None
        if self.state in SHOWER_TERMINAL:
            refusal = {State.PAIRED: "used", State.CANCELLED: "no_code"}.get(
                self.state, self.state.value
            )
        elif start.version != wire.VERSION:
            refusal = "version"
        elif self.state is not State.SHOWING:
            refusal = "busy"
        elif now < self._not_before:
            refusal = "rate_limited"
        if refusal is None:
            spake = Spake("B", self._code, joiner_id=peer.node_id, shower_id=self.me.node_id)
            try:
                keys = spake.finish(start.pake)
            except RemoteProtocolError as err:
                self._advance(Event.REFUSE)
                return [_send(peer, wire.Abort("protocol", str(err))), Close(peer)]
            self._advance(Event.START)
            self._attempt = _Attempt(peer, keys, now + self._attempt_timeout)
            return [
                _send(peer, wire.Reply(spake.message, keys.confirmation("B"))),
                Report("attempt", f"{peer.label} is trying the code"),
            ]
        self._advance(Event.REFUSE)
        return [
            _send(peer, self._refusal(refusal, now)),
            Close(peer),
            Report("refused", f"turned {peer.label} away: {refusal.replace('_', ' ')}"),
        ]

    def _on_confirm(self, confirm: wire.Confirm, now: float) -> list[Action]:
        attempt = self._attempt
        assert attempt is not None
        if not attempt.keys.confirms("A", confirm.mac):
            return self._fail(now, "wrong_code", "it entered a wrong code", notify=True)
        try:
            trust, _ = _open_identity(attempt.keys, "A", confirm.box, attempt.peer)
        except RemoteProtocolError as err:
            return self._fail(now, "protocol", str(err), notify=True)
        self._advance(Event.CONFIRMED)
        self.paired = trust
        self._linger_until = now + self._linger
        box = _seal(attempt.keys, "B", self.me, self.invite)
        return [
            _send(attempt.peer, wire.Identity(box)),
            trust,
            Report(
                "paired",
                f"paired with {trust.name} ({attempt.peer.node_id}), "
                f"certificate fingerprint {trust.fingerprint}",
            ),
        ]

    def _fail(self, now: float, code: str, reason: str, *, notify: bool) -> list[Action]:
        """The running attempt failed: count it, pace the next one, burn the code at the limit."""
        attempt, self._attempt = self._attempt, None
        assert attempt is not None
        self._advance(Event.ATTEMPT_FAILED)
        self.failures += 1
        self._not_before = now + self._backoff * 2 ** (self.failures - 1)
        actions: list[Action] = []
        if notify:
            actions.append(_send(attempt.peer, self._refusal(code, now)))
        actions += [
            Close(attempt.peer),
            Report(
                "failed",
                f"pairing attempt by {attempt.peer.label} failed: {reason} "
                f"({self.failures} of {self.max_failures} attempts used)",
            ),
        ]
        if self.failures >= self.max_failures:
            self._advance(Event.BURN)
            actions.append(
                Report("burned", f"the code burned after {self.failures} failed attempts")
            )
        return actions

    def _refusal(self, code: str, now: float = 0.0) -> wire.Abort:
        """The ABORT that tells a joiner why (no secret in it)."""
        name = self.me.name
        new = f"run `florete-agent pair` on {name} for a new code"
        texts = {
            "wrong_code": f"wrong code: {name} shows another code "
            f"({self.failures} of {self.max_failures} attempts used)",
            "no_code": f"{name} is not showing a pairing code",
            "used": f"the code shown on {name} was already used; {new}",
            "expired": f"the code shown on {name} expired; {new}",
            "burned": f"the code shown on {name} stopped working after {self.max_failures} "
            f"failed attempts; {new}",
            "cancelled": f"{name} stopped showing the code",
            "busy": f"another device is pairing with {name} right now; try again in a moment",
            "rate_limited": f"{name} refuses attempts for "
            f"{max(0.1, self._not_before - now):.1f} s after a failed one; try again then",
            "version": f"{name} speaks pairing protocol version {wire.VERSION} only",
            "timeout": "the pairing attempt took too long",
        }
        return wire.Abort(code, texts.get(code, "pairing failed: protocol error"))


class JoinFlow:
    """The joiner's side: one attempt with a typed code (see the module docstring).

    Args:
        me: this node.
        code: the 8 digits typed (already checked by :func:`~agent.pairing.code.parse_code`).
        peer: the shower's session.
        now: the current time, seconds.
        timeout: seconds the attempt may take.
        accept_invitation: whether to accept an invitation into a supernode that comes with
            the code (the user's ``--no-supernode`` is False).
        member_of: the supernode this node is a member of, or None (a member does not accept).

    Attributes:
        state: the current :class:`State`.
        error: ``(code, message)`` once ``FAILED``: an :data:`~agent.pairing.wire.ABORT_CODES`
            code and a sentence for the person.
        paired: the shower's identity once ``PAIRED``.
        invitation: the shower's invitation and this node's answer, once ``PAIRED`` (None: the
            code came with none).
    """

    def __init__(
        self,
        me: Me,
        code: str,
        peer: PeerRef,
        now: float,
        timeout: float = 20.0,
        *,
        accept_invitation: bool = True,
        member_of: str | None = None,
    ) -> None:
        self.me = me
        self.peer = peer
        self.state = State.NEW
        self.error: tuple[str, str] | None = None
        self.paired: Trust | None = None
        self.invitation: Invitation | None = None
        self._accept = accept_invitation
        self._member_of = member_of
        self.deadline = now + timeout
        self._spake = Spake("A", code, joiner_id=me.node_id, shower_id=peer.node_id)
        self._keys: PairingKeys | None = None

    def __repr__(self) -> str:  # never shows the code
        return f"<JoinFlow {self.state.value} peer={self.peer.label}>"

    @property
    def finished(self) -> bool:
        """True once ``PAIRED`` or ``FAILED``."""
        return self.state in (State.PAIRED, State.FAILED)

    def _advance(self, event: Event) -> None:
        self.state = advance(self.state, event)

    def start(self, now: float) -> list[Action]:
        """Send START (from ``NEW`` only)."""
        self._advance(Event.START)
        return [_send(self.peer, wire.Start(self._spake.message))]

    def get_timer(self) -> float | None:
        """The attempt's deadline while it runs, else None."""
        return None if self.finished or self.state is State.NEW else self.deadline

    def handle_timer(self, now: float) -> list[Action]:
        """Fail the attempt when its deadline passed."""
        if self.finished or self.state is State.NEW or now < self.deadline:
            return []
        return self._failed(
            Event.TIMEOUT, "timeout", f"{self.peer.label} did not finish pairing in time", True
        )

    def peer_closed(self, now: float) -> list[Action]:
        """The session closed before the end: the attempt fails."""
        if self.finished or self.state is State.NEW:
            return []
        return self._failed(
            Event.ABORTED, "timeout", f"the session with {self.peer.label} closed", False
        )

    def receive(self, message: PairingMessage, now: float) -> list[Action]:
        """Handle one pairing message from the shower."""
        if self.finished or self.state is State.NEW:
            return []
        try:
            return self._dispatch(wire.parse(message))
        except RemoteProtocolError as err:
            return self._failed(
                Event.PROTOCOL_ERROR, "protocol", f"{self.peer.label} broke the protocol: {err}"
            )

    def _dispatch(self, parsed: wire.WireMessage) -> list[Action]:
        """Act on a parsed message; raises RemoteProtocolError for one out of place."""
        if isinstance(parsed, wire.Abort):
            self.error = (parsed.code, parsed.message or f"refused ({parsed.code})")
            self._advance(Event.ABORTED)
            return [Close(self.peer), Report("failed", self.error[1])]
        if isinstance(parsed, wire.Reply) and self.state is State.STARTED:
            return self._on_reply(parsed)
        if not (isinstance(parsed, wire.Identity) and self.state is State.CONFIRMED):
            raise RemoteProtocolError(f"unexpected {type(parsed).__name__.upper()}")
        assert self._keys is not None
        trust, supernode = _open_identity(self._keys, "B", parsed.box, self.peer)
        self._advance(Event.IDENTIFIED)
        self.paired = trust
        done = wire.Done()
        reports = [
            Report(
                "paired",
                f"paired with {trust.name} ({self.peer.node_id}), "
                f"certificate fingerprint {trust.fingerprint}",
            )
        ]
        if supernode is not None:
            given = answer(self._accept, self._member_of)
            self.invitation = Invitation(supernode, given, self._member_of)
            done = wire.Done(given)
            reports.append(Report("invitation", joiner_text(trust.name, self.invitation)))
        return [trust, _send(self.peer, done), Close(self.peer), *reports]

    def _on_reply(self, reply: wire.Reply) -> list[Action]:
        keys = self._spake.finish(reply.pake)
        if not keys.confirms("B", reply.mac):
            return self._failed(
                Event.WRONG_CODE,
                "wrong_code",
                f"wrong code: {self.peer.label} shows another code (check the digits; the code "
                "stops working after a few wrong tries)",
            )
        self._keys = keys
        self._advance(Event.CONFIRMED)
        box = _seal(keys, "A", self.me)
        return [_send(self.peer, wire.Confirm(keys.confirmation("A"), box))]

    def _failed(self, event: Event, code: str, message: str, notify: bool = True) -> list[Action]:
        self._advance(event)
        self.error = (code, message)
        actions: list[Action] = []
        if notify:
            actions.append(_send(self.peer, wire.Abort(code, message)))
        return [*actions, Close(self.peer), Report("failed", message)]
