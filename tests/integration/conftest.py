"""A real ``florete-agent run`` daemon per test, driven through the real CLI.

Each agent gets a short private state dir (the API socket path must stay under 108 bytes),
``FLORETE_INTERFACES=lo`` and a fast CrashLoopBackOff so restart tests take seconds. Teardown
kills the agent and every process it started (found through the state dir in their command
lines and their process trees), also when the test failed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.netbed import NetBed

CLI = [sys.executable, "-m", "agent.cli"]


class Agent:
    """One agent daemon and its CLI."""

    def __init__(
        self, state_dir: Path, extra_env: dict[str, str] | None = None, netns: str | None = None
    ) -> None:
        self.state_dir = state_dir
        self.netns = netns
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLORETE_")},
            "FLORETE_STATE_DIR": str(state_dir),
            "FLORETE_INTERFACES": "lo",
            "FLORETE_LINK_PORT": "0",
            "FLORETE_MDNS": "off",
            "FLORETE_BACKOFF_INITIAL": "0.5",
            "FLORETE_BACKOFF_MAX": "2",
            "FLORETE_LOG_LEVEL": "debug",
            **(extra_env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = state_dir.parent / f"{state_dir.name}-agent.log"

    def start(self, timeout: float = 30.0, offline: bool = False) -> None:
        """Start ``florete-agent run`` and wait until its API answers.

        Args:
            timeout: seconds to wait for the API.
            offline: run the agent in a network namespace of its own with no interface up (not
                even lo) and on its default interfaces: a board that boots with no network.

        An agent made with ``netns`` runs inside that namespace (its CLI reaches it through the
        Unix socket, which lives in the file system).
        """
        env, prefix = self.env, [] if self.netns is None else ["ip", "netns", "exec", self.netns]
        if offline:
            env = {k: v for k, v in self.env.items() if k != "FLORETE_INTERFACES"}
            prefix = ["unshare", "--net", "--"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([*prefix, *CLI, "run"], env=env, stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while self.cli("version", check=False).returncode != 0:
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent not ready after {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        """The agent's own log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        """Signal the agent and wait for it to exit; returns its exit code."""
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def cli(
        self, *args: str, check: bool = True, stdin: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``florete-agent ARGS`` against this agent."""
        result = subprocess.run(
            [*CLI, *args],
            env=self.env,
            text=True,
            capture_output=True,
            input=stdin,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"florete-agent {' '.join(args)} exited with "
                f"{result.returncode}:\n{result.stderr}\n--- agent log ---\n"
                f"{self.log()[-4000:]}"
            )
        return result

    def apply(self, manifest: str) -> str:
        """``apply -f -`` with the manifest text; returns stdout."""
        return self.cli("apply", "-f", "-", stdin=manifest).stdout

    def pod(self, name: str) -> dict[str, Any]:
        """``get pod NAME -o json``."""
        result: dict[str, Any] = json.loads(self.cli("get", "pod", name, "-o", "json").stdout)
        return result

    def pods(self) -> list[dict[str, Any]]:
        """``get pods -o json`` items."""
        items: list[dict[str, Any]] = json.loads(self.cli("get", "pods", "-o", "json").stdout)[
            "items"
        ]
        return items

    def wait_for(self, what: str, predicate: Callable[[], bool], timeout: float = 30.0) -> None:
        """Poll ``predicate`` every 0.1 s until it holds."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out after {timeout} s waiting for {what}\n"
                    f"--- agent log ---\n{self.log()[-4000:]}"
                )
            time.sleep(0.1)

    def wait_pod(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        what: str = "",
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Wait until ``predicate(pod)`` holds; returns that pod."""
        seen: dict[str, Any] = {}

        def check() -> bool:
            seen.update(self.pod(name))
            return predicate(seen)

        self.wait_for(f"pod {name} {what}", check, timeout)
        return seen

    def wait_running(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        """Wait until the pod is Running with every container ready."""
        return self.wait_pod(name, running_and_ready, "Running and ready", timeout)

    def descendants(self) -> list[psutil.Process]:
        """Every live process the agent started (shims, workloads and their children), without
        the agent itself and its shim fork server.

        Found from the process runtime's task files (shim and workload pids, checked against
        their creation times so a reused pid is never taken) and from command lines and
        environments that name this agent's state dir.
        """
        marker = str(self.state_dir)
        roots: dict[int, psutil.Process] = {}
        for task in (self.state_dir / "runtimes" / "process" / "tasks").glob("*/task.json"):
            try:
                state = json.loads(task.read_text())["state"]
            except (OSError, ValueError, KeyError):
                continue
            for pid, ctime in (
                (state["shim_pid"], state["shim_ctime"]),
                (state["pid"], state["pid_ctime"]),
            ):
                proc = _process(pid, ctime)
                if proc is not None:
                    roots[pid] = proc
        for proc in psutil.process_iter(["cmdline", "environ"]):
            try:
                cmdline = " ".join(proc.info["cmdline"] or [])
                environ = proc.info["environ"] or {}
            except psutil.Error:
                continue
            if marker in cmdline or environ.get("FLORETE_STATE_DIR") == marker:
                roots[proc.pid] = proc
        found = dict(roots)
        for proc in roots.values():
            try:
                found.update((child.pid, child) for child in proc.children(recursive=True))
            except psutil.Error:
                continue
        agent = self.process.pid if self.process is not None else -1
        return [
            p
            for pid, p in found.items()
            if pid not in (os.getpid(), agent) and not _fork_server_of(p, agent)
        ]

    def kill_everything(self) -> None:
        """Kill -9 the agent and every process it started (a power cut)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None
        for _ in range(3):
            procs = self.descendants()
            if not procs:
                return
            for proc in procs:
                try:
                    proc.kill()
                except psutil.NoSuchProcess:
                    continue
            psutil.wait_procs(procs, timeout=5)


