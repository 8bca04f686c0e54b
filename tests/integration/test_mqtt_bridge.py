"""The MQTT bridge between two agents, each with its own real mosquitto, in network namespaces.

Node ``a`` and node ``b`` each run mosquitto (started here, from a config file, inside the
node's namespace) and ``florete-agent run`` with ``mqtt.broker`` pointing at it. Trust is given
with ``peers export`` / ``peers add``. Messages are published and read with mosquitto_pub and
mosquitto_sub, the reference clients, inside the namespaces.

Mappings (``A_CONFIG``, ``B_CONFIG``):

* ``a``: ``sensors/#`` out to ``b`` as ``site-a/sensors/...`` (QoS 1); ``cmd/#`` in from ``b``
  as ``from-b/cmd/...`` (QoS 1); ``shared/#`` both ways (QoS 1).
* ``b``: ``shared/#`` both ways (QoS 0).
"""

from __future__ import annotations

import collections
import dataclasses
import json
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Agent
from tests.mosquitto import Mosquitto, mosquitto_available
from tests.netbed import NetBed, NetNode, netbed_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(netbed_available() is not None, reason=str(netbed_available())),
    pytest.mark.skipif(mosquitto_available() is not None, reason=str(mosquitto_available())),
]

MakeAgent = Callable[..., Agent]

A_CONFIG = """
[mqtt]
telemetry = false

[[mqtt.mappings]]
pattern = "sensors/#"
direction = "out"
qos = 1
remote_prefix = "site-a/"
peers = ["b"]

[[mqtt.mappings]]
pattern = "cmd/#"
direction = "in"
qos = 1
local_prefix = "from-b/"
peers = ["b"]

[[mqtt.mappings]]
pattern = "shared/#"
direction = "both"
qos = 1
"""

B_CONFIG = """
[mqtt]
telemetry = false

[[mqtt.mappings]]
pattern = "shared/#"
direction = "both"
qos = 0
"""


@dataclasses.dataclass
class Site:
    """One node: its namespace, broker and agent."""

    bed: NetBed
    node: NetNode
    broker: Mosquitto
    agent: Agent

    def bridge(self) -> dict[str, Any]:
        """The agent's ``bridges -o json`` item."""
        items = json.loads(self.agent.cli("bridges", "-o", "json").stdout)["items"]
        assert len(items) == 1
        bridge: dict[str, Any] = items[0]
        return bridge


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="flmq-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


MakeSites = Callable[[str, str], tuple[Site, Site]]


@pytest.fixture
def make_sites(make_agent: MakeAgent, workdir: Path) -> Iterator[MakeSites]:
    """Two trusted sites with the given configs, their sessions up and ``a``'s ``in``
    subscriptions (if any) accepted by ``b``."""
    with NetBed() as bed:
        made: list[Site] = []

        def make(a_config: str, b_config: str) -> tuple[Site, Site]:
            for name, config in (("a", a_config), ("b", b_config)):
                made.append(_site(bed, make_agent, workdir, name, config))
            a, b = made
            for x, y in ((a, b), (b, a)):
                y.agent.cli("peers", "add", "-", stdin=x.agent.cli("peers", "export").stdout)
            a.agent.wait_for("b up", lambda: _state(a.agent, "b") == "up", 30)
            b.agent.wait_for("a up", lambda: _state(b.agent, "a") == "up", 30)
            wanted = a_config.count('direction = "in"') + a_config.count('direction = "both"')
            b.agent.wait_for("a's subscriptions at b", lambda: _peer_routes(b) >= wanted, 30)
            return a, b

        try:
            yield make
        finally:
            for site in made:
                site.broker.close()


@pytest.fixture
def sites(make_sites: MakeSites) -> tuple[Site, Site]:
    """The two sites of ``A_CONFIG`` and ``B_CONFIG``."""
    return make_sites(A_CONFIG, B_CONFIG)


