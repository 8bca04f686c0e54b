"""UDP and Wi-Fi data paths between two network namespaces joined by a veth pair.

Each test makes its own pair of namespaces (``flt<pid>-<n>-a`` / ``-b``) with one veth ``fl0`` in
each, IPv4 10.99.0.1/.2 and the kernel's IPv6 link-local addresses; they are deleted in the
fixture's finalizer, also on failure. Sockets are created inside a namespace by switching the
test thread into it around ``start()`` (pyroute2 ``pushns``/``popns``): a socket stays in the
namespace it was made in. Nothing is sent outside these namespaces.

The kernel here has no netem, so loss is an nftables rule in each namespace's input hook
(``numgen random mod 100 < 10 drop`` for UDP on fl0): 10 % in each direction, ACKs included.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import random
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from pyroute2 import netns

from link_drivers.stream import ArqStream
from link_drivers.udp import UdpAddress, UdpChannel, UdpDriver
from link_drivers.wifi import WifiDriver

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root"),
]

DEV = "fl0"
_serial = itertools.count()


@dataclasses.dataclass(frozen=True)
class Pair:
    """Two namespaces joined by ``fl0``; ``a`` has 10.99.0.1, ``b`` 10.99.0.2."""

    a: str
    b: str
    ip_a: str = "10.99.0.1"
    ip_b: str = "10.99.0.2"


def run(*argv: str, stdin: str | None = None) -> str:
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} failed: {result.stderr.strip()}")
    return result.stdout


def wait_link_local(ns: str, timeout: float = 10.0) -> None:
    """Wait until fl0's IPv6 link-local address has passed duplicate address detection."""
    deadline = time.monotonic() + timeout
    while True:
        shown = run("ip", "-n", ns, "-6", "addr", "show", "dev", DEV, "scope", "link")
        if "fe80" in shown and "tentative" not in shown:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no usable link-local address on {ns}/{DEV}:\n{shown}")
        time.sleep(0.05)


@pytest.fixture
def pair() -> Iterator[Pair]:
    """Fresh namespaces with a veth between them; always deleted afterwards."""
    tag = f"flt{os.getpid()}-{next(_serial)}"
    names = (f"{tag}-a", f"{tag}-b")
    created: list[str] = []
    try:
        for ns in names:
            run("ip", "netns", "add", ns)
            created.append(ns)
            # No duplicate address detection on the fresh veth: saves ~2 s per test.
            run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
        run(
            "ip", "link", "add", DEV, "netns", names[0],
            "type", "veth", "peer", "name", DEV, "netns", names[1],
        )  # fmt: skip
        for ns, addr in zip(names, ("10.99.0.1/24", "10.99.0.2/24"), strict=True):
            run("ip", "-n", ns, "link", "set", "lo", "up")
            run("ip", "-n", ns, "addr", "add", addr, "dev", DEV)
            run("ip", "-n", ns, "link", "set", DEV, "up")
        for ns in names:
            wait_link_local(ns)
        yield Pair(*names)
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def add_loss(ns: str, percent: int) -> None:
    """Drop ``percent`` % of UDP datagrams arriving on fl0 in ``ns`` (nftables input hook)."""
    run(
        "ip",
        "netns",
        "exec",
        ns,
        "nft",
        "-f",
        "-",
        stdin=(
            "table inet florete_loss {\n chain input {\n"
            "  type filter hook input priority 0; policy accept;\n"
            f'  iifname "{DEV}" meta l4proto udp numgen random mod 100 < {percent} drop\n'
            " }\n}\n"
        ),
    )


@contextlib.contextmanager
def inside(ns: str) -> Iterator[None]:
    """Run the enclosed code (socket creation) in namespace ``ns``."""
    netns.pushns(ns)
    try:
        yield
    finally:
        netns.popns()


async def started(ns: str, driver: UdpDriver | WifiDriver) -> None:
    with inside(ns):
        await driver.start()


def reach(driver: UdpDriver | WifiDriver, ipv6: bool, ipv4_host: str) -> UdpAddress:
    """The address a peer on the veth uses to reach ``driver``."""
    a = next(a for a in driver.bound if a.ipv6 == ipv6)
    return UdpAddress(a.host if ipv6 else ipv4_host, a.port, DEV)


