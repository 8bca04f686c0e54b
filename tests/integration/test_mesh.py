"""Multi-node scenarios: real agents, each in its own network namespace of the test bed.

Every agent runs ``florete-agent run`` inside its namespace with ``FLORETE_INTERFACES`` naming
the bed's interfaces only, mDNS on, the UDP link on port 4737; tests drive them through the real
CLI (``neighbours``, ``links``, ``peers``, ``ping``). Trust is given out of band with
``peers export`` / ``peers add``, as an operator would (pairing will do the same).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CLI, Agent, neighbours, trust
from tests.integration.conftest import start_in_bed as start
from tests.netbed import NetBed, netbed_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(netbed_available() is not None, reason=str(netbed_available())),
]

MakeAgent = Callable[..., Agent]


def links(agent: Agent) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(agent.cli("links", "-o", "json").stdout)["items"]
    return items


def sees(agent: Agent, names: set[str]) -> Callable[[], bool]:
    """A predicate: ``agent``'s table holds every neighbour in ``names``."""
    return lambda: names <= set(neighbours(agent))


def wait_state(agent: Agent, name: str, state: str, timeout: float = 20.0) -> float:
    """Wait until ``agent`` shows neighbour ``name`` in ``state``; returns the seconds taken."""
    started = time.monotonic()
    agent.wait_for(
        f"neighbour {name} {state}",
        lambda: neighbours(agent).get(name, {}).get("state") == state,
        timeout,
    )
    return time.monotonic() - started


def test_three_nodes_discover_pair_talk_and_detect_death(
    bed: NetBed, make_agent: MakeAgent
) -> None:
    a, b, c = (start(make_agent, bed, n) for n in ("a", "b", "c"))
    for agent, others in ((a, {"b", "c"}), (b, {"a", "c"}), (c, {"a", "b"})):
        agent.wait_for("two neighbours", sees(agent, others))
    seen = neighbours(a)["b"]
    assert seen["trust"] == "untrusted"
    assert seen["state"] == "discovered"
    assert {"host": bed.nodes["b"].ip, "port": 4737, "interface": "eth0"} in seen["addresses"][
        "udp/eth0"
    ]

    trust(a, b)
    trust(b, a)
    wait_state(a, "b", "up")
    wait_state(b, "a", "up")
    reply = a.cli("ping", "b", "-c", "2", "-i", "0.1").stdout
    assert reply.count("reply from b") == 2
    assert "via udp/eth0" in reply
    established = [k for k in links(a) if k["state"] == "established"]
    assert [(k["peerName"], k["name"], k["up"]) for k in established] == [("b", "udp/eth0", True)]
    assert neighbours(a)["b"]["trust"] == "trusted"

    # c trusts a, but a does not trust c: c gets no session, only a refusal.
    trust(c, a)
    time.sleep(2)
    failed = c.cli("ping", "a", check=False)
    assert failed.returncode == 1
    assert "no session" in failed.stderr
    assert neighbours(a)["c"]["state"] == "discovered"
    assert all(
        k["nodeID"] != neighbours(a)["c"]["nodeID"] or k["state"] != "established" for k in links(a)
    )

    # b dies without a goodbye: a sees it down from keepalives within dead_interval (3 s).
    assert b.process is not None
    b.process.kill()
    b.process.wait()
    died = time.monotonic()
    a.wait_for("b down", lambda: neighbours(a)["b"]["state"] == "down", 15)
    detected = time.monotonic() - died
    sys.stdout.write(f"\nmesh: death without goodbye detected in {detected:.2f} s\n")
    assert neighbours(a)["b"]["links"]["udp/eth0"]["reason"] == "keepalive timeout"
    assert detected < 8  # goal 3 s (dead_interval); CLI polling and a loaded machine add some

    # b comes back: the session is opened again (the ARQ sees a restarted peer).
    b.start()
    wait_state(a, "b", "up", timeout=30)
    assert "reply from b" in a.cli("ping", "b").stdout

    # a goodbye is seen at once.
    b.stop()
    assert wait_state(a, "b", "gone", timeout=10) < 3


