"""One node and a real mosquitto on 127.0.0.1: the broker client, serial sensors, telemetry.

* :class:`agent.mqtt.client.BrokerClient` in this process: subscriptions come back after a
  broker restart that lost them, unacknowledged QoS 1 messages come back after a crash, and
  QoS 1 publications in flight stay within ``max_inflight``.
* ``florete-agent run`` with a serial sensor on a pty (``os.openpty``), telemetry, Home
  Assistant discovery and the availability topic with its last will.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.mqtt.client import BrokerClient, ClientOptions, Received
from agent.mqtt.settings import parse_broker
from tests.integration.conftest import Agent
from tests.mosquitto import Mosquitto, mosquitto_available
from tests.pki import Pki

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(mosquitto_available() is not None, reason=str(mosquitto_available())),
]


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="flmq-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def broker(workdir: Path) -> Iterator[Mosquitto]:
    mq = Mosquitto(workdir / "mq", persistence=False)
    mq.start()
    yield mq
    mq.close()


def client_for(
    broker: Mosquitto, received: list[Received], client_id: str, **options: Any
) -> BrokerClient:
    address = parse_broker(broker.url)
    assert address is not None
    return BrokerClient(ClientOptions(address, client_id, **options), received.append)


async def until(what: str, predicate: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_client_subscribes_again_after_the_broker_forgot(
    broker: Mosquitto, protocol: str
) -> None:
    received: list[Received] = []
    client = client_for(broker, received, f"resub-{protocol}", protocol=protocol)
    client.set_subscriptions({"t/#": 1})
    await client.start()
    try:
        await until("connected", lambda: client.connected)
        await asyncio.to_thread(broker.publish, "t/a", ["before"])
        await until("a message", lambda: len(received) == 1)
        client.ack(received[0].mid)
        broker.stop(signal.SIGKILL)  # no persistence: the session and subscriptions are gone
        broker.start()
        await until("a reconnect", lambda: client.connects == 2 and client.connected, 60)
        await asyncio.to_thread(broker.publish, "t/a", ["after"])
        await until("a message after the restart", lambda: len(received) == 2)
        assert [r.payload for r in received] == [b"before", b"after"]
        own = await client.publish("t/own", b"mine", 1)  # no-local: never comes back
        assert own is not None
        await asyncio.wait_for(own, 10)
        await asyncio.sleep(0.5)
        assert len(received) == 2
    finally:
        await client.stop()


async def test_unacknowledged_messages_come_back_after_a_crash(workdir: Path) -> None:
    broker = Mosquitto(workdir / "mq")
    broker.start()
    try:
        first: list[Received] = []
        client = client_for(broker, first, "crashy")
        client.set_subscriptions({"q": 1})
        await client.start()
        await until("connected", lambda: client.connected)
        await asyncio.to_thread(broker.publish, "q", [str(i) for i in range(5)])
        await until("five messages", lambda: len(first) == 5)
        for message in first[:2]:
            client.ack(message.mid)
        await asyncio.sleep(0.3)
        await client.stop()  # the rest was never acknowledged: the session keeps it
        again: list[Received] = []
        client = client_for(broker, again, "crashy")
        await client.start()
        await until("the unacknowledged three", lambda: len(again) >= 3)
        assert [m.payload for m in again[:3]] == [b"2", b"3", b"4"]
        await client.stop()
    finally:
        broker.close()


async def test_publications_in_flight_are_bounded(broker: Mosquitto, workdir: Path) -> None:
    sink = broker.subscribe("bulk", workdir / "bulk.txt")
    client = client_for(broker, [], "bulk", max_inflight=4)
    await client.start()
    try:
        await until("connected", lambda: client.connected)
        highest = 0

        async def one(i: int) -> None:
            nonlocal highest
            future = await client.publish("bulk", str(i).encode(), 1)
            highest = max(highest, client.inflight)
            assert future is not None
            await asyncio.wait_for(future, 30)

        await asyncio.gather(*(one(i) for i in range(300)))
        assert highest <= 4
        assert client.inflight == 0
        await until("300 at the subscriber", lambda: len(sink.lines()) == 300)
        assert sink.payloads() == [str(i) for i in range(300)]
    finally:
        await client.stop()
        sink.close()


def _bridge(agent: Agent) -> dict[str, Any]:
    items = json.loads(agent.cli("bridges", "-o", "json").stdout)["items"]
    bridge: dict[str, Any] = items[0]
    return bridge


def test_serial_sensor_on_a_pty(
    make_agent: Callable[..., Agent], broker: Mosquitto, workdir: Path
) -> None:
    master, slave = os.openpty()
    port = os.ttyname(slave)
    try:
        config = workdir / "agent.toml"
        config.write_text(
            "[mqtt]\ntelemetry = false\n\n"
            f'[[mqtt.serial_sensors]]\nport = "{port}"\nbaudrate = 115200\n'
            'topic = "lab/bench"\nsplit = true\nqos = 1\n'
        )
        sink = broker.subscribe("lab/#", workdir / "lab.txt")
        agent = make_agent({"FLORETE_MQTT_BROKER": broker.url, "FLORETE_CONFIG": str(config)})
        agent.wait_for(
            "the port open", lambda: _bridge(agent)["status"]["serialSensors"][0]["open"]
        )
        lines = [
            b'{"t": 21.5}',
            b"hum=40 ok=yes",
            b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47",
            b"$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*00",
            b"\xff\xfe\x00 line noise",
            b"x" * 5000,
            b'{"t": 22.0}',
        ]
        os.write(master, b"\r\n".join(lines) + b"\r\n")
        sink.wait(lambda s: 'lab/bench {"t": 22.0}' in s.lines(), 20, "the last reading")
        got = sink.lines()
        assert got[:5] == [
            'lab/bench {"t": 21.5}',
            "lab/bench/t 21.5",
            'lab/bench {"hum":40,"ok":"yes"}',
            "lab/bench/hum 40",
            "lab/bench/ok yes",
        ]
        gga = json.loads(
            next(line for line in got if line.startswith("lab/bench/GPGGA ")).split(" ", 1)[1]
        )
        assert gga["satellites"] == 8
        assert sum(line.startswith("lab/bench/GPGGA ") for line in got) == 1
        stats = _bridge(agent)["status"]["serialSensors"][0]
        assert (stats["garbage"], stats["readings"]) == (3, 4)
        warnings = [line for line in agent.log().splitlines() if "not a reading" in line]
        assert len([w for w in warnings if "WARNING" in w]) == 1
        sink.close()
    finally:
        os.close(master)
        os.close(slave)


def test_telemetry_discovery_and_last_will(
    make_agent: Callable[..., Agent], broker: Mosquitto, workdir: Path
) -> None:
    sink = broker.subscribe("#", workdir / "all.txt")
    agent = make_agent({"FLORETE_MQTT_BROKER": broker.url, "FLORETE_NODE_NAME": "board-1"})
    try:
        sink.wait(
            lambda s: "florete/board-1/telemetry" in {line.split(" ")[0] for line in s.lines()},
            20,
            "telemetry",
        )
        figures = json.loads(sink.payloads("florete/board-1/telemetry")[0])
        assert {"cpu_percent", "memory_percent", "pods_running", "links_up"} <= set(figures)
        assert sink.payloads("florete/board-1/availability") == ["online"]
        retained = workdir / "retained.txt"
        late = broker.subscribe("homeassistant/#", retained)
        late.wait(lambda s: len(s.lines()) >= 10, 10, "retained discovery configs")
        late.close()
        config = json.loads(
            next(line for line in late.lines() if "/cpu_percent/config " in line).split(" ", 1)[1]
        )
        assert config["state_topic"] == "florete/board-1/telemetry"
        assert agent.process is not None
        agent.process.kill()  # the broker sees the connection drop and sends the last will
        agent.process.wait()
        agent.process = None
        sink.wait(
            lambda s: s.payloads("florete/board-1/availability")[-1:] == ["offline"], 20, "will"
        )
        agent.start()
        sink.wait(
            lambda s: s.payloads("florete/board-1/availability")[-1:] == ["online"], 20, "back"
        )
        agent.stop()  # a clean stop says offline itself
        sink.wait(
            lambda s: s.payloads("florete/board-1/availability")[-1:] == ["offline"], 20, "stop"
        )
    finally:
        sink.close()


def test_tls_and_password_and_the_password_never_logged(
    make_agent: Callable[..., Agent], workdir: Path
) -> None:
    pki = Pki(workdir)
    users = workdir / "mosquitto.passwd"
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(users), "board", "s3cret-pass"],
        check=True,
        capture_output=True,
    )
    broker = Mosquitto(
        workdir / "mq",
        anonymous=False,
        listener=f"cafile {pki.server_ca}\ncertfile {pki.server_cert}\n"
        f"keyfile {pki.server_key}\npassword_file {users}\n",
        client=["--cafile", str(pki.server_ca), "-u", "board", "-P", "s3cret-pass"],
    )
    broker.start()
    try:
        sink = broker.subscribe("florete/#", workdir / "tls.txt")
        secrets = {"good": "s3cret-pass\n", "bad": "wrong-pass\n"}
        agents = {}
        for name, secret in secrets.items():
            path = workdir / f"{name}.pass"
            path.write_text(secret)
            path.chmod(0o600)
            agents[name] = make_agent(
                {
                    "FLORETE_MQTT_BROKER": f"mqtts://127.0.0.1:{broker.port}",
                    "FLORETE_MQTT_TLS_CA": str(pki.server_ca),
                    "FLORETE_MQTT_USERNAME": "board",
                    "FLORETE_MQTT_PASSWORD_FILE": str(path),
                    "FLORETE_NODE_NAME": name,
                }
            )
        good, bad = agents["good"], agents["bad"]
        sink.wait(lambda s: "florete/good/availability online" in s.lines(), 20, "good online")
        assert _bridge(good)["status"]["connected"]
        bad.wait_for("refused", lambda: "refused" in _bridge(bad)["status"]["lastError"], 20)
        assert not _bridge(bad)["status"]["connected"]
        assert "florete/bad/availability online" not in sink.lines()
        for agent in (good, bad):
            assert "s3cret-pass" not in agent.log()
            assert "wrong-pass" not in agent.log()
        sink.close()
    finally:
        broker.close()
