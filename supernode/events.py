"""Events of a supernode's pods, gathered from its members.

A member records the events of the pods it runs (``agent.store``), under its own uid of each
pod; the supernode shows its pods under the uid of their supernode record (the
``florete.io/placement`` annotation, :func:`supernode.pods.member_object`). So that ``kubectl
describe pod`` (``fieldSelector=involvedObject.name=X,involvedObject.namespace=N,
involvedObject.uid=U``) finds them, a supernode pod's events are shown with
``involvedObject.uid`` set to the supernode's uid (:func:`relabel`).

* A member answers ``supernode.events`` (:mod:`supernode.methods`) with the events about the
  supernode pods placed on it (:func:`placed_uids`, :func:`placed_events`), in pages of a bounded
  JSON size (:func:`page`), the asker's field selector applied.
* The member kubectl asks lists its own events and every reachable member's
  (:func:`member_events`) and merges them (:func:`merge`). A member that does not answer is
  left out: its events are simply absent.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from agent.errors import FloreteError
from agent.identity import short_id
from agent.kube_select import Selector
from agent.mesh import Mesh
from agent.store import StoredPod
from supernode.pods import is_supernode_pod, local_pod
from supernode.state import PodRecord

__all__ = [
    "EventsReader",
    "member_events",
    "merge",
    "page",
    "placed_events",
    "placed_uids",
    "relabel",
    "supernode_uids",
]

log = logging.getLogger(__name__)

EventsReader = Callable[[str | None], Awaitable[list[dict[str, Any]]]]
"""This node's own Event objects of a namespace (None: all), as its events route lists them."""

_MAX_PAGES = 64
"""Pages asked of one member at most (64 x 40 KB), in case its answers never end."""


def _supernode_uid(stored: StoredPod) -> str:
    return local_pod(stored).uid if is_supernode_pod(stored) else ""


def supernode_uids(pods: Iterable[StoredPod]) -> dict[str, str]:
    """This node's uid of each supernode pod among ``pods`` -> the supernode's uid of it."""
    return {s.uid: uid for s in pods if (uid := _supernode_uid(s))}


def placed_uids(
    pods: Iterable[StoredPod], record: Callable[[str, str], PodRecord | None], me: str
) -> dict[str, str]:
    """Like :func:`supernode_uids`, for the pods of ``pods`` that are the current placement on
    this member (``record(namespace, name)`` is the supernode's record, ``me`` this node's ID):
    not an old copy that is being stopped, nor a pod placed elsewhere."""
    uids = {}
    for stored in pods:
        uid = _supernode_uid(stored)
        found = record(stored.namespace, stored.name) if uid else None
        if found is not None and found.member == me and found.uid == uid:
            uids[stored.uid] = uid
    return uids


def relabel(event: Mapping[str, Any], uids: Mapping[str, str]) -> dict[str, Any]:
    """``event`` with ``involvedObject.uid`` replaced by ``uids[involvedObject.uid]`` if there
    is one (a supernode pod's event under the supernode's uid); the input is not changed."""
    involved = event.get("involvedObject")
    if not isinstance(involved, Mapping) or involved.get("uid") not in uids:
        return dict(event)
    return {**event, "involvedObject": {**involved, "uid": uids[involved["uid"]]}}


def placed_events(
    events: Iterable[Mapping[str, Any]], uids: Mapping[str, str], selector: Selector
) -> list[dict[str, Any]]:
    """The events about the pods of ``uids`` (see :func:`placed_uids`), relabelled, that
    ``selector`` matches."""
    out = []
    for event in events:
        involved = event.get("involvedObject")
        if isinstance(involved, Mapping) and involved.get("uid") in uids:
            relabelled = relabel(event, uids)
            if selector.matches(relabelled):
                out.append(relabelled)
    return out


def _cursor(event: Mapping[str, Any]) -> str:
    return str((event.get("metadata") or {}).get("uid", ""))


def page(
    events: Iterable[dict[str, Any]], after: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """One page of ``events`` in the order of their ``metadata.uid``, after the event whose
    ``metadata.uid`` is ``after`` (None: from the start).

    Args:
        events: Event objects.
        after: the ``metadata.uid`` of the last event of the previous page, or None.
        limit: bytes of JSON a page holds at most (one event always goes, however large).

    Returns:
        ``(items, more)``: the page, and whether events follow it.
    """
    items: list[dict[str, Any]] = []
    size = 0
    for event in sorted(events, key=_cursor):
        if after is not None and _cursor(event) <= after:
            continue
        size += len(json.dumps(event))
        if items and size > limit:
            return items, True
        items.append(event)
    return items, False


def merge(*lists: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Events of several members as one list: oldest first (``firstTimestamp``, then
    ``lastTimestamp``; the earlier list first on a tie), each event once (by ``metadata.uid``)."""
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for events in lists:
        for event in events:
            uid = _cursor(event)
            if uid and uid in seen:
                continue
            seen.add(uid)
            out.append(dict(event))
    out.sort(key=lambda e: (str(e.get("firstTimestamp", "")), str(e.get("lastTimestamp", ""))))
    return out


async def member_events(
    mesh: Mesh,
    node_id: str,
    namespace: str | None,
    field_selector: str | None,
    timeout: float,  # noqa: ASYNC109
) -> list[dict[str, Any]]:
    """Ask member ``node_id`` for the events of the supernode pods placed on it, page by page.

    Args:
        mesh: this node's mesh.
        node_id: the member.
        namespace: the namespace, or None for all.
        field_selector: the ``fieldSelector`` the member applies (the asker applies it again).
        timeout: seconds to wait for each page.

    Returns:
        The events; those received before the member stopped answering if it did (a member
        that does not answer, or runs an agent without ``supernode.events``, gives none).
    """
    items: list[dict[str, Any]] = []
    after: str | None = None
    body = {"namespace": namespace, "fieldSelector": field_selector}
    try:
        for _ in range(_MAX_PAGES):
            answer = await mesh.request(
                node_id, "supernode.events", {**body, "after": after}, timeout
            )
            got = [e for e in answer.get("items", []) if isinstance(e, dict)]
            items += got
            if not answer.get("more") or not got:
                break
            after = _cursor(got[-1])
    except (FloreteError, AttributeError) as err:
        log.debug("supernode: events of %s: %s", short_id(node_id), err)
    return items
