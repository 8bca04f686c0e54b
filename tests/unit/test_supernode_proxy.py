"""The log streams a member serves to the others: reads acknowledge by offset (a lost answer is
asked again and nothing is lost or repeated), answers are bounded, the container's log is read
no faster than it is fetched, and streams close when told, when unread, and per member."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Any

import pytest

from agent.errors import BadRequestError, NotFoundError
from supernode import proxy
from supernode.proxy import CHUNK_BYTES, IDLE_SECONDS, LogStreams, RemoteStatusError


class Source:
    """A log that yields what the test puts, and records how far it was read."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.taken = 0
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            while (item := await self.queue.get()) is not None:
                self.taken += 1
                yield item
        finally:
            self.closed = True


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def streams_of(source: Source, clock: Clock | None = None) -> LogStreams:
    async def opener(ns: str, name: str, query: Mapping[str, list[str]]) -> AsyncIterator[bytes]:
        if name == "nope":
            raise NotFoundError('pods "nope" not found')
        assert query == {"follow": ["true"]}
        return source.chunks()

    return LogStreams(opener, clock)


async def opened(streams: LogStreams, peer: str = "B") -> int:
    answer = await streams.on_open(
        peer, {"namespace": "d", "name": "p", "query": {"follow": ["true"]}}
    )
    stream: int = answer["stream"]
    return stream


async def read(streams: LogStreams, stream: int, offset: int, wait: float = 0.05) -> dict[str, Any]:
    return await streams.on_read("B", {"stream": stream, "offset": offset, "wait": wait})


async def test_reads_acknowledge_by_offset_and_a_lost_answer_is_read_again() -> None:
    source = Source()
    streams = streams_of(source)
    stream = await opened(streams)
    empty = await read(streams, stream, 0)
    assert empty == {"data": b"", "offset": 0, "end": False}  # waited, nothing yet
    source.queue.put_nowait(b"one\n")
    source.queue.put_nowait(b"two\n")
    first = await read(streams, stream, 0)
    assert first["data"].startswith(b"one\n")
    again = await read(streams, stream, 0)  # the answer was lost: asked again, same offset
    assert again["data"].startswith(first["data"])
    got = again["data"]
    while got != b"one\ntwo\n":
        got += (await read(streams, stream, len(got)))["data"]
    source.queue.put_nowait(None)
    last = await read(streams, stream, len(got))
    assert last == {"data": b"", "offset": 8, "end": True}
    with pytest.raises(BadRequestError, match="outside"):
        await read(streams, stream, 0)  # acknowledged bytes are gone
    await streams.on_close("B", {"stream": stream})
    assert len(streams) == 0
    assert source.closed


async def test_answers_are_bounded_and_the_log_is_read_as_fetched() -> None:
    source = Source()
    streams = streams_of(source)
    stream = await opened(streams)
    for _ in range(10):
        source.queue.put_nowait(b"x" * 4096)
    first = await read(streams, stream, 0)
    assert len(first["data"]) == CHUNK_BYTES
    assert source.taken <= CHUNK_BYTES // 4096 + 1  # not the whole log at once
    total = len(first["data"])
    while total < 10 * 4096:
        total += len((await read(streams, stream, total))["data"])
    assert total == 10 * 4096
    await streams.close_all()
    assert source.closed


async def test_streams_close_when_unread_and_belong_to_their_member() -> None:
    source, clock = Source(), Clock()
    streams = streams_of(source, clock)
    stream = await opened(streams)
    with pytest.raises(NotFoundError):
        await streams.on_read("C", {"stream": stream, "offset": 0, "wait": 0})
    failed = await streams.on_open("B", {"namespace": "d", "name": "nope", "query": {}})
    assert failed["error"]["status"] == 404
    with pytest.raises(RemoteStatusError, match="not found") as caught:
        proxy._raise_for(failed)
    assert caught.value.http_status == 404
    clock.now = IDLE_SECONDS + 1
    await opened(streams)  # any request sweeps the streams nobody read
    assert len(streams) == 1
    with pytest.raises(NotFoundError, match="closed"):
        await read(streams, stream, 0)
    for _ in range(proxy.MAX_STREAMS + 3):
        await opened(streams)
    assert len(streams) == proxy.MAX_STREAMS
    await streams.close_all()


async def test_a_read_waiting_when_its_stream_closes_answers_instead_of_failing() -> None:
    source = Source()
    streams = streams_of(source)
    stream = await opened(streams)
    waiting = asyncio.ensure_future(read(streams, stream, 0, wait=5.0))
    await asyncio.sleep(0.05)
    await streams.on_close("B", {"stream": stream})
    answer = await asyncio.wait_for(waiting, 1.0)
    assert answer["data"] == b""
    assert source.closed
