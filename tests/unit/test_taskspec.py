"""Building a TaskSpec from a parsed Pod: the fields runtimes map to their backends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.manifest import parse_pod
from agent.taskspec import PodContext, build_task_spec
from wri_plugins.api import TaskSpec


def spec_of(tmp_path: Path, spec: dict[str, Any], index: int = 0) -> TaskSpec:
    pod = parse_pod({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec})
    ctx = PodContext("u" * 36, "node", "10.0.0.1", tmp_path / "logs", tmp_path / "work")
    return build_task_spec(pod, pod.spec.containers[index], ctx, 0)


def test_command_and_args_stay_apart_and_expand(tmp_path: Path) -> None:
    container = {
        "name": "c",
        "image": "busybox:1.36",
        "command": ["sh", "-c"],
        "args": ["echo $(GREETING)"],
        "env": [{"name": "GREETING", "value": "hi"}],
    }
    spec = spec_of(tmp_path, {"containers": [container]})
    assert spec.command == ("sh", "-c")
    assert spec.args == ("echo hi",)
    assert spec.argv == ("sh", "-c", "echo hi")
    assert spec.image_pull_policy == "IfNotPresent"  # defaulted from the tag
    assert (spec.run_as_user, spec.run_as_group, spec.read_only_root_fs) == (None, None, False)


def test_pull_policy_ports_and_host_network(tmp_path: Path) -> None:
    web = {
        "name": "web",
        "image": "busybox",
        "ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81}],
    }
    dns = {
        "name": "dns",
        "image": "busybox:1",
        "imagePullPolicy": "Never",
        "ports": [{"containerPort": 53, "protocol": "UDP", "hostPort": 53, "hostIP": "::1"}],
    }
    spec = spec_of(tmp_path, {"containers": [web, dns]})
    assert spec.image_pull_policy == "Always"  # no tag
    assert spec.ports == ((80, "TCP", 8080, None), (81, "TCP", None, None))
    assert spec.pod_ports == ((80, "TCP", 8080, None), (53, "UDP", 53, "::1"))
    assert not spec.host_network
    assert spec_of(tmp_path, {"containers": [web, dns]}, 1).image_pull_policy == "Never"
    host = spec_of(
        tmp_path, {"hostNetwork": True, "containers": [{**web, "ports": [{"containerPort": 80}]}]}
    )
    assert host.host_network
    assert host.ports == ((80, "TCP", 80, None),)  # hostPort defaults to containerPort


def test_host_process_has_no_pull_policy(tmp_path: Path) -> None:
    spec = spec_of(tmp_path, {"containers": [{"name": "c", "command": ["true"]}]})
    assert spec.image is None
    assert spec.image_pull_policy is None


def test_security_context_is_carried(tmp_path: Path) -> None:
    security = {"runAsUser": 1000, "runAsGroup": 100, "readOnlyRootFilesystem": True}
    container = {"name": "c", "image": "busybox:1", "securityContext": security}
    spec = spec_of(tmp_path, {"containers": [container]})
    assert (spec.run_as_user, spec.run_as_group, spec.read_only_root_fs) == (1000, 100, True)
