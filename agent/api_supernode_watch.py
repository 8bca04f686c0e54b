"""Watch of pods on a supernode member (``GET pods?watch=true``), by polling the pod list.

A member's store holds only the pods it runs, so its own watch never sees a pod on another
member change or go: ``kubectl delete`` would wait for ever for the ``DELETED`` event, and
``kubectl get pods -w`` would miss every other member. A supernode's pods have no single
version counter either (each member's store counts its own), so this watch lists what ``GET
pods`` lists on the member every :data:`POLL_SECONDS` and sends the differences as
``ADDED``, ``MODIFIED`` and ``DELETED`` events, with the selector rules of :mod:`agent.watch`
(an object that starts matching arrives as ``ADDED``, one that stops matching leaves as
``DELETED``).

``resourceVersion``: every list a member answers is remembered (the latest :data:`KEPT`)
under a version of its own counter, which the list carries. A watch from that version starts
from that list, so a change between a list and the watch that follows it (kubectl's and
client-go's list-then-watch) still arrives as an event; a version not remembered starts from
the current list, as after a relist. Versions start at the agent's start time in
milliseconds, so they grow across restarts and do not meet the small versions of a store.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any

from agent.watch import WatchRequest

__all__ = ["KEPT", "POLL_SECONDS", "PolledPods"]

#: Seconds between two lists while a watch is open.
POLL_SECONDS = 1.0
#: Lists remembered for watches that start from their version.
KEPT = 32

Objects = dict[tuple[str, str, str], dict[str, Any]]


def _keyed(objects: Sequence[dict[str, Any]]) -> Objects:
    keyed: Objects = {}
    for obj in objects:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")), str(meta.get("uid", "")))
        keyed[key] = obj
    return keyed


def _differences(
    request: WatchRequest, before: Objects, after: Objects
) -> list[tuple[str, dict[str, Any]]]:
    """The events that take a watcher of ``request`` from ``before`` to ``after``."""
    events: list[tuple[str, dict[str, Any]]] = []
    for key, obj in after.items():
        old = before.get(key)
        if old == obj:
            continue
        seen, sees = request.visible(old), request.visible(obj)
        if sees:
            events.append(("MODIFIED" if seen else "ADDED", obj))
        elif seen:
            events.append(("DELETED", obj))
    events += [
        ("DELETED", old) for key, old in before.items() if key not in after and request.visible(old)
    ]
    return events


class PolledPods:
    """Pod watch events of a supernode member, from its pod list polled.

    Args:
        list_pods: the member's pod list of a namespace (None: all), as ``GET pods`` shows it.
        interval: seconds between two lists while a watch is open.
        clock: wall-clock seconds, for the first version.
    """

    def __init__(
        self,
        list_pods: Callable[[str | None], Awaitable[list[dict[str, Any]]]],
        interval: float = POLL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._list = list_pods
        self._interval = interval
        self._versions = itertools.count(int(clock() * 1000))
        self._version = next(self._versions)
        self._kept: OrderedDict[int, tuple[str | None, Objects]] = OrderedDict()

    def remember(self, namespace: str | None, objects: Sequence[dict[str, Any]]) -> int:
        """Remember a list answered for ``namespace``; returns the version it carries."""
        self._version = next(self._versions)
        self._kept[self._version] = (namespace, _keyed(objects))
        while len(self._kept) > KEPT:
            self._kept.popitem(last=False)
        return self._version

    def _start(self, request: WatchRequest) -> Objects | None:
        """The remembered list a watch from ``request.since`` starts from, or None."""
        if request.since is None or request.initial_events:
            return None
        kept = self._kept.get(request.since)
        if kept is None:
            return None
        namespace, objects = kept
        if namespace is not None and namespace != request.namespace:
            return None  # a list of one namespace says nothing of the others
        return objects

    async def events(
        self, request: WatchRequest, current: Callable[[], Sequence[dict[str, Any]]]
    ) -> AsyncGenerator[tuple[str, dict[str, Any]], None]:
        """Yield ``(type, object)`` watch events for ``request`` until its timeout.

        Args:
            request: the watch's parameters.
            current: not used: the member lists its pods itself (an argument of
                :meth:`agent.watch.WatchHub.events`, whose place this takes).
        """
        try:
            async with asyncio.timeout(request.timeout):
                start = self._start(request)
                now = _keyed(await self._list(request.namespace))
                if start is None and (request.since is None or request.initial_events):
                    for obj in now.values():
                        if request.visible(obj):
                            yield "ADDED", self._versioned(obj)
                    if request.initial_events and request.bookmarks:
                        yield "BOOKMARK", self._bookmark()
                elif start is not None:
                    for kind, obj in _differences(request, start, now):
                        yield kind, self._versioned(obj)
                while True:
                    await asyncio.sleep(self._interval)
                    before, now = now, _keyed(await self._list(request.namespace))
                    for kind, obj in _differences(request, before, now):
                        yield kind, self._versioned(obj)
        except TimeoutError:
            return

    def _versioned(self, obj: dict[str, Any]) -> dict[str, Any]:
        """``obj``, with this watch's latest version when it has none of its own (a pod the
        supernode shows from its records: not yet placed, or on a member out of reach)."""
        meta = obj.get("metadata") or {}
        if "resourceVersion" in meta:
            return obj
        return {**obj, "metadata": {**meta, "resourceVersion": str(self._version)}}

    def _bookmark(self) -> dict[str, Any]:
        metadata = {
            "resourceVersion": str(self._version),
            "annotations": {"k8s.io/initial-events-end": "true"},
        }
        return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata}
