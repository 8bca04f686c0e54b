"""Pairing end to end: real agents in network namespaces of the test bed, driven by the real CLI.

``florete-agent pair`` (the shower) runs in the background and prints its code; the other node
runs ``florete-agent pair CODE``. Covered: the right code (then sessions come up and ``ping``
works), a wrong code (both sides say so), rate limiting and the burn after three failures, a
code reused, a third party trying a used code, an expired code, and ``unpair`` closing live
sessions on both sides.
"""

from __future__ import annotations

import json
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from agent.pairing.code import damm_check_digit, format_code
from tests.integration.conftest import CLI, Agent, neighbours
from tests.integration.conftest import start_in_bed as start
from tests.netbed import NetBed, netbed_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(netbed_available() is not None, reason=str(netbed_available())),
]

MakeAgent = Callable[..., Agent]


def _ctrl_c_as_in_a_terminal() -> None:
    """SIGINT to its default, whatever the test runner inherited: a job started in the
    background by a shell without job control ignores SIGINT, and so would its children."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Shower:
    """``florete-agent pair`` running in the background; its output read line by line."""

    def __init__(self, agent: Agent, *args: str) -> None:
        self.agent = agent
        self.process = subprocess.Popen(
            [*CLI, "pair", *args],
            env=agent.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            preexec_fn=_ctrl_c_as_in_a_terminal,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.code = self.expect(r"Pairing code: (\d{4}-\d{4})").group(1)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def expect(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait for a line of output matching ``pattern``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(
                    f"no line matching {pattern!r} within {timeout} s; output so far:\n"
                    + "".join(self.output)
                    + f"\n--- agent log ---\n{self.agent.log()[-3000:]}"
                ) from None
            self.output.append(line)
            match = re.search(pattern, line)
            if match:
                return match

    def wait(self, timeout: float = 60.0) -> tuple[int, str]:
        """Wait for the command to end; returns its exit code and all its output."""
        code = self.process.wait(timeout=timeout)
        self._close()
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return code, "".join(self.output)

    def _close(self) -> None:
        self._reader.join(timeout=10)
        assert self.process.stdout is not None
        self.process.stdout.close()

    def kill(self) -> None:
        """End the command (if it still runs) and close its output."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._close()


@pytest.fixture
def showers() -> Iterator[list[Shower]]:
    started: list[Shower] = []
    yield started
    for shower in started:
        shower.kill()


def peers(agent: Agent) -> dict[str, dict[str, Any]]:
    items = json.loads(agent.cli("peers", "-o", "json").stdout)["items"]
    return {p["spec"]["name"]: p for p in items}


def fingerprint(agent: Agent) -> str:
    status = json.loads(agent.cli("status", "-o", "json").stdout)["status"]
    digits = status["certificateSHA256"].replace(":", "").upper()
    return ":".join(digits[i : i + 2] for i in range(0, len(digits), 2))


def wait_seen(agent: Agent, name: str) -> None:
    agent.wait_for(f"{name} discovered", lambda: name in neighbours(agent), 30)


def wrong(code: str) -> str:
    """Another valid code (right check digit), so the attempt reaches the shower."""
    digits = code.replace("-", "")
    body = f"{(int(digits[:7]) + 1) % 10**7:07d}"
    return format_code(body + damm_check_digit(body))


