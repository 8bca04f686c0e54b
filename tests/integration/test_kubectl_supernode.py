"""The real ``kubectl`` against a member of a two-member supernode on the network test bed.

Members ``a`` and ``b`` run in network namespaces of their own (see tests/netbed.py), trust each
other and form supernode ``rover``; ``a`` serves its API on 127.0.0.1 inside its namespace, so
kubectl runs there too (``ip netns exec``). Pods are pinned with ``spec.nodeName`` so that one
runs on the member kubectl talks to and one on the other.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.apiclient import ApiClient
from tests.integration.conftest import Agent, trust
from tests.integration.test_kubectl import Kube, check_stdin, check_terminal
from tests.netbed import NetBed, netbed_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("kubectl") is None,
        reason="kubectl is not installed (the CI image ships /usr/bin/kubectl)",
    ),
    pytest.mark.skipif(netbed_available() is not None, reason=str(netbed_available())),
]

GROUP = "/apis/florete.io/v1alpha1"
#: Prints the address of the network namespace a command runs in: where it runs.
WHERE = "ip -4 -o addr show dev eth0 | cut -d' ' -f7"
POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: rover}}
spec:
  nodeName: {member}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    command: [sh, -c, "echo started {name} at $(WHERE); exec sleep 600"]
"""


class Rover:
    """The supernode's members and a kubectl for member ``a``."""

    def __init__(self, kube: Kube, members: dict[str, Agent]) -> None:
        self.kube = kube
        self.members = members

    def wait_gone(self) -> None:
        """Poll until kubectl lists no pod (60 s at most)."""
        self.kube.agent.wait_for(
            "every pod gone",
            lambda: not self.kube.run("get", "pods", "-o", "name").stdout.strip(),
            timeout=60,
        )

    def apply(self, name: str, member: str) -> str:
        manifest = POD.format(name=name, member=member).replace("WHERE", WHERE)
        return self.kube.run("apply", "-f", "-", stdin=manifest).stdout


def _links_up(agent: Agent, peer: str) -> bool:
    with ApiClient(agent.state_dir / "agent.sock", timeout=30) as client:
        items = client.request("GET", f"{GROUP}/links")["items"]
    return any(k["peerName"] == peer and k["state"] == "established" and k["up"] for k in items)


def _members_up(agent: Agent, count: int) -> bool:
    status = json.loads(agent.cli("supernode", "status", "-o", "json").stdout)["status"]
    members = status["members"]
    return len(members) == count and all(m["health"] == "up" for m in members)


@pytest.fixture(scope="module")
def rover() -> Iterator[Rover]:
    """Supernode ``rover`` of members ``a`` (kubectl's) and ``b``."""
    root = Path(tempfile.mkdtemp(prefix="fl-"))
    members: dict[str, Agent] = {}
    with NetBed() as bed:
        try:
            for name in ("a", "b"):
                node = bed.add_node(name)
                env = {
                    "FLORETE_INTERFACES": "eth0",
                    "FLORETE_LINK_PORT": "4737",
                    "FLORETE_MDNS": "on",
                    "FLORETE_NODE_NAME": name,
                }
                if name == "a":
                    env["FLORETE_API_LISTEN"] = "127.0.0.1:0"
                members[name] = Agent(root / name, env, netns=node.ns)
                members[name].start()
            a, b = members["a"], members["b"]
            trust(a, b)
            trust(b, a)
            a.wait_for("a session to b", lambda: _links_up(a, "b"), 60)
            b.wait_for("a session to a", lambda: _links_up(b, "a"), 60)
            assert "created" in a.cli("supernode", "create", "rover").stdout
            assert "joined supernode/rover" in b.cli("supernode", "join", "rover").stdout
            for agent in (a, b):
                agent.wait_for("both members up", functools.partial(_members_up, agent, 2), 30)
            kubeconfig = root / "kube" / "config"
            a.cli("kubeconfig", "--file", str(kubeconfig), "--user", "tester")
            home = root / "home"
            home.mkdir()
            kube = Kube(a, kubeconfig, home, ("ip", "netns", "exec", bed.nodes["a"].ns))
            yield Rover(kube, members)
        finally:
            for agent in members.values():
                agent.kill_everything()
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def r(rover: Rover) -> Iterator[Rover]:
    """The module's supernode; the test's pods are deleted afterwards (through kubectl)."""
    yield rover
    names = rover.kube.run("get", "pods", "-o", "name").stdout.split()
    if names:
        rover.kube.run("delete", *names, "--wait=false")
        rover.wait_gone()


