"""Agent benchmarks: memory, start-to-ready, pod start latency beside a bare subprocess.

Every figure is measured in this run beside its anchor, and reported as a median:

* start-to-ready: ``florete-agent run`` from exec to its API answering ``/healthz``, beside a
  bare ``python3 -c pass`` (the interpreter's own floor) measured here.
* idle RSS with 0 and with 50 running pods (goal: <= 40 MB on x86-64), and what the per-task
  monitors (shims) cost on top.
* pod start latency: from the ``POST`` of a pod to the workload's first instruction (the workload
  writes ``date +%s%N`` to a file), beside the same command started with ``subprocess.Popen``;
  the difference is the agent's share (goal: <= 20 ms median). Apply to Running on every
  runtime, beside podman's and systemd's own starts, is in ``bench.runtimes``.

Runs with ``FLORETE_INTERFACES=lo`` in a temporary state dir; nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from agent.apiclient import ApiClient
from agent.errors import ApiError

RUNS = 5
STAMP = "date +%s%N > {path}; exec sleep 600"


@contextmanager
def running_agent(
    config: str = "",
) -> Iterator[tuple[subprocess.Popen[bytes], ApiClient, Path, float]]:
    """Start an agent in a fresh state dir; yields (process, client, state dir, ready seconds).

    Args:
        config: the text of a TOML config file for the agent (e.g. ``[runtimes.podman]``
            tables), or "" for none.
    """
    root = Path(tempfile.mkdtemp(prefix="fl-bench-"))
    # as installed (a package ships byte-compiled modules): no PYTHONDONTWRITEBYTECODE
    env = {
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("FLORETE_") and k != "PYTHONDONTWRITEBYTECODE"
        },
        "FLORETE_STATE_DIR": str(root / "s"),
        "FLORETE_INTERFACES": "lo",
        "FLORETE_LOG_LEVEL": "warning",
    }
    if config:
        (root / "agent.toml").write_text(config)
        env["FLORETE_CONFIG"] = str(root / "agent.toml")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "agent.cli", "run"], env=env)
    client = ApiClient(root / "s" / "agent.sock", timeout=5)
    try:
        while True:
            try:
                client.request("GET", "/healthz")
                break
            except ApiError:
                if proc.poll() is not None:
                    raise RuntimeError("agent exited during start") from None
                time.sleep(0.002)
        ready = time.perf_counter() - started
        yield proc, client, root, ready
    finally:
        for pod in client.request("GET", "/api/v1/pods")["items"]:
            client.request(
                "DELETE",
                f"/api/v1/namespaces/default/pods/{pod['metadata']['name']}",
                query={"gracePeriodSeconds": "0"},
            )
        while client.request("GET", "/api/v1/pods")["items"]:
            time.sleep(0.05)
        client.close()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)


def pod(name: str, script: str) -> dict[str, Any]:
    """A one-container host-process Pod."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [{"name": "main", "command": ["/bin/sh", "-c", script]}],
        },
    }


def wait_file(path: Path, timeout: float = 30.0) -> int:
    """Wait for a stamp file; return the nanosecond wall time the workload wrote into it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            text = ""
        if text:
            return int(text)
        time.sleep(0.0005)
    raise TimeoutError(path)


def bare_start(tmp: Path, i: int) -> float:
    """Seconds from Popen to the first instruction of the same command, no agent involved."""
    path = tmp / f"bare-{i}"
    t0 = time.time_ns()
    proc = subprocess.Popen(["/bin/sh", "-c", STAMP.format(path=path)])
    stamp = wait_file(path)
    proc.kill()
    proc.wait()
    return (stamp - t0) / 1e9


def pod_start(client: ApiClient, tmp: Path, i: int) -> float:
    """Seconds from the API POST to the workload's first instruction."""
    path = tmp / f"pod-{i}"
    t0 = time.time_ns()
    client.request(
        "POST", "/api/v1/namespaces/default/pods", body=pod(f"lat-{i}", STAMP.format(path=path))
    )
    return (wait_file(path) - t0) / 1e9


