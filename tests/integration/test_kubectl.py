"""The real ``kubectl`` against a running agent, through ``florete-agent kubeconfig``.

One agent serves the whole module (mutual TLS on 127.0.0.1, a free port); every test cleans up
its own pods. kubectl's discovery cache goes to a private HOME. Tests skip when kubectl is not
installed.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import re
import select
import shutil
import signal
import ssl
import struct
import subprocess
import tempfile
import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from agent.apiclient import ApiClient
from agent.errors import ApiError
from tests import podman_env
from tests.integration.conftest import Agent

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("kubectl") is None,
        reason="kubectl is not installed (the CI image ships /usr/bin/kubectl)",
    ),
]

SLEEPER = """\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: {namespace}
  labels: {{app: {app}}}
spec:
  containers:
  - name: main
    command: [sh, -c, "echo started {name}; exec sleep 600"]
"""


@dataclass
class Kube:
    """The module's agent and a kubectl that talks to it (run with ``prefix``, e.g. ``ip netns
    exec NS``, when the agent listens in a network namespace)."""

    agent: Agent
    kubeconfig: Path
    home: Path
    prefix: tuple[str, ...] = ()

    def argv(self, *args: str) -> list[str]:
        """The command line of ``kubectl ARGS``."""
        return [*self.prefix, "kubectl", *args]

    def run(
        self, *args: str, stdin: str | None = None, check: bool = True, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``kubectl ARGS``; with ``check``, fail the test on a non-zero exit."""
        result = subprocess.run(
            self.argv(*args),
            env=self.env(),
            input=stdin,
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited with {result.returncode}:\n{result.stderr}"
                f"\n--- agent log ---\n{self.agent.log()[-3000:]}"
            )
        return result

    def env(self) -> dict[str, str]:
        """kubectl's environment: this kubeconfig, a private HOME (discovery cache)."""
        keep = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "FLORETE_"))}
        return {**keep, "KUBECONFIG": str(self.kubeconfig), "HOME": str(self.home)}

    def apply(self, name: str, namespace: str = "default", app: str = "web") -> str:
        """``kubectl apply -f -`` of a sleeper pod; returns kubectl's output."""
        manifest = SLEEPER.format(name=name, namespace=namespace, app=app)
        return self.run("apply", "-f", "-", stdin=manifest).stdout

    def pod(self, name: str, namespace: str = "default") -> dict[str, Any]:
        """``kubectl get pod NAME -o json``."""
        result: dict[str, Any] = json.loads(
            self.run("get", "pod", name, "-n", namespace, "-o", "json").stdout
        )
        return result

    def wait_running(self, name: str, namespace: str = "default") -> dict[str, Any]:
        """Poll until the pod is Running (30 s at most)."""
        seen: dict[str, Any] = {}

        def running() -> bool:
            seen.update(self.pod(name, namespace))
            return bool(seen["status"].get("phase") == "Running")

        self.agent.wait_for(f"pod {namespace}/{name} Running", running)
        return seen

    def delete_all(self) -> None:
        """Delete every pod in every namespace, waiting until they are gone."""
        for namespace in {p["metadata"]["namespace"] for p in _cli_pods(self.agent)}:
            self.run("delete", "pods", "--all", "-n", namespace, "--timeout=60s")


def _cli_pods(agent: Agent) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(agent.cli("get", "pods", "-A", "-o", "json").stdout)[
        "items"
    ]
    return items


@pytest.fixture(scope="module")
def kube() -> Iterator[Kube]:
    """One agent with its TCP API on 127.0.0.1 (any free port) and a kubeconfig for it."""
    root = Path(tempfile.mkdtemp(prefix="fl-"))
    agent = Agent(root / "s", {"FLORETE_API_LISTEN": "127.0.0.1:0"})
    try:
        agent.start()
        kubeconfig = root / "kube" / "config"
        agent.cli("kubeconfig", "--file", str(kubeconfig), "--user", "tester")
        home = root / "home"
        home.mkdir()
        yield Kube(agent, kubeconfig, home)
    finally:
        agent.kill_everything()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def k(kube: Kube) -> Iterator[Kube]:
    """The module's kubectl; the test's pods are deleted afterwards."""
    yield kube
    kube.delete_all()


