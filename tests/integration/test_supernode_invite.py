"""An invitation into a supernode through pairing, end to end: real agents in network namespaces
of the test bed, driven by the real CLI on both sides.

``pair --supernode S`` on a member shows a code that also invites; ``pair CODE`` on the other
device pairs and then joins S through the ordinary join. Covered: the invitation accepted (both
are paired and members: ``supernode status`` on each lists both), the showing side's refusals
(not a member, another supernode, a misplaced flag), a joiner that is a member of another
supernode, one that declines (``--no-supernode``), and an invitation into a supernode the
inviter left meanwhile (the join fails with the join's own message). In every error case the
pairing itself stands: both sides trust each other.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.integration.conftest import Agent
from tests.integration.conftest import start_in_bed as start
from tests.integration.test_pairing import Shower, peers, wait_seen
from tests.netbed import NetBed, netbed_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(netbed_available() is not None, reason=str(netbed_available())),
]

MakeAgent = Callable[..., Agent]


@pytest.fixture
def showers() -> Iterator[list[Shower]]:
    started: list[Shower] = []
    yield started
    for shower in started:
        shower.kill()


def members(agent: Agent) -> dict[str, str]:
    """``supernode status -o json``: the supernode's name for every member name."""
    obj: dict[str, Any] = json.loads(agent.cli("supernode", "status", "-o", "json").stdout)
    return {m["name"]: obj["metadata"]["name"] for m in obj["status"]["members"]}


def not_member(agent: Agent) -> bool:
    result = agent.cli("supernode", "status", check=False)
    return result.returncode == 1 and "not a member of a supernode" in result.stderr


def trusted_both_ways(x: Agent, x_name: str, y: Agent, y_name: str) -> None:
    assert peers(x)[y_name]["status"]["state"] == "trusted"
    assert peers(y)[x_name]["status"]["state"] == "trusted"


def test_pair_with_invitation_makes_a_paired_member(
    bed: NetBed, make_agent: MakeAgent, showers: list[Shower]
) -> None:
    a, b = start(make_agent, bed, "a"), start(make_agent, bed, "b")
    refused = a.cli("pair", "--supernode", "rover", check=False)
    assert refused.returncode == 1
    assert "not showing a code: this node is not a member of a supernode" in refused.stderr
    assert "supernode create rover" in refused.stderr
    assert "created" in a.cli("supernode", "create", "rover").stdout
    other = a.cli("pair", "--supernode", "truck", check=False)
    assert other.returncode == 1
    assert 'this node is a member of supernode "rover", not "truck"' in other.stderr
    misplaced = b.cli("pair", "1234-5670", "--supernode", "rover", check=False)
    assert misplaced.returncode == 2
    assert "--supernode goes with `pair` alone" in misplaced.stderr

    wait_seen(b, "a")
    shower = Shower(a, "--no-qr", "--supernode", "rover")
    showers.append(shower)
    shower.expect(r"It then joins supernode rover \(or pairs only: .* --no-supernode\)")
    started = time.monotonic()
    joined = b.cli("pair", shower.code)
    took = time.monotonic() - started
    sys.stdout.write(f"\ninvitation: paired and joined in {took:.2f} s (CLI, pairing, join)\n")
    assert "Paired with a (" in joined.stdout
    assert "a invites this node into supernode rover" in joined.stdout
    assert "joined supernode/rover (members: a, b)" in joined.stdout, joined.stdout
    code, output = shower.wait()
    assert code == 0, output
    assert "Paired with b (" in output
    assert "b accepted the invitation into supernode rover; waiting for it to join" in output
    assert "b joined supernode/rover (members: a, b)" in output

    trusted_both_ways(a, "a", b, "b")
    for agent in (a, b):
        assert members(agent) == {"a": "rover", "b": "rover"}
        text = agent.cli("supernode", "status").stdout
        assert "Supernode:   rover (2 members" in text
    assert "reply from a" in b.cli("ping", "a").stdout


def test_a_member_of_another_supernode_and_a_decline_stay_paired_only(
    bed: NetBed, make_agent: MakeAgent, showers: list[Shower]
) -> None:
    a, b, c = (start(make_agent, bed, n) for n in ("a", "b", "c"))
    a.cli("supernode", "create", "rover")
    b.cli("supernode", "create", "truck")
    wait_seen(b, "a")
    wait_seen(c, "a")

    # b is a member of truck: it pairs, answers "member", and does not join rover.
    shower = Shower(a, "--no-qr", "--supernode", "rover")
    showers.append(shower)
    result = b.cli("pair", shower.code, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Paired with a (" in result.stdout
    assert "a invites this node into supernode rover" in result.stdout
    assert "not joining supernode rover: this node is a member of supernode truck" in (
        result.stderr
    )
    code, output = shower.wait()
    assert code == 1, output
    assert "Paired with b (" in output
    assert "b is a member of another supernode: it does not join rover" in output
    trusted_both_ways(a, "a", b, "b")
    assert members(a) == {"a": "rover"}
    assert members(b) == {"b": "truck"}

    # c declines: paired only, and the shower says so at once.
    shower = Shower(a, "--no-qr", "--supernode", "rover")
    showers.append(shower)
    result = c.cli("pair", shower.code, "--no-supernode")
    assert "Paired with a (" in result.stdout
    assert "Not joining it (--no-supernode): `florete-agent supernode join rover`" in (
        result.stdout
    )
    code, output = shower.wait()
    assert code == 0, output
    assert "c declined the invitation into supernode rover: paired only" in output
    assert "waiting" not in output
    trusted_both_ways(a, "a", c, "c")
    assert not_member(c)
    assert members(a) == {"a": "rover"}


def test_an_invitation_into_a_supernode_left_meanwhile_fails_to_join_but_pairs(
    bed: NetBed, make_agent: MakeAgent, showers: list[Shower]
) -> None:
    a, d = start(make_agent, bed, "a"), start(make_agent, bed, "d")
    a.cli("supernode", "create", "rover")
    wait_seen(d, "a")
    shower = Shower(a, "--no-qr", "--supernode", "rover")
    showers.append(shower)
    assert "left the supernode" in a.cli("supernode", "leave").stdout  # the last: dissolved

    result = d.cli("pair", shower.code, check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Paired with a (" in result.stdout
    assert "Joining supernode rover..." in result.stdout
    assert 'not joined supernode rover: no neighbour is a member of supernode "rover"' in (
        result.stderr
    )
    assert "still paired with a; `florete-agent supernode join rover` tries again" in (
        result.stderr
    )
    code, output = shower.wait()
    assert code == 1, output
    assert "not a member of supernode rover any more, so d cannot join it here" in output
    trusted_both_ways(a, "a", d, "d")
    assert not_member(d)
    assert "reply from a" in d.cli("ping", "a").stdout
