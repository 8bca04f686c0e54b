"""Snapshots of every view at 80x24 (pytest-textual-snapshot), from real agents.

The data comes from the ``pair`` agents through the real API; only what changes from run to
run is pinned before the TUI sees it (:class:`MaskedApi`): times, node IDs, fingerprints,
uids, counters, the machine's CPU and memory, and the other runtimes (whose health depends on
the machine). The TUI's clock is fixed too, so ages are always the same. Update the pictures
after a deliberate change with ``pytest tests/tui --snapshot-update`` and look at them.
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from agent.tui.adapter import AgentApi
from agent.tui.app import FloreteTui
from agent.tui.dialogs import TextScreen
from agent.tui.logs import LogScreen
from agent.tui.view import TextView
from tests.integration.conftest import Agent
from tests.tui.conftest import Pair, socket_of, until

pytestmark = pytest.mark.integration

Snap = Callable[..., bool]
FIXED_TIME = "2024-01-01T00:00:00Z"
NOW = calendar.timegm((2024, 1, 1, 0, 10, 0, 0, 0, 0))
NODE_ID = re.compile(r"\b[A-Z2-7]{7}(?:-[A-Z2-7]{7}){7}\b")
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)")
FAKE_ID = "TUITEST-AAAAAAA-BBBBBBB-CCCCCCC-DDDDDDD-EEEEEEE-FFFFFFF-GGGGGGG"
TIMES = {
    "creationTimestamp", "startTime", "startedAt", "finishedAt", "lastTransitionTime",
    "lastProbeTime", "firstTimestamp", "lastTimestamp", "lastHeartbeatTime", "firstSeen",
    "lastSeen", "lastHeard", "bootTime", "since", "expiresAt", "time",
}  # fmt: skip
VALUES: dict[str, Any] = {
    "uid": "00000000-0000-0000-0000-000000000000",
    "containerID": "process://00000000-main-0",
    "resourceVersion": "1",
    "uptimeSeconds": 600.0,
    "rssBytes": 41 * 2**20,
    "lastSeenAgoSeconds": 1.0,
    "rttSeconds": 0.0012,
    "loss": 0.0,
    "rxBytes": 20480,
    "txBytes": 10240,
    "retransmissions": 0,
    "rejectedFrames": 0,
    "addedAt": NOW - 3600,
    "fingerprint": "AB:CD:EF",
    "certificateSHA256": "AB:CD:EF",
    "certificate": "-----BEGIN CERTIFICATE-----\nMASKED\n-----END CERTIFICATE-----\n",
    "stateDir": "/var/lib/florete-agent",
    "socket": "/var/lib/florete-agent/agent.sock",
    "capabilities": {},
    "expiresInSeconds": 290.0,
    "host": {
        "cpuCount": 2,
        "cpuPercent": 12.5,
        "loadAverage": [0.5, 0.4, 0.3],
        "memoryTotalBytes": 4 * 2**30,
        "memoryAvailableBytes": 3 * 2**30,
        "temperatureCelsius": 45.0,
        "bootTime": "2023-12-31T00:00:00Z",
    },
}


def mask(obj: Any, key: str = "") -> Any:
    """``obj`` with every value that changes between runs pinned."""
    if key in VALUES:
        return VALUES[key]
    if key in TIMES and isinstance(obj, str):
        return FIXED_TIME
    if isinstance(obj, dict):
        return {k: mask(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [mask(v) for v in obj]
    if isinstance(obj, str):
        return TIMESTAMP.sub(FIXED_TIME, NODE_ID.sub(FAKE_ID, obj))
    return obj


class MaskedApi(AgentApi):
    """The real API, with run-to-run changes pinned; mesh lists keep only ``keep`` (other
    agents on the machine never show)."""

    def __init__(self, socket_path: Path, keep: str = "") -> None:
        super().__init__(socket_path, timeout=20.0)
        self.keep = keep

    def request(
        self, method: str, path: str, query: dict[str, str] | None = None, body: Any = None
    ) -> Any:
        answer = super().request(method, path, query, body)
        if not isinstance(answer, dict):
            return answer
        if isinstance(answer.get("items"), list) and path.rsplit("/", 1)[-1] in (
            "neighbours",
            "links",
            "peers",
        ):
            answer["items"] = [i for i in answer["items"] if self.keep in json_ids(i)]
        if answer.get("kind") == "AgentStatus":
            runtimes = answer["status"]["runtimes"]
            answer["status"]["runtimes"] = [
                {**r, "description": "host processes", "attributes": {}}
                for r in runtimes
                if r["name"] == "process"
            ]
        if answer.get("code"):  # a shown pairing code
            answer["code"] = "1234-5678"
            answer["uri"] = "florete://pair?code=12345678"
        return mask(answer)


def json_ids(item: dict[str, Any]) -> str:
    return f"{item.get('nodeID', '')} {(item.get('metadata') or {}).get('name', '')}"


def tui(agent: Agent, keep: str = "", **options: Any) -> FloreteTui:
    api = MaskedApi(socket_of(agent), keep)
    return FloreteTui(api, refresh=3600, clock=lambda: NOW, **options)


def loaded(app: FloreteTui) -> bool:
    return app.main.current_view.loaded


def after(*keys: str, ready: Callable[[FloreteTui], bool] = loaded) -> Callable[..., Any]:
    """A ``run_before``: wait for the first view, press ``keys``, wait for ``ready``."""

    async def run(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, FloreteTui)
        await until(pilot, lambda: loaded(app), "the first view")
        await pilot.press(*keys)
        await until(pilot, lambda: ready(app), "the screen")
        app.clear_notifications()  # they time out: not part of the picture
        await pilot.pause(0.2)

    return run


@pytest.mark.parametrize(
    "view", ["overview", "pods", "neighbours", "links", "peers", "pairing", "supernode", "mqtt"]
)
def test_view(snap_compare: Snap, pair: Pair, view: str) -> None:
    assert snap_compare(tui(pair.a, pair.b_id, view=view), run_before=after())


def test_pods_read_only(snap_compare: Snap, pair: Pair) -> None:
    assert snap_compare(tui(pair.a, view="pods", read_only=True), run_before=after())


def test_describe(snap_compare: Snap, pair: Pair) -> None:
    def described(app: FloreteTui) -> bool:
        return isinstance(app.screen, TextScreen) and app.screen.loaded

    app = tui(pair.a, view="pods")
    assert snap_compare(app, run_before=after("slash", *"web", "enter", "enter", ready=described))


def test_logs(snap_compare: Snap, pair: Pair) -> None:
    def logged(app: FloreteTui) -> bool:
        return isinstance(app.screen, LogScreen) and "hello 30" in app.screen.lines

    app = tui(pair.a, view="pods")
    assert snap_compare(app, run_before=after("slash", *"greeter", "enter", "l", ready=logged))


def test_help(snap_compare: Snap, pair: Pair) -> None:
    assert snap_compare(tui(pair.a), run_before=after("question_mark"))


def test_confirm_delete(snap_compare: Snap, pair: Pair) -> None:
    app = tui(pair.a, view="pods")
    assert snap_compare(app, run_before=after("slash", *"web", "enter", "ctrl+k"))


def test_pairing_code_with_qr(snap_compare: Snap, work: Agent) -> None:
    def showing(app: FloreteTui) -> bool:
        view = app.main.current_view
        return isinstance(view, TextView) and "Code  1234-5678" in str(view.body.content)

    app = tui(work, view="pairing")
    try:
        assert snap_compare(app, run_before=after("p", ready=showing))
    finally:
        api = AgentApi(socket_of(work))
        api.cancel_pairing_code()
        api.close()


def test_agent_unreachable(snap_compare: Snap) -> None:
    api = AgentApi(Path("/nonexistent/florete/agent.sock"))
    app = FloreteTui(api, refresh=3600, clock=lambda: NOW)

    async def banner(pilot: Pilot[Any]) -> None:
        await until(pilot, lambda: bool(app.connection), "the banner")
        await pilot.pause(0.2)

    assert snap_compare(app, run_before=banner)
