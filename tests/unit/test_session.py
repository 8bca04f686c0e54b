"""Secure sessions over real ARQ streams and real TLS 1.3, between real node identities.

Each pair of sessions runs over two :class:`ArqStream` s joined by in-memory datagram channels
(the ARQ core is the production one; only the wire is a queue).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import serialization

from agent.errors import LocalError, LocalProtocolError, RemoteProtocolError
from agent.identity import Identity, _make_certificate, short_id
from agent.messages import Message, PairingMessage, Publish, Request, decode, encode
from agent.session import (
    HandshakeTimeoutError,
    PeerRejectedError,
    SecureSession,
    SessionClosedError,
    SessionMetrics,
    SessionState,
    open_session,
)
from agent.store import Store
from agent.trust import TrustListener, TrustStore
from link_drivers.api import LinkMetrics, ReliableStream
from link_drivers.stream import ArqStream
from tests.sessions import ARQ, MemoryChannel, Node, established, make_nodes, stream_pair


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    with make_nodes(tmp_path) as made:
        yield made


def preamble(identity: Identity, **override: object) -> bytes:
    fields: dict[str, object] = {
        "v": 1,
        "id": identity.node_id,
        "name": identity.name,
        "fp": identity.fingerprint,
    }
    fields.update(override)
    data: bytes = cbor2.dumps(fields)
    return data


async def test_trusted_nodes_exchange_messages_both_ways(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    async with established(alpha, bravo) as (a, b):
        assert a.state is b.state is SessionState.ESTABLISHED
        assert (a.peer_id, a.peer_name) == (bravo.node_id, "bravo")
        assert (b.peer_id, b.peer_name) == (alpha.node_id, "alpha")
        await a.send(Publish("x/y", b"from alpha"))
        await b.send(Request(1, "ping", {"n": 1}))
        await a.send(Publish("x/z", 2))
        assert await b.receive() == Publish("x/y", b"from alpha")
        assert await b.receive() == Publish("x/z", 2)
        assert await a.receive() == Request(1, "ping", {"n": 1})
        big = bytes(range(256)) * 200  # 51 KiB: several TLS records and stream chunks
        await b.send(Publish("big", big))
        assert await a.receive() == Publish("big", big)
        assert (a.metrics.messages_sent, a.metrics.messages_received) == (2, 2)


async def test_smaller_node_id_is_the_tls_client(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    async with established(alpha, bravo) as (a, b):
        assert a.is_client is (alpha.node_id < bravo.node_id)
        assert b.is_client is not a.is_client


async def test_goodbye_closes_the_peer_at_once(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    async with established(alpha, bravo) as (a, b):
        waiting = asyncio.create_task(b.receive())
        await asyncio.sleep(0)
        await a.close("maintenance")
        async with asyncio.timeout(1):  # the link would need 15 s to notice silence
            with pytest.raises(SessionClosedError, match=r"peer said goodbye \(maintenance\)"):
                await waiting
        assert a.state is b.state is SessionState.CLOSED
        with pytest.raises(SessionClosedError, match="closed by this node"):
            await a.send(Publish("t", None))
        with pytest.raises(SessionClosedError):
            await b.receive()


async def test_only_one_receiver_at_a_time(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    async with established(alpha, bravo) as (a, _b):
        first = asyncio.create_task(a.receive())
        await asyncio.sleep(0)
        with pytest.raises(LocalProtocolError, match="already awaiting"):
            await a.receive()
        first.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await first


async def test_cancelled_receive_loses_no_message(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    async with established(alpha, bravo) as (a, b):
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await b.receive()
        await a.send(Publish("t", 1))
        assert await b.receive() == Publish("t", 1)


async def test_untrusted_peer_gets_nothing_but_pairing(nodes: list[Node]) -> None:
    alpha, mallory, _ = nodes
    received: list[PairingMessage] = []

    async def pairing(session: SecureSession, msg: PairingMessage) -> None:
        received.append(msg)
        await session.send(PairingMessage(0x41, b"answer"))

    async with stream_pair() as (sa, sm):
        await sm.send(preamble(mallory.identity))
        a = await open_session(sa, alpha.identity, alpha.trust, pairing_handler=pairing)
        assert a.state is SessionState.UNTRUSTED
        assert a.peer_id == mallory.node_id
        serving = asyncio.create_task(a.receive())
        await sm.send(encode(Publish("t", b"let me in")))
        await sm.send(b"\x16\x03\x01garbage that looks like TLS")
        await sm.send(encode(PairingMessage(0x40, b"hello")))
        async with asyncio.timeout(5):
            assert cbor2.loads(await sm.receive())["id"] == alpha.node_id  # the preamble
            assert decode(await sm.receive()) == PairingMessage(0x41, b"answer")
        assert received == [PairingMessage(0x40, b"hello")]
        assert a.metrics.dropped == 2
        with pytest.raises(LocalProtocolError, match="only pairing messages"):
            await a.send(Publish("t", b"secret"))
        await a.close()
        with pytest.raises(SessionClosedError):
            await serving
        with pytest.raises(TimeoutError):  # nothing else was sent: no goodbye either
            async with asyncio.timeout(0.2):
                await sm.receive()


async def test_pairing_handler_may_close_the_session(nodes: list[Node]) -> None:
    alpha, mallory, _ = nodes

    async def refuse(session: SecureSession, msg: PairingMessage) -> None:
        await session.close()

    async with stream_pair() as (sa, sm):
        await sm.send(preamble(mallory.identity))
        a = await open_session(sa, alpha.identity, alpha.trust, pairing_handler=refuse)
        await sm.send(encode(PairingMessage(0x40, None)))
        async with asyncio.timeout(2):
            with pytest.raises(SessionClosedError, match="closed by this node"):
                await a.receive()


class WatchedTrust(TrustStore):
    """A trust store that tells when a session starts listening (it has trusted its peer)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.listening = asyncio.Event()

    def add_listener(self, listener: TrustListener) -> Callable[[], None]:
        self.listening.set()
        return super().add_listener(listener)


