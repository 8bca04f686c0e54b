"""A real agent bridging a "phone": an OpenSSH sshd on 127.0.0.1 (tests/android_env) configured
as ``[runtimes.android]``. The phone shows as a node, and a pod with ``runtimeClassName: android``
runs there with the phone's environment, logs and deletion."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests import android_env
from tests.integration.conftest import Agent

pytestmark = pytest.mark.integration

POD = """
apiVersion: v1
kind: Pod
metadata:
  name: on-phone
spec:
  runtimeClassName: android
  containers:
  - name: main
    command: ["sh", "-c", 'echo "home=$HOME pwd=$(pwd)"; echo ready; sleep 60']
"""


@pytest.fixture
def phone() -> android_env.PhoneEnv:
    reason = android_env.unavailable()
    if reason:
        pytest.skip(reason)
    return android_env.environment()


def _config(path: Path, options: dict[str, object]) -> Path:
    lines = ["[runtimes.android]"]
    for key, value in options.items():
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pod_on_the_phone_and_the_phone_node(
    make_agent: Callable[..., Agent], phone: android_env.PhoneEnv, tmp_path: Path
) -> None:
    config = _config(tmp_path / "agent.toml", phone.options())
    agent = make_agent({"FLORETE_CONFIG": str(config)})
    nodes = json.loads(agent.cli("get", "nodes", "-o", "json").stdout)["items"]
    phone_node = next(n for n in nodes if n["metadata"]["labels"].get("florete.io/runtime"))
    name = phone_node["metadata"]["name"]
    assert name.endswith("-android")
    table = agent.cli("get", "nodes").stdout
    assert any(line.split()[:2] == [name, "Ready"] for line in table.splitlines())
    assert json.loads(agent.cli("get", "node", name, "-o", "json").stdout)["metadata"]["name"] == (
        name
    )

    agent.apply(POD)
    agent.wait_running("on-phone", timeout=60)
    agent.wait_for("the pod's output", lambda: "ready" in agent.cli("logs", "on-phone").stdout)
    first = agent.cli("logs", "on-phone").stdout.splitlines()[0]
    assert first == f"home={phone.home} pwd={phone.home}"  # the phone's, not the agent's
    tasks = phone.home / ".florete-agent" / "tasks"
    assert len(list(tasks.iterdir())) == 1

    agent.cli("delete", "pod", "on-phone", "--grace-period", "1")
    agent.wait_for("the pod's removal", lambda: not agent.pods(), timeout=60)
    deadline = time.monotonic() + 30
    while list(tasks.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(tasks.iterdir()) == []


def test_pod_goes_unknown_while_the_phone_is_away(
    make_agent: Callable[..., Agent], phone: android_env.PhoneEnv, tmp_path: Path
) -> None:
    """sshd stops: the phone's node turns NotReady and its pod Unknown (within the 10 s
    fingerprint period); sshd is back: Ready and Running again, the same task."""
    config = _config(tmp_path / "agent.toml", phone.options())
    agent = make_agent({"FLORETE_CONFIG": str(config)})
    agent.apply(POD)
    before = agent.wait_running("on-phone", timeout=60)
    node = before["spec"]["nodeName"]
    assert node.endswith("-android")

    def phase() -> str:
        return str(agent.pod("on-phone")["status"]["phase"])

    with phone.outage():
        agent.wait_for("the pod to go Unknown", lambda: phase() == "Unknown", timeout=60)
        status = agent.pod("on-phone")["status"]
        assert status["reason"] == "NodeLost"
        assert node in status["message"]
        table = agent.cli("get", "nodes").stdout
        assert any(line.split()[:2] == [node, "NotReady"] for line in table.splitlines())
    agent.wait_for("the pod to run again", lambda: phase() == "Running", timeout=60)
    after = agent.pod("on-phone")["status"]["containerStatuses"][0]
    assert after["restartCount"] == 0
    agent.cli("delete", "pod", "on-phone", "--grace-period", "1")


def test_agent_restarted_while_the_phone_is_away_reattaches(
    make_agent: Callable[..., Agent], phone: android_env.PhoneEnv, tmp_path: Path
) -> None:
    """The agent restarts while the phone cannot be reached: it waits for the phone instead of
    taking the task for lost, then re-attaches to it (no duplicate, no restart)."""
    config = _config(tmp_path / "agent.toml", phone.options())
    agent = make_agent({"FLORETE_CONFIG": str(config)})
    agent.apply(POD)
    before = agent.wait_running("on-phone", timeout=60)["status"]["containerStatuses"][0]
    assert agent.stop() == 0
    with phone.outage():
        agent.start()
        time.sleep(2)  # the agent tries to re-attach meanwhile
    agent.wait_for("the pod to run again", lambda: running(agent), timeout=60)
    assert "runtime unreachable, trying again" in agent.log()  # it did wait for the phone
    after = agent.pod("on-phone")["status"]["containerStatuses"][0]
    assert (after["containerID"], after["restartCount"]) == (before["containerID"], 0)
    assert len(list((phone.home / ".florete-agent" / "tasks").iterdir())) == 1
    agent.cli("delete", "pod", "on-phone", "--grace-period", "1")


def running(agent: Agent) -> bool:
    pod = agent.pod("on-phone")
    return (
        pod["status"]["phase"] == "Running"
        and "running" in (pod["status"]["containerStatuses"][0]["state"])
    )
