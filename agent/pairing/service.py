"""The pairing service: the asyncio adapter between the sans-IO flows and the mesh.

It owns at most one shown code (:class:`~agent.pairing.flow.ShowFlow`) and one typed attempt
(:class:`~agent.pairing.flow.JoinFlow`) at a time, receives pairing messages from the mesh's
untrusted sessions (:attr:`agent.mesh.Mesh.pairing_handler`), runs the flows' timers with one
task, and carries out what the flows ask: send, trust (source ``"pairing"``), close, report.

While a code is shown the node announces ``pair=1.<n>`` in its mDNS ``caps`` (see
:meth:`agent.discovery.Discovery.set_pairing`); the joiner picks the one neighbour that
announces it (or the node a scanned QR URI names, or ``--peer``). Radio neighbours announce
nothing: when no IP neighbour shows a code, the one untrusted radio neighbour heard is the
candidate (at once when mDNS does not run here; otherwise after ``discover_timeout``).

Unpairing sends ``pairing.unpair`` over the established session before revoking, so that the
peer revokes this node too and both sides close their sessions at once; a peer that cannot be
reached is revoked here only (it will be refused when it comes back).

The addresses where a paired peer was met are kept by :mod:`agent.pairing.addresses`. A shown
code may invite the joiner into a supernode this node is a member of (:mod:`agent.pairing.invite`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives import serialization

from agent.errors import (
    AlreadyExistsError,
    BadRequestError,
    FloreteError,
    LocalError,
    NotFoundError,
)
from agent.identity import Identity, short_id
from agent.mesh import Mesh
from agent.messages import PairingMessage
from agent.neighbours import NeighbourTable
from agent.pairing import wire
from agent.pairing.addresses import PeerAddresses
from agent.pairing.choose import choose_peer
from agent.pairing.code import PairingTarget, format_code, new_code, pairing_uri
from agent.pairing.invite import check_inviter
from agent.pairing.states import SHOWER_TERMINAL
from agent.session import SecureSession, SessionClosedError
from agent.store import Store, StoredPeer
from agent.trust import TrustStore

if TYPE_CHECKING:  # the flows load spake2 (~1.5 MiB): imported on first use (ARCHITECTURE §8)
    from agent.discovery import Discovery
    from agent.pairing.flow import Action, Close, JoinFlow, Me, PeerRef, ShowFlow, Trust

__all__ = ["PairingFailedError", "PairingService", "PairingSettings"]

log = logging.getLogger(__name__)

UNPAIR_METHOD = "pairing.unpair"
"""The request a node sends to a peer it unpairs; the peer revokes the caller."""
_CLOSE_DRAIN = 3.0  # seconds a closing pairing session waits for its last message to arrive
_MAX_EVENTS = 50


class PairingFailedError(LocalError):
    """A pairing attempt did not succeed; the message says why (wrong code, code expired or
    used up, refused, timed out).

    Attributes:
        reason_code: one of :data:`agent.pairing.wire.ABORT_CODES`.
    """

    code = "pairing_failed"
    reason = "Forbidden"
    http_status = 403

    def __init__(self, message: str, reason_code: str) -> None:
        super().__init__(message)
        self.reason_code = reason_code


@dataclasses.dataclass(frozen=True)
class PairingSettings:
    """Timing and limits (``[pairing]`` in the configuration).

    Attributes:
        code_ttl: seconds a shown code is valid.
        max_failures: failed attempts after which a code burns.
        attempt_timeout: seconds one attempt may take.
        discover_timeout: seconds a joiner waits for a neighbour that shows a code.
    """

    code_ttl: float = 300.0
    max_failures: int = 3
    attempt_timeout: float = 15.0
    discover_timeout: float = 8.0


def _load_flows() -> None:
    """Import :mod:`agent.pairing.flow` (it loads spake2) on first use.

    Raises:
        LocalError: spake2 is not installed.
    """
    try:
        import agent.pairing.flow  # noqa: F401
    except ModuleNotFoundError as err:
        raise LocalError(
            f"pairing needs {err.name}: install florete-agent with its 'pairing' extra"
        ) from err


def _iso(wall: float) -> str:
    return datetime.datetime.fromtimestamp(wall, datetime.UTC).isoformat(timespec="seconds")


class PairingService:
    """Pairing on this node (see the module docstring).

    Args:
        identity: this node's identity.
        trust: the trust store.
        mesh: the mesh (None when no link runs: showing and joining then fail clearly).
        table: the neighbour table.
        store: the agent's database (``pairing_addresses``).
        settings: timing and limits.
        clock: monotonic seconds (tests shorten time with their own).
        wall_clock: Unix seconds, for display only.

    Attributes:
        announce: set by the daemon once mDNS runs: ``await announce(showing)``.
        supernode_name: set by the daemon: the supernode this node is a member of, or None
            (unset: never a member, so it neither invites nor is in one when invited).
    """

    def __init__(
        self,
        identity: Identity,
        trust: TrustStore,
        mesh: Mesh | None,
        table: NeighbourTable,
        store: Store,
        settings: PairingSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.trust = trust
        self.mesh = mesh
        self.table = table
        self.store = store
        self.settings = settings or PairingSettings()
        self.announce: Callable[[bool], Awaitable[None]] | None = None
        self.supernode_name: Callable[[], str | None] | None = None
        self._mdns: bool | None = None  # mDNS runs here; None: not known yet (starting)
        self._clock = clock
        self._wall = wall_clock
        self._der = identity.certificate.public_bytes(serialization.Encoding.DER)
        self._show: ShowFlow | None = None
        self._show_info: dict[str, Any] = {}
        self._events: list[dict[str, Any]] = []
        self._join: JoinFlow | None = None
        self._join_done: asyncio.Event | None = None
        self._wake = asyncio.Event()
        self._timer_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._background: set[asyncio.Future[None]] = set()
        self._addresses = PeerAddresses(store, wall_clock)

    @property
    def _me(self) -> Me:
        from agent.pairing.flow import Me

        return Me(self.identity.node_id, self.identity.name, self._der)

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Hook into the mesh and start the timer task (call from the running loop)."""
        self._addresses.create()
        if self.mesh is not None:
            self.mesh.pairing_handler = self._on_message
            self.mesh.pairing_ended = self._on_ended
            self.mesh.on_peer_request(UNPAIR_METHOD, self._on_unpair)
        self._timer_task = asyncio.get_running_loop().create_task(
            self._timers(), name="pairing-timers"
        )

    def discovery_started(self, task: asyncio.Future[Discovery | None]) -> None:
        """Done callback of the daemon's mDNS start: announce ``pair=1.<n>`` through it from now
        on (mDNS off or failed: joiners must name this node, e.g. with the QR code's URI)."""
        if task.cancelled() or task.exception() is not None:
            self._mdns = False
            return
        discovery = task.result()
        self._mdns = discovery is not None
        if discovery is None:
            return
        self.announce = discovery.set_pairing
        if self._show is not None and self._show.state not in SHOWER_TERMINAL:
            announcing = asyncio.ensure_future(self._set_announced(True))
            self._background.add(announcing)
            announcing.add_done_callback(self._background.discard)

    async def stop(self) -> None:
        """Stop showing, stop the timer task and unhook from the mesh."""
        if self._show is not None:
            await self._execute(self._show.cancel(self._clock()))
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
        if self.mesh is not None:
            self.mesh.pairing_handler = None
            self.mesh.pairing_ended = None

    # ----------------------------------------------------------------- showing

    def _member_of(self) -> str | None:
        return self.supernode_name() if self.supernode_name is not None else None

    async def show(self, invite: str | None = None) -> dict[str, Any]:
        """Show a new code (a code already shown stops working).

        Args:
            invite: a supernode this node is a member of, to invite the joiner into.

        Returns:
            ``{"code": "4821-0937", "uri": "florete://pair?...", "expiresAt": ISO 8601,
            "expiresInSeconds": float, "maxFailures": int, "nodeID", "name", "supernode"}``
            (``supernode``: ``invite``).

        Raises:
            NotFoundError: no link runs, so no peer could reach this node.
            BadRequestError / NotMemberError: see :func:`~agent.pairing.invite.check_inviter`
                (the code shown before, if any, still works).
        """
        if self.mesh is None:
            raise NotFoundError("no links are configured: nothing could reach this node")
        if invite is not None:
            check_inviter(invite, self._member_of())
        now = self._clock()
        if self._show is not None:
            await self._execute(self._show.cancel(now))
        _load_flows()
        from agent.pairing.flow import ShowFlow

        code = new_code()
        settings = self.settings
        self._show = ShowFlow(
            self._me,
            code,
            now,
            ttl=settings.code_ttl,
            max_failures=settings.max_failures,
            attempt_timeout=settings.attempt_timeout,
            invite=invite,
        )
        self._events = []
        expires = self._wall() + settings.code_ttl
        self._show_info = {"expiresAt": _iso(expires), "startedAt": _iso(self._wall())}
        inviting = "" if invite is None else f", inviting into supernode {invite}"
        self._event("showing", f"showing a pairing code until {_iso(expires)}{inviting}")
        await self._set_announced(True)
        self._wake.set()
        return {
            "code": format_code(code),
            "uri": pairing_uri(code, self.identity.node_id, self.identity.name),
            "expiresAt": self._show_info["expiresAt"],
            "expiresInSeconds": settings.code_ttl,
            "maxFailures": settings.max_failures,
            "nodeID": self.identity.node_id,
            "name": self.identity.name,
            "supernode": invite,
        }

    def status(self) -> dict[str, Any]:
        """The shown code's state (never the code itself).

        Returns:
            ``{"state": "none"|"showing"|"answered"|"finishing"|"paired"|"burned"|"expired"|
            "cancelled", "failures", "maxFailures", "expiresAt", "expiresInSeconds",
            "events": [{"time", "kind", "message"}], "peer": {"nodeID", "name",
            "fingerprint"} | None, "supernode": {"name", "answer"} | None}``: ``supernode``
            is the invitation, ``answer`` the joiner's (None until its DONE came).
        """
        flow = self._show
        if flow is None:
            return {"state": "none", "events": self._events, "peer": None, "supernode": None}
        peer = flow.paired
        invitation = None if flow.invite is None else {"name": flow.invite, "answer": flow.answer}
        return {
            "state": flow.state.value,
            "failures": flow.failures,
            "maxFailures": flow.max_failures,
            "expiresAt": self._show_info.get("expiresAt"),
            "expiresInSeconds": round(max(0.0, flow.expires_at - self._clock()), 1),
            "events": self._events,
            "peer": None
            if peer is None
            else {"nodeID": peer.peer.node_id, "name": peer.name, "fingerprint": peer.fingerprint},
            "supernode": invitation,
        }

    async def cancel(self) -> dict[str, Any]:
        """Stop showing the code; returns :meth:`status`."""
        if self._show is not None:
            await self._execute(self._show.cancel(self._clock()))
            await self._set_announced(False)
        return self.status()

    async def _set_announced(self, showing: bool) -> None:
        if self.announce is None:
            return
        try:
            await self.announce(showing)
        except (FloreteError, OSError) as err:
            log.warning("pairing: mDNS announcement not updated: %s", err)

    # ----------------------------------------------------------------- joining

    async def join(
        self, target: PairingTarget, peer: str | None = None, *, accept_invitation: bool = True
    ) -> dict[str, Any]:
        """Pair with the neighbour that shows ``target.code``.

        Args:
            target: the typed code, or a scanned URI's code and node ID.
            peer: a neighbour name, node ID or short ID, when several show a code.
            accept_invitation: accept an invitation into a supernode that comes with the code
                (this only answers it: joining is the caller's ``supernode join``).

        Returns:
            ``{"nodeID", "name", "fingerprint", "address", "supernode"}`` of the peer now
            trusted; ``supernode`` is the invitation, ``{"name", "answer", "memberOf"}``, or
            None.

        Raises:
            NotFoundError: no neighbour shows a code (or the one named is unknown).
            BadRequestError: several show one (name it with ``peer``).
            AlreadyExistsError: another attempt runs here, or the peer is trusted already.
            PairingFailedError: the attempt failed (the message says why: wrong code, expired,
                used, burned, busy, timed out, or no pairing session came up).
        """
        _load_flows()
        from agent.pairing.flow import JoinFlow

        mesh = self.mesh
        if mesh is None:
            raise NotFoundError("no links are configured: no neighbour can be reached")
        if self._lock.locked():
            raise AlreadyExistsError("another pairing attempt is running on this node")
        async with self._lock:
            node_id = await self._choose(target, peer)
            known = self.trust.get(node_id)
            if known is not None and known.state == "trusted":
                raise AlreadyExistsError(
                    f"already paired with {known.name} ({short_id(node_id)}); unpair it first "
                    "to pair again"
                )
            try:
                session = await mesh.open_pairing(node_id, self.settings.attempt_timeout)
            except NotFoundError:
                raise
            except LocalError as err:
                raise PairingFailedError(err.message, "timeout") from err
            mesh.pairing_sessions.add(session)
            ref = self._ref(session)
            now = self._clock()
            attempt = JoinFlow(
                self._me,
                target.code,
                ref,
                now,
                self.settings.attempt_timeout,
                accept_invitation=accept_invitation,
                member_of=self._member_of(),
            )
            self._join, self._join_done = attempt, asyncio.Event()
            address = mesh.pairing_address(session)
            try:
                await self._execute(attempt.start(now))
                self._wake.set()
                await self._join_done.wait()
            finally:
                self._join, self._join_done = None, None
                mesh.pairing_sessions.discard(session)
            if attempt.paired is None:
                code, message = attempt.error or ("protocol", "pairing failed")
                raise PairingFailedError(message, code)
            return {
                "nodeID": node_id,
                "name": attempt.paired.name,
                "fingerprint": attempt.paired.fingerprint,
                "address": address,
                "supernode": None if attempt.invitation is None else attempt.invitation.as_dict(),
            }

    async def _choose(self, target: PairingTarget, peer: str | None) -> str:
        """The node ID to pair with (:func:`agent.pairing.choose.choose_peer`)."""
        return await choose_peer(
            self.table,
            target,
            peer,
            clock=self._clock,
            wait=self.settings.discover_timeout,
            mdns=lambda: self._mdns,
        )

    # ----------------------------------------------------------------- messages and actions

    def _ref(self, session: SecureSession) -> PeerRef:
        from agent.pairing.flow import PeerRef

        return PeerRef(session, session.peer_id, session.peer_name)

    async def _on_message(self, session: SecureSession, message: PairingMessage) -> None:
        """The mesh's pairing handler: route one message to the flow it belongs to."""
        try:
            _load_flows()
        except LocalError as err:
            log.warning("pairing: message from %s dropped: %s", short_id(session.peer_id), err)
            return
        now = self._clock()
        join = self._join
        if join is not None and join.peer.key is session:
            await self._execute(join.receive(message, now))
        elif self._show is not None:
            if message.kind == wire.START and self.mesh is not None:
                self.mesh.pairing_sessions.add(session)
            await self._execute(self._show.receive(self._ref(session), message, now))
        elif message.kind == wire.START:
            with contextlib.suppress(FloreteError):
                await session.send(self._no_code())
        self._wake.set()

    def _no_code(self) -> PairingMessage:
        from agent.pairing.flow import no_code_abort

        return no_code_abort(self._me)

    def _on_ended(self, session: SecureSession) -> None:
        """The mesh's notice that an untrusted session ended."""
        from agent.pairing.flow import Report  # loaded: a flow exists

        if self.mesh is not None:
            self.mesh.pairing_sessions.discard(session)
        now = self._clock()
        actions: list[Action] = []
        join = self._join
        if join is not None and join.peer.key is session:
            actions = join.peer_closed(now)
        elif self._show is not None:
            actions = self._show.peer_closed(self._ref(session), now)
        for action in actions:
            if isinstance(action, Report):
                self._event(action.kind, action.message)
        self._check_finished()
        self._wake.set()

    async def _execute(self, actions: list[Action]) -> None:
        """Carry out a flow's actions in order."""
        from agent.pairing.flow import Close, Send, Trust  # loaded: a flow exists

        for action in actions:
            if isinstance(action, Send):
                session = action.peer.key
                assert isinstance(session, SecureSession)
                try:
                    await session.send(action.message)
                except FloreteError as err:
                    log.debug("pairing: message to %s not sent: %s", action.peer.label, err)
            elif isinstance(action, Trust):
                self._trust(action)
            elif isinstance(action, Close):
                await self._close(action)
            else:
                self._event(action.kind, action.message)
        self._check_finished()
        if self._show is not None and self._show.state in SHOWER_TERMINAL:
            await self._set_announced(False)

    def _trust(self, action: Trust) -> None:
        try:
            self.trust.add(action.certificate, source="pairing", name=action.name)
        except FloreteError as err:
            log.warning("pairing: %s could not be trusted: %s", action.peer.label, err)
            return
        session = action.peer.key
        if self.mesh is not None and isinstance(session, SecureSession):
            address = self.mesh.pairing_address(session)
            if address is not None:
                self.record_addresses(action.peer.node_id, [address])

    async def _close(self, action: Close) -> None:
        """A flow is done with a session. Only the joiner closes one, and only once paired
        (after what it sent arrived, bounded in time): its mesh then dials an authenticated
        session, which replaces the shower's end too. Any other session stays with the mesh,
        which holds untrusted sessions open, and a later attempt reuses it. (Closing both ends
        at once makes both sides' links start over at the same time, racing each other.)"""
        session = action.peer.key
        assert isinstance(session, SecureSession)
        peer = self.trust.get(action.peer.node_id)
        paired = peer is not None and peer.state == "trusted"
        joiner = self._join is not None and self._join.peer.key is session
        if self.mesh is not None:
            if paired and joiner:
                await self.mesh.drain_pairing(session, _CLOSE_DRAIN)
            self.mesh.pairing_sessions.discard(session)
        if paired and joiner:
            await session.close("paired")

    def _check_finished(self) -> None:
        join, done = self._join, self._join_done
        if join is not None and done is not None and join.finished:
            done.set()

    def _event(self, kind: str, message: str) -> None:
        log.info("pairing: %s", message)
        self._events.append({"time": _iso(self._wall()), "kind": kind, "message": message})
        del self._events[:-_MAX_EVENTS]

    async def _timers(self) -> None:
        """Run the flows' timers: sleep until the earliest deadline or a wake-up."""
        while True:
            deadlines = [
                t
                for t in (
                    self._show.get_timer() if self._show is not None else None,
                    self._join.get_timer() if self._join is not None else None,
                )
                if t is not None
            ]
            delay = max(0.0, min(deadlines) - self._clock()) if deadlines else None
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            now = self._clock()
            if self._show is not None:
                await self._execute(self._show.handle_timer(now))
            if self._join is not None:
                await self._execute(self._join.handle_timer(now))

    # ----------------------------------------------------------------- unpairing

    def find_peer(self, name: str) -> StoredPeer:
        """The trust-store entry named by node ID, short ID or name.

        Raises:
            NotFoundError: none; BadRequestError: the name fits several.
        """
        found = [
            p
            for p in self.trust.peers()
            if name in (p.node_id, p.name) or p.node_id.split("-", 1)[0] == name.upper()
        ]
        if not found:
            raise NotFoundError(f'no peer "{name}"')
        if len(found) > 1:
            raise BadRequestError(f'"{name}" names {len(found)} peers: use the node ID')
        return found[0]

    async def unpair(self, name: str, timeout: float = 3.0) -> dict[str, Any]:  # noqa: ASYNC109
        """Tell the peer (when a session is up) and revoke it; sessions close on both sides.

        Returns:
            ``{"peer": StoredPeer (revoked), "notified": bool, "detail": str}``: whether the
            peer was told (and so revoked this node too), and why not.

        Raises:
            NotFoundError / BadRequestError: see :meth:`find_peer`.
        """
        peer = self.find_peer(name)
        notified, detail = False, "not paired any more"
        if self.mesh is not None and peer.state == "trusted":
            try:
                await self.mesh.request(peer.node_id, UNPAIR_METHOD, {"v": 1}, timeout)
                notified, detail = True, "told the peer, which revoked this node too"
            except SessionClosedError as err:
                notified = "revoked" in str(err)
                detail = "told the peer" if notified else f"not told: {err}"
            except FloreteError as err:
                detail = f"not told (revoked here only): {err}"
        revoked = self.trust.revoke(peer.node_id) if peer.state == "trusted" else peer
        log.info("pairing: unpaired %s (%s): %s", peer.name, peer.node_id, detail)
        return {"peer": revoked, "notified": notified, "detail": detail}

    async def _on_unpair(self, caller: str, body: Any) -> dict[str, Any]:
        """A peer unpaired this node: revoke it too (after the answer is on its way)."""
        peer = self.trust.get(caller)
        if peer is None or peer.state != "trusted":
            return {"revoked": False}
        log.info("pairing: %s (%s) unpaired this node; revoking it", peer.name, caller)
        asyncio.get_running_loop().call_soon(self._revoke_quietly, caller)
        return {"revoked": True}

    def _revoke_quietly(self, node_id: str) -> None:
        with contextlib.suppress(NotFoundError):
            self.trust.revoke(node_id)

    # ----------------------------------------------------------------- addresses

    def record_addresses(self, node_id: str, addresses: list[str]) -> None:
        """See :meth:`agent.pairing.addresses.PeerAddresses.record`."""
        self._addresses.record(node_id, addresses)

    def addresses(self, node_id: str) -> list[str]:
        """Where ``node_id`` was met when paired, newest first."""
        return self._addresses.of(node_id)
