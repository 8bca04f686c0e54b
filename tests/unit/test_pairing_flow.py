"""The pairing flows, sans-IO: every transition of the table, right and wrong codes, rate
limiting, the burn after N failures and expiry, with an injected clock and no sockets."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import LocalProtocolError, RemoteProtocolError
from agent.identity import load_or_create_identity
from agent.messages import PairingMessage
from agent.pairing import wire
from agent.pairing.code import new_code
from agent.pairing.crypto import Spake
from agent.pairing.flow import (
    Action,
    Close,
    JoinFlow,
    Me,
    PeerRef,
    Report,
    Send,
    ShowFlow,
    Trust,
)
from agent.pairing.states import TRANSITIONS, Event, State, advance


def _me(directory: Path, name: str) -> Me:
    identity = load_or_create_identity(directory / name, name)
    der = identity.certificate.public_bytes(serialization.Encoding.DER)
    return Me(identity.node_id, identity.name, der)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Me]:
    directory = tmp_path_factory.mktemp("ids")
    return {name: _me(directory, name) for name in ("shower", "joiner", "third")}


def state(flow: ShowFlow | JoinFlow) -> State:
    """The flow's state, read again (so that type narrowing of an earlier read does not stick)."""
    return flow.state


def ref(me: Me, key: str) -> PeerRef:
    return PeerRef(key, me.node_id, me.name)


@dataclasses.dataclass
class Pair:
    """A shower and a joiner wired together; ``run`` delivers messages until quiet."""

    show: ShowFlow
    join: JoinFlow
    joiner_ref: PeerRef  # how the shower sees the joiner's session
    now: float = 0.0
    seen: list[Action] = dataclasses.field(default_factory=list)

    def deliver(self, actions: list[Action]) -> None:
        pending = [("show", a) for a in actions]
        while pending:
            side, action = pending.pop(0)
            self.seen.append(action)
            if not isinstance(action, Send):
                continue
            if side == "show":  # sent by the joiner to the shower
                out = self.show.receive(self.joiner_ref, action.message, self.now)
                pending += [("join", a) for a in out]
            else:
                out = self.join.receive(action.message, self.now)
                pending += [("show", a) for a in out]

    def start(self) -> None:
        self.deliver(self.join.start(self.now))


def make_pair(nodes: dict[str, Me], code: str, typed: str, joiner: str = "joiner") -> Pair:
    show = ShowFlow(nodes["shower"], code, 0.0, ttl=300, max_failures=3)
    join = JoinFlow(nodes[joiner], typed, ref(nodes["shower"], "to-shower"), 0.0)
    return Pair(show, join, ref(nodes[joiner], f"from-{joiner}"))


def sent(actions: list[Action]) -> list[wire.WireMessage]:
    return [wire.parse(a.message) for a in actions if isinstance(a, Send)]


def reports(actions: list[Action], kind: str) -> list[str]:
    return [a.message for a in actions if isinstance(a, Report) and a.kind == kind]


# ----------------------------------------------------------------- the table


def test_every_entry_of_the_table_is_reachable_through_advance() -> None:
    for (state, event), target in TRANSITIONS.items():
        assert advance(state, event) is target


def test_an_event_without_an_entry_is_a_local_protocol_error() -> None:
    missing = [(s, e) for s in State for e in Event if (s, e) not in TRANSITIONS]
    assert missing
    for state, event in missing:
        with pytest.raises(LocalProtocolError, match="not allowed in state"):
            advance(state, event)


def test_terminal_states_only_refuse() -> None:
    for state in (State.PAIRED, State.BURNED, State.EXPIRED, State.CANCELLED, State.FAILED):
        moves = {e for (s, e) in TRANSITIONS if s is state}
        assert moves <= {Event.REFUSE}


# ----------------------------------------------------------------- whole exchanges


def test_right_code_pairs_both_sides_and_trusts_exactly_the_peers(nodes: dict[str, Me]) -> None:
    code = new_code()
    pair = make_pair(nodes, code, code)
    pair.start()
    assert pair.show.state is State.PAIRED
    assert pair.join.state is State.PAIRED
    trusts = [a for a in pair.seen if isinstance(a, Trust)]
    assert {t.certificate for t in trusts} == {
        nodes["shower"].certificate,
        nodes["joiner"].certificate,
    }
    assert pair.show.paired is not None
    assert pair.show.paired.certificate == nodes["joiner"].certificate
    assert pair.join.paired is not None
    assert pair.join.paired.name == "shower"
    kinds = [
        type(m).__name__ for a in pair.seen if isinstance(a, Send) for m in [wire.parse(a.message)]
    ]
    assert kinds == ["Start", "Reply", "Confirm", "Identity", "Done"]
    closes = [a for a in pair.seen if isinstance(a, Close)]
    assert len(closes) == 2  # each side is done with its session
    for action in pair.seen:  # nothing secret reaches a report
        if isinstance(action, Report):
            assert code not in action.message.replace("-", "")


