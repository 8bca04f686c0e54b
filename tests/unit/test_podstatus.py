"""Pod phase and conditions from container statuses (kubelet getPhase semantics)."""

import pytest

from agent.podstatus import (
    ContainerState,
    ContainerStatus,
    PodStatusInput,
    parse_rfc3339,
    pod_phase,
    pod_status,
    rfc3339,
)

RUNNING = ContainerState("running", started_at=1000.0)
DONE = ContainerState("terminated", "Completed", exit_code=0, started_at=1.0, finished_at=2.0)
FAILED = ContainerState("terminated", "Error", exit_code=3, started_at=1.0, finished_at=2.0)
BACKOFF = ContainerState("waiting", "CrashLoopBackOff")


def status(state: ContainerState, last: ContainerState | None = None) -> ContainerStatus:
    return ContainerStatus("c", "", state=state, last_state=last)


@pytest.mark.parametrize(
    ("policy", "states", "phase"),
    [
        ("Always", [RUNNING], "Running"),
        ("Always", [status(BACKOFF, FAILED)], "Running"),
        ("Always", [status(ContainerState("waiting", "ContainerCreating"))], "Pending"),
        ("Never", [DONE], "Succeeded"),
        ("Never", [FAILED], "Failed"),
        ("Never", [DONE, FAILED], "Failed"),
        ("Never", [DONE, RUNNING], "Running"),
        ("OnFailure", [DONE], "Succeeded"),
        ("OnFailure", [status(BACKOFF, FAILED)], "Running"),
        ("Always", [DONE], "Running"),
    ],
)
def test_phase(policy: str, states: list[ContainerState | ContainerStatus], phase: str) -> None:
    statuses = [s if isinstance(s, ContainerStatus) else status(s) for s in states]
    assert pod_phase(policy, False, True, statuses) == phase


def test_uninitialized_pod_is_pending_and_failed_init_is_failed() -> None:
    assert pod_phase("Always", False, False, [status(RUNNING)]) == "Pending"
    assert pod_phase("Never", True, False, [status(RUNNING)]) == "Failed"


def test_conditions_and_transition_times() -> None:
    ready = ContainerStatus("c", "", state=RUNNING, ready=True)
    data = PodStatusInput(
        restart_policy="Always",
        init_statuses=[],
        statuses=[ContainerStatus("c", "", state=RUNNING)],
        initialized=True,
        host_ip="127.0.0.1",
        start_time=100.0,
        created_at=100.0,
        now=150.0,
        qos_class="BestEffort",
    )
    first = pod_status(data)
    conditions = {c["type"]: c for c in first["conditions"]}
    assert conditions["Ready"]["status"] == "False"
    assert conditions["Ready"]["lastTransitionTime"] == rfc3339(100.0)
    data.statuses = [ready]
    data.now = 200.0
    second = pod_status(data)
    conditions = {c["type"]: c for c in second["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Ready"]["lastTransitionTime"] == rfc3339(200.0)
    assert conditions["Initialized"]["lastTransitionTime"] == rfc3339(100.0)
    assert second["phase"] == "Running"
    assert second["podIP"] == "127.0.0.1"


def test_container_status_round_trips_through_its_dict() -> None:
    original = ContainerStatus(
        "c",
        "img",
        state=FAILED,
        last_state=DONE,
        ready=False,
        restart_count=4,
        container_id="process://x",
    )
    assert ContainerStatus.from_k8s(original.to_k8s()) == original


def test_rfc3339_round_trip() -> None:
    assert parse_rfc3339(rfc3339(1700000000.0)) == 1700000000.0
    assert parse_rfc3339("not a time") is None
