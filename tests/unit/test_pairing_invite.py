"""Invitations into a supernode that come with a pairing code (sans-IO, no sockets): the name
rides sealed in IDENTITY, the joiner's answer in DONE; the rules of who may invite, the wire
format, and the service's checks before a code is shown."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, cast

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import BadRequestError, RemoteProtocolError
from agent.identity import load_or_create_identity
from agent.mesh import Mesh
from agent.messages import PairingMessage
from agent.neighbours import NeighbourTable
from agent.pairing import invite, wire
from agent.pairing.code import new_code
from agent.pairing.crypto import Spake
from agent.pairing.flow import Action, JoinFlow, Me, PeerRef, Report, Send, ShowFlow
from agent.pairing.invite import Invitation
from agent.pairing.service import PairingService
from agent.pairing.states import State
from agent.store import Store
from agent.trust import TrustStore
from supernode.errors import NotMemberError


def _me(directory: Path, name: str) -> Me:
    identity = load_or_create_identity(directory / name, name)
    der = identity.certificate.public_bytes(serialization.Encoding.DER)
    return Me(identity.node_id, identity.name, der)


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Me]:
    directory = tmp_path_factory.mktemp("ids")
    return {name: _me(directory, name) for name in ("a", "b")}


@dataclasses.dataclass
class Wire:
    """A shower and a joiner, messages delivered in order until quiet; every action kept."""

    show: ShowFlow
    join: JoinFlow
    seen: list[tuple[str, Action]] = dataclasses.field(default_factory=list)

    def run(self) -> None:
        pending: list[tuple[str, Action]] = [("b", a) for a in self.join.start(0.0)]
        joiner = PeerRef("from-b", self.join.me.node_id, self.join.me.name)
        while pending:
            side, action = pending.pop(0)
            self.seen.append((side, action))
            if isinstance(action, Send) and side == "b":
                pending += [("a", x) for x in self.show.receive(joiner, action.message, 1.0)]
            elif isinstance(action, Send):
                pending += [("b", x) for x in self.join.receive(action.message, 1.0)]

    def reports(self, side: str, kind: str) -> list[str]:
        return [
            a.message
            for s, a in self.seen
            if s == side and isinstance(a, Report) and a.kind == kind
        ]

    def sent(self, side: str) -> list[PairingMessage]:
        return [a.message for s, a in self.seen if s == side and isinstance(a, Send)]


def run(
    nodes: dict[str, Me],
    supernode: str | None,
    *,
    accept: bool = True,
    member_of: str | None = None,
    typed: str | None = None,
) -> Wire:
    code = new_code()
    show = ShowFlow(nodes["a"], code, 0.0, invite=supernode)
    shower = PeerRef("to-a", nodes["a"].node_id, "a")
    join = JoinFlow(
        nodes["b"], typed or code, shower, 0.0, accept_invitation=accept, member_of=member_of
    )
    pair = Wire(show, join)
    pair.run()
    return pair


# ----------------------------------------------------------------- whole exchanges


def test_an_accepted_invitation_reaches_the_joiner_and_its_answer_the_shower(
    nodes: dict[str, Me],
) -> None:
    pair = run(nodes, "rover")
    assert (pair.show.state, pair.join.state) == (State.PAIRED, State.PAIRED)
    assert pair.join.invitation == Invitation("rover", "accepted", None)
    assert pair.show.answer == "accepted"
    assert pair.reports("b", "invitation") == ["a invites this node into supernode rover: accepted"]
    assert pair.reports("a", "invitation") == ["b accepted the invitation into supernode rover"]
    done = pair.sent("b")[-1]
    assert (done.kind, done.body) == (wire.DONE, {"supernode": "accepted"})


def test_the_name_travels_sealed_never_in_clear(nodes: dict[str, Me]) -> None:
    pair = run(nodes, "rover-with-a-long-name")
    identity = next(m for m in pair.sent("a") if m.kind == wire.IDENTITY)
    assert b"rover-with-a-long-name" not in cbor2.dumps(identity.body)
    assert all(b"rover" not in cbor2.dumps(m.body) for m in pair.sent("a"))


def test_declined_and_member_answers(nodes: dict[str, Me]) -> None:
    pair = run(nodes, "rover", accept=False)
    assert pair.join.invitation == Invitation("rover", "declined", None)
    assert pair.show.answer == "declined"
    assert pair.reports("a", "invitation") == [
        "b declined the invitation into supernode rover: paired only"
    ]
    pair = run(nodes, "rover", member_of="truck")
    assert pair.join.invitation == Invitation("rover", "member", "truck")
    assert pair.show.answer == "member"
    assert "member of supernode truck" in pair.reports("b", "invitation")[0]
    pair = run(nodes, "rover", accept=False, member_of="truck")  # the user's word first
    assert pair.show.answer == "declined"
    # pairing itself is the same in every case
    assert (pair.show.state, pair.join.state) == (State.PAIRED, State.PAIRED)


def test_without_invitation_done_is_empty_and_nothing_is_reported(nodes: dict[str, Me]) -> None:
    pair = run(nodes, None, member_of="truck")
    assert pair.join.invitation is None
    assert pair.show.answer is None
    assert pair.reports("a", "invitation") == pair.reports("b", "invitation") == []
    assert pair.sent("b")[-1] == PairingMessage(wire.DONE, {})


def test_a_wrong_code_learns_no_invitation(nodes: dict[str, Me]) -> None:
    code = new_code()
    wrong = code[:-1] + str((int(code[-1]) + 1) % 10)
    pair = run(nodes, "rover", typed=wrong)
    assert pair.join.state is State.FAILED
    assert pair.join.invitation is None
    assert not any(m.kind == wire.IDENTITY for m in pair.sent("a"))


def finishing(nodes: dict[str, Me]) -> tuple[ShowFlow, PeerRef]:
    """A shower that invites into rover, FINISHING: the joiner's CONFIRM verified, no DONE yet."""
    code = new_code()
    show = ShowFlow(nodes["a"], code, 0.0, invite="rover", linger=10)
    joiner = PeerRef("j", nodes["b"].node_id, "b")
    spake = Spake("A", code, nodes["b"].node_id, nodes["a"].node_id)
    out = show.receive(joiner, wire.encode(wire.Start(spake.message)), 0.0)
    reply = wire.parse(next(a.message for a in out if isinstance(a, Send)))
    assert isinstance(reply, wire.Reply)
    keys = spake.finish(reply.pake)
    box = keys.seal("A", wire.encode_sealed(wire.Sealed(nodes["b"].certificate, "b")))
    show.receive(joiner, wire.encode(wire.Confirm(keys.confirmation("A"), box)), 1.0)
    assert show.state is State.FINISHING
    return show, joiner


