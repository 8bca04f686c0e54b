"""A multi-node network test bed: one network namespace per node, joined by a bridge.

Layout (every address lives inside namespaces this module created; nothing touches the host's own
interfaces)::

    ns <prefix>-hub:   br0 (mcast_snooping off, so mDNS floods) ── h1, h2, … (veth ends)
    ns <prefix>-NAME:  lo, eth0 = 10.99.0.<n>/24 (+ IPv6 link-local), the peer of h<n>
    direct links:      ethK = 10.99.<k>.1/24 and 10.99.<k>.2/24 between two nodes (veth pair)

Impairments per node interface: loss with nftables (``numgen random``, both directions, so
``loss=10`` loses 10 % of frames each way), rate with a tbf qdisc, and ``cut``/``restore`` that
drop every frame while the interface stays up (a radio out of range) — or ``unplug``/``plug``
that take the interface down (a cable pulled).

Namespaces are named ``fltbed<pid>-…``; :meth:`NetBed.close` kills every process inside them and
deletes them, and a new bed first removes beds of test runs whose process is gone, so an
interrupted run leaves nothing behind for long.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import subprocess
from collections.abc import Sequence
from typing import Any

__all__ = ["NetBed", "NetNode", "netbed_available"]

_PREFIX = "fltbed"


def _run(argv: Sequence[str], check: bool = True, input: str | None = None) -> str:
    result = subprocess.run(list(argv), capture_output=True, text=True, input=input, timeout=30)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def netbed_available() -> str | None:
    """Return None when namespaces, veth and nft work here, else the reason (for a skip)."""
    if os.geteuid() != 0:
        return "the network test bed needs root (ip netns, veth, nft)"
    for tool in ("ip", "nft", "tc"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            return f"{tool} is not installed (apt install iproute2 nftables)"
    return None


@dataclasses.dataclass
class NetNode:
    """One node of the bed.

    Attributes:
        name: short name given to :meth:`NetBed.add_node`.
        ns: the network namespace name.
        ip: IPv4 address on eth0 (the bridge), e.g. ``10.99.0.1``.
        interfaces: interfaces of the node besides lo (``eth0`` first, then direct links).
    """

    name: str
    ns: str
    ip: str
    interfaces: list[str]

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` prefixed to run inside this node's namespace."""
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(self, argv: Sequence[str], check: bool = True) -> str:
        """Run a command inside the namespace and return its stdout."""
        return _run(self.argv(argv), check=check)

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start a process inside the namespace (kwargs go to :class:`subprocess.Popen`)."""
        return subprocess.Popen(self.argv(argv), **kwargs)

    def link_local(self, interface: str = "eth0") -> str:
        """The interface's IPv6 link-local address (without scope), waiting for DAD."""
        for _ in range(100):
            out = self.run(["ip", "-6", "-o", "addr", "show", "dev", interface, "scope", "link"])
            match = re.search(r"inet6 (fe80::[0-9a-f:]+)/64 scope link\s*(\S*)", out)
            if match and "tentative" not in match.group(2):
                return match.group(1)
            subprocess.run(["sleep", "0.05"], check=True)
        raise RuntimeError(f"{self.ns}/{interface}: no usable IPv6 link-local address")


