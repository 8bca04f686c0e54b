"""Watch streams of pods (``?watch=true``), resumable by ``resourceVersion``.

The store calls :meth:`WatchHub.pod_changed` after every committed pod change; the store's
version counter is the ``resourceVersion``. The hub keeps the latest changes (``history``) so a
client can list at version N and then watch from N without missing what happened in between,
exactly as ``kubectl get -w`` and client-go informers do. Semantics follow the API server
(https://kubernetes.io/docs/reference/using-api/api-concepts/#efficient-detection-of-changes):

* no ``resourceVersion``, ``""`` or ``"0"``: an ``ADDED`` event for every current object, then
  changes;
* ``resourceVersion=N``: every change after N; when changes after N were already dropped from
  the history, one ``ERROR`` event with a ``410 Expired`` Status (the client lists again);
* ``sendInitialEvents=true``: ``ADDED`` for every current object, then (with
  ``allowWatchBookmarks``) a ``BOOKMARK`` annotated ``k8s.io/initial-events-end``;
* a selector is applied to each change with the object's previous state, so an object that
  starts matching arrives as ``ADDED`` and one that stops matching leaves as ``DELETED``;
* ``timeoutSeconds`` ends the stream (30 minutes without it).

Each event is one JSON object ``{"type": ..., "object": ...}`` and a newline, sent as one chunk.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from agent.httproute import status_object
from agent.kube_select import Selector
from agent.store import StoredPod

log = logging.getLogger(__name__)

#: Seconds a watch lasts when the client gives no ``timeoutSeconds`` (the API server's default
#: ``--min-request-timeout`` is 1800 s).
DEFAULT_TIMEOUT = 1800.0
#: Events queued for one watcher before it is cut off as too slow.
QUEUE_LIMIT = 1000

Render = Callable[[StoredPod], dict[str, Any]]


@dataclass(frozen=True)
class Change:
    """One committed pod change as the hub keeps it.

    Attributes:
        version: the store version of the change.
        type: ``ADDED``, ``MODIFIED`` or ``DELETED``.
        obj: the rendered Pod after the change (its last state for ``DELETED``).
        previous: the rendered Pod before the change, or None for ``ADDED``.
    """

    version: int
    type: str
    obj: dict[str, Any]
    previous: dict[str, Any] | None


@dataclass(eq=False)
class _Watcher:
    queue: asyncio.Queue[Change] = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT))
    overflowed: bool = False


@dataclass(frozen=True)
class WatchRequest:
    """What one watch asks for (parsed from the query by the API).

    Attributes:
        namespace: only objects of this namespace, or None for all.
        selector: label and field selectors.
        since: ``resourceVersion`` as an integer, or None to start with the current objects.
        initial_events: ``sendInitialEvents=true``.
        bookmarks: ``allowWatchBookmarks=true``.
        timeout: seconds until the stream ends.
    """

    namespace: str | None
    selector: Selector
    since: int | None
    initial_events: bool = False
    bookmarks: bool = False
    timeout: float = DEFAULT_TIMEOUT

    def visible(self, obj: Mapping[str, Any] | None) -> bool:
        """Whether this watch sees ``obj`` (namespace and selectors)."""
        if obj is None:
            return False
        if self.namespace is not None and obj["metadata"].get("namespace") != self.namespace:
            return False
        return self.selector.matches(obj)


class EventSource(Protocol):
    """What a watch stream takes its events from (:class:`WatchHub`, or a poller)."""

    def events(
        self, request: WatchRequest, current: Callable[[], Sequence[dict[str, Any]]]
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield ``(type, object)`` events for ``request`` until its timeout."""
        ...


