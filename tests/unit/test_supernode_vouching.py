"""Trust passed on by a supernode: member certificates in the replicated state, and the rule
that keeps the trust store in step with the committed members (no sockets, no Raft)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from agent.identity import Identity, load_or_create_identity
from agent.store import Store
from agent.trust import TrustStore
from supernode.state import Member, SupernodeState
from supernode.vouching import Vouching, certificates_of, pem, plan

ROVER = "supernode:rover"


@pytest.fixture
def ids(tmp_path: Path) -> dict[str, Identity]:
    return {n: load_or_create_identity(tmp_path / n, n) for n in ("a", "b", "c")}


@pytest.fixture
def trust(tmp_path: Path) -> TrustStore:
    return TrustStore(Store(tmp_path / "state" / "agent.db"))


def cert(identity: Identity) -> str:
    return identity.certificate.public_bytes(serialization.Encoding.PEM).decode()


def supernode(ids: dict[str, Identity], *names: str) -> SupernodeState:
    """rover created by a, then ``names`` added, each with its certificate."""
    state = SupernodeState()
    a = ids["a"]
    state.apply(
        {
            "op": "create",
            "name": "rover",
            "node_id": a.node_id,
            "member_name": "a",
            "certificate": cert(a),
            "at": 1.0,
        }
    )
    for name in names:
        node = ids[name]
        command = {"op": "member_add", "node_id": node.node_id, "name": name, "at": 2.0}
        assert state.apply({**command, "certificate": cert(node)})["ok"]
    return state


def test_members_carry_their_certificates_through_commands_and_snapshots(
    ids: dict[str, Identity],
) -> None:
    state = supernode(ids, "b")
    a, b = ids["a"].node_id, ids["b"].node_id
    assert state.members[a].certificate == cert(ids["a"])
    assert state.members[b].certificate == cert(ids["b"])
    # a known member added again keeps its certificate unless a new one is given
    state.apply({"op": "member_add", "node_id": b, "name": "b2", "at": 3.0})
    assert (state.members[b].name, state.members[b].certificate) == ("b2", cert(ids["b"]))
    assert SupernodeState.from_json(state.to_json()) == state
    # a state from before certificates loads, with "" for each
    old = SupernodeState()
    old.apply({"op": "create", "name": "rover", "node_id": a, "member_name": "a", "at": 1.0})
    assert SupernodeState.from_json(old.to_json()).members[a].certificate == ""


def test_member_cert_fills_in_a_certificate_and_garbage_is_refused(
    ids: dict[str, Identity],
) -> None:
    state = SupernodeState()
    a = ids["a"].node_id
    state.apply({"op": "create", "name": "rover", "node_id": a, "member_name": "a", "at": 1.0})
    assert state.apply({"op": "member_cert", "node_id": a, "certificate": cert(ids["a"])}) == {
        "ok": True
    }
    assert state.members[a].certificate == cert(ids["a"])
    before = state.to_json()
    for bad in ("", "not pem", 7):
        result = state.apply({"op": "member_cert", "node_id": a, "certificate": bad})
        assert result["error"] == "invalid"
    missing = {"op": "member_cert", "node_id": "Z", "certificate": cert(ids["b"])}
    assert state.apply(missing)["error"] == "not_found"
    add = {"op": "member_add", "node_id": "Z", "name": "z", "at": 1.0, "certificate": "junk"}
    assert state.apply(add)["error"] == "invalid"
    after = json.loads(state.to_json())
    assert {**after, "applied": 0} == {**json.loads(before), "applied": 0}


def test_plan_vouches_for_members_and_withdraws_who_is_out_of_members_and_raft(
    ids: dict[str, Identity], trust: TrustStore
) -> None:
    a, b, c = (ids[n].node_id for n in ("a", "b", "c"))
    state = supernode(ids, "b", "c")
    changes = plan(b, ROVER, state.members, {a, b, c}, trust.peers())
    assert [m.node_id for m in changes.vouch] == sorted([a, c])
    assert changes.withdraw == ()

    for member in changes.vouch:
        trust.vouch(member.certificate.encode(), node_id=member.node_id, source=ROVER)
    assert plan(b, ROVER, state.members, {a, b, c}, trust.peers()).withdraw == ()

    # c left: out of the members, but still in the Raft configuration until a member takes
    # it out (it has to ask one): still trusted; then out of both: withdrawn
    state.apply({"op": "member_remove", "node_id": c})
    assert plan(b, ROVER, state.members, {a, b, c}, trust.peers()).withdraw == ()
    assert plan(b, ROVER, state.members, {a, b}, trust.peers()).withdraw == (c,)
    # a member without a certificate is not vouched for; this node never is
    no_cert = {a: Member(a, "a", 1.0)}
    assert plan(b, ROVER, no_cert, {a, b}, []).vouch == ()
    assert plan(a, ROVER, state.members, {a, b}, []).vouch == (state.members[b],)


def test_vouching_trusts_members_keeps_a_persons_trust_and_withdraws_on_leave(
    ids: dict[str, Identity], trust: TrustStore
) -> None:
    a, b, c = (ids[n].node_id for n in ("a", "b", "c"))
    trust.add(cert(ids["a"]).encode(), source="pairing")  # c paired with a only
    vouching = Vouching(trust, c, "rover")
    state = supernode(ids, "b", "c")
    vouching.sync(state.members, {a, b, c})
    assert trust.get(b).source == ROVER  # type: ignore[union-attr]
    assert trust.get(a).source == "pairing"  # type: ignore[union-attr]
    assert trust.get(c) is None  # never itself

    state.apply({"op": "member_remove", "node_id": b})
    vouching.sync(state.members, {a, c})
    assert trust.get(b) is None
    trust.vouch(cert(ids["b"]).encode(), node_id=b, source=ROVER)
    vouching.withdraw_all()  # c left the supernode
    assert [p.node_id for p in trust.peers()] == [a]


def test_a_revoked_member_is_not_trusted_again_and_it_is_said_once(
    ids: dict[str, Identity], trust: TrustStore, caplog: pytest.LogCaptureFixture
) -> None:
    a, b, c = (ids[n].node_id for n in ("a", "b", "c"))
    trust.add(cert(ids["c"]).encode(), source="pairing")
    trust.revoke(c)  # unpaired here
    vouching = Vouching(trust, b, "rover")
    state = supernode(ids, "b", "c")
    with caplog.at_level(logging.DEBUG, logger="supernode.vouching"):
        vouching.sync(state.members, {a, b, c})
        state.apply({"op": "member_add", "node_id": c, "name": "c2", "at": 4.0})
        vouching.sync(state.members, {a, b, c})
    assert trust.get(c).state == "revoked"  # type: ignore[union-attr]
    assert trust.get(a).source == ROVER  # type: ignore[union-attr]
    refusals = [r for r in caplog.records if "it is revoked here" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.WARNING, logging.DEBUG]


def test_the_joiner_trusts_the_certificates_in_the_join_answer(
    ids: dict[str, Identity], trust: TrustStore
) -> None:
    a, b, c = (ids[n].node_id for n in ("a", "b", "c"))
    state = supernode(ids, "b")
    answer = {
        "name": "rover",
        "members": [a, b, c],
        "certificates": [
            *certificates_of(state.members.values()),
            {"nodeID": c, "name": "c", "certificate": cert(ids["c"])},  # itself: skipped
            {"nodeID": b, "certificate": cert(ids["a"])},  # not b's: refused
            "garbage",
            {"nodeID": 5},
        ],
    }
    vouching = Vouching(trust, c, "rover")
    assert vouching.take_answer(answer) == 2
    assert {p.node_id for p in trust.trusted()} == {a, b}
    assert vouching.take_answer(None) == 0


def test_pem_matches_the_identity_certificate(ids: dict[str, Identity]) -> None:
    der = ids["a"].certificate.public_bytes(serialization.Encoding.DER)
    assert pem(der) == cert(ids["a"])
