"""Test helpers for secure sessions: in-memory datagram channels under real ARQ streams, and
nodes with real identities and trust stores (used by the session, RPC and UDP session tests)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from agent.errors import LocalError
from agent.identity import Identity, load_or_create_identity
from agent.session import SecureSession, SessionClosedError, open_session
from agent.store import Store
from agent.trust import TrustStore
from link_drivers.api import DatagramChannel, LinkInfo, LinkMetrics
from link_drivers.arq import ArqConfig
from link_drivers.stream import ArqStream

ARQ = ArqConfig(mtu=256, keepalive_interval=5.0, dead_interval=15.0)


class MemoryChannel(DatagramChannel):
    """One end of an in-memory datagram wire (lossless, in order)."""

    def __init__(self) -> None:
        self.peer: MemoryChannel | None = None
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue()
        self._metrics = LinkMetrics(up=True)
        self._info = LinkInfo(mtu=ARQ.mtu, bitrate=1e9)

    @property
    def info(self) -> LinkInfo:
        return self._info

    @property
    def metrics(self) -> LinkMetrics:
        return self._metrics

    async def send(self, datagram: bytes) -> None:
        if len(datagram) > self._info.mtu:
            raise LocalError("datagram exceeds the MTU")
        assert self.peer is not None
        self._metrics.tx_frames += 1
        self.peer._inbox.put_nowait(datagram)

    async def receive(self) -> bytes:
        data = await self._inbox.get()
        self._metrics.rx_frames += 1
        return data

    async def aclose(self) -> None:
        return None


@contextlib.asynccontextmanager
async def stream_pair() -> AsyncIterator[tuple[ArqStream, ArqStream]]:
    """Two connected ARQ streams over an in-memory wire."""
    left, right = MemoryChannel(), MemoryChannel()
    left.peer, right.peer = right, left
    async with ArqStream(left, ARQ, name="left") as a, ArqStream(right, ARQ, name="right") as b:
        async with asyncio.timeout(5):
            await a.wait_connected()
            await b.wait_connected()
        yield a, b


@dataclasses.dataclass
class Node:
    identity: Identity
    store: Store
    trust: TrustStore

    @property
    def node_id(self) -> str:
        return self.identity.node_id

    def trusts(self, *others: Node) -> None:
        for other in others:
            pem = other.identity.certificate.public_bytes(serialization.Encoding.PEM)
            self.trust.add(pem, source="manual")


@contextlib.contextmanager
def make_nodes(tmp_path: Path) -> Iterator[list[Node]]:
    """Three nodes (alpha, bravo, charlie) with their own state dirs, trusting nobody yet."""
    made: list[Node] = []
    for name in ("alpha", "bravo", "charlie"):
        store = Store(tmp_path / name / "agent.db")
        made.append(Node(load_or_create_identity(tmp_path / name, name), store, TrustStore(store)))
    try:
        yield made
    finally:
        for node in made:
            node.store.close()


async def open_pair(
    a: Node, b: Node, sa: ArqStream, sb: ArqStream
) -> tuple[SecureSession, SecureSession]:
    first, second = await asyncio.gather(
        open_session(sa, a.identity, a.trust, handshake_timeout=5.0),
        open_session(sb, b.identity, b.trust, handshake_timeout=5.0),
    )
    return first, second


@contextlib.asynccontextmanager
async def established(a: Node, b: Node) -> AsyncIterator[tuple[SecureSession, SecureSession]]:
    """Two nodes that trust each other, with an established session between them."""
    a.trusts(b)
    b.trusts(a)
    async with stream_pair() as (sa, sb):
        sess_a, sess_b = await open_pair(a, b, sa, sb)
        try:
            yield sess_a, sess_b
        finally:
            await sess_a.close()
            with contextlib.suppress(SessionClosedError):  # take the goodbye: no drain wait
                while True:
                    await sess_b.receive()
