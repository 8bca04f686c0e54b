"""MQTT bridge benchmark: our bridge beside mosquitto's own bridge, between the same two brokers.

Two nodes ``a`` and ``b`` of a :class:`tests.netbed.NetBed`, each running mosquitto in its
namespace. Broker ``a`` also runs mosquitto's bridge to broker ``b`` (``connection`` with
``topic mb0/# out 0`` and ``topic mb1/# out 1``, mosquitto.conf(5)); ``florete-agent run`` on
each node bridges ``fl0/#`` (QoS 0) and ``fl1/#`` (QoS 1) from ``a`` to ``b`` over the mesh
(UDP link, ARQ, TLS 1.3). One measuring process inside namespace ``a`` publishes on broker
``a`` (127.0.0.1) and subscribes on broker ``b`` (10.99.0.2) with paho-mqtt, so both ends use
one clock. Per path and QoS:

* **messages/s**: ``count`` messages of 64 bytes published as fast as the client goes
  (QoS 1 with 100 in flight); the rate is messages received over the time from the first
  publish to the last arrival (QoS 0 may lose some under overload: delivered/sent is shown).
* **latency**: 300 (``--full``: 2000) messages paced at 200 per second; p50 and p99 of publish
  to arrival, in ms. **added** is the path's figure minus the direct path's: publisher and
  subscriber both on broker ``b``, across the same veth.

Everything runs inside namespaces made here and is removed at the end, also on failure.
``python -m bench.mqtt [--full]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
PAYLOAD = 64
PATHS = (
    ("direct (one broker)", "d", True),
    ("mosquitto bridge", "mb", False),
    ("florete bridge", "fl", False),
)

AGENT_A = """
[mqtt]
telemetry = false

[[mqtt.mappings]]
pattern = "fl0/#"
direction = "out"
qos = 0

