"""The supernode commands on one agent (no test bed needed): errors, a one-member supernode,
a restart that holds and releases its pods, and dissolving it."""

from __future__ import annotations

import json

import pytest

from tests.integration.conftest import Agent

pytestmark = pytest.mark.integration

POD = """\
apiVersion: v1
kind: Pod
metadata: {name: solo}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    command: [sleep, "3600"]
"""


def test_one_member_supernode_from_create_to_dissolve(agent: Agent) -> None:
    missing = agent.cli("supernode", "status", check=False)
    assert missing.returncode == 1
    assert "not a member of a supernode" in missing.stderr
    bad = agent.cli("supernode", "create", "Not_A_Label", check=False)
    assert bad.returncode == 1
    assert "DNS-1123 label" in bad.stderr
    nobody = agent.cli("supernode", "join", "rover", "--timeout", "5", check=False)
    assert nobody.returncode == 1
    assert 'no neighbour is a member of supernode "rover"' in nobody.stderr

    assert "supernode/rover created" in agent.cli("supernode", "create", "rover").stdout
    again = agent.cli("supernode", "create", "other", check=False)
    assert again.returncode == 1
    assert 'member of supernode "rover"' in again.stderr
    selector = POD.replace("spec:\n", "spec:\n  nodeSelector: {disk: [ssd]}\n")
    invalid = agent.cli("apply", "-f", "-", stdin=selector, check=False)
    assert invalid.returncode == 1
    assert "spec.nodeSelector[disk]" in invalid.stderr
    assert "pod/solo created" in agent.apply(POD)
    pod = agent.wait_running("solo")
    assert pod["spec"]["nodeName"] == agent.pod("solo")["spec"]["nodeName"]
    nodes = json.loads(agent.cli("get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["rover"]
    assert nodes[0]["metadata"]["labels"]["florete.io/supernode"] == "true"
    status = json.loads(agent.cli("supernode", "status", "-o", "json").stdout)["status"]
    assert status["role"] == "leader"
    assert [p["name"] for p in status["placements"]] == ["solo"]
    pid = pod["status"]["containerStatuses"][0]["containerID"]

    # a restart: the pod is held until Raft caught up, then re-attached (not started again)
    agent.stop()
    agent.start()
    again_pod = agent.wait_running("solo")
    assert again_pod["status"]["containerStatuses"][0]["containerID"] == pid
    assert again_pod["status"]["containerStatuses"][0]["restartCount"] == 0

    # the last member leaves: the supernode is dissolved, the pod stays as a pod of this node
    assert "left the supernode" in agent.cli("supernode", "leave").stdout
    plain = agent.pod("solo")
    assert "florete.io/supernode" not in (plain["metadata"].get("annotations") or {})
    assert plain["status"]["containerStatuses"][0]["containerID"] == pid
    assert agent.cli("supernode", "status", check=False).returncode == 1
    nodes = json.loads(agent.cli("get", "nodes", "-o", "json").stdout)["items"]
    assert nodes[0]["metadata"]["name"] != "rover"