def test_wrong_code_fails_on_both_sides_with_a_clear_message(nodes: dict[str, Me]) -> None:
    code = new_code()
    pair = make_pair(nodes, code, new_code())
    pair.start()
    assert pair.join.state is State.FAILED
    assert pair.join.error is not None
    assert pair.join.error[0] == "wrong_code"
    assert "wrong code: shower (" in pair.join.error[1]
    assert pair.show.state is State.SHOWING
    assert pair.show.failures == 1
    assert sorted(reports(pair.seen, "failed")) == sorted(
        [
            f"pairing attempt by joiner ({nodes['joiner'].node_id[:7]}) failed: it entered a "
            "wrong code (1 of 3 attempts used)",
            pair.join.error[1],
        ]
    )
    assert not [a for a in pair.seen if isinstance(a, Trust)]


def test_a_joiner_lying_about_its_confirmation_fails_at_the_shower(nodes: dict[str, Me]) -> None:
    code = new_code()
    show = ShowFlow(nodes["shower"], code, 0.0)
    joiner = ref(nodes["joiner"], "j")
    spake = Spake("A", new_code(), nodes["joiner"].node_id, nodes["shower"].node_id)
    show.receive(joiner, wire.encode(wire.Start(spake.message)), 0.0)
    assert show.state is State.ANSWERED
    out = show.receive(joiner, wire.encode(wire.Confirm(b"\0" * 32, b"\0" * 40)), 1.0)
    assert state(show) is State.SHOWING
    assert show.failures == 1
    assert [m.code for m in sent(out) if isinstance(m, wire.Abort)] == ["wrong_code"]


def test_a_sealed_certificate_of_another_node_is_refused(nodes: dict[str, Me]) -> None:
    """Someone who knows the code but claims one node ID and seals another node's certificate."""
    code = new_code()
    show = ShowFlow(nodes["shower"], code, 0.0)
    claimed = ref(nodes["joiner"], "j")
    spake = Spake("A", code, nodes["joiner"].node_id, nodes["shower"].node_id)
    out = show.receive(claimed, wire.encode(wire.Start(spake.message)), 0.0)
    reply = sent(out)[0]
    assert isinstance(reply, wire.Reply)
    keys = spake.finish(reply.pake)
    sealed = wire.encode_sealed(wire.Sealed(nodes["third"].certificate, "third"))
    confirm = wire.Confirm(keys.confirmation("A"), keys.seal("A", sealed))
    out = show.receive(claimed, wire.encode(confirm), 1.0)
    assert show.state is State.SHOWING
    assert not [a for a in out if isinstance(a, Trust)]
    assert "not" in reports(out, "failed")[0]


# ----------------------------------------------------------------- limits and time


def test_rate_limit_then_burn_after_three_failures(nodes: dict[str, Me]) -> None:
    code = new_code()
    show = ShowFlow(nodes["shower"], code, 0.0, max_failures=3, backoff=1.0)

    def attempt(now: float, typed: str, key: str = "j") -> list[Action]:
        join = JoinFlow(nodes["joiner"], typed, ref(nodes["shower"], "s"), now)
        pair = Pair(show, join, ref(nodes["joiner"], key), now)
        pair.start()
        return pair.seen

    attempt(0.0, new_code())
    assert (show.failures, show.state) == (1, State.SHOWING)
    hurried = attempt(0.5, new_code())  # within 1 s of the failure: refused, not counted
    assert [m.code for m in sent(hurried) if isinstance(m, wire.Abort)] == ["rate_limited"]
    assert show.failures == 1
    attempt(1.0, new_code())
    assert show.failures == 2
    assert [m.code for m in sent(attempt(2.5, new_code())) if isinstance(m, wire.Abort)] == [
        "rate_limited"
    ]  # 2 s after the second failure
    final = attempt(3.0, new_code())
    assert show.state is State.BURNED
    assert reports(final, "burned") == ["the code burned after 3 failed attempts"]
    late = attempt(100.0, code)  # even the right code: the code is void
    abort = [m for m in sent(late) if isinstance(m, wire.Abort)]
    assert [m.code for m in abort] == ["burned"]
    assert "stopped working after 3 failed attempts" in abort[0].message
    assert show.paired is None