[[mqtt.mappings]]
pattern = "fl1/#"
direction = "out"
qos = 1
"""

MOSQUITTO_BRIDGE = """
connection mb
address 10.99.0.2:1883
topic mb0/# out 0
topic mb1/# out 1
"""


# --- the measuring process (inside namespace a) -------------------------------------------


def _client(name: str, host: str, received: list[tuple[int, float]] | None) -> Any:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(100)
    client.max_queued_messages_set(0)
    if received is not None:

        def on_message(_c: Any, _u: Any, msg: Any) -> None:
            received.append((int(msg.payload[:12]), time.perf_counter()))

        client.on_message = on_message
    client.connect(host, 1883)
    client.loop_start()
    return client


def _run_one(pub: Any, topic: str, qos: int, count: int, rate: float | None) -> dict[str, Any]:
    received: list[tuple[int, float]] = []
    sub = _client(f"sub-{topic}", "10.99.0.2", received)
    done = threading.Event()
    sub.on_subscribe = lambda *_: done.set()
    sub.subscribe(topic, qos)
    done.wait(10)
    time.sleep(0.2)
    sent: list[float] = []
    infos = []
    for i in range(count):
        if rate is not None:
            target = (sent[0] if sent else time.perf_counter()) + i / rate
            time.sleep(max(0.0, target - time.perf_counter()))
        sent.append(time.perf_counter())
        infos.append(pub.publish(topic, f"{i:012d}".encode().ljust(PAYLOAD, b"."), qos))
    deadline = time.monotonic() + 60
    last = -1
    while time.monotonic() < deadline and len(received) < count and len(received) != last:
        last = len(received)
        time.sleep(1.0)  # stop once nothing more arrived for a second
    sub.loop_stop()
    sub.disconnect()
    if not received:
        return {"received": 0, "sent": count}
    latencies = sorted((t - sent[i]) * 1000 for i, t in received if i < count)
    span = max(t for _, t in received) - sent[0]
    return {
        "sent": count,
        "received": len({i for i, _ in received}),
        "rate": len(received) / span if span > 0 else 0.0,
        "p50": statistics.median(latencies),
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
    }


def _measure(count: int, samples: int) -> None:
    results: dict[str, Any] = {}
    for _, prefix, direct in PATHS:
        pub = _client(f"pub-{prefix}", "10.99.0.2" if direct else "127.0.0.1", None)
        for qos in (0, 1):
            topic = f"{prefix}{qos}/x"
            results[f"{prefix}{qos} rate"] = _run_one(pub, topic, qos, count, None)
            results[f"{prefix}{qos} latency"] = _run_one(pub, topic, qos, samples, 200.0)
        pub.loop_stop()
        pub.disconnect()
    print(json.dumps(results), flush=True)


# --- the set-up (root namespace) ------------------------------------------------------------


def _unavailable() -> str | None:
    from tests.mosquitto import mosquitto_available
    from tests.netbed import netbed_available

    return netbed_available() or mosquitto_available()


def _run(count: int, samples: int) -> dict[str, Any]:
    from tests.integration.conftest import Agent
    from tests.mosquitto import Mosquitto
    from tests.netbed import NetBed

    root = Path(tempfile.mkdtemp(prefix="flbench-mqtt-"))
    agents: list[Agent] = []
    brokers: list[Mosquitto] = []
    try:
        with NetBed() as bed:
            na, nb = bed.add_node("a"), bed.add_node("b")
            broker_b = Mosquitto(root / "mq-b", nb)
            brokers.append(broker_b)
            broker_b.start()
            broker_a = Mosquitto(root / "mq-a", na, extra=MOSQUITTO_BRIDGE)
            brokers.append(broker_a)
            broker_a.start()
            config = root / "a.toml"
            config.write_text(AGENT_A)
            for node, broker, extra in ((na, broker_a, str(config)), (nb, broker_b, "")):
                env = {
                    "FLORETE_INTERFACES": "eth0",
                    "FLORETE_LINK_PORT": "4737",
                    "FLORETE_MDNS": "on",
                    "FLORETE_NODE_NAME": node.name,
                    "FLORETE_MQTT_BROKER": broker.url,
                    "FLORETE_LOG_LEVEL": "warning",
                }
                if extra:
                    env["FLORETE_CONFIG"] = extra
                agent = Agent(root / f"s{node.name}", env, node.ns)
                agents.append(agent)
                agent.start()
            a, b = agents
            for x, y in ((a, b), (b, a)):
                y.cli("peers", "add", "-", stdin=x.cli("peers", "export").stdout)
            a.wait_for("b up", lambda: _up(a, "b"), 30)
            argv = [sys.executable, "-m", "bench.mqtt", "--measure", str(count), str(samples)]
            out = subprocess.run(
                na.argv(argv), cwd=REPO, capture_output=True, text=True, timeout=1800, check=True
            ).stdout
            result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
            return result
    finally:
        for agent in agents:
            agent.kill_everything()
        for broker in brokers:
            broker.close()
        shutil.rmtree(root, ignore_errors=True)


def _up(agent: Any, name: str) -> bool:
    items = json.loads(agent.cli("neighbours", "-o", "json").stdout)["items"]
    return any(n["name"] == name and n["state"] == "up" for n in items)


def main(quick: bool = True) -> None:
    """Print the MQTT bridge table (see the module docstring).

    Args:
        quick: 2000 messages per throughput run and 300 latency samples (about a minute);
            else 20000 and 2000.
    """
    print("florete-agent MQTT bridge, a -> b across the mesh, beside mosquitto's bridge")
    reason = _unavailable()
    if reason is not None:
        print(f"  unavailable: {reason}")
        return
    count, samples = (2000, 300) if quick else (20_000, 2000)
    results = _run(count, samples)
    rows = [("path", "QoS", "msgs/s", "delivered", "p50 ms", "p99 ms", "added p50/p99 ms")]
    for label, prefix, _ in PATHS:
        for qos in (0, 1):
            rate, lat = results[f"{prefix}{qos} rate"], results[f"{prefix}{qos} latency"]
            base = results[f"d{qos} latency"]
            if not lat.get("received"):
                rows.append((label, str(qos), "-", "0", "-", "-", "-"))
                continue
            added = (
                "-"
                if prefix == "d"
                else f"{lat['p50'] - base['p50']:+.2f} / {lat['p99'] - base['p99']:+.2f}"
            )
            rows.append(
                (
                    label,
                    str(qos),
                    f"{rate.get('rate', 0.0):.0f}",
                    f"{rate['received']}/{rate['sent']}",
                    f"{lat['p50']:.2f}",
                    f"{lat['p99']:.2f}",
                    added,
                )
            )
    width = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  " + "   ".join(c.ljust(w) for c, w in zip(row, width, strict=True)).rstrip())


def _cli() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.mqtt", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--full", action="store_true", help="more messages (see main)")
    parser.add_argument("--measure", nargs=2, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        _measure(*args.measure)
        return
    os.environ.setdefault("FLORETE_INTERFACES", "lo")
    main(quick=not args.full)


if __name__ == "__main__":
    _cli()
