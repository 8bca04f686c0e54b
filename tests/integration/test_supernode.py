"""Supernode scenarios on the network test bed: real agents, each in a namespace of its own.

Every agent runs ``florete-agent run`` on the bed's ``eth0`` with mDNS on; trust is given out of
band (each node's certificate added to every other, as ``peers export`` / ``peers add -`` do,
here through the API to keep the set-up short). The supernode is made with the real CLI:
``supernode create`` on one, ``supernode join`` on the others.

Pods are host processes ``sleep <marker>`` with a marker per pod, so which pod runs where is
read from each namespace's own process list (``ip netns pids``), not from any agent's view:
"exactly once" means one live process per marker across every member. A member is killed as a
board dies: the agent and every process it started, at once (:meth:`Agent.kill_everything`).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.apiclient import ApiClient
from tests.integration.conftest import CLI, Agent
from tests.netbed import NetBed, NetNode, netbed_available

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(netbed_available() is not None, reason=str(netbed_available())),
]

MakeAgent = Callable[..., Agent]
GROUP = "/apis/florete.io/v1alpha1"
MARKER = 700000


def request(agent: Agent, method: str, path: str, body: Any = None) -> Any:
    """One API request to the agent (in-process: much faster than a CLI run)."""
    with ApiClient(agent.state_dir / "agent.sock", timeout=60) as client:
        return client.request(method, path, body=body)


def start(make_agent: MakeAgent, bed: NetBed, name: str, labels: str = "", **extra: str) -> Agent:
    node = bed.nodes.get(name) or bed.add_node(name)
    env = {
        "FLORETE_INTERFACES": "eth0",
        "FLORETE_LINK_PORT": "4737",
        "FLORETE_MDNS": "on",
        "FLORETE_NODE_NAME": name,
        "FLORETE_LOG_LEVEL": "info",
        **extra,
    }
    if labels:
        config = Path(tempfile.mkdtemp(prefix="flsn-")) / "agent.toml"
        config.write_text(f"[node]\nlabels = {{ {labels} }}\n")
        env["FLORETE_CONFIG"] = str(config)
    return make_agent(env, netns=node.ns)


def mesh_of(
    make_agent: MakeAgent,
    bed: NetBed,
    names: list[str],
    labels: dict[str, str] | None = None,
    **extra: str,
) -> dict[str, Agent]:
    """Agents that all trust each other, with a session between every pair."""
    agents = {
        name: start(make_agent, bed, name, (labels or {}).get(name, ""), **extra) for name in names
    }
    WATCHED[:] = agents.values()
    pems = {n: request(a, "GET", f"{GROUP}/certificate")["certificate"] for n, a in agents.items()}
    for name, agent in agents.items():
        for other in names:
            if other != name:
                request(agent, "POST", f"{GROUP}/peers", {"certificate": pems[other]})
    for name, agent in agents.items():
        want = set(names) - {name}
        agent.wait_for(f"sessions to {sorted(want)}", functools.partial(sees, agent, want), 60)
    return agents


def sees(agent: Agent, names: set[str]) -> bool:
    return names <= sessions(agent)


def sessions(agent: Agent) -> set[str]:
    items = request(agent, "GET", f"{GROUP}/links")["items"]
    return {k["peerName"] for k in items if k["state"] == "established" and k["up"]}


def status(agent: Agent) -> dict[str, Any]:
    result: dict[str, Any] = request(agent, "GET", f"{GROUP}/supernode")["status"]
    return result


def make_supernode(agents: dict[str, Agent], name: str = "rover") -> None:
    first, *rest = agents.values()
    assert "created" in first.cli("supernode", "create", name).stdout
    for agent in rest:
        assert "joined supernode/rover" in agent.cli("supernode", "join", name).stdout
    for agent in agents.values():
        agent.wait_for("every member up", functools.partial(all_up, agent, len(agents)), 30)


def all_up(agent: Agent, count: int) -> bool:
    st = status(agent)
    return len(st["members"]) == count and all(m["health"] == "up" for m in st["members"])


def rejoined(agent: Agent, count: int) -> bool:
    """The agent hears the leader, runs its pods, and sees every member up."""
    st = status(agent)
    return bool(st["leaderContact"] and st["ready"] and all_up(agent, count))


def leader(agent: Agent) -> str | None:
    found = (status(agent).get("leader") or {}).get("name")
    return str(found) if found else None


def pod_yaml(i: int, spec: str = "", **annotations: str) -> str:
    """A pod ``p<i>`` running ``sleep <MARKER + i>``; ``spec`` adds lines to its spec."""
    notes = "".join(f"\n    {k}: {json.dumps(v)}" for k, v in annotations.items())
    meta = f"\n  annotations:{notes}" if annotations else ""
    return (
        f"apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}{meta}\nspec:\n{spec}"
        f"  terminationGracePeriodSeconds: 1\n"
        f"  containers:\n  - name: c\n    command: [sleep, '{MARKER + i}']\n"
    )


def running(node: NetNode) -> dict[int, int]:
    """Marker -> number of ``sleep <marker>`` processes in the node's namespace."""
    pids = node.run(["ip", "netns", "pids", node.ns], check=False).split()
    counts: dict[int, int] = {}
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) >= 2 and os.path.basename(argv[0]) == b"sleep" and argv[1].isdigit():
            marker = int(argv[1]) - MARKER
            counts[marker] = counts.get(marker, 0) + 1
    return counts