def test_expiry_with_an_injected_clock(nodes: dict[str, Me]) -> None:
    code = new_code()
    show = ShowFlow(nodes["shower"], code, 10.0, ttl=120)
    assert show.get_timer() == 130.0
    assert show.handle_timer(129.9) == []
    out = show.handle_timer(130.0)
    assert show.state is State.EXPIRED
    assert reports(out, "expired") == ["the pairing code expired"]
    assert show.get_timer() is None
    join = JoinFlow(nodes["joiner"], code, ref(nodes["shower"], "s"), 131.0)
    pair = Pair(show, join, ref(nodes["joiner"], "j"), 131.0)
    pair.start()
    assert join.error is not None
    assert join.error[0] == "expired"


def test_expiry_during_an_attempt_tells_the_joiner(nodes: dict[str, Me]) -> None:
    code = new_code()
    show = ShowFlow(nodes["shower"], code, 0.0, ttl=5, attempt_timeout=15)
    spake = Spake("A", code, nodes["joiner"].node_id, nodes["shower"].node_id)
    show.receive(ref(nodes["joiner"], "j"), wire.encode(wire.Start(spake.message)), 4.0)
    assert show.get_timer() == 5.0
    out = show.handle_timer(5.0)
    assert show.state is State.EXPIRED
    assert [m.code for m in sent(out) if isinstance(m, wire.Abort)] == ["expired"]


def test_an_attempt_that_stalls_times_out_and_counts(nodes: dict[str, Me]) -> None:
    code = new_code()
    show = ShowFlow(nodes["shower"], code, 0.0, attempt_timeout=15)
    spake = Spake("A", code, nodes["joiner"].node_id, nodes["shower"].node_id)
    show.receive(ref(nodes["joiner"], "j"), wire.encode(wire.Start(spake.message)), 1.0)
    assert show.get_timer() == 16.0
    out = show.handle_timer(16.0)
    assert (show.state, show.failures) == (State.SHOWING, 1)
    assert [m.code for m in sent(out) if isinstance(m, wire.Abort)] == ["timeout"]


def test_busy_while_an_attempt_runs_and_used_after_pairing(nodes: dict[str, Me]) -> None:
    code = new_code()
    show = ShowFlow(nodes["shower"], code, 0.0)
    first = Spake("A", code, nodes["joiner"].node_id, nodes["shower"].node_id)
    show.receive(ref(nodes["joiner"], "j"), wire.encode(wire.Start(first.message)), 0.0)
    third = Spake("A", code, nodes["third"].node_id, nodes["shower"].node_id)
    out = show.receive(ref(nodes["third"], "t"), wire.encode(wire.Start(third.message)), 0.1)
    assert [m.code for m in sent(out) if isinstance(m, wire.Abort)] == ["busy"]
    assert show.state is State.ANSWERED
    assert show.failures == 0

    pair = make_pair(nodes, code, code)
    pair.start()
    again = JoinFlow(nodes["third"], code, ref(nodes["shower"], "s"), 1.0)
    Pair(pair.show, again, ref(nodes["third"], "t"), 1.0).start()
    assert again.error is not None
    assert again.error[0] == "used"
    assert "was already used" in again.error[1]


def test_finishing_lingers_for_done_then_pairs(nodes: dict[str, Me]) -> None:
    code = new_code()
    show = ShowFlow(nodes["shower"], code, 0.0, linger=10)
    spake = Spake("A", code, nodes["joiner"].node_id, nodes["shower"].node_id)
    joiner = ref(nodes["joiner"], "j")
    reply = sent(show.receive(joiner, wire.encode(wire.Start(spake.message)), 0.0))[0]
    assert isinstance(reply, wire.Reply)
    keys = spake.finish(reply.pake)
    box = keys.seal("A", wire.encode_sealed(wire.Sealed(nodes["joiner"].certificate, "joiner")))
    out = show.receive(joiner, wire.encode(wire.Confirm(keys.confirmation("A"), box)), 1.0)
    assert show.state is State.FINISHING
    assert [type(a).__name__ for a in out] == ["Send", "Trust", "Report"]
    assert show.handle_timer(10.9) == []
    assert show.cancel(10.95) == []  # too late to cancel: the peer is trusted
    assert show.handle_timer(11.0) == [Close(joiner)]
    assert state(show) is State.PAIRED


