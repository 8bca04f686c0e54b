"""The CLI on its own and against a daemon: help, usage errors, config errors, follow, grace."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from agent.identity import load_or_create_identity
from tests.integration.conftest import CLI, Agent, container
from tests.integration.test_pods import pod_manifest

pytestmark = pytest.mark.integration

COMMANDS = [
    "run",
    "apply",
    "get",
    "describe",
    "logs",
    "delete",
    "status",
    "version",
    "neighbours",
    "links",
    "peers",
    "ping",
]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env if env is not None else dict(os.environ),
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command: str) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: florete-agent {command}")


def test_usage_errors_exit_2() -> None:
    assert run_cli().returncode == 2
    assert run_cli("get", "deployments").returncode == 2
    assert run_cli("logs").returncode == 2


def test_unknown_environment_variable_is_named(tmp_path: object) -> None:
    env = {**os.environ, "FLORETE_STATE_DIR": "/tmp/fl-none", "FLORETE_NO_SUCH_KEY": "1"}
    result = run_cli("status", env=env)
    assert result.returncode == 1
    assert "FLORETE_NO_SUCH_KEY" in result.stderr


def test_client_without_agent_says_what_to_do() -> None:
    env = {**os.environ, "FLORETE_STATE_DIR": "/tmp/fl-no-agent-here"}
    result = run_cli("get", "pods", env=env)
    assert result.returncode == 1
    assert "cannot reach the agent at /tmp/fl-no-agent-here/agent.sock" in result.stderr
    assert run_cli("version", "--client", env=env).stdout.startswith("Client Version: v")


def test_logs_follow_streams_until_the_container_ends(agent: Agent) -> None:
    agent.apply(
        pod_manifest("talker", "for i in 1 2 3; do echo line $i; sleep 0.5; done", policy="Never")
    )
    agent.wait_pod("talker", lambda p: "running" in container(p)["state"], "running")
    started = time.monotonic()
    follow = agent.cli("logs", "talker", "-f", timeout=30)
    assert follow.stdout == "line 1\nline 2\nline 3\n"
    assert time.monotonic() - started < 10
    stamped = agent.cli("logs", "talker", "--timestamps").stdout.splitlines()
    assert stamped[0].endswith("Z line 1")


def test_delete_kills_after_the_grace_period(agent: Agent) -> None:
    script = "trap 'echo ignoring TERM' TERM; while true; do sleep 0.1; done"
    manifest = pod_manifest("stubborn", script).replace(
        "terminationGracePeriodSeconds: 2", "terminationGracePeriodSeconds: 1"
    )
    agent.apply(manifest)
    agent.wait_running("stubborn")
    started = time.monotonic()
    agent.cli("delete", "pod", "stubborn")
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 8.0
    assert agent.descendants() == []


def test_peers_add_list_revoke_and_bad_certificates(agent: Agent, tmp_path: Path) -> None:
    other = load_or_create_identity(tmp_path / "other", "other")
    pem = other.cert_path.read_text()
    assert agent.cli("peers", "add", "-", stdin=pem).stdout == (
        f"peer/{other.node_id} (other) trusted\n"
    )
    listed = json.loads(agent.cli("peers", "-o", "json").stdout)["items"]
    assert [(p["metadata"]["name"], p["status"]["state"]) for p in listed] == [
        (other.node_id, "trusted")
    ]
    assert other.node_id in agent.cli("peers", "list").stdout
    assert "revoked" in agent.cli("peers", "revoke", other.node_id).stdout
    assert json.loads(agent.cli("peers", "-o", "json").stdout)["items"][0]["status"]["state"] == (
        "revoked"
    )

    garbage = agent.cli("peers", "add", "-", stdin="not a certificate", check=False)
    assert garbage.returncode == 1
    assert "certificate" in garbage.stderr
    assert "Error from server" in garbage.stderr
    missing = agent.cli("peers", "add", str(tmp_path / "nope.pem"), check=False)
    assert missing.returncode == 1
    assert "cannot read certificate" in missing.stderr
    unknown = agent.cli("peers", "revoke", "AAAAAAA", check=False)
    assert unknown.returncode == 1

    exported = agent.cli("peers", "export").stdout
    assert exported.startswith("-----BEGIN CERTIFICATE-----")
    assert agent.cli("neighbours", check=False).stderr == "No neighbours.\n"
    assert "no neighbour" in agent.cli("ping", "nobody", check=False).stderr