class NetBed:
    """A bridge and N node namespaces; use as a context manager (or call :meth:`close`)."""

    def __init__(self) -> None:
        self.prefix = f"{_PREFIX}{os.getpid()}"
        self.hub = f"{self.prefix}-hub"
        self.nodes: dict[str, NetNode] = {}
        self._direct = 0
        _sweep_stale()
        _run(["ip", "netns", "add", self.hub])
        self._hub(["ip", "link", "set", "lo", "up"])
        self._hub(["ip", "link", "add", "br0", "type", "bridge", "mcast_snooping", "0"])
        self._hub(["ip", "link", "set", "br0", "up"])

    def __enter__(self) -> NetBed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _hub(self, argv: Sequence[str]) -> str:
        return _run(["ip", "netns", "exec", self.hub, *argv])

    def add_node(self, name: str) -> NetNode:
        """Create a node namespace with eth0 on the bridge at ``10.99.0.<n>/24``.

        Raises:
            ValueError: the name is taken, or more than 250 nodes.
        """
        if name in self.nodes or len(self.nodes) >= 250:
            raise ValueError(f"node {name!r} exists or the bed is full")
        n = len(self.nodes) + 1
        node = NetNode(name, f"{self.prefix}-{name}", f"10.99.0.{n}", ["eth0"])
        _run(["ip", "netns", "add", node.ns])
        self.nodes[name] = node
        _veth("eth0", node.ns, f"h{n}", self.hub)
        self._hub(["ip", "link", "set", f"h{n}", "master", "br0", "up"])
        node.run(["ip", "link", "set", "lo", "up"])
        node.run(["ip", "addr", "add", f"{node.ip}/24", "dev", "eth0"])
        node.run(["ip", "link", "set", "eth0", "up"])
        node.run(["nft", "add", "table", "inet", "bed"])
        return node

    def add_direct_link(self, a: NetNode, b: NetNode) -> tuple[str, str]:
        """Join two nodes with their own veth pair (a second path besides the bridge).

        Returns:
            The interface name on both nodes and the subnet, e.g. ``("eth1", "10.99.1.0/24")``;
            ``a`` has ``.1``, ``b`` has ``.2``.
        """
        self._direct += 1
        k = self._direct
        ifname = f"eth{k}"
        _veth(ifname, a.ns, ifname, b.ns)
        for node, host in ((a, 1), (b, 2)):
            node.run(["ip", "addr", "add", f"10.99.{k}.{host}/24", "dev", ifname])
            node.run(["ip", "link", "set", ifname, "up"])
            node.interfaces.append(ifname)
        return ifname, f"10.99.{k}.0/24"

    def _rules(self, node: NetNode, interface: str, verdict: str) -> None:
        chain_in, chain_out = f"in_{interface}", f"out_{interface}"
        script = (
            f"add chain inet bed {chain_in} {{ type filter hook input priority 0; }}\n"
            f"add chain inet bed {chain_out} {{ type filter hook output priority 0; }}\n"
            f"flush chain inet bed {chain_in}\n"
            f"flush chain inet bed {chain_out}\n"
        )
        if verdict:
            script += (
                f"add rule inet bed {chain_in} iifname {interface} {verdict}\n"
                f"add rule inet bed {chain_out} oifname {interface} {verdict}\n"
            )
        _run(node.argv(["nft", "-f", "-"]), input=script)

    def set_loss(self, node: NetNode, percent: float, interface: str = "eth0") -> None:
        """Drop ``percent`` % of frames in each direction on the node's interface (0 clears)."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss must be 0..100 %, got {percent}")
        verdict = f"numgen random mod 1000 < {int(percent * 10)} drop" if percent else ""
        self._rules(node, interface, verdict)

    def cut(self, node: NetNode, interface: str = "eth0") -> None:
        """Drop every frame on the interface; it stays up (a peer out of radio range)."""
        self._rules(node, interface, "drop")

    def restore(self, node: NetNode, interface: str = "eth0") -> None:
        """Undo :meth:`cut` or :meth:`set_loss`."""
        self._rules(node, interface, "")

    def set_rate(self, node: NetNode, kbit: int | None, interface: str = "eth0") -> None:
        """Limit what the node sends on the interface to ``kbit`` kbit/s with tbf (None clears)."""
        if kbit is None:
            node.run(["tc", "qdisc", "del", "dev", interface, "root"], check=False)
            return
        tbf = ["tbf", "rate", f"{kbit}kbit", "burst", "16kbit", "latency", "200ms"]
        node.run(["tc", "qdisc", "replace", "dev", interface, "root", *tbf])

    def unplug(self, node: NetNode, interface: str = "eth0") -> None:
        """Take the interface down (carrier lost)."""
        node.run(["ip", "link", "set", interface, "down"])

    def plug(self, node: NetNode, interface: str = "eth0") -> None:
        """Bring the interface back up."""
        node.run(["ip", "link", "set", interface, "up"])

    def close(self) -> None:
        """Kill every process in the bed's namespaces and delete them; idempotent."""
        for ns in [*(n.ns for n in self.nodes.values()), self.hub]:
            _delete_ns(ns)
        self.nodes.clear()


def _veth(name: str, ns: str, peer: str, peer_ns: str) -> None:
    """A veth pair created straight inside two namespaces (no name clash in the host's)."""
    _run(
        [
            "ip",
            "link",
            "add",
            name,
            "netns",
            ns,
            "type",
            "veth",
            "peer",
            "name",
            peer,
            "netns",
            peer_ns,
        ]
    )


def _delete_ns(ns: str) -> None:
    pids = _run(["ip", "netns", "pids", ns], check=False).split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), 9)
    _run(["ip", "netns", "delete", ns], check=False)


def _sweep_stale() -> None:
    for line in _run(["ip", "netns", "list"], check=False).splitlines():
        match = re.match(rf"({_PREFIX}(\d+)-\S+)", line)
        if match and not os.path.exists(f"/proc/{match.group(2)}"):
            _delete_ns(match.group(1))
