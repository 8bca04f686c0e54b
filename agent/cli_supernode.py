"""CLI commands of the supernode: ``supernode create|join|leave|status``.

Clients of :mod:`agent.api_supernode`. Examples::

    florete-agent supernode create rover          # on one board: rover has one member
    florete-agent supernode join rover            # on each paired board
    florete-agent supernode status                # members, leader, term, health, placements
    florete-agent apply -f pod.yaml               # on any member: the leader places it
    florete-agent get pods -o wide                # NODE is the member each pod runs on
    florete-agent supernode leave                 # its pods move to the other members first
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.render import table

__all__ = ["add_parsers", "status_text"]

GROUP = "/apis/florete.io/v1alpha1"
Client = Callable[[argparse.Namespace], Any]


def _short(node_id: str | None) -> str:
    return "-" if not node_id else node_id.split("-", 1)[0]


def _link(link: Mapping[str, Any] | None) -> str:
    if not link:
        return "-"
    rtt = link.get("rttSeconds")
    shown = "-" if rtt is None else f"{rtt * 1000:.1f}ms"
    return f"{link.get('link', '?')} {shown}"


def status_text(obj: Mapping[str, Any]) -> str:
    """The human view of a ``Supernode`` object."""
    st = obj["status"]
    leader = st.get("leader") or {}
    members: Sequence[Mapping[str, Any]] = st.get("members", [])
    up = sum(1 for m in members if m["health"] == "up")
    cap, alloc = st["capacity"], st["allocatable"]
    lines = [
        f"Supernode:   {obj['metadata']['name']} ({len(members)} members, {up} up)",
        f"This node:   {st['name']} ({_short(st['nodeID'])}), {st['role']}",
        f"Leader:      {leader.get('name') or '-'} ({_short(leader.get('nodeID'))}), "
        f"term {st['term']}, quorum {'yes' if st['leaderContact'] else 'NO'}",
        f"Raft log:    commit {st['commitIndex']}, applied {st['lastApplied']}",
        f"Timing:      {st['timing']['summary']}",
        f"Capacity:    cpu {cap['cpu']}, memory {cap['memory']}, pods {cap['pods']} "
        f"(allocatable: cpu {alloc['cpu']}, memory {alloc['memory']}, pods {alloc['pods']})",
        "",
    ]
    rows = []
    for m in members:
        capacity = m.get("capacity") or {}
        runtimes = m.get("runtimes") or {}
        devices = m.get("devices") or {}
        rows.append(
            [
                m["name"],
                _short(m["nodeID"]),
                m["role"],
                m["health"],
                f"{m['lastHeardSecondsAgo']:.1f}s",
                _link(m.get("link")),
                f"{m['requested']['cpu']}/{capacity.get('cpu', '?')}",
                f"{m['requested']['pods']}/{capacity.get('pods', '?')}",
                ",".join(sorted(n for n, ok in runtimes.items() if ok)) or "-",
                ",".join(f"{k}={v}" for k, v in sorted(devices.items())) or "-",
            ]
        )
    headers = ["MEMBER", "NODE-ID", "ROLE", "HEALTH", "HEARD", "LINK", "CPU", "PODS"]
    lines.append(table([*headers, "RUNTIMES", "DEVICES"], rows))
    placements = st.get("placements", [])
    lines.append("")
    if not placements:
        lines.append("No pods placed.")
        return "\n".join(lines)
    rows = [
        [
            f"{p['namespace']}/{p['name']}",
            p["member"] or "<none>",
            str(p["generation"]),
            ("deleting; " if p["deleting"] else "") + (p["reason"] or "-"),
        ]
        for p in placements
    ]
    lines.append(table(["POD", "MEMBER", "GENERATION", "NOTE"], rows))
    return "\n".join(lines)


def add_parsers(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    client: Client,
) -> None:
    """Register ``supernode`` and its subcommands on ``subparsers``.

    Args:
        subparsers: the top-level subparsers.
        common: the parent parser with ``--state-dir``, ``--socket`` and friends.
        client: builds an API client from the parsed arguments.
    """
    top = subparsers.add_parser(
        "supernode", parents=[common], help="several boards as one node: create, join, status"
    )
    sub = top.add_subparsers(dest="supernode_command", metavar="COMMAND", required=True)
    p = sub.add_parser("create", parents=[common], help="create a supernode with this node in it")
    p.add_argument("name", help="the supernode's name (a DNS label); it is the Node's name")
    p.set_defaults(func=lambda args: _create(args, client))
    p = sub.add_parser("join", parents=[common], help="join a supernode a neighbour is part of")
    p.add_argument("name")
    p.add_argument("--timeout", type=float, default=30.0, metavar="SECONDS")
    p.set_defaults(func=lambda args: _join(args, client))
    p = sub.add_parser("leave", parents=[common], help="leave; the pods here move to others")
    p.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS")
    p.add_argument(
        "--force",
        action="store_true",
        help="forget the membership without the other members (they are gone or removed "
        "this node); the pods here stay as this node's own",
    )
    p.set_defaults(func=lambda args: _leave(args, client))
    p = sub.add_parser("status", parents=[common], help="members, leader, health, placements")
    p.add_argument("-o", "--output", choices=["json"], help="print the API's JSON")
    p.set_defaults(func=lambda args: _status(args, client))


def _create(args: argparse.Namespace, client: Client) -> int:
    obj = client(args).request("POST", f"{GROUP}/supernode", body={"name": args.name})
    print(f"supernode/{obj['metadata']['name']} created with member {obj['status']['name']}")
    return 0


def _join(args: argparse.Namespace, client: Client) -> int:
    args.request_timeout = max(args.request_timeout, args.timeout + 5)
    api = client(args)
    body = {"name": args.name, "timeoutSeconds": args.timeout}
    obj = api.request("POST", f"{GROUP}/supernode/join", body=body)
    members = ", ".join(m["name"] for m in obj["status"]["members"])
    print(f"joined supernode/{obj['metadata']['name']} (members: {members})")
    return 0


def _leave(args: argparse.Namespace, client: Client) -> int:
    args.request_timeout = max(args.request_timeout, args.timeout + 5)
    api = client(args)
    body = {"timeoutSeconds": args.timeout, "force": args.force}
    api.request("POST", f"{GROUP}/supernode/leave", body=body)
    print("left the supernode")
    return 0


def _status(args: argparse.Namespace, client: Client) -> int:
    obj = client(args).request("GET", f"{GROUP}/supernode")
    if args.output == "json":
        print(json.dumps(obj, indent=2))
    else:
        print(status_text(obj))
    return 0
