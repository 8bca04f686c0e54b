"""Trust passed on by a supernode: a board that trusts one member only becomes a full member.

Three agents in network namespaces of the test bed: a and b trust each other and form supernode
rover; c trusts (and is trusted by) a only, then runs ``supernode join rover``. The supernode's
replicated state carries each member's certificate, so b and c come to trust each other (source
``supernode:rover``) and their Raft traffic flows: every member lists three healthy members, a
pod pinned to c runs there, and with a killed (kill -9 of the whole board) b and c still form a
majority that places and runs pods. When c leaves, the trust that came from the supernode is
withdrawn, and the trust a gave by hand stays.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.conftest import Agent
from tests.integration.test_supernode import (
    GROUP,
    WATCHED,
    all_up,
    board_dies,
    leader,
    pod_yaml,
    rejoined,
    request,
    say,
    sees,
    start,
    status,
    wait,
    where,
)
from tests.netbed import NetBed, netbed_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(netbed_available() is not None, reason=str(netbed_available())),
]

MakeAgent = Callable[..., Agent]


def peers(agent: Agent) -> dict[str, dict[str, Any]]:
    """``peers -o json`` items by peer name: ``{"state", "source", ...}``."""
    items = json.loads(agent.cli("peers", "-o", "json").stdout)["items"]
    return {p["spec"]["name"]: p["status"] for p in items}


def trust_both(x: Agent, y: Agent) -> None:
    """x and y trust each other by hand (``peers export`` / ``peers add``)."""
    for one, other in ((x, y), (y, x)):
        pem = request(other, "GET", f"{GROUP}/certificate")["certificate"]
        request(one, "POST", f"{GROUP}/peers", {"certificate": pem})


@pytest.mark.timeout(300)
@pytest.mark.parametrize("creator", ["a", "b"])
def test_a_board_trusting_one_member_becomes_a_working_member(
    bed: NetBed, make_agent: MakeAgent, creator: str
) -> None:
    """``creator`` creates rover and leads it when c joins: with b, the leader is a member
    c never met, which must replicate to c; with a, a's death forces an election of b or c."""
    agents = {n: start(make_agent, bed, n) for n in ("a", "b", "c")}
    WATCHED[:] = agents.values()
    a, b, c = agents["a"], agents["b"], agents["c"]
    trust_both(a, b)
    trust_both(a, c)
    a.wait_for("sessions to b and c", functools.partial(sees, a, {"b", "c"}), 60)
    first, second = (a, b) if creator == "a" else (b, a)
    assert "created" in first.cli("supernode", "create", "rover").stdout
    assert "joined supernode/rover" in second.cli("supernode", "join", "rover").stdout
    assert leader(a) == creator
    assert "c" not in peers(b)
    assert "b" not in peers(c)

    joined = c.cli("supernode", "join", "rover")
    assert "joined supernode/rover (members: a, b, c)" in joined.stdout, joined.stdout
    for agent in agents.values():
        agent.wait_for("three members up", functools.partial(all_up, agent, 3), 60)
    b.wait_for("a session to c", functools.partial(sees, b, {"c"}), 30)
    assert peers(b)["c"]["state"] == "trusted"
    assert peers(b)["c"]["source"] == "supernode:rover"
    assert peers(c)["b"]["source"] == "supernode:rover"
    assert peers(a)["c"]["source"] == "manual"  # trust given by hand is never replaced
    assert "3 members, 3 up" in b.cli("supernode", "status").stdout
    listed = b.cli("peers").stdout
    assert "supernode:rover" in listed

    # a pod pinned to c runs on c, applied through b (which c never met before)
    b.apply(pod_yaml(1, "  nodeName: c\n"))
    wait("p1 on c", lambda: where(bed, ["a", "b", "c"]).get(1) == ["c"], 30)

    # a dies: b and c are a majority of three and keep working
    board_dies(a)
    wait("a leader among b and c", lambda: leader(b) in ("b", "c"), 30)
    c.apply(pod_yaml(2))
    wait("p2 placed on b or c", lambda: len(where(bed, ["b", "c"]).get(2, [])) == 1, 30)
    assert where(bed, ["b", "c"])[1] == ["c"]
    say(f"a killed: {leader(b)} leads b and c, p2 runs on {where(bed, ['b', 'c'])[2][0]}")

    # a comes back; c leaves: the supernode's trust in c goes, the trust by hand stays
    a.start()
    a.wait_for("a back in", lambda: rejoined(a, 3), 60)
    assert "left" in c.cli("supernode", "leave").stdout
    b.wait_for("c gone from b's peers", lambda: "c" not in peers(b), 30)
    wait("c's trust in b withdrawn", lambda: "b" not in peers(c), 30)
    assert peers(a)["c"] == {**peers(a)["c"], "state": "trusted", "source": "manual"}
    assert peers(c)["a"]["state"] == "trusted"
    assert {m["name"] for m in status(a)["members"]} == {"a", "b"}