def test_right_code_pairs_both_sides_then_reuse_third_party_and_unpair(
    bed: NetBed, make_agent: MakeAgent, showers: list[Shower]
) -> None:
    a, b, c = (start(make_agent, bed, n) for n in ("a", "b", "c"))
    wait_seen(b, "a")
    wait_seen(c, "a")
    shower = Shower(a)
    showers.append(shower)
    shower.expect("On the other device run")
    started = time.monotonic()
    joined = b.cli("pair", shower.code)
    took = time.monotonic() - started
    sys.stdout.write(f"\npairing: joined in {took:.2f} s (CLI, discovery, SPAKE2, exchange)\n")
    assert (
        f"Paired with a ({json.loads(a.cli('status', '-o', 'json').stdout)['status']['nodeID']})"
        in joined.stdout
    )
    assert f"Fingerprint: {fingerprint(a)}" in joined.stdout
    code, output = shower.wait()
    assert code == 0, output
    assert "Paired with b" in output
    assert f"Fingerprint: {fingerprint(b)}" in output
    assert re.search(r"b \(\w+\) is trying the code", output)

    for x, y in ((a, "b"), (b, "a")):
        entry = peers(x)[y]
        assert entry["status"]["state"] == "trusted"
        assert entry["status"]["source"] == "pairing"
        assert entry["status"]["addresses"] == [f"udp://{bed.nodes[y].ip}:4737"]
    a.wait_for("b up", lambda: neighbours(a).get("b", {}).get("state") == "up", 30)
    assert "reply from b" in a.cli("ping", "b").stdout
    assert "reply from a" in b.cli("ping", "a").stdout
    b.wait_for(
        "a's pair flag off",
        lambda: neighbours(b)["a"]["capabilities"].get("pair", "").startswith("0."),
        10,
    )

    # The code was used: c (a third party that saw it) is refused, with or without naming a.
    reused = c.cli("pair", shower.code, "--peer", "a", check=False)
    assert reused.returncode == 1
    assert "was already used" in reused.stderr
    unnamed = c.cli("pair", shower.code, check=False)
    assert unnamed.returncode == 1
    assert "no neighbour shows a pairing code" in unnamed.stderr
    assert "c" not in peers(a)
    assert neighbours(a)["c"]["trust"] == "untrusted"

    # Unpair: b is told, revokes a too; the sessions close at once on both sides.
    before = time.monotonic()
    out = a.cli("unpair", "b").stdout
    assert "unpaired: told the peer" in out
    b.wait_for("a not up on b", lambda: neighbours(b)["a"]["state"] != "up", 10)
    a.wait_for("b not up on a", lambda: neighbours(a)["b"]["state"] != "up", 10)
    closed = time.monotonic() - before
    sys.stdout.write(f"pairing: unpair closed both sides' sessions in {closed:.2f} s\n")
    assert peers(a)["b"]["status"]["state"] == "revoked"
    assert peers(b)["a"]["status"]["state"] == "revoked"
    assert b.cli("ping", "a", check=False).returncode == 1

    # Pairing again re-trusts both sides and keeps one row and one address per peer.
    shower = Shower(a, "--no-qr")
    showers.append(shower)
    b.cli("pair", shower.code)
    assert shower.wait()[0] == 0
    for x, y in ((a, "b"), (b, "a")):
        entry = peers(x)[y]
        assert entry["status"]["state"] == "trusted"
        assert entry["status"]["addresses"] == [f"udp://{bed.nodes[y].ip}:4737"]
        assert list(peers(x)).count(y) == 1
    a.wait_for("b up again", lambda: neighbours(a).get("b", {}).get("state") == "up", 30)


def test_wrong_code_fails_on_both_sides_is_rate_limited_and_burns(
    bed: NetBed, make_agent: MakeAgent, showers: list[Shower]
) -> None:
    a, b = start(make_agent, bed, "a"), start(make_agent, bed, "b")
    wait_seen(b, "a")
    shower = Shower(a, "--no-qr")
    showers.append(shower)
    bad = wrong(shower.code)

    first = b.cli("pair", bad, check=False)
    assert first.returncode == 1
    assert "wrong code: a (" in first.stderr, first.stderr + a.log()[-3000:]
    shower.expect(r"entered a wrong code \(1 of 3 attempts used\)")

    typo = b.cli("pair", shower.code[:-1] + str((int(shower.code[-1]) + 1) % 10), check=False)
    assert typo.returncode == 1
    assert "check digit does not match" in typo.stderr

    time.sleep(1.2)
    assert "wrong code" in b.cli("pair", bad, check=False).stderr
    shower.expect(r"\(2 of 3 attempts used\)")
    time.sleep(2.2)
    assert "wrong code" in b.cli("pair", bad, check=False).stderr
    code, output = shower.wait()
    assert code == 1
    assert "burned after 3 failed attempts" in output

    late = b.cli("pair", shower.code, "--peer", "a", check=False)
    assert late.returncode == 1
    assert "stopped working after 3 failed attempts" in late.stderr
    assert "b" not in peers(a)
    assert "a" not in peers(b)


def test_expired_code_is_refused(bed: NetBed, make_agent: MakeAgent, showers: list[Shower]) -> None:
    a = start(make_agent, bed, "a", {"FLORETE_PAIRING_CODE_TTL": "2"})
    b = start(make_agent, bed, "b")
    wait_seen(b, "a")
    shower = Shower(a)
    showers.append(shower)
    code, output = shower.wait(timeout=30)
    assert code == 1
    assert "expired" in output
    uri = f"florete://pair?code={shower.code.replace('-', '')}&id={neighbours(b)['a']['nodeID']}"
    late = b.cli("pair", uri, check=False)
    assert late.returncode == 1
    assert "expired" in late.stderr
    assert "a" not in peers(b)


def test_ctrl_c_withdraws_the_code(
    bed: NetBed, make_agent: MakeAgent, showers: list[Shower]
) -> None:
    a, b = start(make_agent, bed, "a"), start(make_agent, bed, "b")
    wait_seen(b, "a")
    shower = Shower(a, "--no-qr")
    showers.append(shower)
    shower.expect("Waiting for it")
    shower.process.send_signal(signal.SIGINT)
    code, output = shower.wait()
    assert code == 130, output
    assert "stopped: the code no longer works" in output
    late = b.cli("pair", shower.code, "--peer", "a", check=False)
    assert late.returncode == 1
    assert "a is not showing a pairing code" in late.stderr
    assert "a" not in peers(b)
