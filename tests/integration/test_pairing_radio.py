"""Pairing over a serial radio link alone: two real agents, no network between them.

Each agent runs in a network namespace of its own with no interface up (not even ``lo``) and
mDNS off, so the only way between them is a serial radio link: the radio channel emulator
(``florete-agent radio-sim``) between two pty pairs, one end configured on each agent as
``[[links.serial_radios]]``. ``florete-agent pair`` shows a code on one; ``florete-agent pair
CODE`` on the other finds it through its radio beacons (no mDNS: the untrusted radio neighbour
is the candidate), both trust each other, and ``ping`` answers over the radio link.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import CLI, Agent, neighbours
from tests.integration.test_pairing import Shower, peers

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare (util-linux)"),
]

MakeAgent = Callable[..., Agent]
BAUD = 9600  # an HC-12 or a SiK radio at its serial default


@pytest.fixture
def radio() -> Iterator[Path]:
    """``radio-sim`` between two pty pairs; yields the directory with links ``a`` and ``b``."""
    link_dir = Path(tempfile.mkdtemp(prefix="flradio-"))
    with (link_dir / "sim.log").open("wb") as sim_log:
        sim = subprocess.Popen(
            [*CLI, "radio-sim", "--baud", str(BAUD), "--link-dir", str(link_dir)],
            stdout=sim_log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while not ((link_dir / "a").exists() and (link_dir / "b").exists()):
            assert sim.poll() is None, (link_dir / "sim.log").read_text()
            assert time.monotonic() < deadline, "radio-sim did not create its ptys"
            time.sleep(0.05)
        yield link_dir
    finally:
        sim.terminate()
        sim.wait(timeout=10)
        shutil.rmtree(link_dir, ignore_errors=True)


def radio_agent(make_agent: MakeAgent, link_dir: Path, side: str) -> Agent:
    """An agent named ``side`` on its end of the radio, alone in an empty network namespace."""
    config = link_dir / f"{side}.toml"
    config.write_text(f'[[links.serial_radios]]\nport = "{link_dir / side}"\nbaudrate = {BAUD}\n')
    agent = make_agent(
        {"FLORETE_CONFIG": str(config), "FLORETE_NODE_NAME": side, "FLORETE_MDNS": "off"},
        start=False,
    )
    agent.start(offline=True)
    return agent


def status(agent: Agent) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(agent.cli("status", "-o", "json").stdout)["status"]
    return result


def test_code_pairing_over_a_radio_link_alone_then_ping_over_it(
    make_agent: MakeAgent, radio: Path
) -> None:
    a = radio_agent(make_agent, radio, "a")
    b = radio_agent(make_agent, radio, "b")
    b.wait_for("a heard over the radio", lambda: "a" in neighbours(b), 30)
    seen = neighbours(b)["a"]
    assert list(seen["links"]) == [f"serial_radio:{radio / 'b'}"]  # nothing but the radio

    shower = Shower(a)
    try:
        shower.expect("On the other device run")
        started = time.monotonic()
        joined = b.cli("pair", shower.code, timeout=90)
        took = time.monotonic() - started
        code, output = shower.wait(timeout=60)
    finally:
        shower.kill()
    print(f"\nradio pairing: joined in {took:.2f} s at {BAUD} baud")  # noqa: T201
    a_id, b_id = status(a)["nodeID"], status(b)["nodeID"]
    assert f"Paired with a ({a_id})" in joined.stdout
    assert code == 0, output
    assert f"Paired with b ({b_id})" in output
    assert peers(a)["b"]["status"]["state"] == "trusted"
    assert peers(b)["a"]["status"]["state"] == "trusted"
    assert peers(b)["a"]["status"]["source"] == "pairing"

    radio_link = f"serial_radio:{radio / 'b'}"
    b.wait_for(
        "an authenticated session to a over the radio",
        lambda: neighbours(b)["a"]["state"] == "up",
        60,
    )
    pong = b.cli("ping", "a", timeout=60)
    assert f"via {radio_link}" in pong.stdout, pong.stdout
    assert f"via serial_radio:{radio / 'a'}" in a.cli("ping", "b", timeout=60).stdout