def shims_memory(state_dir: Path) -> tuple[int, int, int]:
    """(count, total RSS, total USS) of the per-task monitors (shims) of one agent."""
    count = rss = uss = 0
    for task in (state_dir / "runtimes" / "process" / "tasks").glob("*/task.json"):
        try:
            info = psutil.Process(json.loads(task.read_text())["state"]["shim_pid"])
            memory = info.memory_full_info()
        except (OSError, ValueError, KeyError, psutil.Error):
            continue
        count += 1
        rss += memory.rss
        uss += memory.uss
    return count, rss, uss


def interpreter_floor() -> float:
    """Seconds for ``python3 -c pass`` (the floor under any Python daemon's start)."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def main() -> None:
    """Print the agent benchmark table."""
    root = Path(__file__).resolve().parent.parent
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(root / "agent"), str(root / "wri_plugins")],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    mib = 2**20
    readies, floors = [], []
    for _ in range(RUNS):
        floors.append(interpreter_floor())
        with running_agent() as (_, _, _, ready):
            readies.append(ready)
    rows: list[tuple[str, str, str, str]] = []
    ready_ms, floor_ms = statistics.median(readies) * 1e3, statistics.median(floors) * 1e3
    rows.append(
        (
            "start to ready (API answers)",
            f"{ready_ms:.0f} ms",
            f"python3 -c pass {floor_ms:.0f} ms",
            f"{ready_ms / floor_ms:.1f}x",
        )
    )
    with running_agent() as (proc, client, root, _):
        time.sleep(2)
        memory = psutil.Process(proc.pid).memory_full_info()
        idle0 = memory.rss
        rows.append(
            ("idle RSS, 0 pods", f"{idle0 / mib:.1f} MiB", "goal 40 MB", f"{idle0 / 40e6:.2f}x")
        )
        shared = (memory.rss - memory.uss) / mib
        rows.append(
            (
                "  of which private (USS)",
                f"{memory.uss / mib:.1f} MiB",
                f"shared libraries {shared:.1f} MiB",
                "",
            )
        )
        tmp = root / "stamps"
        tmp.mkdir()
        bare = [bare_start(tmp, i) for i in range(15)]
        agent = [pod_start(client, tmp, i) for i in range(15)]
        bare_ms, agent_ms = statistics.median(bare) * 1e3, statistics.median(agent) * 1e3
        rows.append(
            (
                "pod start: POST to first instruction",
                f"{agent_ms:.1f} ms",
                f"bare Popen {bare_ms:.1f} ms",
                f"{agent_ms / bare_ms:.1f}x",
            )
        )
        rows.append(
            (
                "agent's share of pod start",
                f"{agent_ms - bare_ms:.1f} ms",
                "goal 20 ms",
                f"{(agent_ms - bare_ms) / 20:.2f}x",
            )
        )
        for i in range(15, 50):
            client.request(
                "POST",
                "/api/v1/namespaces/default/pods",
                body=pod(f"lat-{i}", STAMP.format(path=tmp / f"pod-{i}")),
            )
        for i in range(50):
            wait_file(tmp / f"pod-{i}")
        time.sleep(3)
        idle50 = psutil.Process(proc.pid).memory_info().rss
        rows.append(
            (
                "idle RSS, 50 running pods",
                f"{idle50 / mib:.1f} MiB",
                f"0 pods {idle0 / mib:.1f} MiB",
                f"{idle50 / idle0:.2f}x",
            )
        )
        count, rss, uss = shims_memory(root / "s")
        if count:
            rows.append(
                (
                    f"per-task monitors ({count})",
                    f"USS {uss / count / mib:.2f} MiB each",
                    f"RSS {rss / count / mib:.1f} MiB each",
                    f"{uss / mib:.0f} MiB USS total",
                )
            )
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    print("florete-agent core (medians)")
    for r in rows:
        print("  " + "   ".join(c.ljust(w) for c, w in zip(r, width, strict=True)))


if __name__ == "__main__":
    main()
