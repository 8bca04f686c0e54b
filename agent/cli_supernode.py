"""CLI commands of the supernode: ``supernode create|join|leave|status``.

Clients of :mod:`agent.api_supernode`. Examples::

    florete-agent supernode create rover          # on one board: rover has one member
    florete-agent supernode join rover            # on each paired board
    florete-agent supernode status                # members, leader, term, health, placements
    florete-agent apply -f pod.yaml               # on any member: the leader places it
    florete-agent get pods -o wide                # NODE is the member each pod runs on
    florete-agent supernode leave                 # its pods move to the other members first
    florete-agent pair --supernode rover          # a code that also invites into rover

The two halves of an invitation that came with pairing (``pair --supernode``) are here too:
:func:`join_invited` on the device that typed the code, :func:`await_invited` on the member
that showed it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from agent.errors import ApiError
from agent.render import table

__all__ = ["add_parsers", "await_invited", "join_invited", "status_text"]

GROUP = "/apis/florete.io/v1alpha1"
Client = Callable[[argparse.Namespace], Any]
SESSION_WAIT = 15.0
"""Seconds an invited node waits for the authenticated session to the inviter before joining."""
JOIN_TIMEOUT = 30.0
"""Seconds an invited node gives the members to admit it (as ``supernode join``)."""
INVITED_WAIT = SESSION_WAIT + JOIN_TIMEOUT + 15.0
"""Seconds the inviting member waits to see the invited node among the members."""
_POLL = 0.3


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
    print(_joined(obj))
    return 0


def _joined(obj: Mapping[str, Any], who: str = "") -> str:
    members = ", ".join(m["name"] for m in obj["status"]["members"])
    return f"{who}joined supernode/{obj['metadata']['name']} (members: {members})"


def _session_up(api: Any, node_id: str, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for an authenticated session with ``node_id``."""
    deadline = time.monotonic() + timeout
    while True:
        links = api.request("GET", f"{GROUP}/links")["items"]
        if any(k["nodeID"] == node_id and k["state"] == "established" for k in links):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(_POLL)


def join_invited(api: Any, inviter: Mapping[str, Any], invitation: Mapping[str, Any]) -> int:
    """On the node that typed the code: act on the invitation that came with it.

    Accepted, it joins through the ordinary join (``POST supernode/join``, as ``supernode
    join NAME``) once the authenticated session with the inviter is up; declined or already a
    member, it says so. The pairing stays whatever happens here.

    Args:
        api: the API client.
        inviter: the ``pairing/join`` result (``nodeID``, ``name``).
        invitation: its ``supernode``: ``{"name", "answer", "memberOf"}``.

    Returns:
        The exit code: 0 joined, declined or a member of it already; 1 not joined.
    """
    name, answer, member_of = invitation["name"], invitation["answer"], invitation["memberOf"]
    print(f"{inviter['name']} invites this node into supernode {name}")
    if answer == "declined":
        print(f"Not joining it (--no-supernode): `florete-agent supernode join {name}` joins later")
        return 0
    if answer == "member" and member_of == name:
        print(f"This node is a member of supernode {name} already")
        return 0
    if answer != "accepted":
        print(
            f"not joining supernode {name}: this node is a member of supernode {member_of}; "
            f"`florete-agent supernode leave`, then `florete-agent supernode join {name}`",
            file=sys.stderr,
        )
        return 1
    print(f"Joining supernode {name}...", flush=True)
    try:
        if not _session_up(api, inviter["nodeID"], SESSION_WAIT):
            print(f"  no session with {inviter['name']} yet; trying anyway", flush=True)
        body = {"name": name, "timeoutSeconds": JOIN_TIMEOUT}
        obj = api.request("POST", f"{GROUP}/supernode/join", body=body)
    except ApiError as err:
        print(f"not joined supernode {name}: {err.message}", file=sys.stderr)
        print(
            f"still paired with {inviter['name']}; `florete-agent supernode join {name}` tries "
            "again",
            file=sys.stderr,
        )
        return 1
    print(_joined(obj))
    return 0


def await_invited(api: Any, peer: Mapping[str, Any], invitation: Mapping[str, Any]) -> int:
    """On the member that showed the code: wait for the paired peer to join, and say so.

    Args:
        api: the API client.
        peer: the paired peer (``nodeID``, ``name``) from ``GET pairing``.
        invitation: ``{"name", "answer"}`` from ``GET pairing`` (answer None: its DONE was lost).

    Returns:
        The exit code: 0 joined, declined or a member already; 1 it did not join within
        :data:`INVITED_WAIT` seconds, or cannot; 130 interrupted (the pairing stays).
    """
    who, name, answer = peer["name"], invitation["name"], invitation["answer"]
    if answer == "declined":
        print(f"{who} declined the invitation into supernode {name}: paired only")
        return 0
    try:
        if answer == "member":
            if _is_member(api, peer["nodeID"]) is not None:
                print(f"{who} is a member of supernode {name} already")
                return 0
            print(
                f"{who} is a member of another supernode: it does not join {name} (it must "
                "`florete-agent supernode leave` first)",
                file=sys.stderr,
            )
            return 1
        said = "accepted the invitation" if answer == "accepted" else "was invited"
        print(f"{who} {said} into supernode {name}; waiting for it to join...", flush=True)
        deadline = time.monotonic() + INVITED_WAIT
        while time.monotonic() < deadline:
            obj = _is_member(api, peer["nodeID"])
            if obj is not None:
                print(_joined(obj, f"{who} "))
                return 0
            time.sleep(_POLL)
    except ApiError as err:
        if err.status == 404:  # this node left the supernode since it showed the code
            print(
                f"this node is not a member of supernode {name} any more, so {who} cannot join "
                "it here; it stays paired",
                file=sys.stderr,
            )
        else:
            print(f"cannot follow supernode {name}: {err.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"stopped waiting; {who} stays paired", file=sys.stderr)
        return 130
    print(
        f"{who} did not join supernode {name} within {INVITED_WAIT:g} s (`florete-agent "
        f"supernode status` there says why); it stays paired",
        file=sys.stderr,
    )
    return 1


def _is_member(api: Any, node_id: str) -> dict[str, Any] | None:
    """This node's ``Supernode`` object when ``node_id`` is among its members, else None."""
    obj: dict[str, Any] = api.request("GET", f"{GROUP}/supernode")
    members = obj["status"]["members"]
    return obj if any(m["nodeID"] == node_id for m in members) else None


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