def _site(bed: NetBed, make_agent: MakeAgent, workdir: Path, name: str, config: str) -> Site:
    node = bed.add_node(name)
    broker = Mosquitto(workdir / f"mq-{name}", node)
    broker.start()
    path = workdir / f"{name}.toml"
    path.write_text(config)
    env = {
        "FLORETE_INTERFACES": "eth0",
        "FLORETE_LINK_PORT": "4737",
        "FLORETE_MDNS": "on",
        "FLORETE_NODE_NAME": name,
        "FLORETE_MQTT_BROKER": broker.url,
        "FLORETE_CONFIG": str(path),
    }
    return Site(bed, node, broker, make_agent(env, netns=node.ns))


def _state(agent: Agent, name: str) -> str:
    items = json.loads(agent.cli("neighbours", "-o", "json").stdout)["items"]
    return next((str(n["state"]) for n in items if n["name"] == name), "")


def _peer_routes(site: Site) -> int:
    routes = site.bridge()["status"]["routes"]
    return sum(1 for r in routes if r["origin"].startswith("peer "))


def _connected(site: Site) -> bool:
    return bool(site.bridge()["status"]["connected"])


def check_stream(payloads: list[str], count: int) -> int:
    """Assert that ``payloads`` holds ``0 .. count-1`` each at least once, first occurrences
    in order; returns the number of duplicates (QoS 1 allows them)."""
    seen: set[int] = set()
    firsts: list[int] = []
    for p in payloads:
        n = int(p)
        if n not in seen:
            seen.add(n)
            firsts.append(n)
    missing = sorted(set(range(count)) - seen)
    assert not missing, f"{len(missing)} lost, first {missing[:10]}"
    assert firsts == list(range(count)), "out of order"
    return len(payloads) - count


def test_messages_flow_both_ways_without_loops(sites: tuple[Site, Site], workdir: Path) -> None:
    a, b = sites
    at_a = a.broker.subscribe("#", workdir / "at-a.txt")
    at_b = b.broker.subscribe("#", workdir / "at-b.txt")
    try:
        a.broker.publish("sensors/temp", ["21.5"])
        b.broker.publish("cmd/led", ["on"])
        a.broker.publish("shared/from-a", ["1"])
        b.broker.publish("shared/from-b", ["2"])
        at_b.wait(lambda s: "site-a/sensors/temp 21.5" in s.lines(), 20, "sensors at b")
        at_a.wait(lambda s: "from-b/cmd/led on" in s.lines(), 20, "cmd at a")
        at_b.wait(lambda s: "shared/from-a 1" in s.lines(), 20, "shared at b")
        at_a.wait(lambda s: "shared/from-b 2" in s.lines(), 20, "shared at a")
        time.sleep(2)  # an echo loop would have sent copies back and forth by now
        for sub, topic in (
            (at_a, "shared/from-a"),
            (at_a, "shared/from-b"),
            (at_b, "shared/from-a"),
            (at_b, "shared/from-b"),
        ):
            assert sub.payloads(topic) == [sub.payloads(topic)[0]], f"{topic} looped"
        assert at_a.payloads("cmd/led") == []  # cmd/# is only mapped into a, under from-b/
        status = a.bridge()["status"]
        peer = next(p for p in status["peers"] if p["name"] == "b")
        assert peer["delivered"] >= 2
        assert peer["dropped"] == 0
        assert status["outbox"]["messages"] == 0
        text = a.agent.cli("bridges").stdout
        assert "connected" in text
        assert "sensors/#" in text
    finally:
        at_a.close()
        at_b.close()