def test_link_cut_and_restored_keeps_the_session_and_two_links_fail_over(
    bed: NetBed, make_agent: MakeAgent
) -> None:
    na, nb = bed.add_node("a"), bed.add_node("b")
    bed.add_direct_link(na, nb)
    env = {"FLORETE_INTERFACES": "eth0,eth1"}
    a, b = start(make_agent, bed, "a", env), start(make_agent, bed, "b", env)
    a.wait_for("b discovered", lambda: "b" in neighbours(a))
    b.wait_for("a discovered", lambda: "a" in neighbours(b))
    trust(a, b)
    trust(b, a)

    def up_links() -> set[str]:
        return {k["name"] for k in links(a) if k["state"] == "established" and k["up"]}

    a.wait_for("two links up", lambda: up_links() == {"udp/eth0", "udp/eth1"}, 30)
    sessions = {k["name"]: k["sessions"] for k in links(a) if k["state"] == "established"}

    bed.cut(nb, "eth0")
    a.wait_for("eth0 down", lambda: up_links() == {"udp/eth1"}, 15)
    assert "via udp/eth1" in a.cli("ping", "b").stdout
    assert neighbours(a)["b"]["state"] == "up"

    bed.restore(nb, "eth0")
    a.wait_for("eth0 back", lambda: up_links() == {"udp/eth0", "udp/eth1"}, 15)
    after = {k["name"]: k["sessions"] for k in links(a) if k["state"] == "established"}
    assert after == sessions  # the TLS sessions survived the cut: none was opened again

    bed.cut(nb, "eth1")
    a.wait_for("eth1 down", lambda: up_links() == {"udp/eth0"}, 15)
    assert "via udp/eth0" in a.cli("ping", "b").stdout


def test_radio_and_udp_neighbours_share_one_table(bed: NetBed, make_agent: MakeAgent) -> None:
    link_dir = Path(tempfile.mkdtemp(prefix="flradio-"))
    with (link_dir / "sim.log").open("wb") as sim_log:
        sim = subprocess.Popen(
            [*CLI, "radio-sim", "--baud", "115200", "--link-dir", str(link_dir)],
            stdout=sim_log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while not (link_dir / "b").exists():
            assert time.monotonic() < deadline, "radio-sim did not create its ptys"
            time.sleep(0.05)
        configs = {}
        for side in ("a", "b"):
            path = link_dir / f"{side}.toml"
            path.write_text(
                f'[[links.serial_radios]]\nport = "{link_dir / side}"\nbaudrate = 115200\n'
            )
            configs[side] = str(path)
        a = start(make_agent, bed, "a", {"FLORETE_CONFIG": configs["a"]})
        b = start(
            make_agent,
            bed,
            "b",
            {"FLORETE_CONFIG": configs["b"], "FLORETE_INTERFACES": "lo", "FLORETE_MDNS": "off"},
        )
        c = start(make_agent, bed, "c")
        for x, y in ((a, b), (b, a), (a, c), (c, a)):
            trust(x, y)
        wait_state(a, "b", "up", timeout=30)
        wait_state(a, "c", "up", timeout=30)
        table = neighbours(a)
        radio = f"serial_radio:{link_dir / 'a'}"
        assert table["b"]["links"][radio]["up"]
        assert table["b"]["links"][radio]["source"] == "session"
        assert table["b"]["links"][radio]["announced"]  # b's radio beacons reached a
        assert table["c"]["links"]["udp/eth0"]["up"]
        assert "via " + radio in a.cli("ping", "b").stdout
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        shutil.rmtree(link_dir, ignore_errors=True)


def test_wifi_link_without_a_radio_carries_sessions_over_its_udp_path(
    bed: NetBed, make_agent: MakeAgent
) -> None:
    agents = []
    for name in ("a", "b"):
        bed.add_node(name)
        config = Path(tempfile.mkdtemp(prefix="flwifi-")) / "agent.toml"
        config.write_text('[[links.wifi]]\ninterface = "eth0"\n')
        agents.append(start(make_agent, bed, name, {"FLORETE_CONFIG": str(config)}))
    a, b = agents
    a.wait_for("b discovered", lambda: "b" in neighbours(a))
    trust(a, b)
    trust(b, a)
    wait_state(a, "b", "up")
    assert "via wifi/eth0" in a.cli("ping", "b").stdout
    established = [k for k in links(a) if k["state"] == "established"]
    assert [k["name"] for k in established] == ["wifi/eth0"]
    assert established[0]["radio"] is None  # no nl80211 station behind a veth
    assert "wifi/eth0" in neighbours(a)["b"]["links"]
    unavailable = [line for line in a.log().splitlines() if "radio not watched" in line]
    assert unavailable  # no nl80211 radio behind a veth: said once, and the agent went on
    assert "/sys/class/net/eth0/phy80211" in unavailable[0]