async def test_revocation_during_the_handshake_stops_it(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    trust = WatchedTrust(alpha.store)
    alpha.trusts(bravo)
    async with stream_pair() as (sa, sb):
        await sb.send(preamble(bravo.identity))  # then silence: the handshake hangs
        opening = asyncio.create_task(open_session(sa, alpha.identity, trust))
        await trust.listening.wait()
        trust.revoke(bravo.node_id)
        async with asyncio.timeout(1):
            with pytest.raises(SessionClosedError, match="peer revoked"):
                await opening


async def test_peer_that_is_not_trusted_back_times_out(
    nodes: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    alpha, bravo, _ = nodes
    bravo.trusts(alpha)
    metrics = SessionMetrics()
    async with stream_pair() as (sa, sb):
        a_task = asyncio.create_task(open_session(sa, alpha.identity, alpha.trust))
        with pytest.raises(HandshakeTimeoutError, match=r"within 0\.5 s"):
            await open_session(
                sb, bravo.identity, bravo.trust, handshake_timeout=0.5, metrics=metrics
            )
        a = await a_task
        assert a.state is SessionState.UNTRUSTED
        serving = asyncio.create_task(a.receive())
        await asyncio.sleep(0.05)
        # bravo's ClientHello (when bravo is the client) was dropped, never passed on.
        assert a.metrics.dropped == (1 if bravo.node_id < alpha.node_id else 0)
        await a.close()
        with pytest.raises(SessionClosedError):
            await serving
    assert metrics.timeouts == 1
    assert "does the peer trust this node?" in caplog.text


async def test_revoked_peer_is_refused(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    alpha.trusts(bravo)
    bravo.trusts(alpha)
    alpha.trust.revoke(bravo.node_id)
    async with stream_pair() as (sa, sb):
        a_task = asyncio.create_task(open_session(sa, alpha.identity, alpha.trust))
        with pytest.raises(HandshakeTimeoutError):
            await open_session(sb, bravo.identity, bravo.trust, handshake_timeout=0.5)
        a = await a_task
        assert a.state is SessionState.UNTRUSTED
        await a.close()


async def test_revoking_closes_a_live_session(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    async with established(alpha, bravo) as (a, b):
        at_a = asyncio.create_task(a.receive())
        at_b = asyncio.create_task(b.receive())
        await asyncio.sleep(0)
        alpha.trust.revoke(bravo.node_id)
        async with asyncio.timeout(1):
            with pytest.raises(SessionClosedError, match="peer revoked"):
                await at_a
            with pytest.raises(SessionClosedError, match=r"goodbye \(revoked\)"):
                await at_b


async def test_re_adding_the_same_peer_keeps_the_session(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    async with established(alpha, bravo) as (a, b):
        alpha.trusts(bravo)
        await b.send(Publish("t", 1))
        assert await a.receive() == Publish("t", 1)


async def test_peer_claiming_another_nodes_id_is_refused(
    nodes: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    alpha, bravo, charlie = nodes
    alpha.trusts(bravo, charlie)
    bravo.trusts(alpha)
    # bravo claims charlie's ID and fingerprint but holds only its own key and certificate.
    spoof = dataclasses.replace(
        bravo.identity, node_id=charlie.node_id, certificate=charlie.identity.certificate
    )
    metrics = SessionMetrics()
    caplog.set_level(logging.INFO, logger="agent.session")
    async with stream_pair() as (sa, sb):
        results = await asyncio.gather(
            open_session(sa, alpha.identity, alpha.trust, metrics=metrics),
            open_session(sb, spoof, bravo.trust),
            return_exceptions=True,
        )
    assert isinstance(results[0], PeerRejectedError)
    assert "not the one pinned" in str(results[0])
    await close_all(results)
    assert metrics.rejected == 1
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any(f"[peer={short_id(charlie.node_id)}] refused:" in line for line in lines)
    assert "Traceback" not in caplog.text
    assert "PRIVATE KEY" not in caplog.text


async def close_all(results: Sequence[SecureSession | BaseException]) -> None:
    for result in results:
        if isinstance(result, SecureSession):
            await result.close()


async def test_reissued_certificate_that_is_not_pinned_is_refused(
    nodes: list[Node], tmp_path: Path
) -> None:
    alpha, bravo, _ = nodes
    alpha.trusts(bravo)
    bravo.trusts(alpha)
    # Same key (so the same node ID), new certificate; bravo still claims the pinned fingerprint.
    reissued = tmp_path / "reissued.crt"
    cert = _make_certificate(bravo.identity.private_key, "bravo", bravo.node_id)
    reissued.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    liar = dataclasses.replace(bravo.identity, cert_path=reissued)
    async with stream_pair() as (sa, sb):
        results = await asyncio.gather(
            open_session(sa, alpha.identity, alpha.trust),
            open_session(sb, liar, bravo.trust),
            return_exceptions=True,
        )
    assert isinstance(results[0], PeerRejectedError), results
    assert f"node {short_id(bravo.node_id)} refused" in str(results[0])
    await close_all(results)


async def test_peer_claiming_our_own_id_is_refused(nodes: list[Node]) -> None:
    alpha, _, _ = nodes
    async with stream_pair() as (sa, sm):
        await sm.send(preamble(alpha.identity))
        with pytest.raises(PeerRejectedError, match="this node's own node ID"):
            await open_session(sa, alpha.identity, alpha.trust)


async def test_handshake_timeout_on_a_silent_peer(nodes: list[Node]) -> None:
    alpha, _, _ = nodes
    metrics = SessionMetrics()
    async with stream_pair() as (sa, _sb):
        with pytest.raises(HandshakeTimeoutError, match="stuck in preamble"):
            await open_session(
                sa, alpha.identity, alpha.trust, handshake_timeout=0.2, metrics=metrics
            )
    assert metrics.timeouts == 1


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xfe garbage", "not valid CBOR"),
        (b"\x00" * 600, "exceeds 512"),
        (cbor2.dumps([1, 2]), "not exactly one CBOR map"),
        (cbor2.dumps({"v": 2}), "unsupported session protocol version 2"),
        (cbor2.dumps({"v": 1, "id": 1, "name": "x", "fp": "y"}), "must all be text"),
        (cbor2.dumps({"v": 1, "id": "nope", "name": "x", "fp": "y"}), "preamble id: node ID"),
    ],
)
async def test_garbage_preamble_closes_the_session(
    nodes: list[Node], data: bytes, reason: str, caplog: pytest.LogCaptureFixture
) -> None:
    alpha, _, _ = nodes
    metrics = SessionMetrics()
    async with stream_pair() as (sa, sm):
        await sm.send(data)
        with pytest.raises(RemoteProtocolError, match=reason):
            await open_session(sa, alpha.identity, alpha.trust, metrics=metrics)
        with pytest.raises(LocalError, match="closed"):
            await sa.send(b"x")
    assert metrics.protocol_errors == 1
    assert "bad preamble" in caplog.text


async def test_bad_fields_in_a_preamble(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    for override, reason in [
        ({"fp": "AB:CD"}, "not a SHA-256 fingerprint"),
        ({"name": "n" * 254}, "over 253 bytes"),
        ({"id": bravo.node_id.lower()}, "not in display form"),
    ]:
        async with stream_pair() as (sa, sm):
            await sm.send(preamble(bravo.identity, **override))
            with pytest.raises(RemoteProtocolError, match=reason):
                await open_session(sa, alpha.identity, alpha.trust)


class _ResetStream(ReliableStream):
    """A stream whose peer restarts at once: ``receive`` reports the reset."""

    @property
    def metrics(self) -> LinkMetrics:
        return LinkMetrics()

    async def send(self, message: bytes) -> None:
        return None

    async def receive(self) -> bytes:
        raise LocalError("ARQ session was reset (peer restarted); messages were lost")

    async def drain(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


async def test_a_stream_reset_while_opening_leaves_the_callers_task_alone(
    nodes: list[Node],
) -> None:
    alpha, bravo, _ = nodes
    alpha.trusts(bravo)
    with pytest.raises(SessionClosedError, match="link stream broke"):
        await open_session(_ResetStream(), alpha.identity, alpha.trust)
    task = asyncio.current_task()
    assert task is not None
    assert task.cancelling() == 0
    await asyncio.sleep(0.01)  # no cancellation left pending for the next await


async def test_a_close_from_another_task_ends_a_pending_receive_without_cancelling_it(
    nodes: list[Node],
) -> None:
    alpha, bravo, _ = nodes

    async def receive_then_carry_on(session: SecureSession) -> str:
        with pytest.raises(SessionClosedError, match="closed by this node"):
            await session.receive()
        await asyncio.sleep(0.01)  # the task itself was not cancelled
        return "carried on"

    async with established(alpha, bravo) as (a, _b):
        waiting = asyncio.create_task(receive_then_carry_on(a))
        await asyncio.sleep(0.01)
        await a.close("done")
        async with asyncio.timeout(2):
            assert await waiting == "carried on"


async def test_a_receive_cancelled_from_outside_stays_cancelled(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    async with established(alpha, bravo) as (a, b):
        waiting = asyncio.create_task(a.receive())
        await asyncio.sleep(0.01)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        await b.send(Publish("t", "after"))
        async with asyncio.timeout(2):
            assert await a.receive() == Publish("t", "after")


class _Counting(ReliableStream):
    """Wraps a stream and counts the stream messages (TLS records) sent through it."""

    def __init__(self, inner: ReliableStream, *, broken: bool = False) -> None:
        self.inner = inner
        self.sent = 0
        self.broken = broken

    @property
    def metrics(self) -> LinkMetrics:
        return self.inner.metrics

    async def send(self, message: bytes) -> None:
        if self.broken:
            raise LocalError("the link went away")
        self.sent += 1
        await self.inner.send(message)

    async def receive(self) -> bytes:
        return await self.inner.receive()

    async def drain(self) -> None:
        await self.inner.drain()

    async def aclose(self) -> None:
        await self.inner.aclose()


@contextlib.asynccontextmanager
async def counted(
    a: Node, b: Node, high_water: int | None = None
) -> AsyncIterator[tuple[SecureSession, SecureSession, _Counting]]:
    a.trusts(b)
    b.trusts(a)
    left, right = MemoryChannel(), MemoryChannel()
    left.peer, right.peer = right, left
    async with (
        ArqStream(left, ARQ, name="l", high_water=high_water) as sa,
        ArqStream(right, ARQ, name="r") as sb,
    ):
        wrapped = _Counting(sa)
        sess_a, sess_b = await asyncio.gather(
            open_session(wrapped, a.identity, a.trust, handshake_timeout=5.0),
            open_session(sb, b.identity, b.trust, handshake_timeout=5.0),
        )
        try:
            yield sess_a, sess_b, wrapped
        finally:
            await sess_a.close()
            with contextlib.suppress(SessionClosedError):
                while True:
                    await sess_b.receive()


async def test_messages_sent_in_one_step_share_a_tls_record(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    async with counted(alpha, bravo) as (a, b, stream):
        before = stream.sent
        for i in range(50):
            await a.send(Publish("t", i))
        assert stream.sent == before  # queued until this step ends
        await asyncio.sleep(0)
        assert stream.sent == before + 1
        async with asyncio.timeout(2):
            assert [await b.receive() for _ in range(50)] == [Publish("t", i) for i in range(50)]
        await a.send(Publish("t", "lone"))
        await asyncio.sleep(0)
        assert stream.sent == before + 2  # a lone message leaves at the end of its step


async def test_a_stream_that_pushes_back_holds_later_messages_in_order(
    nodes: list[Node],
) -> None:
    alpha, bravo, _ = nodes
    async with counted(alpha, bravo, high_water=1) as (a, b, _stream):
        sent = [Publish("t", bytes([i]) * 3000) for i in range(40)]

        async def take() -> list[Message]:
            return [await b.receive() for _ in sent]

        reader = asyncio.create_task(take())
        async with asyncio.timeout(5):
            for i, message in enumerate(sent):
                await a.send(message)
                if i % 7 == 0:
                    await asyncio.sleep(0)  # end the step: a record while the last one waits
            assert await reader == sent


async def test_goodbye_follows_the_messages_sent_before_it(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    async with counted(alpha, bravo) as (a, b, _stream):
        for i in range(3):
            await a.send(Publish("t", i))
        await a.close("bye")
        async with asyncio.timeout(2):
            assert [await b.receive() for _ in range(3)] == [Publish("t", i) for i in range(3)]
            with pytest.raises(SessionClosedError, match=r"goodbye \(bye\)"):
                await b.receive()


async def test_a_link_that_breaks_under_a_record_closes_the_session(nodes: list[Node]) -> None:
    alpha, bravo, _ = nodes
    async with counted(alpha, bravo) as (a, b, stream):
        stream.broken = True
        await a.send(Publish("t", "lost with the link"))
        await asyncio.sleep(0)
        with pytest.raises(SessionClosedError, match="link stream broke: the link went away"):
            await a.send(Publish("t", "after"))
        await b.close()  # no goodbye can come from a