def test_a_closed_session_fails_the_attempt_or_ends_finishing(nodes: dict[str, Me]) -> None:
    code = new_code()
    show = ShowFlow(nodes["shower"], code, 0.0)
    joiner = ref(nodes["joiner"], "j")
    spake = Spake("A", code, nodes["joiner"].node_id, nodes["shower"].node_id)
    show.receive(joiner, wire.encode(wire.Start(spake.message)), 0.0)
    assert show.peer_closed(ref(nodes["third"], "t"), 0.5) == []  # not the attempt's session
    show.peer_closed(joiner, 1.0)
    assert (show.state, show.failures) == (State.SHOWING, 1)


def test_cancel_tells_the_running_attempt(nodes: dict[str, Me]) -> None:
    code = new_code()
    show = ShowFlow(nodes["shower"], code, 0.0)
    spake = Spake("A", code, nodes["joiner"].node_id, nodes["shower"].node_id)
    show.receive(ref(nodes["joiner"], "j"), wire.encode(wire.Start(spake.message)), 0.0)
    out = show.cancel(1.0)
    assert show.state is State.CANCELLED
    assert [m.code for m in sent(out) if isinstance(m, wire.Abort)] == ["cancelled"]
    later = Spake("A", code, nodes["third"].node_id, nodes["shower"].node_id)
    out = show.receive(ref(nodes["third"], "t"), wire.encode(wire.Start(later.message)), 2.0)
    assert [m.code for m in sent(out) if isinstance(m, wire.Abort)] == ["no_code"]


# ----------------------------------------------------------------- the joiner alone


def test_joiner_times_out_and_reports_aborts_and_garbage(nodes: dict[str, Me]) -> None:
    shower = ref(nodes["shower"], "s")
    join = JoinFlow(nodes["joiner"], new_code(), shower, 0.0, timeout=20)
    assert join.get_timer() is None
    join.start(0.0)
    assert join.get_timer() == 20.0
    assert join.handle_timer(19.0) == []
    join.handle_timer(20.0)
    assert join.state is State.FAILED
    assert join.error is not None
    assert join.error[0] == "timeout"

    join = JoinFlow(nodes["joiner"], new_code(), shower, 0.0)
    join.start(0.0)
    join.receive(wire.encode(wire.Abort("busy", "another device is pairing")), 1.0)
    assert join.error == ("busy", "another device is pairing")

    join = JoinFlow(nodes["joiner"], new_code(), shower, 0.0)
    join.start(0.0)
    out = join.receive(PairingMessage(wire.IDENTITY, {"box": b"x" * 40}), 1.0)
    assert join.state is State.FAILED
    assert [m.code for m in sent(out) if isinstance(m, wire.Abort)] == ["protocol"]

    join = JoinFlow(nodes["joiner"], new_code(), shower, 0.0)
    join.start(0.0)
    join.peer_closed(2.0)
    assert join.state is State.FAILED
    assert join.receive(wire.encode(wire.Done()), 3.0) == []  # finished: ignored
    with pytest.raises(LocalProtocolError):
        join.start(4.0)


def test_spake_binds_node_ids() -> None:
    code = new_code()
    a = Spake("A", code, "JOINER", "SHOWER")
    b = Spake("B", code, "JOINER", "OTHER")
    keys_a, keys_b = a.finish(b.message), b.finish(a.message)
    assert not keys_a.confirms("B", keys_b.confirmation("B"))
    with pytest.raises(RemoteProtocolError):
        Spake("A", code, "J", "S").finish(a.message)  # a message of the same side
    with pytest.raises(RemoteProtocolError):
        Spake("A", code, "J", "S").finish(b"B" + b"\xff" * 32)


# ----------------------------------------------------------------- decoders


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.binary(max_size=64)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.integers(0x40, 0x4F), plain)
def test_garbage_pairing_bodies_parse_or_raise_the_remote_error(kind: int, body: Any) -> None:
    try:
        wire.parse(PairingMessage(kind, body))
    except RemoteProtocolError:
        pass


@given(st.binary(max_size=200))
def test_garbage_sealed_identities_raise_the_remote_error(data: bytes) -> None:
    try:
        wire.decode_sealed(data)
    except RemoteProtocolError:
        pass


@given(plain)
def test_garbage_messages_never_break_a_showing_flow(body: Any) -> None:
    me = Me("SHOWER", "s", b"")
    show = ShowFlow(me, new_code(), 0.0)
    for kind in range(0x40, 0x50):
        show.receive(PeerRef("x", "X", "x"), PairingMessage(kind, body), 0.0)
    assert show.state is State.SHOWING