def where(bed: NetBed, names: list[str]) -> dict[int, list[str]]:
    """Marker -> the nodes (among ``names``) whose namespace runs it, once per process."""
    found: dict[int, list[str]] = {}
    for name in names:
        for marker, count in running(bed.nodes[name]).items():
            found.setdefault(marker, []).extend([name] * count)
    return found


def exactly_once(bed: NetBed, names: list[str], pods: range) -> bool:
    found = where(bed, names)
    return all(len(found.get(i, [])) == 1 for i in pods) and set(found) <= set(pods)


WATCHED: list[Agent] = []
"""The agents of the running test, whose supernode logs a failed :func:`wait` shows."""


def wait(what: str, predicate: Callable[[], bool], timeout: float) -> float:
    """Poll every 50 ms; returns the seconds it took."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            logs = "\n".join(
                f"--- {agent.state_dir}:\n"
                + "\n".join(
                    line for line in agent.log().splitlines()[-3000:] if "supernode" in line
                )[-3000:]
                for agent in WATCHED
            )
            raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")
        time.sleep(0.05)
    return time.monotonic() - started


def board_dies(agent: Agent) -> float:
    """Kill the agent and everything it started, as a board that loses power; returns when
    the agent died (``time.monotonic()``)."""
    assert agent.process is not None
    agent.process.kill()
    died = time.monotonic()
    agent.kill_everything()
    return died


def say(text: str) -> None:
    sys.stdout.write(f"\nsupernode: {text}\n")


@pytest.mark.timeout(400)
def test_three_members_fifty_pods_failover_and_rejoin(bed: NetBed, make_agent: MakeAgent) -> None:
    names = ["a", "b", "c"]
    labels = {"b": '"disk" = "ssd"', "c": '"devices.florete.io/camera" = "1"'}
    agents = mesh_of(make_agent, bed, names, labels)
    make_supernode(agents)
    a = agents["a"]
    assert "Error" in agents["b"].cli("supernode", "create", "x", check=False).stderr

    pods = range(50)
    agents["b"].apply("---\n".join(pod_yaml(i) for i in pods))
    wait("50 pods running once", lambda: exactly_once(bed, names, pods), 90)
    spread = {n: len(running(bed.nodes[n])) for n in names}
    assert all(count > 5 for count in spread.values()), spread
    wide = a.cli("get", "pods", "-o", "wide").stdout.splitlines()
    assert len(wide) == 51
    assert wide[0].split()[-2:] == ["IP", "NODE"]
    placed = {line.split()[0]: line.split()[-1] for line in wide[1:]}
    truth = {f"p{i}": nodes[0] for i, nodes in where(bed, names).items()}
    assert placed == truth  # the NODE column is the member whose runtime runs it
    nodes = a.cli("get", "nodes").stdout
    assert "rover" in nodes
    assert "└ a" in nodes
    assert "└ c" in nodes
    text = a.cli("supernode", "status").stdout
    assert "3 members, 3 up" in text
    assert "default/p49" in text

    # a follower dies (the whole board): its pods run once on the others
    chief = leader(a)
    victim = next(n for n in names if n != chief)
    survivors = [n for n in names if n != victim]
    died = board_dies(agents[victim])
    assert running(bed.nodes[victim]) == {}
    wait("pods moved", lambda: exactly_once(bed, survivors, pods), 60)
    took = time.monotonic() - died
    say(f"follower killed: its {spread[victim]} pods Running elsewhere in {took:.2f} s")
    survivor = agents[survivors[0]]
    survivor.wait_for("victim down", lambda: victim in _down(survivor), 10)

    # it comes back (same state dir, as after a reboot): it rejoins and starts nothing twice
    agents[victim].start()
    agents[victim].wait_for("back in", lambda: rejoined(agents[victim], 3), 60)
    survivor.wait_for("victim up", lambda: all_up(survivor, 3), 30)
    for _ in range(20):
        assert exactly_once(bed, names, pods)
        time.sleep(0.1)
    assert running(bed.nodes[victim]) == {}

    # the leader dies: the others elect a new one and take its pods
    chief = leader(survivor)
    assert chief is not None
    others = [n for n in names if n != chief]
    died = board_dies(agents[chief])
    wait("new leader", lambda: leader(agents[others[0]]) in others, 30)
    elected = time.monotonic() - died
    wait("pods moved", lambda: exactly_once(bed, others, pods), 60)
    took = time.monotonic() - died
    timing = status(agents[others[0]])["timing"]
    say(
        f"leader killed: new leader in {elected:.2f} s (election timeout "
        f"{timing['electionTimeoutSeconds'][0]:.2f}-{timing['electionTimeoutSeconds'][1]:.2f} s), "
        f"pods Running elsewhere in {took:.2f} s"
    )
    agents[chief].start()
    agents[chief].wait_for("old leader back", lambda: rejoined(agents[chief], 3), 60)
    time.sleep(2)
    assert exactly_once(bed, names, pods)

    # pods deleted through any member stop where they run
    agents[chief].cli("delete", "pod", *(f"p{i}" for i in range(40, 50)))
    assert exactly_once(bed, names, range(40))
    assert "p45" not in a.cli("get", "pods").stdout

    # devices, node labels and pinning decide where a pod goes
    specials = [
        pod_yaml(50, **{"florete.io/devices": "camera"}),
        pod_yaml(51, "  nodeSelector: {disk: ssd}\n"),
        pod_yaml(52, "  nodeName: a\n"),
        pod_yaml(53, **{"florete.io/devices": "camera"}),
    ]
    a.apply("---\n".join(specials))
    wait("special pods placed", lambda: all(i in where(bed, names) for i in (50, 51, 52)), 30)
    found = where(bed, names)
    assert (found[50], found[51], found[52]) == (["c"], ["b"], ["a"])
    pending = a.pod("p53")
    assert pending["status"]["phase"] == "Pending"
    assert "1 member is not the pinned member" not in json.dumps(pending)
    assert "lack device camera" in pending["status"]["conditions"][0]["message"]
    a.cli("delete", "pod", "p50", "p51", "p52", "p53")

    # a member leaves: its pods move to the others first, then it is gone from the supernode
    leaver = agents["b"]
    assert "left" in leaver.cli("supernode", "leave").stdout
    rest = ["a", "c"]
    wait("pods of the leaver moved", lambda: exactly_once(bed, rest, range(40)), 30)
    assert running(bed.nodes["b"]) == {}
    assert {m["name"] for m in status(a)["members"]} == set(rest)
    assert leaver.cli("supernode", "status", check=False).returncode == 1


def _down(agent: Agent) -> set[str]:
    return {m["name"] for m in status(agent)["members"] if m["health"] == "down"}


@pytest.mark.timeout(400)
def test_five_members_partition_heal_and_lossy_links(bed: NetBed, make_agent: MakeAgent) -> None:
    names = ["a", "b", "c", "d", "e"]
    agents = mesh_of(make_agent, bed, names)
    make_supernode(agents)
    pods = range(15)
    agents["a"].apply("---\n".join(pod_yaml(i) for i in pods))
    wait("15 pods running once", lambda: exactly_once(bed, names, pods), 60)
    term = status(agents["a"])["term"]

    # 2|3: the leader and one more are cut off from everything
    chief = leader(agents["a"])
    assert chief is not None
    minority = [chief, next(n for n in names if n != chief)]
    majority = [n for n in names if n not in minority]
    before = {n: running(bed.nodes[n]) for n in minority}
    cut_at = time.monotonic()
    for n in minority:
        bed.cut(bed.nodes[n])
    view = agents[majority[0]]
    wait("a majority leader", lambda: leader(view) in majority, 30)
    elected = time.monotonic() - cut_at
    took = wait("majority runs every pod", lambda: exactly_once(bed, majority, pods), 60)
    say(
        f"partition 2|3: majority leader in {elected:.2f} s, "
        f"all pods on the majority in {took:.2f} s"
    )
    # the minority keeps running what it had (offline autonomy), and starts nothing new
    for n in minority:
        assert running(bed.nodes[n]) == before[n]
    assert {m["name"] for m in status(view)["members"] if m["health"] == "down"} == set(minority)
    refused = agents[minority[0]].cli("delete", "pod", "p0", "--timeout", "5", check=False)
    assert refused.returncode == 1

    # heal: the minority learns its pods moved and stops them: each pod runs once again
    for n in minority:
        bed.restore(bed.nodes[n])
    took = wait("each pod once after heal", lambda: exactly_once(bed, names, pods), 60)
    say(f"partition healed: duplicates stopped in {took:.2f} s")
    for agent in agents.values():
        agent.wait_for("all up after heal", functools.partial(all_up, agent, 5), 30)
    assert status(view)["term"] > term

    # lossy links everywhere: the timing adapts and the leader stays
    for n in names:
        bed.set_loss(bed.nodes[n], 5)
    time.sleep(8)  # the loss estimate builds up and the timeouts grow
    settled = status(view)
    assert settled["timing"]["electionTimeoutSeconds"][0] > 0.6
    stable_term = settled["term"]
    more = range(15, 20)
    agents["c"].apply("---\n".join(pod_yaml(i) for i in more))
    wait("pods placed over lossy links", lambda: exactly_once(bed, names, range(20)), 60)
    time.sleep(10)
    assert status(view)["term"] == stable_term  # no election for 10+ s at 5 % loss per hop
    say(f"lossy links: {settled['timing']['summary']}; term unchanged")


TICKER = """\
apiVersion: v1
kind: Pod
metadata: {name: ticker}
spec:
  nodeName: b
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    command: [sh, -c, 'i=0; while true; do echo "line $i"; i=$((i+1)); sleep 0.1; done']
---
apiVersion: v1
kind: Pod
metadata: {name: crasher}
spec:
  nodeName: b
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    command: [sh, -c, 'echo "run $(cat /proc/sys/kernel/random/uuid)"; sleep 0.5; exit 3']
"""


def numbers(text: str) -> list[int]:
    return [int(line.split()[1]) for line in text.splitlines() if line.startswith("line ")]


@pytest.mark.timeout(300)
def test_logs_and_exec_of_a_pod_on_another_member(bed: NetBed, make_agent: MakeAgent) -> None:
    agents = mesh_of(make_agent, bed, ["a", "b"], FLORETE_API_LISTEN="127.0.0.1:0")
    make_supernode(agents)
    a, b = agents["a"], agents["b"]
    a.apply(TICKER)
    a.wait_for("ticker runs on b", lambda: a.pod("ticker")["spec"]["nodeName"] == "b", 30)
    b.wait_running("ticker")
    a.wait_for("ten lines", lambda: len(numbers(b.cli("logs", "ticker").stdout)) >= 10, 30)

    # logs through a of the pod on b: the whole log, a tail, and the same as b shows
    whole = numbers(a.cli("logs", "ticker").stdout)
    assert whole[:10] == list(range(10))
    assert numbers(b.cli("logs", "ticker").stdout)[: len(whole)] == whole
    tail = numbers(a.cli("logs", "ticker", "--tail", "3").stdout)
    assert len(tail) == 3
    assert tail == list(range(tail[0], tail[0] + 3))
    assert tail[0] >= whole[-1] - 2
    missing = a.cli("logs", "ticker", "-c", "nope", check=False)
    assert missing.returncode == 1
    assert "container nope is not valid for pod ticker" in missing.stderr

    # follow: lines keep coming, in order, none lost or repeated, through the member's stream
    follow = subprocess.Popen(
        [*CLI, "logs", "-f", "ticker", "--tail", "1"], env=a.env, stdout=subprocess.PIPE, text=True
    )
    assert follow.stdout is not None
    try:
        got = [int(follow.stdout.readline().split()[1]) for _ in range(40)]
    finally:
        follow.kill()
        follow.wait()
        follow.stdout.close()
    assert got == list(range(got[0], got[0] + 40))

    # kubectl against a (its TCP API, inside a's namespace): logs and exec of the pod on b
    root = Path(tempfile.mkdtemp(prefix="flsn-kube-"))
    a.cli("kubeconfig", "--file", str(root / "config"), "--user", "tester")
    (root / "home").mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "FLORETE_"))},
        "KUBECONFIG": str(root / "config"),
        "HOME": str(root / "home"),
    }

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        argv = bed.nodes["a"].argv(["kubectl", "--request-timeout=60s", *args])
        return subprocess.run(argv, env=env, text=True, capture_output=True, timeout=90)

    assert len(numbers(kubectl("logs", "ticker", "--tail=2").stdout)) == 2
    mac_b = bed.nodes["b"].run(["cat", "/sys/class/net/eth0/address"]).strip()
    ran = kubectl("exec", "ticker", "--", "sh", "-c", "cat /sys/class/net/eth0/address; exit 3")
    assert ran.returncode == 3, ran.stderr
    assert ran.stdout.strip() == mac_b  # it ran in b's namespace, where the pod is
    ok = kubectl("exec", "ticker", "--", "echo", "hello")
    assert (ok.returncode, ok.stdout) == (0, "hello\n")
    interactive = kubectl("exec", "-i", "ticker", "--", "cat")
    assert interactive.returncode != 0
    assert "interactive exec (-i, -t) of a pod on another member" in interactive.stderr

    # the previous instance's log of a container that restarted on b
    b.wait_for(
        "crasher restarted",
        lambda: a.pod("crasher")["status"]["containerStatuses"][0]["restartCount"] >= 1,
        60,
    )
    # It restarts every ~2.5 s, so through a it is b's previous log as of just before or just
    # after; a loaded machine may let two restarts pass between the calls: try again then.
    seen = []
    for _ in range(5):
        before = b.cli("logs", "crasher", "--previous").stdout
        previous = a.cli("logs", "crasher", "--previous").stdout
        after = b.cli("logs", "crasher", "--previous").stdout
        assert previous.startswith("run ")
        seen.append((before, previous, after))
        if previous in (before, after):
            break
    else:
        raise AssertionError(f"a never showed b's previous log: {seen}")