def test_a_lost_done_leaves_the_answer_unknown(nodes: dict[str, Me]) -> None:
    show, _ = finishing(nodes)
    show.handle_timer(11.0)
    assert show.state is State.PAIRED
    assert show.answer is None


@given(body=st.dictionaries(st.text(max_size=12), st.text(max_size=12) | st.integers(), max_size=3))
def test_garbage_from_a_trusted_joiner_while_finishing_is_ignored(
    nodes: dict[str, Me], body: Any
) -> None:
    show, joiner = finishing(nodes)
    for kind in (wire.CONFIRM, wire.START - 1, wire.DONE):
        show.receive(joiner, PairingMessage(kind, body), 2.0)
    assert show.state in (State.FINISHING, State.PAIRED)
    assert show.failures == 0


# ----------------------------------------------------------------- wire


def test_sealed_identity_with_and_without_invitation_round_trips() -> None:
    for sealed in (wire.Sealed(b"cert", "a"), wire.Sealed(b"cert", "a", "rover")):
        assert wire.decode_sealed(wire.encode_sealed(sealed)) == sealed
    assert b"supernode" not in wire.encode_sealed(wire.Sealed(b"cert", "a"))


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"cert": b"c", "name": "a", "supernode": "Rover"}, "supernode name"),
        ({"cert": b"c", "name": "a", "supernode": 7}, "supernode name"),
        ({"cert": b"c", "name": "a", "supernode": "x" * 64}, "supernode name"),
        ({"cert": b"c", "name": "a", "other": "x"}, "keys cert and name"),
    ],
)
def test_bad_invitations_in_a_box_are_remote_errors(item: dict[str, Any], message: str) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        wire.decode_sealed(cbor2.dumps(item))


def test_done_answers_parse_strictly() -> None:
    for answer in invite.ANSWERS:
        assert wire.parse(wire.encode(wire.Done(answer))) == wire.Done(answer)
    assert wire.parse(PairingMessage(wire.DONE, {})) == wire.Done()
    for body in ({"supernode": "maybe"}, {"supernode": 1}, {"supernode": "accepted", "x": 1}):
        with pytest.raises(RemoteProtocolError):
            wire.parse(PairingMessage(wire.DONE, body))


# ----------------------------------------------------------------- rules and sentences


def test_who_may_invite() -> None:
    invite.check_inviter("rover", "rover")
    with pytest.raises(
        NotMemberError, match=r"not a member of a supernode.*supernode create rover"
    ):
        invite.check_inviter("rover", None)
    with pytest.raises(NotMemberError, match='member of supernode "truck", not "rover"'):
        invite.check_inviter("rover", "truck")
    with pytest.raises(BadRequestError, match="not a supernode name"):
        invite.check_inviter("Rover!", "rover")


def test_answer_and_texts() -> None:
    assert invite.answer(True, None) == "accepted"
    assert invite.answer(True, "rover") == "member"
    assert invite.answer(False, "rover") == "declined"
    member = Invitation("rover", "member", "rover")
    assert invite.joiner_text("a", member).endswith("a member of it already")
    assert "does not join rover" in invite.shower_text("b", "rover", "member")
    assert member.as_dict() == {"name": "rover", "answer": "member", "memberOf": "rover"}


# ----------------------------------------------------------------- the service


async def test_the_service_checks_membership_before_showing(tmp_path: Path) -> None:
    identity = load_or_create_identity(tmp_path / "state", "a")
    store = Store(tmp_path / "state" / "agent.db")
    table = NeighbourTable(identity.node_id)
    mesh = cast(Mesh, object())  # show() only needs one to exist; nothing is sent here
    service = PairingService(identity, TrustStore(store), mesh, table, store)
    with pytest.raises(NotMemberError, match="not a member of a supernode"):
        await service.show("rover")
    service.supernode_name = lambda: "truck"
    with pytest.raises(NotMemberError, match='"truck", not "rover"'):
        await service.show("rover")
    assert service.status()["state"] == "none"  # nothing shown
    service.supernode_name = lambda: "rover"
    shown = await service.show("rover")
    assert shown["supernode"] == "rover"
    status = service.status()
    assert status["supernode"] == {"name": "rover", "answer": None}
    assert "inviting into supernode rover" in status["events"][0]["message"]
    plain = await service.show()
    assert plain["supernode"] is None
    assert service.status()["supernode"] is None
    await service.cancel()
