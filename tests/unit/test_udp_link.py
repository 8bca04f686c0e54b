"""The ``udp`` link driver over loopback (127.0.0.1 and ::1 on ``lo``, ephemeral ports).

Real sockets, real kernel: ICMP port-unreachable comes from the loopback stack itself.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agent.errors import ConfigError, LocalError
from link_drivers.api import DatagramChannel, LinkDriver, load_driver
from link_drivers.udp import ACCEPT_BACKLOG, UdpAddress, UdpConfig, UdpDriver, parse_peer

FAMILIES = [socket.AF_INET, socket.AF_INET6]


def address(driver: UdpDriver, family: int) -> UdpAddress:
    """Where to reach ``driver`` on loopback for the family (IPv4 sockets bind 0.0.0.0)."""
    for a in driver.bound:
        if (family == socket.AF_INET6) == a.ipv6:
            host = "127.0.0.1" if a.host == "0.0.0.0" else a.host
            return UdpAddress(host, a.port, a.interface)
    raise AssertionError(f"no {family} socket in {driver.bound}")


@pytest.fixture
async def make_driver() -> AsyncIterator[Callable[..., Any]]:
    """Factory of started drivers on ``lo`` with ephemeral ports; all closed at teardown."""
    drivers: list[UdpDriver] = []

    async def make(**config: Any) -> UdpDriver:
        driver = UdpDriver({"interfaces": ["lo"], "port": 0, **config})
        drivers.append(driver)
        await driver.start()
        return driver

    yield make
    for d in drivers:
        await d.aclose()


async def receive(channel: DatagramChannel) -> bytes:
    async with asyncio.timeout(2):
        return await channel.receive()


async def until(predicate: Callable[[], bool], seconds: float = 2.0) -> None:
    """Poll a counter the kernel moves (datagrams in flight on loopback) until it holds."""
    async with asyncio.timeout(seconds):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)


# ------------------------------------------------------------------ configuration


def test_config_from_mapping_accepts_lists_and_comma_strings() -> None:
    a = UdpConfig.from_mapping({"interfaces": ["lo"], "port": 0, "mtu": 512, "queue": 8})
    b = UdpConfig.from_mapping({"interfaces": "lo, eth1"})
    assert a.interfaces == ("lo",)
    assert (a.port, a.mtu, a.queue, a.ipv4, a.ipv6) == (0, 512, 8, True, True)
    assert b.interfaces == ("lo", "eth1")
    assert b.port == 4737
    assert b.mtu == 1200


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"interfaces": ["lo"], "prot": 1}, "unknown key 'prot'"),
        ({"port": 1}, "interfaces is required"),
        ({"interfaces": []}, "at least one interface"),
        ({"interfaces": ""}, "at least one interface"),
        ({"interfaces": ["lo", "lo"]}, "lists a name twice"),
        ({"interfaces": ["a/b"]}, "not a valid interface name"),
        ({"interfaces": ["x" * 16]}, "not a valid interface name"),
        ({"interfaces": ["lo"], "port": 70000}, "port must be 0..65535"),
        ({"interfaces": ["lo"], "port": "4737"}, "port must be an integer"),
        ({"interfaces": ["lo"], "mtu": 8}, "mtu must be 16..65507"),
        ({"interfaces": ["lo"], "mtu": True}, "mtu must be an integer"),
        ({"interfaces": ["lo"], "queue": 0}, "queue must be 1.."),
        ({"interfaces": ["lo"], "ipv6": "yes"}, "ipv6 must be true or false"),
        ({"interfaces": ["lo"], "ipv4": False, "ipv6": False}, "enable at least one"),
        ({"interfaces": ["lo"], "peer": ["a:1", "b:2"]}, "peer must be a 'host:port' string"),
        ({"interfaces": ["lo"], "peer": "fe80::1:4737"}, "in brackets"),
        ({"interfaces": ["lo"], "peer": "localhost:4737"}, "must be an IP address"),
        ({"interfaces": ["lo"], "peer": "10.0.0.1"}, "must be 'host:port'"),
        ({"interfaces": ["lo", "eth1"], "peer": "10.0.0.1:1"}, "several interfaces"),
        ({"interfaces": ["lo"], "peer": "[fe80::1%eth1]:1"}, "'eth1' is not in interfaces"),
    ],
)
def test_config_errors_name_the_key(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        UdpConfig.from_mapping(mapping)


def test_peer_parsing_and_address_normal_form() -> None:
    assert parse_peer("10.99.0.2:4737", ("eth1",)) == UdpAddress("10.99.0.2", 4737, "eth1")
    v6 = parse_peer("[FE80::0001%wlan0]:9", ("eth1", "wlan0"))
    assert v6 == UdpAddress("fe80::1", 9, "wlan0")
    assert v6.ipv6
    assert str(v6) == "[fe80::1%wlan0]:9"
    assert UdpAddress("fe80::1%lo", 1, "lo").host == "fe80::1"
    with pytest.raises(ConfigError, match="must be an IP address"):
        UdpAddress("example.org", 1, "lo")


def test_driver_is_a_registered_link_driver() -> None:
    assert load_driver("udp") is UdpDriver
    driver = UdpDriver({"interfaces": ["lo"]})
    assert isinstance(driver, LinkDriver)
    assert driver.name == "udp"
    info = driver.info
    assert info.mtu == 1200
    assert info.bitrate == 100e6  # lo reports no speed
    assert info.cost == 1.0


# ------------------------------------------------------------------ data path


@pytest.mark.parametrize("family", FAMILIES, ids=["ipv4", "ipv6"])
async def test_exchange_and_accept(make_driver: Callable[..., Any], family: int) -> None:
    a, b = await make_driver(), await make_driver()
    ch = a.channel(address(b, family))
    assert a.channel(address(b, family)) is ch
    await ch.send(b"ping")
    async with asyncio.timeout(2):
        theirs = await b.accept()
    assert theirs.peer == address(a, family)
    assert await receive(theirs) == b"ping"
    await theirs.send(b"pong")
    assert await receive(ch) == b"pong"
    m = ch.metrics
    assert (m.tx_frames, m.tx_bytes, m.rx_frames, m.rx_bytes, m.up) == (1, 4, 1, 4, True)
    assert theirs.metrics.rx_frames == 1
    assert b.channel(theirs.peer) is theirs


async def test_open_uses_the_configured_peer(make_driver: Callable[..., Any]) -> None:
    b = await make_driver()
    target = address(b, socket.AF_INET)
    a = UdpDriver({"interfaces": ["lo"], "port": 0, "peer": f"127.0.0.1:{target.port}"})
    try:
        ch = await a.open()
        assert ch.peer == target
        await ch.send(b"x")
        async with asyncio.timeout(2):
            assert await (await b.accept()).receive() == b"x"
    finally:
        await a.aclose()
    with pytest.raises(ConfigError, match=r"use channel|call start\(\) and channel"):
        await b.open()


async def test_demultiplexes_two_peers_on_one_socket(make_driver: Callable[..., Any]) -> None:
    server, p1, p2 = await make_driver(), await make_driver(), await make_driver()
    target = address(server, socket.AF_INET)
    c1, c2 = p1.channel(target), p2.channel(target)
    for i in range(5):
        await c1.send(b"one %d" % i)
        await c2.send(b"two %d" % i)
    async with asyncio.timeout(2):
        first, second = await server.accept(), await server.accept()
    by_peer = {first.peer: first, second.peer: second}
    ch1 = by_peer[address(p1, socket.AF_INET)]
    ch2 = by_peer[address(p2, socket.AF_INET)]
    assert [await receive(ch1) for _ in range(5)] == [b"one %d" % i for i in range(5)]
    assert [await receive(ch2) for _ in range(5)] == [b"two %d" % i for i in range(5)]
    await ch2.send(b"only to p2")
    assert await receive(c2) == b"only to p2"
    assert c1.metrics.rx_frames == 0


async def test_oversize_send_is_a_local_error(make_driver: Callable[..., Any]) -> None:
    a, b = await make_driver(mtu=100), await make_driver()
    ch = a.channel(address(b, socket.AF_INET))
    await ch.send(b"x" * 100)
    with pytest.raises(LocalError, match="exceeds the MTU of 100"):
        await ch.send(b"x" * 101)
    assert ch.metrics.tx_frames == 1


async def test_oversize_datagram_received_is_rejected(make_driver: Callable[..., Any]) -> None:
    a, b = await make_driver(mtu=100), await make_driver(mtu=1000)
    ours = a.channel(address(b, socket.AF_INET))
    await ours.send(b"hello")
    async with asyncio.timeout(2):
        theirs = await b.accept()
    await theirs.send(b"y" * 500)
    await theirs.send(b"fits")
    assert await receive(ours) == b"fits"
    assert ours.metrics.rejected_frames == 1
    assert ours.metrics.rx_bytes == 504


async def test_queue_overflow_drops_counts_and_logs_once_per_burst(
    make_driver: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    a, b = await make_driver(queue=4), await make_driver()
    ch = a.channel(address(b, socket.AF_INET))
    await ch.send(b"hi")
    async with asyncio.timeout(2):
        theirs = await b.accept()
    caplog.set_level(logging.DEBUG, logger="link_drivers.udp")
    for i in range(10):
        await theirs.send(b"%d" % i)
    await until(lambda: ch.metrics.rejected_frames >= 6)
    assert [await receive(ch) for _ in range(4)] == [b"0", b"1", b"2", b"3"]
    assert ch.metrics.rejected_frames == 6
    assert ch.metrics.rx_frames == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "receive queue full (4 datagrams)" in warnings[0].getMessage()
    await theirs.send(b"after")
    assert await receive(ch) == b"after"
    assert "6 datagrams dropped" in caplog.text


@pytest.mark.parametrize("family", FAMILIES, ids=["ipv4", "ipv6"])
async def test_port_unreachable_is_counted_and_the_socket_lives_on(
    make_driver: Callable[..., Any], family: int
) -> None:
    a, b = await make_driver(), await make_driver()
    closed = address(b, family)
    await b.aclose()  # its port is now closed: the kernel answers with ICMP port unreachable
    dead = a.channel(closed)
    for _ in range(3):
        await dead.send(b"anyone?")
        await asyncio.sleep(0.05)
    await until(lambda: dead.errors > 0)
    assert a.stats.errors >= dead.errors >= 1  # loopback rate-limits ICMP: not one per datagram
    cpu = time.process_time()
    await asyncio.sleep(0.3)
    assert time.process_time() - cpu < 0.15  # the error queue was drained: no busy loop
    c = await make_driver()
    live = a.channel(address(c, family))
    await live.send(b"still here")
    async with asyncio.timeout(2):
        assert await (await c.accept()).receive() == b"still here"
    assert a.up
    assert dead.metrics.up


async def test_accept_backlog_is_bounded(make_driver: Callable[..., Any]) -> None:
    server = await make_driver()
    target = address(server, socket.AF_INET)
    senders = [await make_driver(ipv6=False) for _ in range(ACCEPT_BACKLOG + 2)]
    for s in senders:
        await s.channel(target).send(b"hello")
    await until(lambda: server.stats.unknown_dropped >= 2)
    accepted = [await server.accept() for _ in range(ACCEPT_BACKLOG)]
    assert len({ch.peer for ch in accepted}) == ACCEPT_BACKLOG
    assert server.stats.unknown_dropped == 2


async def test_channel_claims_a_pending_peer(make_driver: Callable[..., Any]) -> None:
    a, b = await make_driver(), await make_driver()
    await a.channel(address(b, socket.AF_INET)).send(b"first")
    await until(lambda: b.pending > 0)
    claimed = b.channel(address(a, socket.AF_INET))
    assert b.pending == 0
    assert await receive(claimed) == b"first"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await b.accept()


async def test_closed_channel_leaves_the_table(make_driver: Callable[..., Any]) -> None:
    a, b = await make_driver(), await make_driver()
    ch = a.channel(address(b, socket.AF_INET))
    await ch.send(b"1")
    async with asyncio.timeout(2):
        theirs = await b.accept()
    reader = asyncio.create_task(theirs.receive())
    assert await reader == b"1"
    reader = asyncio.create_task(theirs.receive())
    await asyncio.sleep(0)
    await theirs.aclose()
    with pytest.raises(LocalError, match="closed"):
        await reader
    with pytest.raises(LocalError, match="closed"):
        await theirs.send(b"x")
    await ch.send(b"2")  # the peer comes again: a new channel to accept
    async with asyncio.timeout(2):
        again = await b.accept()
    assert again is not theirs
    assert await receive(again) == b"2"
    assert b.channel(again.peer) is again


async def test_driver_close_ends_everything(make_driver: Callable[..., Any]) -> None:
    a = await make_driver()
    ch = a.channel(UdpAddress("127.0.0.1", 9, "lo"))
    waiter = asyncio.create_task(a.accept())
    await asyncio.sleep(0)
    await a.aclose()
    with pytest.raises(LocalError, match="closed"):
        await waiter
    assert ch.closed
    assert not ch.metrics.up
    assert a.bound == []
    assert not a.up
    with pytest.raises(LocalError, match="closed"):
        a.channel(UdpAddress("127.0.0.1", 9, "lo"))
    await a.aclose()


async def test_carrier_down_reports_down_but_keeps_sending(
    make_driver: Callable[..., Any],
) -> None:
    a, b = await make_driver(), await make_driver()
    ch = a.channel(address(b, socket.AF_INET))
    a.set_carrier("lo", False)
    assert not ch.metrics.up
    await ch.send(b"through")
    async with asyncio.timeout(2):
        assert await (await b.accept()).receive() == b"through"
    a.set_carrier("lo", True)
    assert ch.metrics.up


async def test_bitrate_override(make_driver: Callable[..., Any]) -> None:
    a = await make_driver()
    ch = a.channel(UdpAddress("127.0.0.1", 9, "lo"))
    a.set_bitrate("lo", 54e6)
    assert ch.info.bitrate == a.info.bitrate == 54e6
    a.set_bitrate("lo", None)
    assert ch.info.bitrate == 100e6


async def test_missing_interface_is_skipped_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    driver = UdpDriver({"interfaces": ["lo", "flt-absent0"], "port": 0})
    try:
        await driver.start()
        assert driver.unbound() == [("flt-absent0", "ipv4"), ("flt-absent0", "ipv6")]
        assert "interface flt-absent0 not found" in caplog.text
        ch = driver.channel(UdpAddress("10.99.0.2", 9, "flt-absent0"))
        assert not ch.metrics.up
        await ch.send(b"nowhere")  # dropped, as a link that is down drops
        assert ch.metrics.tx_frames == 0
        assert driver.stats.send_dropped == 1
        await driver.start()  # retries the rest; lo stays bound once
        assert len(driver.bound) == 2
    finally:
        await driver.aclose()


async def test_port_in_use_is_a_local_error(make_driver: Callable[..., Any]) -> None:
    a = await make_driver(ipv6=False)
    taken = address(a, socket.AF_INET).port
    b = UdpDriver({"interfaces": ["lo"], "port": taken})
    with pytest.raises(LocalError, match="cannot bind lo/ipv4"):
        await b.start()
    assert b.bound == []
    await b.aclose()


async def test_peer_must_fit_the_config(make_driver: Callable[..., Any]) -> None:
    a = await make_driver(ipv6=False)
    with pytest.raises(LocalError, match="family is disabled"):
        a.channel(UdpAddress("::1", 9, "lo"))
    with pytest.raises(LocalError, match="'eth9' is not configured"):
        a.channel(UdpAddress("10.0.0.1", 9, "eth9"))
    b = await make_driver()
    with pytest.raises(LocalError, match="must be link-local"):
        b.channel(UdpAddress("2001:db8::1", 9, "lo"))


async def test_a_burst_reaches_a_receiver_in_batches(make_driver: Callable[..., Any]) -> None:
    a, b = await make_driver(), await make_driver()
    ours = a.channel(address(b, socket.AF_INET))
    await ours.send(b"hello")
    async with asyncio.timeout(2):
        theirs = await b.accept()
    batches: list[list[bytes]] = []
    assert theirs.set_receiver(batches.append)
    assert batches == [[b"hello"]]  # what was queued goes to the receiver at once
    for i in range(20):
        await ours.send(b"%d" % i)
    await until(lambda: sum(map(len, batches)) == 21)
    assert [d for batch in batches[1:] for d in batch] == [b"%d" % i for i in range(20)]
    assert max(len(batch) for batch in batches[1:]) > 1  # one wake-up, several datagrams
    assert theirs.metrics.rx_frames == 21
    theirs.set_receiver(None)
    await ours.send(b"queued again")
    assert await receive(theirs) == b"queued again"
