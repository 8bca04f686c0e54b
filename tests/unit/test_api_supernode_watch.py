"""The pod watch of a supernode member: list differences as events, resumable from a list."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from agent.api_supernode_watch import KEPT, PolledPods
from agent.kube_select import Selector
from agent.watch import WatchRequest


def pod(
    name: str, version: str | None = "1", phase: str = "Running", **labels: str
) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "default", "name": name, "uid": f"uid-{name}"}
    if version is not None:
        meta["resourceVersion"] = version
    meta["labels"] = labels
    return {"metadata": meta, "status": {"phase": phase}}


class Pods:
    """The member's list, as the test sets it."""

    def __init__(self, *objects: dict[str, Any]) -> None:
        self.objects = list(objects)
        self.lists = 0
        self.listed = asyncio.Event()

    async def __call__(self, namespace: str | None) -> list[dict[str, Any]]:
        self.lists += 1
        self.listed.set()
        return [o for o in self.objects if namespace in (None, o["metadata"]["namespace"])]


def request(
    since: int | None = None, labels: str | None = None, timeout: float = 5.0
) -> WatchRequest:
    return WatchRequest("default", Selector.parse(labels, None, "pods"), since, timeout=timeout)


async def take(
    events: AsyncGenerator[tuple[str, dict[str, Any]], None], n: int
) -> list[tuple[str, str]]:
    got = []
    for _ in range(n):
        kind, obj = await asyncio.wait_for(anext(events), 2.0)
        got.append((kind, obj["metadata"]["name"]))
    return got


async def test_without_a_version_the_current_pods_come_first_then_every_change() -> None:
    pods = Pods(pod("a"), pod("b"))
    events = PolledPods(pods, interval=0.01).events(request(), list)
    assert await take(events, 2) == [("ADDED", "a"), ("ADDED", "b")]
    pods.objects = [pod("a", "2", phase="Failed"), pod("c")]
    assert sorted(await take(events, 3)) == [("ADDED", "c"), ("DELETED", "b"), ("MODIFIED", "a")]
    await events.aclose()


async def test_a_watch_from_a_listed_version_sends_what_changed_since_that_list() -> None:
    pods = Pods(pod("a"), pod("b"))
    watch = PolledPods(pods, interval=0.01)
    version = watch.remember("default", await pods("default"))
    pods.objects = [pod("a")]  # b went between the list and the watch
    events = watch.events(request(since=version), list)
    assert await take(events, 1) == [("DELETED", "b")]
    pods.objects = [pod("a"), pod("d")]
    assert await take(events, 1) == [("ADDED", "d")]
    await events.aclose()


async def test_an_unknown_version_starts_from_the_current_pods_without_replaying_them() -> None:
    pods = Pods(pod("a"))
    watch = PolledPods(pods, interval=0.01, clock=lambda: 1.0)
    first = watch.remember("default", [])
    for _ in range(KEPT):
        watch.remember("default", [])
    events = watch.events(request(since=first), list)  # forgotten: not a replay of "a"
    taken = asyncio.ensure_future(take(events, 1))
    await pods.listed.wait()  # the watch has listed "a"
    pods.objects = [pod("a"), pod("e")]
    assert await taken == [("ADDED", "e")]
    await events.aclose()
    assert first == 1001  # counted on from the clock in milliseconds


async def test_selectors_turn_starting_and_stopping_to_match_into_added_and_deleted() -> None:
    pods = Pods(pod("a", app="web"), pod("b", app="db"))
    events = PolledPods(pods, interval=0.01).events(request(labels="app=web"), list)
    assert await take(events, 1) == [("ADDED", "a")]
    pods.objects = [pod("a", "2", app="db"), pod("b", "2", app="web")]
    assert sorted(await take(events, 2)) == [("ADDED", "b"), ("DELETED", "a")]
    await events.aclose()


async def test_a_pod_without_a_version_gets_the_watch_s_and_the_stream_ends_on_time() -> None:
    pods = Pods(pod("pending", version=None, phase="Pending"))
    watch = PolledPods(pods, interval=0.01)
    version = watch.remember(None, [])
    events = [e async for e in watch.events(request(since=version, timeout=0.5), list)]
    assert [(k, o["metadata"]["resourceVersion"]) for k, o in events] == [("ADDED", str(version))]
    assert pods.lists >= 2  # it kept polling until the timeout ended the stream