def _fork_server_of(proc: psutil.Process, agent: int) -> bool:
    try:
        return proc.ppid() == agent and proc.cmdline()[-1:] == ["serve"]
    except psutil.Error:
        return False


def _process(pid: int, ctime: float) -> psutil.Process | None:
    """The live process ``pid`` if it was created at ``ctime`` (within a second)."""
    try:
        proc = psutil.Process(pid)
        return proc if abs(proc.create_time() - ctime) < 1.0 else None
    except psutil.Error:
        return None


def running_and_ready(pod: dict[str, Any]) -> bool:
    """The pod is Running and every container is ready."""
    statuses = pod["status"].get("containerStatuses") or []
    return (
        pod["status"].get("phase") == "Running"
        and bool(statuses)
        and all(s.get("ready") for s in statuses)
    )


def container(pod: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """A container's status (the first one's when no name is given)."""
    statuses: list[dict[str, Any]] = pod["status"].get("containerStatuses") or []
    for status in statuses:
        if name is None or status["name"] == name:
            return status
    raise KeyError(name)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Keep each phase's report on the test item, so fixtures can tell that the test failed."""
    report = yield
    setattr(item, f"report_{report.when}", report)
    return report


def _failed(request: pytest.FixtureRequest) -> bool:
    report = getattr(request.node, "report_call", None)
    return report is None or report.failed


@pytest.fixture
def make_agent(request: pytest.FixtureRequest) -> Iterator[Callable[..., Agent]]:
    """Factory of started agents; all are killed with their workloads at teardown, and when
    the test failed every agent's log is printed (the failure message shows one at most)."""
    agents: list[tuple[Agent, Path]] = []

    def make(
        extra_env: dict[str, str] | None = None, start: bool = True, netns: str | None = None
    ) -> Agent:
        root = Path(tempfile.mkdtemp(prefix="fl-"))
        agent = Agent(root / "s", extra_env, netns)
        agents.append((agent, root))
        if start:
            agent.start()
        return agent

    yield make
    failed = _failed(request)
    for number, (agent, root) in enumerate(agents):
        agent.kill_everything()
        if failed:
            sys.stdout.write(f"\n--- log of agent {number} ({agent.state_dir}) ---\n{agent.log()}")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def agent(make_agent: Callable[..., Agent]) -> Agent:
    """One started agent."""
    return make_agent()


@pytest.fixture
def bed() -> Iterator[NetBed]:
    """A network test bed (tests/netbed.py), always torn down."""
    with NetBed() as net:
        yield net


def start_in_bed(
    make_agent: Callable[..., Agent], bed: NetBed, name: str, env: dict[str, str] | None = None
) -> Agent:
    """An agent in the bed's node ``name`` (created if needed), on eth0 with mDNS and the UDP
    link on port 4737; ``env`` adds or overrides variables."""
    node = bed.nodes.get(name) or bed.add_node(name)
    base = {
        "FLORETE_INTERFACES": "eth0",
        "FLORETE_LINK_PORT": "4737",
        "FLORETE_MDNS": "on",
        "FLORETE_NODE_NAME": name,
    }
    return make_agent({**base, **(env or {})}, netns=node.ns)


def trust(agent: Agent, other: Agent) -> None:
    """``agent`` trusts ``other`` (one way), out of band: ``peers export`` / ``peers add -``."""
    agent.cli("peers", "add", "-", stdin=other.cli("peers", "export").stdout)


def neighbours(agent: Agent) -> dict[str, dict[str, Any]]:
    """``neighbours -o json`` items by name."""
    items = json.loads(agent.cli("neighbours", "-o", "json").stdout)["items"]
    return {n["name"]: n for n in items}
