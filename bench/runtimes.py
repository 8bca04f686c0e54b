"""Pod start latency per runtime, beside the backend's own start measured in the same run.

One agent runs with the process, podman and systemd runtimes configured. For each runtime, ``RUNS``
times and one after the other:

* **ours**: ``POST`` a one-container pod (``exec sleep 600``; podman: the offline busybox image
  that tests/podman_env.py builds, ``imagePullPolicy: Never``), then ``GET`` it every
  :data:`POLL` seconds until ``status.phase`` is ``Running``: apply to Running. The pod is then
  deleted (grace 0) and gone before the next run; that part is not timed.
* **anchor**, measured right before each pod, so both see the same machine load:

  - process: ``subprocess.Popen`` of the same command (returns once the child exec'd);
  - podman: ``podman run --rm IMAGE true`` (the CLI creates, starts, waits for and removes a
    container; the agent also creates a podman pod with its infra container, and talks to the
    API service instead of starting a CLI);
  - systemd: ``systemd-run --user --wait -q true`` on the same manager (a transient unit started
    and waited for).

The table gives the medians, the agent's share (ours minus anchor; the goal is <= 50 ms) and the
ratio. podman and systemd are started as the tests start them (tests/podman_env.py,
tests/systemd_env.py); a runtime that cannot run here prints ``unavailable: <reason>``.
"""

from __future__ import annotations

import shutil
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.apiclient import ApiClient
from agent.errors import ApiError
from bench.agent import running_agent
from tests import podman_env, systemd_env

RUNS = 15
POLL = 0.002  # seconds between status reads while a pod starts
START_TIMEOUT = 60.0  # seconds a pod may take to run, or to be gone after its delete
GOAL_MS = 50.0  # the agent's share of a pod start, median
PODS = "/api/v1/namespaces/default/pods"
SLEEP = ["/bin/sh", "-c", "exec sleep 600"]


@dataclass(frozen=True)
class Case:
    """One runtime to measure.

    Attributes:
        runtime: the runtime's name (the pods' ``runtimeClassName``).
        config: the agent's TOML tables for it.
        container: the pod's container, without its name.
        anchor_name: what the anchor runs.
        anchor: runs the anchor once; returns its seconds.
    """

    runtime: str
    config: str
    container: dict[str, Any]
    anchor_name: str
    anchor: Callable[[], float]


def _timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    """Seconds ``argv`` takes to run to its end.

    Raises:
        subprocess.CalledProcessError: it failed.
    """
    began = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=60)
    return time.perf_counter() - began


def _popen() -> float:
    """Seconds ``Popen`` of :data:`SLEEP` takes (it returns once the child exec'd)."""
    began = time.perf_counter()
    proc = subprocess.Popen(SLEEP)
    took = time.perf_counter() - began
    proc.kill()
    proc.wait()
    return took


def _process() -> Case:
    return Case("process", "", {"command": SLEEP}, "bare Popen", _popen)


def _podman() -> Case | str:
    """The podman case, or why podman cannot run here."""
    try:
        reason = podman_env.unavailable()
        if reason:
            return reason
        env = podman_env.environment()
    except RuntimeError as err:
        return str(err)
    config = f'[runtimes.podman]\nsocket = "{env.socket}"\nstart_service = false\n'
    container = {"image": podman_env.IMAGE, "imagePullPolicy": "Never", "command": SLEEP}
    run = ["podman", "run", "--rm", podman_env.IMAGE, "true"]
    return Case("podman", config, container, "podman run --rm", lambda: _timed(run, env.env()))


def _systemd() -> Case | str:
    """The systemd case, or why systemd cannot run here."""
    if shutil.which("systemd-run") is None:
        return "systemd-run is not installed"
    try:
        reason = systemd_env.unavailable()
        if reason:
            return reason
        manager = systemd_env.manager()
    except RuntimeError as err:
        return str(err)
    config = f'[runtimes.systemd]\nbus = "user"\nbus_address = "{manager.bus_address}"\n'
    run = ["systemd-run", "--user", "--wait", "-q", "true"]
    return Case(
        "systemd",
        config,
        {"command": SLEEP},
        "systemd-run --wait",
        lambda: _timed(run, manager.env()),
    )


def _pod(name: str, case: Case) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "runtimeClassName": case.runtime,
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", **case.container}],
        },
    }