@pytest.fixture
async def drivers(pair: Pair) -> AsyncIterator[tuple[UdpDriver, UdpDriver]]:
    a = UdpDriver({"interfaces": [DEV], "port": 0})
    b = UdpDriver({"interfaces": [DEV], "port": 0})
    try:
        await started(pair.a, a)
        await started(pair.b, b)
        yield a, b
    finally:
        await a.aclose()
        await b.aclose()


async def arq_transfer(ours: UdpChannel, server: UdpDriver, nbytes: int) -> ArqStream:
    """Send ``nbytes`` from ``ours`` to the peer that ``server`` accepts; checks every byte.

    Returns:
        The sending stream (closed), for its metrics.
    """
    data = random.Random(7).randbytes(nbytes)
    chunk = (ours.info.mtu - 4) * 16
    async with ArqStream(ours, name="a") as sender:
        theirs = await server.accept()
        async with ArqStream(theirs, name="b") as receiver:
            await asyncio.gather(sender.wait_connected(), receiver.wait_connected())

            async def push() -> None:
                for i in range(0, nbytes, chunk):
                    await sender.send(data[i : i + chunk])
                await sender.drain()

            async def pull() -> bytes:
                got = bytearray()
                while len(got) < nbytes:
                    got += await receiver.receive()
                return bytes(got)

            _, received = await asyncio.gather(push(), pull())
    assert len(received) == nbytes
    assert received == data
    return sender


@pytest.mark.timeout(60)
async def test_ipv4_and_ipv6_link_local_over_veth(
    pair: Pair, drivers: tuple[UdpDriver, UdpDriver]
) -> None:
    a, b = drivers
    link_local = [x for x in a.bound if x.ipv6]
    assert link_local
    assert link_local[0].host.startswith("fe80:")
    for ipv6 in (False, True):
        ch = a.channel(reach(b, ipv6, pair.ip_b))
        await ch.send(b"hello %d" % ipv6)
        async with asyncio.timeout(5):
            theirs = await b.accept()
            assert theirs.peer == reach(a, ipv6, pair.ip_a)
            assert await theirs.receive() == b"hello %d" % ipv6
            await theirs.send(b"back")
            assert await ch.receive() == b"back"
        assert ch.metrics.up
        assert ch.info.bitrate == 10e9  # veth reports 10000 Mbit/s


@pytest.mark.timeout(120)
async def test_arq_moves_1_mib_intact_over_veth(
    pair: Pair, drivers: tuple[UdpDriver, UdpDriver]
) -> None:
    a, b = drivers
    async with asyncio.timeout(60):
        sender = await arq_transfer(a.channel(reach(b, False, pair.ip_b)), b, 1 << 20)
    assert sender.metrics.retransmissions == 0
    assert a.stats.errors == 0


@pytest.mark.timeout(180)
async def test_arq_moves_1_mib_intact_with_10_percent_loss(
    pair: Pair, drivers: tuple[UdpDriver, UdpDriver]
) -> None:
    """Over IPv6 link-local, 10 % of datagrams dropped in each direction."""
    a, b = drivers
    add_loss(pair.a, 10)
    add_loss(pair.b, 10)
    async with asyncio.timeout(150):
        sender = await arq_transfer(a.channel(reach(b, True, pair.ip_b)), b, 1 << 20)
    m = sender.metrics
    assert m.retransmissions >= 0.03 * m.tx_frames  # the loss was real
    assert m.up


@pytest.mark.timeout(60)
async def test_wifi_driver_on_a_veth_without_a_radio(pair: Pair) -> None:
    """No nl80211 behind a veth: the radio is reported unavailable, the UDP path works."""
    wifi = WifiDriver({"interface": DEV, "port": 0, "poll_interval": 0.1})
    peer = UdpDriver({"interfaces": [DEV], "port": 0})
    try:
        await started(pair.a, wifi)
        await started(pair.b, peer)
        with inside(pair.a):
            reason = wifi.available()
        assert reason == f"no wireless interface {DEV}: /sys/class/net/{DEV}/phy80211 missing"
        assert not wifi.up
        assert wifi.radio_metrics() is None
        assert wifi.udp.unbound() == []  # so the poller never binds outside the namespace
        for ipv6 in (False, True):
            ch = wifi.channel(reach(peer, ipv6, pair.ip_b))
            assert ch.metrics.up
            async with asyncio.timeout(30):
                await arq_transfer(ch, peer, 64 * 1024)
    finally:
        await wifi.aclose()
        await peer.aclose()


def test_namespaces_are_gone_after_each_test() -> None:
    listed = run("ip", "netns", "list")
    assert f"flt{os.getpid()}-" not in listed