# --- kubeconfig, discovery ---------------------------------------------------------------------


def test_kubeconfig_is_private_and_only_its_certificate_gets_in(k: Kube) -> None:
    assert k.kubeconfig.stat().st_mode & 0o777 == 0o600
    config = yaml.safe_load(k.kubeconfig.read_text())
    cluster = config["clusters"][0]["cluster"]
    assert cluster["server"].startswith("https://127.0.0.1:")
    assert config["users"][0]["name"].startswith("tester@")
    version = k.run("version", "-o", "json").stdout
    assert json.loads(version)["serverVersion"]["minor"] == "32"
    # the same server and CA without a client certificate is refused by mutual TLS
    del config["users"][0]["user"]["client-certificate-data"]
    del config["users"][0]["user"]["client-key-data"]
    anonymous = k.kubeconfig.with_name("anonymous")
    anonymous.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        ["kubectl", "--kubeconfig", str(anonymous), "get", "pods", "--request-timeout=10s"],
        env=k.env(),
        text=True,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "No resources found" not in result.stdout + result.stderr


def test_client_certificates_are_issued_only_over_the_unix_socket(k: Kube) -> None:
    config = yaml.safe_load(k.kubeconfig.read_text())
    user = config["users"][0]["user"]
    cert, key = k.home / "client.crt", k.home / "client.key"
    cert.write_bytes(base64.b64decode(user["client-certificate-data"]))
    key.write_bytes(base64.b64decode(user["client-key-data"]))
    # without SNI the listener shows the node certificate, as before this CA existed
    context = ssl.create_default_context(cafile=k.agent.state_dir / "identity" / "node.crt")
    context.check_hostname = False
    context.load_cert_chain(cert, key)
    port = int(config["clusters"][0]["cluster"]["server"].rsplit(":", 1)[1])
    with ApiClient.tcp("127.0.0.1", port, context) as client:
        assert client.request("GET", "/api/v1/nodes")["kind"] == "NodeList"
        with pytest.raises(ApiError) as refused:
            client.request(
                "POST", "/apis/florete.io/v1alpha1/clientcertificates", body={"csr": "x"}
            )
    assert (refused.value.status, refused.value.api_reason) == (403, "Forbidden")


def test_kubeconfig_needs_the_tcp_api(make_agent: Any) -> None:
    agent = make_agent()
    result = agent.cli("kubeconfig", check=False)
    assert result.returncode == 1
    assert "set api.listen" in result.stderr
    assert "FLORETE_API_LISTEN=127.0.0.1:6443" in result.stderr


def test_api_resources(k: Kube) -> None:
    rows = [line.split() for line in k.run("api-resources", "--no-headers").stdout.splitlines()]
    by_name = {row[0]: row for row in rows}
    assert by_name["pods"] == ["pods", "po", "v1", "true", "Pod"]
    assert by_name["nodes"] == ["nodes", "no", "v1", "false", "Node"]
    assert by_name["events"] == ["events", "ev", "v1", "true", "Event"]
    assert by_name["namespaces"] == ["namespaces", "ns", "v1", "false", "Namespace"]


# --- pods --------------------------------------------------------------------------------------


