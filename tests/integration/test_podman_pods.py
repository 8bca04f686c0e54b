"""Pods on the podman runtime through the real daemon and CLI, against real podman.

Uses the session's podman service (tests/podman_env.py) and the offline
``localhost/busybox:latest`` image, so ``imagePullPolicy`` is ``IfNotPresent`` (the default for
the tag ``latest`` is ``Always``, which needs a registry, as in Kubernetes).
"""

from __future__ import annotations

import json
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import podman_env
from tests.integration.conftest import Agent, container

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def web_pod(host_port: int) -> str:
    serve = (
        "mkdir -p /tmp/www && echo hello-from-httpd > /tmp/www/index.html && "
        "exec httpd -f -p 8080 -h /tmp/www"
    )
    probe = "while :; do wget -q -O - http://127.0.0.1:8080/ && sleep 0.5 || sleep 0.2; done"
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: web}}
spec:
  terminationGracePeriodSeconds: 2
  containers:
    - name: server
      image: {podman_env.IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["/bin/sh", "-c"]
      args: [{json.dumps(serve)}]
      ports: [{{containerPort: 8080, hostPort: {host_port}}}]
      readinessProbe:  # no host: it must reach the pod's own IP, not the agent's 127.0.0.1
        httpGet: {{path: /index.html, port: 8080}}
        periodSeconds: 1
    - name: client
      image: {podman_env.IMAGE}
      imagePullPolicy: IfNotPresent
      command: ["/bin/sh", "-c", {json.dumps(probe)}]
"""


NEVER = """
apiVersion: v1
kind: Pod
metadata: {name: never}
spec:
  containers:
    - name: main
      image: localhost/florete-absent:1
      imagePullPolicy: Never
"""


@pytest.fixture
def env() -> podman_env.PodmanEnv:
    reason = podman_env.unavailable()
    if reason:
        pytest.skip(reason)
    return podman_env.environment()


def podman_pods(env: podman_env.PodmanEnv, uid: str) -> list[dict[str, Any]]:
    out = env.podman(
        "pod", "ls", "--format", "json", "--filter", f"label=io.florete.pod-uid={uid}"
    ).stdout
    pods: list[dict[str, Any]] = json.loads(out or b"[]") or []
    return pods


def test_two_containers_share_the_pod_network_and_pull_policy_never(
    env: podman_env.PodmanEnv, make_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'[runtimes.podman]\nsocket = "{env.socket}"\nstart_service = false\n')
    agent = make_agent({"FLORETE_CONFIG": str(config)})
    uids: list[str] = []
    try:
        host_port = free_port()
        assert agent.apply(web_pod(host_port)).strip() == "pod/web created"
        pod = agent.wait_running("web", timeout=30)  # ready: the probe reached the pod's IP
        uids.append(pod["metadata"]["uid"])
        assert pod["status"]["podIP"] not in ("", "127.0.0.1")
        assert pod["status"]["hostIP"] == "127.0.0.1"
        assert len(podman_pods(env, uids[0])) == 1
        table = agent.cli("get", "pods").stdout
        assert "web" in table
        assert "Running" in table
        agent.wait_for(
            "the client to reach the server over 127.0.0.1",
            lambda: "hello-from-httpd" in agent.cli("logs", "web", "-c", "client").stdout,
        )
        # the hostPort is published on 127.0.0.1 (the runtime's default host_ip)
        with urllib.request.urlopen(f"http://127.0.0.1:{host_port}/", timeout=5) as answer:
            assert answer.read() == b"hello-from-httpd\n"

        agent.apply(NEVER)
        never = agent.wait_pod(
            "never",
            lambda p: (
                container(p, "main")["state"].get("waiting", {}).get("reason")
                == "ErrImageNeverPull"
            ),
            "waiting with ErrImageNeverPull",
            timeout=20,
        )
        uids.append(never["metadata"]["uid"])
        assert "ErrImageNeverPull" in agent.cli("get", "pods").stdout
        described = agent.cli("describe", "pod", "never").stdout
        events = described.split("Events:")[1]
        assert "ErrImageNeverPull" in events
        # the runtime's own event, in the kubelet's words, reaches describe through the store
        assert "is not present with pull policy of Never" in events

        agent.cli("delete", "pod", "web")
        agent.wait_for("the web pod to go", lambda: "web" not in agent.cli("get", "pods").stdout)
        agent.wait_for("its podman pod to go", lambda: not podman_pods(env, uids[0]))
        agent.cli("delete", "pod", "never")
    finally:
        for uid in uids:
            for pod in podman_pods(env, uid):
                env.podman("pod", "rm", "-f", pod["Id"], check=False)
