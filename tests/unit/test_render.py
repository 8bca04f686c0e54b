"""kubectl-style output: the STATUS column, ages, tables."""

from typing import Any

import pytest

from agent.render import human_duration, pod_status_text, pods_table


def pod(status: dict[str, Any], deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "p", "creationTimestamp": "2026-01-01T00:00:00Z"}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:01:00Z"
    return {
        "metadata": meta,
        "spec": {"containers": [{"name": "c"}], "nodeName": "n"},
        "status": status,
    }


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (
            {"phase": "Running", "containerStatuses": [{"state": {"running": {}}, "ready": True}]},
            "Running",
        ),
        (
            {
                "phase": "Running",
                "containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff"}}}],
            },
            "CrashLoopBackOff",
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": [
                    {"state": {"terminated": {"reason": "Error", "exitCode": 1}}}
                ],
            },
            "Error",
        ),
        (
            {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 2}}}]},
            "ExitCode:2",
        ),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [{"state": {"running": {}}}],
                "containerStatuses": [],
            },
            "Init:0/1",
        ),
        (
            {
                "phase": "Pending",
                "initContainerStatuses": [
                    {"state": {"terminated": {"exitCode": 0}}},
                    {"state": {"waiting": {"reason": "CrashLoopBackOff"}}},
                ],
            },
            "Init:CrashLoopBackOff",
        ),
        (
            {
                "phase": "Failed",
                "initContainerStatuses": [
                    {"state": {"terminated": {"reason": "Error", "exitCode": 1}}}
                ],
            },
            "Init:Error",
        ),
    ],
)
def test_status_column(status: dict[str, Any], text: str) -> None:
    assert pod_status_text(pod(status)) == text


def test_terminating_wins() -> None:
    assert pod_status_text(pod({"phase": "Running"}, deleting=True)) == "Terminating"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (5, "5s"),
        (119, "119s"),
        (150, "2m30s"),
        (600, "10m"),
        (7200, "120m"),
        (4 * 3600, "4h"),
        (30 * 3600, "30h"),
        (3 * 86400 + 3600, "3d1h"),
        (400 * 86400, "400d"),
    ],
)
def test_human_duration(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_wide_table_has_ip_and_node() -> None:
    status = {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "containerStatuses": [
            {
                "state": {"running": {}},
                "ready": True,
                "restartCount": 2,
                "lastState": {"terminated": {"finishedAt": "2026-01-01T00:00:30Z"}},
            }
        ],
    }
    text = pods_table([pod(status)], wide=True, now=1767225660.0)
    header, row = text.splitlines()
    assert header.split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert row.split() == ["p", "1/1", "Running", "2", "(30s", "ago)", "60s", "127.0.0.1", "n"]