class WatchHub:
    """Fan-out of pod changes to watch streams, with a bounded history for resumption.

    Args:
        render: turns a stored pod into its API object (``Reconciler.pod_object``).
        version: the store's current version (its counter when the hub is made).
        history: changes kept for resumption.
    """

    def __init__(self, render: Render, version: int, history: int = 256) -> None:
        self._render = render
        self._history: deque[Change] = deque(maxlen=history)
        self._floor = version  # changes after this version are all in the history
        self._version = version
        self._latest: dict[str, dict[str, Any]] = {}
        self._watchers: set[_Watcher] = set()

    @property
    def version(self) -> int:
        """The version of the latest change the hub has seen."""
        return self._version

    def pod_changed(self, change: str, pod: StoredPod) -> None:
        """Store listener: record a change and pass it to every watcher (never raises)."""
        try:
            obj = self._render(pod)
        except Exception:  # a listener must not break the store's caller
            log.exception("cannot render pod %s/%s for watchers", pod.namespace, pod.name)
            return
        # A pod last changed before the hub started: take its visibility as unchanged.
        previous = self._latest.get(pod.uid, None if change == "ADDED" else obj)
        if change == "DELETED":
            self._latest.pop(pod.uid, None)
        else:
            self._latest[pod.uid] = obj
        record = Change(pod.resource_version, change, obj, previous)
        if len(self._history) == self._history.maxlen:
            self._floor = self._history[0].version
        self._history.append(record)
        self._version = max(self._version, record.version)
        for watcher in self._watchers:
            if watcher.overflowed:
                continue
            try:
                watcher.queue.put_nowait(record)
            except asyncio.QueueFull:  # its consumer sees the flag at its next event
                watcher.overflowed = True

    async def events(
        self, request: WatchRequest, current: Callable[[], Sequence[dict[str, Any]]]
    ) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        """Yield ``(type, object)`` watch events for ``request`` until its timeout.

        Args:
            request: the watch's parameters.
            current: lists the current objects (for the initial ``ADDED`` events), already
                filtered by namespace and selectors.
        """
        watcher = _Watcher()
        backlog: list[Change] = []
        expired = False
        # No await until the watcher is registered: no change can fall between the two.
        if request.since is None or request.initial_events:
            initial = list(current())
        else:
            initial = []
            if request.since < self._floor:
                expired = True
            else:
                backlog = [c for c in self._history if c.version > request.since]
        self._watchers.add(watcher)
        try:
            if expired:
                yield (
                    "ERROR",
                    status_object(
                        410,
                        "Expired",
                        f"too old resource version: {request.since} ({self._floor})",
                    ),
                )
                return
            for obj in initial:
                yield "ADDED", obj
            if request.initial_events and request.bookmarks:
                yield "BOOKMARK", self._bookmark(initial_end=True)
            for change in backlog:
                if (event := _event_for(request, change)) is not None:
                    yield event
            async with asyncio.timeout(request.timeout):
                while not watcher.overflowed:
                    if (event := _event_for(request, await watcher.queue.get())) is not None:
                        yield event
            log.info("a watcher fell more than %d events behind; its stream ends", QUEUE_LIMIT)
        except TimeoutError:
            return
        finally:
            self._watchers.discard(watcher)

    def _bookmark(self, initial_end: bool = False) -> dict[str, Any]:
        metadata: dict[str, Any] = {"resourceVersion": str(self._version)}
        if initial_end:
            metadata["annotations"] = {"k8s.io/initial-events-end": "true"}
        return {"kind": "Pod", "apiVersion": "v1", "metadata": metadata}


def _event_for(request: WatchRequest, change: Change) -> tuple[str, dict[str, Any]] | None:
    """The event ``change`` makes for this watch, or None when the watch does not see it."""
    now = change.type != "DELETED" and request.visible(change.obj)
    before = request.visible(change.previous)
    if change.type == "DELETED":
        return ("DELETED", change.obj) if request.visible(change.obj) else None
    if now:
        return ("MODIFIED" if before else "ADDED", change.obj)
    return ("DELETED", change.obj) if before else None


def encode_event(kind: str, obj: Mapping[str, Any]) -> bytes:
    """One watch event as the API server frames it: a JSON object and a newline."""
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"
