"""Workloads outlive the agent; a reboot brings every desired pod back; many pods at once."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

from tests.integration.conftest import CLI, Agent, container
from tests.integration.test_pods import pod_manifest

pytestmark = pytest.mark.integration


def workload_pids(agent: Agent, argv: tuple[str, ...] = ("sleep", "300")) -> set[int]:
    """Pids of the agent's live processes whose command line is exactly ``argv``."""
    pids = set()
    for proc in agent.descendants():
        try:
            if tuple(proc.cmdline()) == argv:
                pids.add(proc.pid)
        except psutil.Error:  # ended (or a zombie) since it was listed
            continue
    return pids


def test_kill9_agent_keeps_workloads_and_reattaches(agent: Agent) -> None:
    agent.apply(pod_manifest("steady", "exec sleep 300"))
    agent.apply(pod_manifest("ends-while-down", "sleep 2; exit 7", policy="Never"))
    agent.apply(pod_manifest("restarts-after", "sleep 2; exit 5", policy="OnFailure"))
    for name in ("steady", "ends-while-down", "restarts-after"):
        agent.wait_running(name)
    before = workload_pids(agent)
    assert len(before) == 1

    agent.stop(signal.SIGKILL)
    time.sleep(3)  # two of the workloads exit while no agent runs
    assert workload_pids(agent) == before

    agent.start()
    steady = agent.wait_running("steady")
    assert container(steady)["restartCount"] == 0
    assert workload_pids(agent) == before
    ended = agent.wait_pod("ends-while-down", lambda p: p["status"]["phase"] == "Failed", "Failed")
    assert container(ended)["state"]["terminated"]["exitCode"] == 7
    assert container(ended)["restartCount"] == 0
    restarted = agent.wait_pod(
        "restarts-after", lambda p: container(p)["restartCount"] == 1, "restarted once"
    )
    assert container(restarted)["lastState"]["terminated"]["exitCode"] == 5
    assert "re-attached to task" in agent.log()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_the_agent_cleanly_and_leaves_workloads(agent: Agent, sig: int) -> None:
    agent.apply(pod_manifest("steady", "exec sleep 300"))
    agent.wait_running("steady")
    before = workload_pids(agent)
    started = time.monotonic()
    assert agent.stop(sig) == 0
    assert time.monotonic() - started < 10
    assert workload_pids(agent) == before
    assert "stopped; workloads keep running" in agent.log()
    assert not (agent.state_dir / "agent.sock").exists()
    agent.start()
    assert container(agent.wait_running("steady"))["restartCount"] == 0


@pytest.mark.parametrize("offline", [False, True], ids=["lo", "no-network"])
def test_simulated_reboot_restarts_every_desired_pod(agent: Agent, offline: bool) -> None:
    names = [f"boot-{i}" for i in range(3)]
    for name in names:
        agent.apply(pod_manifest(name, "exec sleep 300"))
    for name in names:
        agent.wait_running(name)
    before = workload_pids(agent)
    agent.kill_everything()
    assert workload_pids(agent) == set()

    agent.start(offline=offline)
    for name in names:
        pod = agent.wait_running(name)
        last = container(pod)["lastState"]["terminated"]
        assert last["reason"] == "ContainerStatusUnknown"
        assert container(pod)["restartCount"] == 1
    after = workload_pids(agent)
    assert len(after) == 3
    assert not after & before


def test_second_agent_on_the_same_state_dir_is_refused(agent: Agent) -> None:
    result = subprocess.run(
        [*CLI, "run"], env=agent.env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "another florete-agent is running with state dir" in result.stderr


def test_sd_notify_ready(make_agent: Callable[..., Agent], tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(30)
        agent = make_agent({"NOTIFY_SOCKET": str(path)})
        assert sock.recv(4096).startswith(b"READY=1\n")
        agent.stop()
        assert sock.recv(4096) == b"STOPPING=1"


def test_concurrent_applies(agent: Agent) -> None:
    manifests = [pod_manifest(f"c-{i % 5}", "exec sleep 300") for i in range(15)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(
            pool.map(lambda m: agent.cli("apply", "-f", "-", stdin=m, check=False), manifests)
        )
    outcomes = [
        r.stdout.strip().rsplit(" ", 1)[-1] if r.returncode == 0 else "failed" for r in results
    ]
    # Racing creates of one name: exactly one wins; a loser is told it already exists.
    assert outcomes.count("created") == 5
    for r in results:
        assert r.returncode == 0 or "already exists" in r.stderr
    for i in range(5):
        agent.wait_running(f"c-{i}")
    assert len(workload_pids(agent)) == 5


def test_two_hundred_pods(agent: Agent) -> None:
    count = 200
    text = "\n---\n".join(pod_manifest(f"p{i:03d}", "exec sleep 600") for i in range(count))
    started = time.monotonic()
    out = agent.cli("apply", "-f", "-", stdin=text, timeout=300).stdout
    assert out.count(" created") == count

    def all_running() -> bool:
        running = [p for p in agent.pods() if p["status"]["phase"] == "Running"]
        return len(running) == count

    agent.wait_for(f"{count} pods Running", all_running, timeout=240)
    elapsed = time.monotonic() - started
    assert len(workload_pids(agent, ("sleep", "600"))) == count
    rss = psutil.Process(agent.process.pid).memory_info().rss if agent.process else 0
    print(f"{count} pods Running in {elapsed:.1f} s; agent RSS {rss / 2**20:.1f} MiB")  # noqa: T201
    names = [f"p{i:03d}" for i in range(count)]
    agent.cli("delete", "pod", *names, "--grace-period", "1", timeout=300)
    assert agent.pods() == []
    assert workload_pids(agent, ("sleep", "600")) == set()
