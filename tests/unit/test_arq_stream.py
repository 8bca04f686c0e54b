"""ArqStream, the asyncio adapter: channels that push or are read, sends that finish at once or
wait, a broken channel, and a timer that is moved only when its deadline comes earlier."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from agent.errors import LocalError
from link_drivers.arq import ArqConfig
from link_drivers.stream import ArqStream
from tests.sessions import ARQ, MemoryChannel


class PushChannel(MemoryChannel):
    """A memory wire end that hands datagrams to a receiver, as the UDP driver does."""

    def __init__(self) -> None:
        super().__init__()
        self.receiver: Callable[[list[bytes]], None] | None = None

    def set_receiver(self, receiver: Callable[[list[bytes]], None] | None) -> bool:
        self.receiver = receiver
        return True

    async def send(self, datagram: bytes) -> None:
        assert isinstance(self.peer, PushChannel)
        self.metrics.tx_frames += 1
        if self.peer.receiver is not None:
            self.peer.receiver([datagram])


class SlowChannel(MemoryChannel):
    """A wire end whose ``send`` waits a loop iteration before the datagram leaves."""

    async def send(self, datagram: bytes) -> None:
        await asyncio.sleep(0)
        await super().send(datagram)


class ClosingChannel(MemoryChannel):
    """A wire end that can be closed under the stream."""

    closed = False

    async def send(self, datagram: bytes) -> None:
        if self.closed:
            raise LocalError("memory channel is closed")
        await super().send(datagram)


@contextlib.asynccontextmanager
async def streams(
    kind: type[MemoryChannel], config: ArqConfig = ARQ
) -> AsyncIterator[tuple[ArqStream, ArqStream]]:
    left, right = kind(), kind()
    left.peer, right.peer = right, left
    async with ArqStream(left, config, name="l") as a, ArqStream(right, config, name="r") as b:
        async with asyncio.timeout(5):
            await a.wait_connected()
            await b.wait_connected()
        yield a, b


@pytest.mark.parametrize("kind", [MemoryChannel, PushChannel, SlowChannel])
async def test_messages_of_any_size_arrive_in_order(kind: type[MemoryChannel]) -> None:
    msgs = [bytes([i % 251]) * (i * 37 % 700) for i in range(120)]
    async with streams(kind) as (a, b):
        for m in msgs:
            await a.send(m)
        async with asyncio.timeout(10):
            got = [await b.receive() for _ in msgs]
            await a.drain()
        assert got == msgs
        reader_tasks = [t for t in a._tasks if t.get_name() == "arq-reader"]
        assert len(reader_tasks) == (0 if kind is PushChannel else 1)
        assert (a._writer_task is not None) == (kind is SlowChannel)


async def test_send_puts_the_datagram_on_the_channel_before_it_returns() -> None:
    async with streams(MemoryChannel) as (a, _b):
        assert isinstance(a.channel, MemoryChannel)
        peer = a.channel.peer
        assert peer is not None
        before = peer._inbox.qsize()
        await a.send(b"now")
        assert peer._inbox.qsize() == before + 1


async def test_a_closed_channel_breaks_the_stream() -> None:
    async with streams(ClosingChannel) as (a, b):
        await a.send(b"before")
        async with asyncio.timeout(5):
            assert await b.receive() == b"before"
        assert isinstance(a.channel, ClosingChannel)
        a.channel.closed = True
        with pytest.raises(LocalError, match="ARQ stream broke: memory channel is closed"):
            await a.send(b"refused")
        with pytest.raises(LocalError, match="broke"):
            await a.send(b"after")
        with pytest.raises(LocalError, match="broke"):
            await a.receive()


async def test_the_timer_moves_only_when_its_deadline_comes_earlier() -> None:
    loop = asyncio.get_running_loop()
    armed: list[float] = []
    call_at = loop.call_at

    def counting(when: float, callback: Callable[..., Any], *args: Any) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args)

    async with streams(MemoryChannel) as (a, b):
        loop.call_at = counting  # type: ignore[method-assign,assignment]
        try:
            for i in range(200):
                await a.send(b"%d" % i)
            async with asyncio.timeout(10):
                for _ in range(200):
                    await b.receive()
                await a.drain()
        finally:
            del loop.call_at
    # Every ACK moves the retransmission deadline later; none of that re-arms the timer.
    assert len(armed) <= 6, armed


async def test_push_channel_gets_a_new_receiver_after_the_stream_closes() -> None:
    left, right = PushChannel(), PushChannel()
    left.peer, right.peer = right, left
    async with ArqStream(left, ARQ, name="l"):
        assert left.receiver is not None
    assert left.receiver is None
