"""The supernode view: members, leader, term, capacity and placements, or "not configured".

From ``GET /apis/florete.io/v1alpha1/supernode`` (``supernode/views.py``: ``status_object``);
a 404 means this agent is in no supernode (or has no supernode support) and the view says
"not configured". Every field is read with a default, so an agent with an older or newer
object still shows what it has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.text import Text

from agent.render import table
from agent.tui.view import OptionalView

__all__ = ["SupernodeView", "supernode_lines"]


def supernode_lines(obj: Mapping[str, Any]) -> list[str]:
    """The lines for a ``Supernode`` object."""
    st: Mapping[str, Any] = obj.get("status") or {}
    leader = st.get("leader") or {}
    name = (obj.get("metadata") or {}).get("name", "?")
    cap, alloc = st.get("capacity") or {}, st.get("allocatable") or {}
    lines = [
        f"Supernode    {name}",
        f"This member  {st.get('name', '?')} ({st.get('role', '?')}), "
        f"{'ready' if st.get('ready') else 'NOT READY'}",
        f"Leader       {leader.get('name') or '-'}, term {st.get('term', '?')}, "
        f"{'quorum' if st.get('quorum') else 'NO QUORUM'}",
        f"Capacity     cpu {cap.get('cpu', '?')}, memory {cap.get('memory', '?')}, "
        f"pods {cap.get('pods', '?')}",
        f"Allocatable  cpu {alloc.get('cpu', '?')}, memory {alloc.get('memory', '?')}, "
        f"pods {alloc.get('pods', '?')}",
    ]
    timing = (st.get("timing") or {}).get("summary")
    if timing:
        lines.append(f"Timing       {timing}")
    members = st.get("members") or []
    lines += ["", f"Members ({len(members)})"]
    rows = [
        [
            str(m.get("name", "?")),
            str(m.get("nodeID", "?")).split("-", 1)[0],
            str(m.get("role", "?")),
            str(m.get("health", "?")),
            "yes" if m.get("reachable") else "no",
            str(len([p for p in st.get("placements") or [] if p.get("nodeID") == m.get("nodeID")])),
        ]
        for m in members
    ]
    lines += [
        "  " + line
        for line in table(["NAME", "NODE-ID", "ROLE", "HEALTH", "REACH", "PODS"], rows).splitlines()
    ]
    placements = st.get("placements") or []
    lines += ["", f"Placements ({len(placements)})"]
    if placements:
        rows = [
            [
                f"{p.get('namespace', '?')}/{p.get('name', '?')}",
                str(p.get("member") or "-"),
                "deleting" if p.get("deleting") else ("pinned" if p.get("pinned") else ""),
                str(p.get("reason") or ""),
            ]
            for p in placements
        ]
        lines += ["  " + line for line in table(["POD", "MEMBER", "", "REASON"], rows).splitlines()]
    return lines


class SupernodeView(OptionalView):
    """The supernode this agent belongs to."""

    NAME = "supernode"
    ALIASES = ("sn",)
    RESOURCE = "supernode"
    ABSENT = "Supernode: not configured. This agent is not a member of a supernode."

    def present(self, data: dict[str, Any]) -> list[Text]:
        """:func:`supernode_lines`."""
        return [Text(line, no_wrap=True) for line in supernode_lines(data)]