@pytest.mark.timeout(900)
def test_cut_link_10000_qos1_messages_survive_a_restart_and_arrive_in_order(
    sites: tuple[Site, Site], workdir: Path
) -> None:
    a, b = sites
    sink = b.broker.subscribe("site-a/sensors/n", workdir / "sink.txt", client_id="sink")
    try:
        a.bed.cut(a.node)
        a.agent.wait_for("b down", lambda: _state(a.agent, "b") == "down", 30)
        started = time.monotonic()
        a.broker.publish("sensors/n", [str(i) for i in range(10_000)])
        a.agent.wait_for(
            "10000 queued", lambda: a.bridge()["status"]["outbox"]["messages"] == 10_000, 120
        )
        queued_in = time.monotonic() - started
        assert sink.lines() == []
        assert a.agent.process is not None
        a.agent.process.kill()  # the outbox is on disk (fsynced before each PUBACK)
        a.agent.process.wait()
        a.agent.process = None
        a.agent.start()
        assert a.bridge()["status"]["outbox"]["messages"] == 10_000
        a.bed.restore(a.node)
        restored = time.monotonic()
        sink.wait(lambda s: len(set(s.lines())) >= 10_000, 300, "10000 messages at b")
        drained = time.monotonic() - restored
        time.sleep(1)
        duplicates = check_stream(sink.payloads(), 10_000)
        status = a.bridge()["status"]
        sys.stdout.write(
            f"\nmqtt: 10000 QoS 1 queued in {queued_in:.1f} s during the cut, delivered "
            f"{drained:.1f} s after restore, duplicates {duplicates}, "
            f"b skipped {b.bridge()['status']['duplicatesSkipped']}\n"
        )
        assert duplicates == 0  # nothing failed mid-batch here: no redelivery at all
        assert status["outbox"]["messages"] == 0
        assert status["outbox"]["dropped"] == 0
        peer = next(p for p in status["peers"] if p["name"] == "b")
        assert peer["delivered"] >= 10_000
    finally:
        sink.close()


def _stream(
    broker: Mosquitto, topic: str, count: int, chunk: int, pause: float
) -> threading.Thread:
    """Publish ``0 .. count-1`` on ``topic`` in chunks, in a thread."""

    def run() -> None:
        for start in range(0, count, chunk):
            broker.publish(topic, [str(i) for i in range(start, min(count, start + chunk))])
            time.sleep(pause)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.timeout(600)
def test_broker_restarts_mid_stream(sites: tuple[Site, Site], workdir: Path) -> None:
    a, b = sites
    sink = b.broker.subscribe("site-a/sensors/n", workdir / "sink.txt", client_id="sink")
    try:
        # b's broker stops cleanly and comes back while a streams: b's agent reconnects,
        # deliveries fail with 503 meanwhile and are retried from a's outbox.
        stream = _stream(a.broker, "sensors/n", 3000, 100, 0.1)
        sink.wait(lambda s: len(s.lines()) >= 500, 60, "the stream at b")
        b.broker.stop(signal.SIGTERM)
        time.sleep(2)
        b.broker.start()
        stream.join(timeout=120)
        sink.wait(lambda s: len(set(s.lines())) >= 3000, 180, "3000 messages at b")
        dup_b = check_stream(sink.payloads(), 3000)

        # a's broker dies (SIGKILL: no persistence written): a's agent must subscribe again
        # on the fresh broker, or nothing more would cross (telegraf#6232).
        connects = a.bridge()["status"]["connects"]
        a.broker.stop(signal.SIGKILL)
        a.broker.start()
        a.agent.wait_for("a reconnected", lambda: a.bridge()["status"]["connects"] > connects, 60)
        a.broker.publish("sensors/n", [str(i) for i in range(3000, 3500)])
        sink.wait(lambda s: len(set(s.lines())) >= 3500, 120, "500 more after a's restart")
        dup = check_stream(sink.payloads(), 3500)
        sys.stdout.write(f"\nmqtt: broker restarts: duplicates {dup} ({dup_b} after b's)\n")
        assert dup <= 2 * 256  # at most a batch or two published again, as QoS 1 allows
    finally:
        sink.close()


