"""Secure sessions, RPC and pub/sub over the real UDP driver on loopback (sockets, ARQ, TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.rpc import Endpoint
from agent.session import SessionState, open_session
from link_drivers.stream import ArqStream
from link_drivers.udp import UdpAddress, UdpDriver
from tests.sessions import Node, make_nodes

pytestmark = pytest.mark.integration


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    with make_nodes(tmp_path) as made:
        yield made


def loopback(driver: UdpDriver) -> UdpAddress:
    bound = driver.bound[0]
    return UdpAddress("127.0.0.1", bound.port, bound.interface)


@contextlib.asynccontextmanager
async def udp_streams() -> AsyncIterator[tuple[ArqStream, ArqStream]]:
    """Two ARQ streams over two UDP drivers on ``lo`` (IPv4, ephemeral ports)."""
    left = UdpDriver({"interfaces": ["lo"], "port": 0, "ipv6": False})
    right = UdpDriver({"interfaces": ["lo"], "port": 0, "ipv6": False})
    await left.start()
    await right.start()
    try:
        async with ArqStream(left.channel(loopback(right)), name="left") as a:
            async with asyncio.timeout(5):
                accepted = await right.accept()
            async with ArqStream(accepted, name="right") as b:
                async with asyncio.timeout(5):
                    await a.wait_connected()
                    await b.wait_connected()
                yield a, b
    finally:
        await left.aclose()
        await right.aclose()


async def test_rpc_and_pubsub_over_udp(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    alpha.trusts(bravo)
    bravo.trusts(alpha)

    async def echo(body: Any) -> Any:
        return body

    async with udp_streams() as (sa, sb):
        started = time.monotonic()
        sess_a, sess_b = await asyncio.gather(
            open_session(sa, alpha.identity, alpha.trust),
            open_session(sb, bravo.identity, bravo.trust),
        )
        assert time.monotonic() - started < 2.0
        assert sess_a.state is sess_b.state is SessionState.ESTABLISHED
        async with Endpoint(sess_a) as a, Endpoint(sess_b) as b:
            b.on_request("echo", echo)
            payload = bytes(range(256)) * 100  # 25.6 KiB: fragments of the 1200-byte MTU
            assert await a.request("echo", payload, timeout=5.0) == payload
            got: list[tuple[str, Any]] = []
            await a.subscribe("node/+/status", lambda topic, body: got.append((topic, body)))
            await a.request("echo", None)  # b has the subscription once this returns
            a.on_request("echo", echo)
            assert await b.publish("node/bravo/status", {"up": True})
            assert await b.request("echo", 1) == 1  # a delivered the publication before
            assert got == [("node/bravo/status", {"up": True})]

            await a.close()
            async with asyncio.timeout(1):  # the goodbye, not a 15 s keepalive timeout
                await b.wait_closed()
            assert sess_b.close_reason is not None
            assert "goodbye" in sess_b.close_reason