def _rows(output: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in output.splitlines()[1:]}


# --- objects -----------------------------------------------------------------------------------


def test_apply_get_wide_describe_delete(r: Rover) -> None:
    k = r.kube
    assert r.apply("here", "a") == "pod/here created\n"
    assert r.apply("there", "b") == "pod/there created\n"
    k.wait_running("here")
    k.wait_running("there")
    wide = k.run("get", "pods", "-o", "wide").stdout
    header = wide.splitlines()[0].split()
    assert header[5:7] == ["IP", "NODE"]
    rows = _rows(wide)
    assert rows["here"][1:3] == ["1/1", "Running"]
    assert rows["there"][1:3] == ["1/1", "Running"]
    assert (rows["here"][6], rows["there"][6]) == ("a", "b")  # the member each runs on
    assert r.apply("there", "b") == "pod/there unchanged\n"
    as_yaml = yaml.safe_load(k.run("get", "pod", "there", "-o", "yaml").stdout)
    assert as_yaml["spec"]["nodeName"] == "b"
    assert as_yaml["metadata"]["labels"] == {"app": "rover"}
    labelled = k.run("get", "pods", "-l", "app=rover", "-o", "name").stdout.split()
    assert sorted(labelled) == ["pod/here", "pod/there"]
    for name, member in (("here", "a"), ("there", "b")):
        described = k.run("describe", "pod", name).stdout
        assert re.search(r"^Status: +Running$", described, re.MULTILINE), described
        assert re.search(rf"^Node: +{member}/10\.99\.0\.", described, re.MULTILINE), described
    # kubectl waits for both to go, the one on b too (a member's watch polls the supernode)
    deleted = k.run("delete", "pod", "here", "there", "--timeout=60s").stdout
    assert deleted == 'pod "here" deleted\npod "there" deleted\n'
    assert k.run("get", "pods").stderr == "No resources found in default namespace.\n"
    for agent in r.members.values():  # gone from both members
        assert not [p for p in _cli_pods(agent) if p["metadata"]["name"] in ("here", "there")]


def test_watch_sees_the_pods_of_every_member(r: Rover) -> None:
    k = r.kube
    r.apply("near", "a")
    k.wait_running("near")
    watcher = subprocess.Popen(
        k.argv("get", "pods", "-w", "--output-watch-events", "--no-headers"),
        env=k.env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: list[str] = []
    try:
        assert watcher.stdout is not None
        lines.append(watcher.stdout.readline())  # the list comes first, as ADDED
        assert lines[0].split()[:2] == ["ADDED", "near"], lines
        r.apply("far", "b")
        while "far" not in lines[-1] or "Running" not in lines[-1]:
            lines.append(watcher.stdout.readline())
            assert lines[-1], f"the watch ended early: {lines}"
        assert k.run("delete", "pod", "far", "--timeout=60s").stdout == 'pod "far" deleted\n'
        while not lines[-1].startswith("DELETED"):
            lines.append(watcher.stdout.readline())
            assert lines[-1], f"the watch ended early: {lines}"
    finally:
        watcher.terminate()
        watcher.communicate(timeout=30)
    events = [line.split()[:2] for line in lines]
    assert events[1] == ["ADDED", "far"], lines  # a pod placed on b, seen through a
    assert events[-1] == ["DELETED", "far"], lines
    assert ["DELETED", "near"] not in events, lines
    # a watch from a listed version starts from that list: a deletion between the list and
    # the watch (kubectl's list-then-watch) still arrives
    listed = json.loads(k.run("get", "--raw", "/api/v1/namespaces/default/pods").stdout)
    assert [p["metadata"]["name"] for p in listed["items"]] == ["near"]
    k.run("delete", "pod", "near", "--wait=false")
    r.wait_gone()
    version = listed["metadata"]["resourceVersion"]
    raw = k.run(
        "get",
        "--raw",
        f"/api/v1/namespaces/default/pods?watch=true&resourceVersion={version}&timeoutSeconds=2",
    ).stdout
    replayed = [json.loads(line) for line in raw.splitlines()]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in replayed] == [("DELETED", "near")]