@pytest.mark.timeout(600)
def test_kill9_agents_mid_stream(sites: tuple[Site, Site], workdir: Path) -> None:
    a, b = sites
    sink = b.broker.subscribe("site-a/sensors/n", workdir / "sink.txt", client_id="sink")
    try:
        stream = _stream(a.broker, "sensors/n", 4000, 100, 0.1)
        sink.wait(lambda s: len(s.lines()) >= 500, 60, "the stream at b")
        assert a.agent.process is not None
        a.agent.process.kill()  # the sender: its broker keeps what arrives for its session
        a.agent.process.wait()
        a.agent.process = None
        time.sleep(1)
        a.agent.start()
        sink.wait(lambda s: len(s.lines()) >= 2500, 120, "the stream after a's restart")
        assert b.agent.process is not None
        b.agent.process.kill()  # the receiver: a's outbox keeps everything until it is back
        b.agent.process.wait()
        b.agent.process = None
        time.sleep(1)
        b.agent.start()
        stream.join(timeout=120)
        sink.wait(lambda s: len(set(s.lines())) >= 4000, 240, "4000 messages at b")
        time.sleep(1)
        duplicates = check_stream(sink.payloads(), 4000)
        sys.stdout.write(f"\nmqtt: two kill -9 mid-stream: duplicates {duplicates}\n")
        assert duplicates <= 64 + 256  # a's unacknowledged window, and one batch at b
    finally:
        sink.close()


def test_bad_payloads_cross_or_are_refused_and_counted(
    sites: tuple[Site, Site], workdir: Path
) -> None:
    a, b = sites
    at_b = b.broker.subscribe("site-a/#", workdir / "at-b.txt")
    try:
        a.broker.publish_one("sensors/empty", b"")
        a.broker.publish_one("sensors/binary", bytes(range(256)))
        a.broker.publish_one("sensors/big", b"x" * 100_000)  # over the bridge's 48 KiB
        a.broker.publish_one("sensors/ünïcode/温度", b"ok")
        a.broker.publish("sensors/after", ["still flowing"])
        at_b.wait(lambda s: "site-a/sensors/after still flowing" in s.lines(), 30, "after")
        topics = [line.partition(" ")[0] for line in at_b.lines()]
        assert "site-a/sensors/empty" in topics
        assert "site-a/sensors/ünïcode/温度" in topics
        assert "site-a/sensors/big" not in topics
        assert (workdir / "at-b.txt").read_bytes().count(bytes(range(1, 10))) == 1
        status = a.bridge()["status"]
        assert status["outbox"]["rejectedTooLarge"] == 1
        counts = collections.Counter(topics)
        assert max(counts.values()) == 1
    finally:
        at_b.close()


def test_a_full_outbox_drops_the_oldest_and_says_so(make_sites: MakeSites, workdir: Path) -> None:
    small = A_CONFIG.replace("telemetry = false", "telemetry = false\noutbox_max_messages = 100")
    a, b = make_sites(small, B_CONFIG)
    sink = b.broker.subscribe("site-a/sensors/n", workdir / "sink.txt")
    try:
        a.bed.cut(a.node)
        a.agent.wait_for("b down", lambda: _state(a.agent, "b") == "down", 30)
        a.broker.publish("sensors/n", [str(i) for i in range(150)])
        a.agent.wait_for(
            "the outbox full", lambda: a.bridge()["status"]["outbox"]["dropped"] == 50, 60
        )
        status = a.bridge()["status"]
        assert status["outbox"]["messages"] == 100
        assert next(p for p in status["peers"] if p["name"] == "b")["dropped"] == 50
        assert "outbox full" in a.agent.log()
        assert "DROPPED" in a.agent.cli("bridges").stdout
        a.bed.restore(a.node)
        sink.wait(lambda s: len(s.lines()) >= 100, 120, "the 100 newest at b")
        time.sleep(1)
        assert sink.payloads() == [str(i) for i in range(50, 150)]
    finally:
        sink.close()
