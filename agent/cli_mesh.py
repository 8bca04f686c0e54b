"""CLI commands for the mesh: ``neighbours``, ``links`` and ``peers``.

``agent/cli.py`` calls :func:`add_parsers`; each command is a client of the local API
(:mod:`agent.api_mesh`) and prints a table, or the API's JSON with ``-o json``.

Examples::

    florete-agent neighbours                 # who is around, how reachable, trusted or not
    florete-agent links -o json              # every link with live metrics, for scripts
    florete-agent peers export > me.pem      # this node's certificate, for another node
    florete-agent peers add other.pem        # trust a node (out of band; pairing does it too)
    florete-agent peers revoke P56IOI7-...   # revoke: its sessions close at once
    florete-agent ping robot-2 -c 3          # request/response round trips over the mesh
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from agent.errors import ConfigError
from agent.render import human_duration, table

__all__ = ["add_parsers", "links_table", "neighbours_table", "peers_table", "short_id"]

GROUP = "/apis/florete.io/v1alpha1"
Client = Callable[[argparse.Namespace], Any]


def short_id(node_id: str) -> str:
    """The first group of a node ID, as :func:`agent.identity.short_id` shows it (without
    importing the crypto stack into every CLI command)."""
    return node_id.split("-", 1)[0]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.1f}ms"


def _bytes(n: float) -> str:
    unit = "B"
    for bigger in ("KiB", "MiB", "GiB"):
        if n < 1024:
            break
        n, unit = n / 1024, bigger
    return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"


def neighbours_table(items: Sequence[Mapping[str, Any]]) -> str:
    """NAME NODE-ID STATE TRUST LINKS ADDRESSES LAST-SEEN, one row per neighbour."""
    rows = []
    for n in items:
        links = [f"{name}{'' if st['up'] else '(down)'}" for name, st in n["links"].items()]
        addresses = [a["host"] for addrs in n["addresses"].values() for a in addrs]
        rows.append(
            [
                n["name"],
                short_id(n["nodeID"]),
                n["state"],
                n["trust"],
                ",".join(links) or "-",
                ",".join(addresses) or "-",
                human_duration(n["lastSeenAgoSeconds"]) + " ago",
            ]
        )
    return table(["NAME", "NODE-ID", "STATE", "TRUST", "LINKS", "ADDRESSES", "LAST-SEEN"], rows)


def links_table(items: Sequence[Mapping[str, Any]]) -> str:
    """LINK PEER ADDRESS STATE UP COST RTT LOSS RX TX, one row per link."""
    rows = [
        [
            link["name"],
            f"{link['peerName']} ({short_id(link['nodeID'])})" if link["nodeID"] else "-",
            link["address"],
            link["state"],
            "yes" if link["up"] else "no",
            f"{link['cost']:g}",
            _seconds(link["rttSeconds"]),
            f"{link['loss'] * 100:.1f}%",
            _bytes(link["rxBytes"]),
            _bytes(link["txBytes"]),
        ]
        for link in items
    ]
    headers = ["LINK", "PEER", "ADDRESS", "STATE", "UP", "COST", "RTT", "LOSS", "RX", "TX"]
    return table(headers, rows)


def peers_table(items: Sequence[Mapping[str, Any]]) -> str:
    """NAME NODE-ID STATE SOURCE FINGERPRINT ADDRESSES, one row per trust-store entry."""
    rows = [
        [
            p["spec"]["name"],
            p["metadata"]["name"],
            p["status"]["state"],
            p["status"]["source"],
            p["status"]["fingerprint"][:23] + "…",
            ",".join(p["status"].get("addresses") or []) or "-",
        ]
        for p in items
    ]
    return table(["NAME", "NODE-ID", "STATE", "SOURCE", "FINGERPRINT", "ADDRESSES"], rows)


def add_parsers(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    client: Client,
) -> None:
    """Register ``neighbours``, ``links`` and ``peers`` on ``subparsers``.

    Args:
        subparsers: the top-level subparsers.
        common: the parent parser with ``--state-dir``, ``--socket`` and friends.
        client: builds an API client from the parsed arguments.
    """
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("-o", "--output", choices=["json"], help="print the API's JSON")

    p = subparsers.add_parser(
        "neighbours",
        aliases=["neighbors"],
        parents=[common, output],
        help="show the nodes around: discovered, up, down; trusted or not",
    )
    p.set_defaults(func=lambda args: _listing(args, client, "neighbours", neighbours_table))

    p = subparsers.add_parser(
        "links", parents=[common, output], help="show links to neighbours with live metrics"
    )
    p.set_defaults(func=lambda args: _listing(args, client, "links", links_table))

    p = subparsers.add_parser(
        "ping", parents=[common, output], help="round trips to a neighbour over its session"
    )
    p.add_argument("neighbour", metavar="NODE", help="node ID, short ID or name")
    p.add_argument("-c", "--count", type=int, default=1, help="requests to send (default 1)")
    p.add_argument(
        "-i", "--interval", type=float, default=1.0, help="seconds between them (default 1)"
    )
    p.set_defaults(func=lambda args: _ping(args, client))

    peers = subparsers.add_parser(
        "peers", parents=[common, output], help="list, add, revoke trusted peers"
    )
    peers.set_defaults(func=lambda args: _listing(args, client, "peers", peers_table))
    sub = peers.add_subparsers(dest="peers_command", metavar="COMMAND")
    p = sub.add_parser("list", parents=[common, output], help="list trusted and revoked peers")
    p.set_defaults(func=lambda args: _listing(args, client, "peers", peers_table))
    p = sub.add_parser("add", parents=[common], help="trust a node from its certificate (PEM)")
    p.add_argument("file", help="the node's certificate (from its `peers export`), - for stdin")
    p.add_argument("--name", help="name to show (default: the certificate's)")
    p.set_defaults(func=lambda args: _add(args, client))
    p = sub.add_parser("revoke", parents=[common], help="revoke a peer; its sessions close")
    p.add_argument("node_id", metavar="NODE-ID")
    p.set_defaults(func=lambda args: _revoke(args, client))
    p = sub.add_parser("export", parents=[common], help="print this node's certificate (PEM)")
    p.set_defaults(func=lambda args: _export(args, client))


def _listing(
    args: argparse.Namespace,
    client: Client,
    resource: str,
    render: Callable[[Sequence[Mapping[str, Any]]], str],
) -> int:
    listing = client(args).request("GET", f"{GROUP}/{resource}")
    if args.output == "json":
        print(json.dumps(listing, indent=2))
    elif not listing["items"]:
        print(f"No {resource}.", file=sys.stderr)
    else:
        print(render(listing["items"]))
    return 0


def _ping(args: argparse.Namespace, client: Client) -> int:
    api = client(args)
    for i in range(args.count):
        if i:
            time.sleep(args.interval)
        answer = api.request("POST", f"{GROUP}/neighbours/{args.neighbour}/ping")
        if args.output == "json":
            print(json.dumps(answer))
        else:
            print(
                f"reply from {answer['name']} ({short_id(answer['nodeID'])}) via "
                f"{answer['link']}: time={answer['rttSeconds'] * 1000:.2f} ms"
            )
    return 0


def _add(args: argparse.Namespace, client: Client) -> int:
    try:
        pem = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read certificate {args.file}: {err}") from err
    body: dict[str, Any] = {"certificate": pem}
    if args.name:
        body["name"] = args.name
    peer = client(args).request("POST", f"{GROUP}/peers", body=body)
    print(f"peer/{peer['metadata']['name']} ({peer['spec']['name']}) trusted")
    return 0


def _revoke(args: argparse.Namespace, client: Client) -> int:
    peer = client(args).request("DELETE", f"{GROUP}/peers/{args.node_id}")
    print(f"peer/{peer['metadata']['name']} ({peer['spec']['name']}) revoked")
    return 0


def _export(args: argparse.Namespace, client: Client) -> int:
    print(client(args).request("GET", f"{GROUP}/certificate")["certificate"], end="")
    return 0
