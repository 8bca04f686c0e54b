"""RPC and pub/sub between two endpoints over real secure sessions (ARQ + TLS 1.3)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.errors import LocalProtocolError, NotFoundError
from agent.messages import Publish
from agent.rpc import Endpoint, RpcError, RpcTimeoutError
from agent.session import SessionClosedError
from tests.sessions import Node, established, make_nodes


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[list[Node]]:
    with make_nodes(tmp_path) as made:
        yield made


@contextlib.asynccontextmanager
async def endpoints(nodes: list[Node], **kwargs: Any) -> AsyncIterator[tuple[Endpoint, Endpoint]]:
    """Endpoints on both ends of an established alpha-bravo session; both answer ``sync``."""

    async def sync(body: Any) -> Any:
        return body

    async with established(nodes[0], nodes[1]) as (sa, sb):
        async with Endpoint(sa, **kwargs) as a, Endpoint(sb, **kwargs) as b:
            a.on_request("sync", sync)
            b.on_request("sync", sync)
            yield a, b


async def test_requests_both_ways(nodes: list[Node]) -> None:
    async def add(body: Any) -> Any:
        return body["x"] + body["y"]

    async with endpoints(nodes) as (a, b):
        b.on_request("add", add)
        assert await b.request("sync", [1, "two", b"3"]) == [1, "two", b"3"]
        assert await a.request("add", {"x": 2, "y": 3}) == 5
        results = await asyncio.gather(*(a.request("add", {"x": i, "y": i}) for i in range(20)))
        assert results == [2 * i for i in range(20)]
        assert a.metrics.requests_sent == 21
        assert b.metrics.requests_served == 21


async def test_unknown_method_and_handler_errors(
    nodes: list[Node], caplog: pytest.LogCaptureFixture
) -> None:
    async def missing(body: Any) -> Any:
        raise NotFoundError(f'pods "{body}" not found')

    async def broken(body: Any) -> Any:
        raise RuntimeError("bug")

    async def unsendable(body: Any) -> Any:
        return {1, 2}

    async with endpoints(nodes) as (a, b):
        b.on_request("get", missing)
        b.on_request("broken", broken)
        b.on_request("unsendable", unsendable)
        with pytest.raises(RpcError, match="unknown method 'nope'") as info:
            await a.request("nope")
        assert info.value.status == 404
        with pytest.raises(RpcError, match='status 404: pods "x" not found'):
            await a.request("get", "x")
        with pytest.raises(RpcError, match="status 500: handler of 'broken' failed") as info:
            await a.request("broken")
        assert info.value.status == 500
        assert "RuntimeError: bug" in caplog.text
        with pytest.raises(RpcError, match="status 500: result of 'unsendable' not encodable"):
            await a.request("unsendable")
        assert await a.request("sync", 1) == 1  # the dispatcher is still serving


async def test_request_timeout_and_late_response(nodes: list[Node]) -> None:
    release = asyncio.Event()

    async def slow(body: Any) -> Any:
        await release.wait()
        return "late"

    async with endpoints(nodes) as (a, b):
        b.on_request("slow", slow)
        with pytest.raises(RpcTimeoutError, match=r"'slow' \(id \d+\) to node \w{7}: no response"):
            await a.request("slow", None, timeout=0.1)
        assert a.metrics.timeouts == 1
        release.set()
        assert await a.request("sync", "after") == "after"  # ordered: the late one came first
        assert a.metrics.dropped == 1


async def test_close_fails_pending_requests(nodes: list[Node]) -> None:
    async def never(body: Any) -> Any:
        await asyncio.Event().wait()

    async with endpoints(nodes) as (a, b):
        b.on_request("never", never)
        b.on_request("wait", never)
        mine = asyncio.create_task(a.request("never"))
        theirs = asyncio.create_task(b.request("never"))
        a.on_request("never", never)
        await asyncio.sleep(0.05)
        await a.close()
        with pytest.raises(SessionClosedError, match=r"no response to 'never': .*closed by this"):
            await mine
        async with asyncio.timeout(1):
            with pytest.raises(SessionClosedError, match=r"no response to 'never': .*goodbye"):
                await theirs
            await b.wait_closed()
        assert a.closed
        assert b.closed
        with pytest.raises(SessionClosedError):
            await a.request("sync")


async def test_busy_endpoint_answers_503(nodes: list[Node]) -> None:
    release = asyncio.Event()

    async def slow(body: Any) -> Any:
        await release.wait()
        return body

    async with endpoints(nodes, max_handlers=1) as (a, b):
        b.on_request("slow", slow)
        first = asyncio.create_task(a.request("slow", 1))
        await asyncio.sleep(0.05)
        with pytest.raises(RpcError, match="busy") as info:
            await a.request("slow", 2)
        assert info.value.status == 503
        release.set()
        assert await first == 1


async def test_handlers_may_call_the_peer(nodes: list[Node]) -> None:
    async with endpoints(nodes) as (a, b):

        async def relay(body: Any) -> Any:
            return ["relayed", await b.request("sync", body)]

        b.on_request("relay", relay)
        assert await a.request("relay", 7) == ["relayed", 7]


async def test_publish_goes_only_to_matching_subscriptions(nodes: list[Node]) -> None:
    async with endpoints(nodes) as (a, b):
        seen: list[tuple[str, Any]] = []
        also: list[str] = []

        def broken(topic: str, body: Any) -> None:
            raise RuntimeError("subscriber bug")

        assert not await a.publish("sensors/k/temp", 1)  # nobody asked yet
        await b.subscribe("sensors/+/temp", lambda t, v: seen.append((t, v)))
        await b.subscribe("sensors/+/temp", lambda t, v: also.append(t))
        await b.subscribe("alarms/#", lambda t, v: seen.append((t, v)))
        await b.subscribe("broken", broken)
        await b.request("sync")  # a has processed the subscriptions by the time this returns
        assert a.peer_patterns == {"sensors/+/temp", "alarms/#", "broken"}
        assert await a.publish("sensors/k/temp", 21.5)
        assert not await a.publish("sensors/k/humidity", 40)
        assert await a.publish("alarms", "all")
        assert await a.publish("alarms/fire/kitchen", True)
        assert await a.publish("broken", None)
        await a.request("sync")  # b has delivered everything published before
        assert seen == [("sensors/k/temp", 21.5), ("alarms", "all"), ("alarms/fire/kitchen", True)]
        assert also == ["sensors/k/temp"]

        await b.unsubscribe("alarms/#")
        await b.unsubscribe("never-subscribed")
        await b.request("sync")
        assert a.peer_patterns == {"sensors/+/temp", "broken"}
        assert not await a.publish("alarms/fire", True)


async def test_unsolicited_publication_is_dropped(nodes: list[Node]) -> None:
    async with endpoints(nodes) as (a, b):
        await b.subscribe("t", lambda t, v: None)
        await b.request("sync")
        await b.unsubscribe("t")
        # a publishes on its old view before the Unsubscribe arrives: b drops it, counted.
        await a._session.send(Publish("t", 1))
        await a.request("sync")
        assert b.metrics.dropped == 1


async def test_invalid_topics_and_patterns_are_local_errors(nodes: list[Node]) -> None:
    async with endpoints(nodes) as (a, _b):
        with pytest.raises(LocalProtocolError, match="wildcard"):
            await a.publish("a/#", 1)
        with pytest.raises(LocalProtocolError, match="whole last level"):
            await a.subscribe("#/a", lambda t, v: None)
        with pytest.raises(LocalProtocolError, match="body holds set"):
            await a.request("sync", {1})


async def test_request_before_start_is_a_local_error(nodes: list[Node]) -> None:
    async with established(nodes[0], nodes[1]) as (sa, _sb):
        with pytest.raises(LocalProtocolError, match="before start"):
            await Endpoint(sa).request("sync")


async def test_repeated_topics_follow_subscription_changes(nodes: list[Node]) -> None:
    async with endpoints(nodes) as (a, b):
        first: list[Any] = []
        second: list[Any] = []
        assert not await a.publish("s/1", 0)
        await b.subscribe("s/#", lambda t, v: first.append(v))
        await b.request("sync")
        for i in range(3):
            assert await a.publish("s/1", i)
        await a.request("sync")
        await b.subscribe("s/1", lambda t, v: second.append(v))  # a new local match for s/1
        await b.request("sync")
        assert await a.publish("s/1", 3)
        await a.request("sync")
        assert (first, second) == ([0, 1, 2, 3], [3])
        await b.unsubscribe("s/#")
        await b.request("sync")
        assert await a.publish("s/1", 4)  # b still wants s/1 itself
        await a.request("sync")
        await b.unsubscribe("s/1")
        await b.request("sync")
        assert not await a.publish("s/1", 5)
        await a._session.send(Publish("s/1", 6))  # as if sent before the Unsubscribe arrived
        await a.request("sync")
        assert (first, second) == ([0, 1, 2, 3], [3, 4])
        assert b.metrics.dropped == 1