def _cli_pods(agent: Agent) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(agent.cli("get", "pods", "-A", "-o", "json").stdout)[
        "items"
    ]
    return items


def test_nodes_show_the_supernode(r: Rover) -> None:
    k = r.kube
    rows = [line.split() for line in k.run("get", "nodes", "--no-headers").stdout.splitlines()]
    assert [row[:2] for row in rows] == [["rover", "Ready"]]
    node = json.loads(k.run("get", "node", "rover", "-o", "json").stdout)
    assert node["metadata"]["labels"]["florete.io/supernode"] == "true"
    described = k.run("describe", "node", "rover").stdout
    assert "Name:               rover" in described
    missing = k.run("get", "node", "a", check=False)
    assert missing.returncode == 1
    assert 'member of supernode "rover"' in missing.stderr


def _described_events(described: str) -> list[list[str]]:
    """The rows of the Events section of ``kubectl describe``: type, reason, age, from, message."""
    section = described.partition("\nEvents:\n")[2]
    return [line.split(None, 4) for line in section.splitlines()[2:] if line.strip()]


def test_events_of_pods_on_both_members(r: Rover) -> None:
    k = r.kube
    r.apply("near", "a")
    r.apply("far", "b")
    k.wait_running("near")
    k.wait_running("far")
    for name, member in (("near", "a"), ("far", "b")):  # describe asks by name, namespace, uid
        events = _described_events(k.run("describe", "pod", name).stdout)
        reasons = {row[1]: row for row in events}
        assert {"Scheduled", "Started"} <= set(reasons), events
        assert reasons["Scheduled"][4] == f"Successfully assigned default/{name} to {member}"
        assert reasons["Started"][4] == "Started container main"
    listed = k.run("get", "events").stdout
    assert listed.splitlines()[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    objects = {line.split()[3] for line in listed.splitlines()[1:]}
    assert {"pod/near", "pod/far"} <= objects, listed
    everywhere = json.loads(k.run("get", "events", "-A", "-o", "json").stdout)["items"]
    hosts = {e["involvedObject"]["name"]: e["source"]["host"] for e in everywhere}
    assert (hosts["near"], hosts["far"]) == ("a", "b")  # each recorded by its member
    selected = k.run(
        "get", "events", "--field-selector", "involvedObject.name=far", "-o", "name"
    ).stdout.split()
    assert selected, "no event of far"
    assert all(name.startswith("event/far.") for name in selected), selected
    refused = k.run("get", "events", "-w", check=False)
    assert refused.returncode == 1
    assert "watch is served for pods only" in refused.stderr


def test_bad_manifest_gives_field_errors(r: Rover) -> None:
    bad = POD.format(name="bad", member="a").replace(
        "  - name: main\n", "  - name: main\n    colour: blue\n"
    )
    for verb in ("apply", "create"):
        result = r.kube.run(verb, "-f", "-", stdin=bad, check=False)
        assert result.returncode == 1
        assert (
            result.stderr == 'The Pod "bad" is invalid: spec.containers[0].colour: unknown field\n'
        )


# --- logs and exec -----------------------------------------------------------------------------


def test_logs_and_exec_of_a_pod_on_this_member(r: Rover) -> None:
    k = r.kube
    r.apply("here", "a")
    k.wait_running("here")
    assert k.run("logs", "here").stdout == "started here at 10.99.0.1/24\n"
    ok = k.run("exec", "here", "--", "sh", "-c", f"{WHERE}; echo err >&2; exit 5", check=False)
    assert (ok.returncode, ok.stdout, ok.stderr.splitlines()[0]) == (5, "10.99.0.1/24\n", "err")
    check_stdin(k, "here")
    check_terminal(k, "here")


def test_logs_and_exec_of_a_pod_on_another_member(r: Rover) -> None:
    k = r.kube
    r.apply("there", "b")
    k.wait_running("there")
    assert k.run("logs", "there").stdout == "started there at 10.99.0.2/24\n"
    ran = k.run("exec", "there", "--", "sh", "-c", f"{WHERE}; exit 6", check=False)
    assert (ran.returncode, ran.stdout) == (6, "10.99.0.2/24\n")
    interactive = k.run("exec", "-i", "there", "--", "cat", stdin="x", check=False)
    assert interactive.returncode == 1
    assert "interactive exec (-i, -t) of a pod on another member is not supported" in (
        interactive.stderr
    )