def test_apply_create_get_describe_logs_delete(k: Kube) -> None:
    assert k.apply("web") == "pod/web created\n"
    k.wait_running("web")
    lines = k.run("get", "pods").stdout.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert lines[1].split()[:4] == ["web", "1/1", "Running", "0"]
    wide = k.run("get", "pods", "-o", "wide").stdout.splitlines()
    assert wide[0].split()[5:7] == ["IP", "NODE"]
    assert wide[1].split()[5] == "127.0.0.1"
    as_yaml = yaml.safe_load(k.run("get", "pod", "web", "-o", "yaml").stdout)
    assert as_yaml["metadata"]["labels"] == {"app": "web"}
    annotations = as_yaml["metadata"]["annotations"]
    assert "kubectl.kubernetes.io/last-applied-configuration" in annotations
    assert k.apply("web") == "pod/web unchanged\n"
    assert k.apply("web", app="api") == "pod/web configured\n"
    assert k.pod("web")["metadata"]["labels"] == {"app": "api"}
    again = k.run(
        "create",
        "-f",
        "-",
        stdin=SLEEPER.format(name="web", namespace="default", app="x"),
        check=False,
    )
    assert again.returncode == 1
    assert (
        'Error from server (AlreadyExists): error when creating "STDIN": pods "web" already exists'
        in again.stderr
    )
    described = k.run("describe", "pod", "web").stdout
    assert "Status:       Running" in described
    assert "Successfully assigned default/web to" in described
    assert "Started container main" in described
    assert k.run("logs", "web").stdout == "started web\n"
    created = k.run(
        "create", "-f", "-", stdin=SLEEPER.format(name="made", namespace="default", app="x")
    )
    assert created.stdout == "pod/made created\n"
    assert k.run("delete", "pod", "web", "made").stdout == 'pod "web" deleted\npod "made" deleted\n'
    assert k.run("get", "pods").stderr == "No resources found in default namespace.\n"


def test_bad_manifest_gives_the_cli_field_errors(k: Kube) -> None:
    bad = SLEEPER.format(name="bad", namespace="default", app="x").replace(
        "  - name: main\n", "  - name: main\n    colour: blue\n"
    )
    cli = k.agent.cli("apply", "-f", "-", stdin=bad, check=False)
    assert cli.returncode == 1
    assert "spec.containers[0].colour: unknown field" in cli.stderr
    for verb in ("apply", "create"):
        result = k.run(verb, "-f", "-", stdin=bad, check=False)
        assert result.returncode == 1
        assert (
            result.stderr == 'The Pod "bad" is invalid: spec.containers[0].colour: unknown field\n'
        )


def test_namespaces_and_selectors(k: Kube) -> None:
    k.apply("front", app="web")
    k.apply("back", app="db")
    k.apply("probe", namespace="team", app="web")
    for name, namespace in (("front", "default"), ("back", "default"), ("probe", "team")):
        k.wait_running(name, namespace)
    assert k.run("get", "pods", "-n", "team", "-o", "name").stdout == "pod/probe\n"
    everywhere = k.run("get", "pods", "-A", "--no-headers").stdout.splitlines()
    assert sorted(line.split()[1] for line in everywhere) == ["back", "front", "probe"]
    namespaces = k.run("get", "namespaces", "--no-headers").stdout.split()
    assert {"default", "team"} <= set(namespaces)
    web = k.run("get", "pods", "-A", "-l", "app=web", "-o", "name").stdout.split()
    assert sorted(web) == ["pod/front", "pod/probe"]
    not_web = k.run("get", "pods", "-l", "app notin (web)", "-o", "name").stdout
    assert not_web == "pod/back\n"
    by_field = k.run(
        "get",
        "pods",
        "-A",
        "--field-selector",
        "status.phase=Running,metadata.name!=back",
        "-o",
        "name",
    ).stdout.split()
    assert sorted(by_field) == ["pod/front", "pod/probe"]
    refused = k.run("get", "pods", "--field-selector", "spec.image=x", check=False)
    assert refused.returncode == 1
    assert "field label not supported: spec.image" in refused.stderr