def apply_to_running(client: ApiClient, pod: dict[str, Any]) -> float:
    """Seconds from the ``POST`` of ``pod`` until the agent reports its containers running
    (``status.phase`` would also say ``Running`` for a restartPolicy Always pod between
    restarts).

    Raises:
        ApiError: the agent refused the pod (e.g. its runtime is unhealthy).
        RuntimeError: the pod ended or its container is stuck waiting with an error.
        TimeoutError: not Running within 60 s.
    """
    path = f"{PODS}/{pod['metadata']['name']}"
    began = time.perf_counter()
    client.request("POST", PODS, body=pod)
    while time.perf_counter() - began < START_TIMEOUT:
        status = client.request("GET", path).get("status") or {}
        states = [c.get("state") or {} for c in status.get("containerStatuses") or []]
        if states and all("running" in state for state in states):
            return time.perf_counter() - began
        for state in states:
            if "terminated" in state:
                raise RuntimeError(f"pod {path} ended: {state['terminated']}")
            reason = state.get("waiting", {}).get("reason", "ContainerCreating")
            if reason not in ("ContainerCreating", "PodInitializing"):
                raise RuntimeError(f"{reason}: {state['waiting'].get('message', '')}")
        time.sleep(POLL)
    raise TimeoutError(f"pod {path} not Running after {START_TIMEOUT:g}s")


def delete(client: ApiClient, name: str) -> None:
    """Delete a pod with grace 0 and return once it is gone.

    Raises:
        TimeoutError: still there after 60 s.
    """
    path = f"{PODS}/{name}"
    client.request("DELETE", path, query={"gracePeriodSeconds": "0"})
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        try:
            client.request("GET", path)
        except ApiError as err:
            if err.status == 404:
                return
            raise
        time.sleep(0.02)
    raise TimeoutError(f"pod {path} still there {START_TIMEOUT:g}s after its delete")


def measure(client: ApiClient, case: Case) -> tuple[float, float]:
    """Median seconds of ``RUNS`` pod starts and of as many anchors, interleaved.

    Raises:
        ApiError: the agent refused the pod.
        RuntimeError, TimeoutError: see :func:`apply_to_running`.
    """
    ours, anchors = [], []
    for i in range(RUNS):
        anchors.append(case.anchor())
        name = f"start-{case.runtime}-{i}"
        ours.append(apply_to_running(client, _pod(name, case)))
        delete(client, name)
    return statistics.median(ours), statistics.median(anchors)


def main() -> None:
    """Print the table of pod start latency per runtime (see the module docstring)."""
    cases: list[Case | tuple[str, str]] = [_process()]
    for runtime, make in (("podman", _podman), ("systemd", _systemd)):
        made = make()
        cases.append(made if isinstance(made, Case) else (runtime, made))
    config = "".join(case.config for case in cases if isinstance(case, Case))
    rows = [("runtime", "apply -> Running", "anchor", "agent's share", "ratio")]
    with running_agent(config) as (_, client, _, _):
        for case in cases:
            if not isinstance(case, Case):
                rows.append((case[0], f"unavailable: {case[1]}", "", "", ""))
                continue
            try:
                ours, anchor = measure(client, case)
            except (ApiError, RuntimeError, TimeoutError, subprocess.SubprocessError) as err:
                rows.append((case.runtime, f"unavailable: {err}", "", "", ""))
                continue
            share = (ours - anchor) * 1e3
            rows.append(
                (
                    case.runtime,
                    f"{ours * 1e3:.1f} ms",
                    f"{case.anchor_name} {anchor * 1e3:.1f} ms",
                    f"{share:+.1f} ms ({share / GOAL_MS:.2f}x goal)",
                    f"{ours / anchor:.2f}x",
                )
            )
    measured = [r for r in rows if r[2]]  # an unavailable row has one long message
    width = [max(len(r[i]) for r in measured) for i in range(5)]
    print(
        f"pod start latency per runtime (medians of {RUNS}; goal: agent's share <= {GOAL_MS:g} ms)"
    )
    for r in rows:
        cells = zip(r, width, strict=True) if r[2] else [(r[0], width[0]), (r[1], 0)]
        print("  " + "   ".join(c.ljust(w) for c, w in cells).rstrip())


if __name__ == "__main__":
    main()
