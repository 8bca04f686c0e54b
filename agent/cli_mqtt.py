"""CLI command of the MQTT bridge: ``bridges``.

``agent/cli.py`` calls :func:`add_parsers`; the command is a client of the local API
(:mod:`agent.api_mqtt`) and prints the bridge's state, or the API's JSON with ``-o json``.

Example::

    florete-agent bridges          # broker state, outbox, per-peer queues and counts, mappings
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from agent.render import table

__all__ = ["add_parsers", "bridge_text"]

GROUP = "/apis/florete.io/v1alpha1"
Client = Callable[[argparse.Namespace], Any]


def _bytes(n: float) -> str:
    unit = "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if n < 1024:
            break
        n, unit = n / 1024, bigger
    return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"


def bridge_text(bridge: Mapping[str, Any]) -> str:
    """A bridge as text: a summary, then tables of peers, mappings and serial sensors."""
    spec, st = bridge["spec"], bridge["status"]
    box = st["outbox"]
    state = "connected" if st["connected"] else f"NOT connected ({st['lastError'] or 'starting'})"
    lines = [
        f"Bridge {bridge['metadata']['name']}: {spec['broker']} (MQTT {spec['protocol']}, client "
        f"{spec['clientID']}): {state}",
        f"Outbox:  {box['messages']} messages, {_bytes(box['bytes'])} (bounds "
        f"{box['maxMessages']} messages, {_bytes(box['maxBytes'])}); delivered "
        f"{box['delivered']}, dropped {box['dropped']}, too large {box['rejectedTooLarge']}",
        f"Traffic: {st['received']} received for peers, {st['published']} published from peers, "
        f"{st['duplicatesSkipped']} duplicates skipped, {st['rejected']} rejected",
    ]
    if st["peers"]:
        rows = [
            [
                p["name"] or "-",
                p["nodeID"].split("-", 1)[0],
                str(p["queued"]),
                _bytes(p["queuedBytes"]),
                str(p["delivered"]),
                str(p["dropped"]),
                f"{p['sentQoS0']}/{p['discardedQoS0']}",
                p["state"],
                p["lastError"] or "-",
            ]
            for p in st["peers"]
        ]
        headers = ["PEER", "NODE-ID", "QUEUED", "BYTES", "DELIVERED", "DROPPED", "QOS0-SENT/LOST"]
        lines += ["", table([*headers, "STATE", "LAST-ERROR"], rows)]
    if spec["mappings"]:
        rows = [
            [
                m["pattern"] or '""',
                m["direction"],
                str(m["qos"]),
                m["localPrefix"] or "-",
                m["remotePrefix"] or "-",
                ",".join(m["peers"]) or "(all trusted)",
            ]
            for m in spec["mappings"]
        ]
        headers = ["PATTERN", "DIRECTION", "QOS", "LOCAL-PREFIX", "REMOTE-PREFIX", "PEERS"]
        lines += ["", table(headers, rows)]
    if st["serialSensors"]:
        rows = [
            [
                s["port"],
                s["topic"],
                "yes" if s["open"] else f"no ({s['error'] or 'opening'})",
                str(s["lines"]),
                str(s["messages"]),
                str(s["garbage"]),
            ]
            for s in st["serialSensors"]
        ]
        lines += ["", table(["SENSOR", "TOPIC", "OPEN", "LINES", "MESSAGES", "GARBAGE"], rows)]
    return "\n".join(lines)


def add_parsers(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    client: Client,
) -> None:
    """Register ``bridges`` on ``subparsers``.

    Args:
        subparsers: the top-level subparsers.
        common: the parent parser with ``--state-dir``, ``--socket`` and friends.
        client: builds an API client from the parsed arguments.
    """
    p = subparsers.add_parser(
        "bridges",
        aliases=["bridge"],
        parents=[common],
        help="show the MQTT bridge: broker, outbox, per-peer queues and counts",
    )
    p.add_argument("-o", "--output", choices=["json"], help="print the API's JSON")
    p.set_defaults(func=lambda args: _bridges(args, client))


def _bridges(args: argparse.Namespace, client: Client) -> int:
    listing = client(args).request("GET", f"{GROUP}/bridges")
    if args.output == "json":
        print(json.dumps(listing, indent=2))
    elif not listing["items"]:
        print("No bridges (set mqtt.broker to bridge MQTT).", file=sys.stderr)
    else:
        print("\n\n".join(bridge_text(b) for b in listing["items"]))
    return 0
