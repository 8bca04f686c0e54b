"""End to end through the real daemon and CLI: apply, get, logs, describe, delete, policies."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import yaml

from tests.integration.conftest import Agent, container

pytestmark = pytest.mark.integration

HELLO = """
apiVersion: v1
kind: Pod
metadata:
  name: hello
  labels: {app: hello}
spec:
  containers:
    - name: main
      command: ["/bin/sh", "-c"]
      args: ["echo started $(POD_NAME)/$(NS) on $(NODE); echo to-stderr >&2; exec sleep 300"]
      env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: NS, valueFrom: {fieldRef: {fieldPath: metadata.namespace}}}
        - {name: NODE, valueFrom: {fieldRef: {fieldPath: spec.nodeName}}}
"""


def pod_manifest(name: str, script: str, policy: str = "Always", extra: str = "") -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  restartPolicy: {policy}
  terminationGracePeriodSeconds: 2
  containers:
    - name: main
      command: ["/bin/sh", "-c", {json.dumps(script)}]
{extra}
"""


def test_apply_get_logs_describe_delete(agent: Agent) -> None:
    assert agent.apply(HELLO).strip() == "pod/hello created"
    pod = agent.wait_running("hello")
    node = pod["spec"]["nodeName"]
    assert pod["kind"] == "Pod"
    assert pod["metadata"]["uid"]
    assert pod["status"]["podIP"] == "127.0.0.1"
    agent.wait_for("first log line", lambda: "started" in agent.cli("logs", "hello").stdout)
    assert agent.cli("logs", "hello").stdout.splitlines() == [
        f"started hello/default on {node}",
        "to-stderr",
    ]
    assert agent.cli("logs", "hello", "--tail", "1").stdout == "to-stderr\n"

    wide = agent.cli("get", "pods", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE"]
    assert wide[1].split()[:4] == ["hello", "1/1", "Running", "0"]
    assert wide[1].split()[-2:] == ["127.0.0.1", node]
    listing = yaml.safe_load(agent.cli("get", "pods", "-o", "yaml").stdout)
    assert listing["kind"] == "PodList"
    assert [p["metadata"]["name"] for p in listing["items"]] == ["hello"]
    assert agent.cli("get", "pods", "-o", "name").stdout == "pod/hello\n"

    described = agent.cli("describe", "pod", "hello").stdout
    assert "Status:           Running" in described
    assert "Started container main" in described
    assert f"Successfully assigned default/hello to {node}" in described

    assert agent.apply(HELLO).strip() == "pod/hello unchanged"
    relabelled = HELLO.replace("{app: hello}", "{app: hello, tier: demo}")
    assert agent.apply(relabelled).strip() == "pod/hello configured"
    assert agent.pod("hello")["metadata"]["labels"] == {"app": "hello", "tier": "demo"}

    workloads = [p for p in agent.descendants() if p.name() == "sleep"]
    assert len(workloads) == 1
    assert agent.cli("delete", "pod", "hello").stdout.strip() == 'pod "hello" deleted'
    psutil.wait_procs(workloads, timeout=5)
    assert not workloads[0].is_running()
    result = agent.cli("get", "pod", "hello", check=False)
    assert result.returncode == 1
    assert 'Error from server (NotFound): pods "hello" not found' in result.stderr
    assert agent.cli("get", "pods").stderr.strip() == "No resources found in default namespace."


def test_spec_change_is_refused_and_changes_nothing(agent: Agent) -> None:
    agent.apply(HELLO)
    uid = agent.wait_running("hello")["metadata"]["uid"]
    result = agent.cli(
        "apply", "-f", "-", stdin=HELLO.replace("sleep 300", "sleep 301"), check=False
    )
    assert result.returncode == 1
    assert "spec: Forbidden: pod updates may not change fields" in result.stderr
    assert agent.pod("hello")["metadata"]["uid"] == uid


def test_invalid_document_rejects_the_whole_file(agent: Agent, tmp_path: Path) -> None:
    mounts = "volumeMounts: [{name: x, mountPath: /x}]\n      command:"
    bad = pod_manifest("second", "true").replace("command:", mounts)
    path = tmp_path / "pods.yaml"
    path.write_text(pod_manifest("first", "sleep 100") + "\n---\n" + bad)
    result = agent.cli("apply", "-f", str(path), check=False)
    assert result.returncode == 1
    assert "spec.containers[0].volumeMounts: not supported by florete-agent" in result.stderr
    assert "nothing was applied" in result.stderr
    assert agent.pods() == []


def test_malformed_yaml_names_line_and_column(agent: Agent) -> None:
    result = agent.cli(
        "apply", "-f", "-", stdin="apiVersion: v1\nkind: Pod\n  bad: [\n", check=False
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: -:3:")


def test_image_on_the_process_runtime_is_rejected(agent: Agent) -> None:
    manifest = pod_manifest("img", "true").replace(
        "  containers:\n    - name: main\n",
        "  runtimeClassName: process\n  containers:\n    - name: main\n      image: busybox\n",
    )
    result = agent.cli("apply", "-f", "-", stdin=manifest, check=False)
    assert result.returncode == 1
    assert 'spec.containers[0].image: runtime "process" runs host processes' in result.stderr
    assert agent.pods() == []


def test_image_without_a_usable_podman_is_rejected_with_advice(
    make_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(
        f'[runtimes.podman]\nsocket = "{tmp_path}/no-podman.sock"\nstart_service = false\n'
    )
    agent = make_agent({"FLORETE_CONFIG": str(config)})
    manifest = pod_manifest("img", "true").replace(
        "    - name: main\n", "    - name: main\n      image: busybox\n"
    )
    result = agent.cli("apply", "-f", "-", stdin=manifest, check=False)
    assert result.returncode == 1
    assert 'spec.containers[0].image: runtime "podman" is unhealthy' in result.stderr
    assert "remove image to run a host process" in result.stderr
    assert agent.pods() == []


def test_always_restarts_with_crash_loop_backoff(agent: Agent) -> None:
    agent.apply(pod_manifest("crasher", "echo attempt; exit 3"))
    pod = agent.wait_pod(
        "crasher", lambda p: container(p)["restartCount"] >= 3, "restarted 3 times", timeout=30
    )
    status = container(pod)
    assert status["lastState"]["terminated"]["exitCode"] == 3
    assert status["lastState"]["terminated"]["reason"] == "Error"
    assert pod["status"]["phase"] == "Running"
    agent.wait_pod(
        "crasher",
        lambda p: (
            "waiting" in container(p)["state"]
            and container(p)["state"]["waiting"]["reason"] == "CrashLoopBackOff"
        ),
        "in CrashLoopBackOff",
    )
    assert agent.cli("logs", "crasher", "--previous").stdout == "attempt\n"
    events = agent.cli("describe", "pod", "crasher").stdout
    assert "Back-off restarting failed container main" in events


def test_on_failure_and_never(agent: Agent) -> None:
    agent.apply(pod_manifest("once-ok", "exit 0", "OnFailure"))
    agent.apply(pod_manifest("once-bad", "exit 3", "Never"))
    agent.apply(pod_manifest("retry", "test -f marker || { touch marker; exit 1; }", "OnFailure"))
    ok = agent.wait_pod("once-ok", lambda p: p["status"]["phase"] == "Succeeded", "Succeeded")
    assert container(ok)["state"]["terminated"]["reason"] == "Completed"
    assert container(ok)["restartCount"] == 0
    bad = agent.wait_pod("once-bad", lambda p: p["status"]["phase"] == "Failed", "Failed")
    assert container(bad)["state"]["terminated"]["exitCode"] == 3
    assert container(bad)["restartCount"] == 0
    retry = agent.wait_pod("retry", lambda p: p["status"]["phase"] == "Succeeded", "Succeeded")
    assert container(retry)["restartCount"] == 1
    time.sleep(1.5)
    assert container(agent.pod("once-bad"))["restartCount"] == 0
    status_column = agent.cli("get", "pods").stdout
    assert "Completed" in status_column
    assert "Error" in status_column


def test_init_containers_run_to_completion_first(agent: Agent) -> None:
    manifest = """
apiVersion: v1
kind: Pod
metadata: {name: init}
spec:
  initContainers:
    - {name: one, command: ["/bin/sh", "-c", "echo one > order"]}
    - {name: two, command: ["/bin/sh", "-c", "sleep 0.5; echo two >> order"]}
  containers:
    - {name: main, command: ["/bin/sh", "-c", "cat order; exec sleep 300"]}
"""
    agent.apply(manifest)
    pod = agent.wait_running("init")
    inits = pod["status"]["initContainerStatuses"]
    assert [s["state"]["terminated"]["reason"] for s in inits] == ["Completed", "Completed"]
    agent.wait_for("main's output", lambda: agent.cli("logs", "init").stdout == "one\ntwo\n")
    assert agent.cli("logs", "init", "-c", "one").stdout == ""


def test_failing_init_container_blocks_the_pod(agent: Agent) -> None:
    manifest = """
apiVersion: v1
kind: Pod
metadata: {name: blocked}
spec:
  restartPolicy: Never
  initContainers:
    - {name: setup, command: ["/bin/sh", "-c", "exit 4"]}
  containers:
    - {name: main, command: ["sleep", "300"]}
"""
    agent.apply(manifest)
    pod = agent.wait_pod("blocked", lambda p: p["status"]["phase"] == "Failed", "Failed")
    assert pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 4
    assert "Init:Error" in agent.cli("get", "pods").stdout
    assert container(pod)["state"]["waiting"]["reason"] == "PodInitializing"


def test_liveness_failure_restarts_and_readiness_toggles(agent: Agent, tmp_path: Path) -> None:
    live, ready = tmp_path / "live", tmp_path / "ready"
    live.touch()
    ready.touch()
    extra = f"""      livenessProbe:
        exec: {{command: ["test", "-f", "{live}"]}}
        periodSeconds: 1
        failureThreshold: 2
      readinessProbe:
        exec: {{command: ["test", "-f", "{ready}"]}}
        periodSeconds: 1
"""
    agent.apply(pod_manifest("probed", "exec sleep 300", extra=extra))
    agent.wait_running("probed")
    ready.unlink()
    agent.wait_pod("probed", lambda p: not container(p)["ready"], "not ready")
    ready.touch()
    agent.wait_running("probed")
    live.unlink()
    pod = agent.wait_pod("probed", lambda p: container(p)["restartCount"] == 1, "restarted")
    live.touch()
    assert container(pod)["lastState"]["terminated"]["exitCode"] == 143
    described = agent.cli("describe", "pod", "probed").stdout
    assert "Liveness probe failed: command exited with 1" in described
    assert "Container main failed liveness probe, will be restarted" in described
    agent.wait_running("probed")


def test_http_and_tcp_probes_against_a_real_server(agent: Agent) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    extra = f"""      ports: [{{name: http, containerPort: {port}}}]
      readinessProbe:
        httpGet: {{path: /, port: http}}
        periodSeconds: 1
      livenessProbe:
        tcpSocket: {{port: {port}}}
        periodSeconds: 1
        initialDelaySeconds: 3
"""
    script = f"exec python3 -m http.server {port} --bind 127.0.0.1"
    agent.apply(pod_manifest("web", script, extra=extra))
    pod = agent.wait_running("web")
    assert container(pod)["restartCount"] == 0


def test_status_shows_identity(agent: Agent) -> None:
    text = agent.cli("status").stdout
    data = json.loads(agent.cli("status", "-o", "json").stdout)["status"]
    assert f"Node ID:      {data['nodeID']}" in text
    assert len(data["nodeID"]) == 63
    assert any(r["name"] == "process" and r["healthy"] for r in data["runtimes"])
    key = Path(data["stateDir"]) / "identity" / "node.key"
    assert key.stat().st_mode & 0o777 == 0o600


def test_memory_limit_is_enforced_and_reported_as_oomkilled(agent: Agent) -> None:
    extra = """      resources:
        limits: {memory: 32Mi, cpu: 500m}
"""
    script = "exec python3 -c 'b = bytearray(200 * 2**20); print(len(b))'"
    agent.apply(pod_manifest("hog", script, policy="Never", extra=extra))
    pod = agent.wait_pod("hog", lambda p: p["status"]["phase"] == "Failed", "Failed")
    terminated = container(pod)["state"]["terminated"]
    assert terminated["reason"] == "OOMKilled"
    assert terminated["exitCode"] == 137
    assert pod["status"]["qosClass"] == "Guaranteed"


def test_limits_that_cannot_be_enforced_are_reported(
    make_agent: Callable[..., Agent], tmp_path: Path
) -> None:
    config = tmp_path / "agent.toml"
    # a cgroup parent below a file can never be created: the runtime cannot enforce limits
    config.write_text('[runtimes.process]\ncgroup_parent = "/cgroup.procs/florete"\n')
    agent = make_agent({"FLORETE_CONFIG": str(config)})
    status = json.loads(agent.cli("status", "-o", "json").stdout)["status"]
    process = next(r for r in status["runtimes"] if r["name"] == "process")
    assert process["attributes"]["limits_enforced"] == "false"
    assert "cannot create" in process["attributes"]["limits"]
    extra = """      resources:
        limits: {memory: 64Mi}
"""
    agent.apply(pod_manifest("unlimited", "exec sleep 300", extra=extra))
    agent.wait_running("unlimited")
    described = agent.cli("describe", "pod", "unlimited").stdout
    assert "LimitsNotEnforced" in described
    assert "resources.limits of container main are not enforced" in described