def test_watch_streams_added_modified_deleted(k: Kube) -> None:
    k.apply("watched")
    k.wait_running("watched")
    listed = json.loads(k.run("get", "--raw", "/api/v1/namespaces/default/pods").stdout)
    version = listed["metadata"]["resourceVersion"]
    watcher = subprocess.Popen(
        ["kubectl", "get", "pods", "-w", "--output-watch-events", "--no-headers"],
        env=k.env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    lines: list[str] = []
    try:
        assert watcher.stdout is not None
        lines.append(watcher.stdout.readline())  # the list comes first, as ADDED
        assert lines[0].split()[:2] == ["ADDED", "watched"], lines
        k.run("delete", "pod", "watched")  # returns once the pod is gone
        while not lines[-1].startswith("DELETED"):
            lines.append(watcher.stdout.readline())
            assert lines[-1], f"the watch ended early: {lines}"
    finally:
        watcher.terminate()
        watcher.communicate(timeout=30)
    events = [line.split()[:2] for line in lines]
    assert ["MODIFIED", "watched"] in events, lines  # the deletion request
    assert events[-1] == ["DELETED", "watched"], lines
    # a watch from the listed version replays what happened since, though it began after
    raw = k.run(
        "get",
        "--raw",
        f"/api/v1/namespaces/default/pods?watch=true&resourceVersion={version}&timeoutSeconds=1",
    ).stdout
    replayed = [json.loads(line) for line in raw.splitlines()]
    assert replayed[0]["type"] == "MODIFIED"
    assert replayed[-1]["type"] == "DELETED"
    assert {e["object"]["metadata"]["name"] for e in replayed} == {"watched"}
    assert int(replayed[0]["object"]["metadata"]["resourceVersion"]) > int(version)


def test_logs_follow_and_previous(k: Kube) -> None:
    manifest = """\
apiVersion: v1
kind: Pod
metadata: {name: crashy}
spec:
  containers:
  - name: main
    command: [sh, -c, "echo run-$(cat /proc/sys/kernel/random/uuid); sleep 1; exit 3"]
"""
    k.run("apply", "-f", "-", stdin=manifest)
    k.agent.wait_for(
        "a restart",
        lambda: any(
            s.get("restartCount", 0) >= 1
            for s in k.pod("crashy")["status"].get("containerStatuses", [])
        ),
    )
    previous = k.run("logs", "crashy", "--previous").stdout
    assert previous.startswith("run-")
    described = k.run("describe", "pod", "crashy").stdout
    assert "Exit Code:    3" in described
    k.apply("talker")
    k.wait_running("talker")
    follow = subprocess.Popen(
        ["kubectl", "logs", "-f", "talker"],
        env=k.env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline() == "started talker\n"
        assert follow.poll() is None  # still following
    finally:
        follow.terminate()
        follow.communicate(timeout=30)


# --- nodes, events, exec -----------------------------------------------------------------------


def test_nodes_and_events(k: Kube) -> None:
    k.apply("eventful")
    k.wait_running("eventful")
    node = k.run("get", "nodes", "--no-headers").stdout.split()
    assert node[1] == "Ready"
    assert node[4].startswith("v")
    wide = k.run("get", "nodes", "-o", "wide").stdout.splitlines()[0].split()
    assert wide[5:8] == ["INTERNAL-IP", "EXTERNAL-IP", "OS-IMAGE"]
    described = k.run("describe", "node", node[0]).stdout
    assert "Ready            True" in described or "Ready   True" in described
    assert "default                     eventful" in described
    assert f"HolderIdentity:  {node[0]}" in described
    events = k.run("get", "events").stdout
    assert events.splitlines()[0].split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    assert "Scheduled   pod/eventful" in events
    assert "Started container main" in events


def test_exec(k: Kube) -> None:
    k.apply("shell")
    k.wait_running("shell")
    ok = k.run("exec", "shell", "--", "sh", "-c", "echo out; echo err >&2")
    assert (ok.stdout, ok.stderr) == ("out\n", "err\n")
    failed = k.run("exec", "shell", "--", "sh", "-c", "exit 7", check=False)
    assert failed.returncode == 7
    assert "command terminated with exit code 7" in failed.stderr
    big = k.run("exec", "shell", "--", "sh", "-c", "yes 0123456789 | head -n 20000")
    assert big.stdout == "0123456789\n" * 20000  # streamed, not cut
    missing = k.run("exec", "nobody", "--", "true", check=False)
    assert 'pods "nobody" not found' in missing.stderr


def test_exec_with_stdin(k: Kube) -> None:
    k.apply("catty")
    k.wait_running("catty")
    check_stdin(k, "catty")
    # kubectl killed: its command is killed too
    marker = f"{7000 + os.getpid() % 1000}.5"
    with subprocess.Popen(
        k.argv("exec", "-i", "catty", "--", "sleep", marker),
        env=k.env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    ) as gone:
        k.agent.wait_for("the exec's command", lambda: bool(_sleeps(marker)))
        gone.kill()
    k.agent.wait_for("the exec's command killed", lambda: not _sleeps(marker), timeout=15)


def check_stdin(k: Kube, pod: str) -> None:
    """``kubectl exec -i POD``: piped stdin reaches the command, its end too."""
    lines = "".join(f"line {i}\n" for i in range(5000))
    echoed = k.run("exec", "-i", pod, "--", "cat", stdin=lines)
    assert echoed.stdout == lines
    # the end of stdin reaches the command (v5 close of channel 0); its exit code comes back
    script = 'n=$(wc -l); echo "$n lines"; echo bye >&2; exit 3'
    counted = k.run("exec", "-i", pod, "--", "sh", "-c", script, stdin=lines, check=False)
    assert (counted.returncode, counted.stdout.split()) == (3, ["5000", "lines"])
    assert counted.stderr.startswith("bye\n")


def _sleeps(marker: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"]) if p.info["cmdline"] == ["sleep", marker]]


def test_exec_interactive_terminal(k: Kube) -> None:
    k.apply("tty")
    k.wait_running("tty")
    check_terminal(k, "tty")


def check_terminal(k: Kube, pod: str) -> None:
    """``kubectl exec -it POD -- sh`` on a terminal of its own: prompt, echo, sizes, ^C, exit."""
    argv = k.argv("exec", "-it", pod, "--", "env", "PS1=fl$ ", "sh")
    with Terminal(argv, k.env(), rows=30, columns=90) as term:
        term.expect(b"fl$ ")  # the prompt of an interactive shell: stdin is a terminal
        term.type(b"echo hi $((6*7))\r")
        echoed = term.expect(b"\r\nhi 42\r\n")
        assert b"hi $((6*7))" in echoed  # echoed by the pod's terminal (maybe redrawn)
        assert term.size() == b"30 90"  # kubectl sent this terminal's size
        term.resize(rows=50, columns=132)
        deadline = time.monotonic() + 20  # kubectl sends the new size when SIGWINCH comes
        while (size := term.size()) != b"50 132":
            assert size == b"30 90", size
            assert time.monotonic() < deadline, "the new size never reached the pod"
            time.sleep(0.2)
        term.type(b"echo sleeping; sleep 600\r")
        term.expect_line(b"sleeping")
        time.sleep(0.5)  # sleep has started: a ^C before it would only end the line
        term.type(b"\x03")  # ^C: SIGINT to the pod terminal's foreground job only
        term.expect(b"fl$ ")
        term.type(b"echo status $?\r")
        assert term.expect_line(rb"status (\d+)").group(1) == b"130"  # sleep died of SIGINT
        term.type(b"exit 4\r")
        assert term.wait() == 4


def test_cp_both_ways(k: Kube, tmp_path: Path) -> None:
    k.apply("files")
    k.wait_running("files")
    source = tmp_path / "source.txt"
    source.write_bytes(os.urandom(200_000).hex().encode())
    inside = tmp_path / "pod"  # a host process's file system is the host's
    inside.mkdir()
    k.run("cp", str(source), f"files:{inside}/copied.txt")  # tar -x in the pod, stdin piped
    assert (inside / "copied.txt").read_bytes() == source.read_bytes()
    back = tmp_path / "back.txt"
    k.run("cp", f"files:{inside}/copied.txt", str(back))  # tar -c in the pod, stdout streamed
    assert back.read_bytes() == source.read_bytes()


def test_exec_in_a_podman_container(make_agent: Any, tmp_path: Path) -> None:
    """The same exec, stdin and terminal checks in a container (libpod exec sessions)."""
    if podman_env.unavailable():
        pytest.skip(str(podman_env.unavailable()))
    env = podman_env.environment()
    config = tmp_path / "agent.toml"
    config.write_text(f'[runtimes.podman]\nsocket = "{env.socket}"\nstart_service = false\n')
    agent = make_agent({"FLORETE_CONFIG": str(config), "FLORETE_API_LISTEN": "127.0.0.1:0"})
    kubeconfig = tmp_path / "kube" / "config"
    agent.cli("kubeconfig", "--file", str(kubeconfig), "--user", "tester")
    (tmp_path / "home").mkdir()
    k = Kube(agent, kubeconfig, tmp_path / "home")
    manifest = f"""\
apiVersion: v1
kind: Pod
metadata: {{name: boxed}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {podman_env.IMAGE}
    imagePullPolicy: IfNotPresent
    command: [sh, -c, "exec sleep 600"]
"""
    k.run("apply", "-f", "-", stdin=manifest)
    k.wait_running("boxed")
    try:
        script = "tr '\\0' ' ' </proc/1/cmdline; echo; echo e >&2"
        ok = k.run("exec", "boxed", "--", "sh", "-c", script)
        assert (ok.stdout, ok.stderr) == ("sleep 600 \n", "e\n")  # the container's own pid 1
        check_stdin(k, "boxed")
        check_terminal(k, "boxed")
    finally:
        k.run("delete", "pod", "boxed", "--timeout=60s")


class Terminal:
    """A command on a pseudo-terminal of its own, as a user's shell would run it."""

    def __init__(self, argv: list[str], env: dict[str, str], rows: int, columns: int) -> None:
        self.master, slave = os.openpty()
        self._slave = slave
        self.resize(rows, columns, signal_it=False)
        self.proc = subprocess.Popen(
            argv, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
        self.seen = bytearray()

    def __enter__(self) -> Terminal:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self._slave)

    def resize(self, rows: int, columns: int, signal_it: bool = True) -> None:
        """Set the terminal's size and tell the command (SIGWINCH), as a terminal emulator."""
        fcntl.ioctl(self._slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        if signal_it:
            self.proc.send_signal(signal.SIGWINCH)

    def type(self, keys: bytes) -> None:
        os.write(self.master, keys)

    def expect(self, text: bytes, timeout: float = 20.0) -> bytes:
        """Read the terminal until ``text`` shows; what was read up to it is consumed, and
        what came before it returned."""
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and not self._read(0)):
                raise AssertionError(f"no {text!r} on the terminal; it shows {bytes(self.seen)!r}")
            self._read(left)
        at = self.seen.index(text)
        before = bytes(self.seen[:at])
        del self.seen[: at + len(text)]
        return before

    def expect_line(self, pattern: bytes, timeout: float = 20.0) -> re.Match[bytes]:
        """Read the terminal until a whole output line matches ``pattern``; consumed up to it.

        Lines, not exact echoes, because a shell's line editor may redraw what it echoes
        (busybox ash asks for the cursor position and redraws the line it is editing).
        """
        line = re.compile(rb"(?:^|\r\n)" + pattern + rb"\r\n")
        deadline = time.monotonic() + timeout
        while (found := line.search(bytes(self.seen))) is None:
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and not self._read(0)):
                raise AssertionError(
                    f"no line {pattern!r} on the terminal; it shows {bytes(self.seen)!r}"
                )
            self._read(left)
        del self.seen[: found.end()]
        return found

    def size(self) -> bytes:
        """What ``stty size`` prints in the shell on this terminal, e.g. ``b"30 90"``."""
        self.type(b"stty size\r")
        return self.expect_line(rb"(\d+ \d+)").group(1)

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.master], [], [], min(timeout, 0.5))
        if ready:
            self.seen += os.read(self.master, 65536)
        return bool(ready)

    def wait(self, timeout: float = 20.0) -> int:
        return self.proc.wait(timeout)
