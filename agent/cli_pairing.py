"""CLI commands of pairing: ``pair`` and ``unpair`` (clients of :mod:`agent.api_pairing`).

Examples::

    florete-agent pair                         # show a code and a QR code, wait for the peer
    florete-agent pair 4821-0937               # on the other device: pair with the code shown
    florete-agent pair --supernode rover       # a member of rover: the code also invites
    florete-agent pair 4821-0937               # ... there: pairs, then joins rover
    florete-agent pair 4821-0937 --no-supernode    # ... or pairs only
    florete-agent pair ssh://pi@robot.local     # pair with a robot over SSH
    florete-agent pair --install ssh://pi@new-robot   # ... installing the agent there
    florete-agent pair ssh://phone:8022         # a phone in Termux
    florete-agent unpair robot                 # revoke; sessions close on both sides

Exit codes: 0 paired (or unpaired; with an invitation: and joined, declined or a member of it
already), 1 failed (wrong code, expired, refused...; or paired but not joined the supernode it
was invited into), 2 usage, 130 interrupted (the code shown stops working; once paired, the
pairing stays).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.cli_supernode import await_invited, join_invited
from agent.errors import ApiError, FloreteError

__all__ = ["add_parsers"]

GROUP = "/apis/florete.io/v1alpha1"
Client = Callable[[argparse.Namespace], Any]
_POLL = 0.3  # seconds between status polls while a code is shown
_TERMINAL = {"paired", "burned", "expired", "cancelled", "none"}


def add_parsers(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
    client: Client,
) -> None:
    """Register ``pair`` and ``unpair`` on ``subparsers``.

    Args:
        subparsers: the top-level subparsers.
        common: the parent parser with ``--state-dir``, ``--socket`` and friends.
        client: builds an API client from the parsed arguments.
    """
    p = subparsers.add_parser(
        "pair",
        parents=[common],
        help="pair with another device: show a code, type one, or log in over SSH",
        description="Without TARGET: show a one-time code and QR code and wait for the other "
        "device. With a code (or the QR code's florete://pair URI): pair with the neighbour "
        "that shows it. With ssh://[user@]host[:port]: pair over an SSH login.",
    )
    p.add_argument("target", nargs="?", metavar="TARGET", help="CODE, pairing URI or ssh://...")
    p.add_argument("--peer", help="the neighbour to pair with, when several show a code")
    p.add_argument("--no-qr", action="store_true", help="do not draw the QR code")
    sn = p.add_argument_group("invitation into a supernode")
    sn.add_argument(
        "--supernode",
        metavar="NAME",
        help="(without TARGET) the code also invites the other device into supernode NAME, "
        "of which this node is a member: once paired, it joins",
    )
    sn.add_argument(
        "--no-supernode",
        action="store_true",
        help="(with a CODE) pair only: decline an invitation into a supernode that comes "
        "with the code",
    )
    ssh = p.add_argument_group("SSH pairing")
    ssh.add_argument(
        "-i", "--identity-file", action="append", type=Path, default=[], help="SSH private key"
    )
    ssh.add_argument(
        "--known-hosts",
        type=Path,
        default=Path("~/.ssh/known_hosts").expanduser(),
        help="known_hosts file (default ~/.ssh/known_hosts)",
    )
    ssh.add_argument(
        "--remote-command",
        default="florete-agent",
        help="how to run florete-agent on the remote host (default: florete-agent)",
    )
    ssh.add_argument(
        "-y",
        "--yes",
        "--install",
        dest="install",
        action="store_true",
        default=None,
        help="install (or start) florete-agent on the remote host without asking when it is "
        "missing there (into ~/.local/lib/florete-agent, for the login user)",
    )
    ssh.add_argument(
        "--wheelhouse",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="more wheels to copy when installing (for a host of another CPU or Python "
        "that has no network)",
    )
    p.set_defaults(func=lambda args: _pair(args, client))

    p = subparsers.add_parser(
        "unpair", parents=[common], help="revoke a paired peer; its sessions close on both sides"
    )
    p.add_argument("peer", metavar="PEER", help="node ID, short ID or name")
    p.set_defaults(func=lambda args: _unpair(args, client))


def _pair(args: argparse.Namespace, client: Client) -> int:
    args.request_timeout = max(args.request_timeout, 90.0)
    target = args.target
    if args.supernode is not None and target is not None:
        print(
            "pair: --supernode goes with `pair` alone, on the device that shows the code",
            file=sys.stderr,
        )
        return 2
    if args.no_supernode and (target is None or target.startswith("ssh://")):
        print(
            "pair: --no-supernode goes with `pair CODE`, on the device where it is typed",
            file=sys.stderr,
        )
        return 2
    if target is None:
        return _show(args, client)
    if target.startswith("ssh://"):
        return _ssh(args, client)
    return _join(args, client)


def _show(args: argparse.Namespace, client: Client) -> int:
    api = client(args)
    invite = args.supernode
    try:
        body = None if invite is None else {"supernode": invite}
        shown = api.request("POST", f"{GROUP}/pairing", body=body)
    except ApiError as err:
        if invite is None:
            raise
        print(f"not showing a code: {err.message}", file=sys.stderr)
        return 1
    try:  # from here on a Ctrl-C withdraws the code, wherever it lands
        status = _announce_and_wait(args, api, shown)
    except KeyboardInterrupt:
        # A new connection: the interrupted one may be stuck in the middle of a request.
        client(args).request("DELETE", f"{GROUP}/pairing")
        print("stopped: the code no longer works", file=sys.stderr)
        return 130
    events = status.get("events", [])
    peer = status.get("peer")
    if status["state"] == "paired" and peer is not None:
        print(f"Paired with {peer['name']} ({peer['nodeID']})")
        print(f"Fingerprint: {peer['fingerprint']}", flush=True)
        invitation = status.get("supernode")
        return 0 if invitation is None else await_invited(api, peer, invitation)
    last = events[-1]["message"] if events else status["state"]
    print(f"pairing failed: {last}", file=sys.stderr)
    return 1


def _announce_and_wait(args: argparse.Namespace, api: Any, shown: dict[str, Any]) -> dict[str, Any]:
    """Print the code (and its QR code), then poll until the pairing ends; returns its status.

    Raises:
        KeyboardInterrupt: Ctrl-C (the caller withdraws the code).
    """
    invite = args.supernode
    ttl = shown["expiresInSeconds"]
    valid = f"{ttl / 60:g} min" if ttl >= 60 else f"{ttl:g} s"
    print(f"Pairing code: {shown['code']}   (valid {valid}, until {shown['expiresAt']})")
    if not args.no_qr:
        import segno

        segno.make(shown["uri"], error="m").terminal(out=sys.stdout, compact=True)
    print(f"On the other device run:  florete-agent pair {shown['code']}")
    if invite is not None:
        print(
            f"It then joins supernode {invite} (or pairs only: "
            f"florete-agent pair {shown['code']} --no-supernode)"
        )
    print("Waiting for it... (Ctrl-C stops showing the code)", flush=True)
    seen = 0
    while True:
        status: dict[str, Any] = api.request("GET", f"{GROUP}/pairing")
        events = status.get("events", [])
        for event in events[seen:]:
            if event["kind"] in ("attempt", "failed", "refused"):
                print(f"  {event['message']}", flush=True)
        seen = len(events)
        if status["state"] in _TERMINAL:
            return status
        time.sleep(_POLL)


def _join(args: argparse.Namespace, client: Client) -> int:
    from agent.pairing.code import parse_target

    parse_target(args.target)  # a typo is reported here, before any attempt is spent
    body: dict[str, Any] = {"code": args.target, "acceptInvitation": not args.no_supernode}
    if args.peer:
        body["peer"] = args.peer
    print("Looking for the device that shows the code...", file=sys.stderr, flush=True)
    api = client(args)
    try:
        result = api.request("POST", f"{GROUP}/pairing/join", body=body)
    except ApiError as err:
        print(f"pairing failed: {err.message}", file=sys.stderr)
        return 1
    print(f"Paired with {result['name']} ({result['nodeID']})")
    print(f"Fingerprint: {result['fingerprint']}", flush=True)
    invitation = result.get("supernode")
    return 0 if invitation is None else join_invited(api, result, invitation)


def _ssh(args: argparse.Namespace, client: Client) -> int:
    from agent.pairing import ssh

    target = ssh.parse_target(args.target)
    api = client(args)
    local = api.request("GET", f"{GROUP}/certificate")["certificate"]
    added: dict[str, Any] = {}

    async def trust_remote(remote: ssh.RemoteAgent) -> None:
        body = {"certificate": remote.certificate, "address": target.url(remote.user)}
        added.update(
            await asyncio.to_thread(api.request, "POST", f"{GROUP}/pairing/peers", body=body)
        )

    def ask(prompt: str) -> str:
        print(prompt, end="", file=sys.stderr, flush=True)
        return sys.stdin.readline().rstrip("\n")

    def say(text: str) -> None:
        print(text, file=sys.stderr)

    try:
        remote = asyncio.run(
            ssh.exchange_identities(
                target,
                local,
                trust_remote,
                known_hosts=args.known_hosts,
                client_keys=args.identity_file,
                remote_command=args.remote_command,
                ask=ask,
                ask_secret=getpass.getpass,
                say=say,
                install=args.install,
                wheelhouse=args.wheelhouse,
            )
        )
    except FloreteError as err:
        print(f"pairing failed: {err.message}", file=sys.stderr)
        return 1
    print(f"Paired with {added['spec']['name']} ({added['metadata']['name']}) over SSH")
    print(f"Fingerprint: {added['status']['fingerprint']}")
    print(f"Remote agent: {remote.version.splitlines()[-1] if remote.version else '?'}")
    if remote.installed:
        print(f"Installed on {target.host} for {remote.user}: ~/{ssh.LAUNCHER} (started)")
    elif remote.started:
        print(f"Started on {target.host} as {remote.user}: ~/{ssh.LAUNCHER} run")
    return 0


def _unpair(args: argparse.Namespace, client: Client) -> int:
    result = client(args).request("POST", f"{GROUP}/peers/{args.peer}/unpair")
    peer = result["peer"]
    print(f"peer/{peer['metadata']['name']} ({peer['spec']['name']}) unpaired: {result['detail']}")
    return 0
