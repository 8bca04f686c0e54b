"""The network test bed itself: reachability, impairments and cleanup."""

from __future__ import annotations

import subprocess

import pytest

from tests.netbed import NetBed, netbed_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(netbed_available() is not None, reason=str(netbed_available())),
]


def _ping(node_argv: list[str], count: int = 1, interval: str = "0.2") -> int:
    """Number of ping replies received."""
    out = subprocess.run(
        [*node_argv, "-c", str(count), "-i", interval, "-W", "1", "-q"],
        capture_output=True,
        text=True,
    ).stdout
    return int(out.split(" received")[0].rsplit(" ", 1)[1])


def test_nodes_reach_each_other_and_impairments_apply() -> None:
    with NetBed() as bed:
        a, b = bed.add_node("a"), bed.add_node("b")
        assert _ping(a.argv(["ping", b.ip])) == 1
        a.link_local()  # both ends past duplicate address detection
        b6 = b.link_local()
        assert _ping(a.argv(["ping", "-6", f"{b6}%eth0"]), count=3) >= 1
        bed.cut(b)
        assert _ping(a.argv(["ping", b.ip])) == 0
        bed.restore(b)
        assert _ping(a.argv(["ping", b.ip])) == 1
        bed.set_loss(b, 50)
        received = _ping(a.argv(["ping", b.ip]), count=40, interval="0.01")
        assert 2 <= received <= 30  # each way 50 %: about a quarter of 40 get through
        bed.set_loss(b, 0)
        ifname, _ = bed.add_direct_link(a, b)
        assert _ping(a.argv(["ping", "-I", ifname, "10.99.1.2"])) == 1
        namespaces = [n.ns for n in bed.nodes.values()] + [bed.hub]
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not any(ns in listed for ns in namespaces)
