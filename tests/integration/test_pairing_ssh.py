"""SSH pairing against a real OpenSSH sshd started by the test (never the system service).

The sshd listens on 127.0.0.1 on a free port with its own ed25519 host key and accepts only a
client key generated here. The "robot" is a second real agent; the remote command is a small
wrapper that runs that agent's CLI (as ``florete-agent`` would on the robot).
"""

from __future__ import annotations

import getpass
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Agent

SSHD = Path("/usr/sbin/sshd")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not SSHD.exists() or shutil.which("ssh-keygen") is None,
        reason="OpenSSH is not installed (apt install openssh-server openssh-client)",
    ),
]

MakeAgent = Callable[..., Agent]

_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/host_key
PidFile none
AuthorizedKeysFile {dir}/authorized_keys
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
LogLevel ERROR
"""


class Sshd:
    """An sshd of its own in ``directory``, with a host key and one client key."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.client_key = directory / "client_key"
        for key in (directory / "host_key", self.client_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True
            )
        shutil.copy(f"{self.client_key}.pub", directory / "authorized_keys")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        config = directory / "sshd_config"
        config.write_text(_CONFIG.format(port=self.port, dir=directory))
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        with (directory / "sshd.log").open("wb") as log:
            self.process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL, stderr=log
            )
        deadline = time.monotonic() + 15
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sshd did not start: {(directory / 'sshd.log').read_text()}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(4).startswith(b"SSH-")
        except OSError:
            return False

    @property
    def host_fingerprint(self) -> str:
        out = subprocess.run(
            ["ssh-keygen", "-l", "-E", "sha256", "-f", str(self.dir / "host_key.pub")],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return out.split()[1]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)


@pytest.fixture
def sshd() -> Iterator[Sshd]:
    directory = Path(tempfile.mkdtemp(prefix="flsshd-"))
    server = Sshd(directory)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


def wrapper(agent: Agent, directory: Path) -> Path:
    """A script that runs ``agent``'s CLI, standing in for ``florete-agent`` on the robot."""
    script = directory / "florete-agent"
    script.write_text(
        "#!/bin/sh\n"
        f"export FLORETE_STATE_DIR={agent.state_dir} FLORETE_INTERFACES=lo\n"
        f'cd {Path.cwd()} && exec {sys.executable} -m agent.cli "$@"\n'
    )
    script.chmod(0o755)
    return script


def peers(agent: Agent) -> dict[str, dict[str, Any]]:
    items = json.loads(agent.cli("peers", "-o", "json").stdout)["items"]
    return {p["spec"]["name"]: p for p in items}


def pair(
    agent: Agent, sshd: Sshd, known_hosts: Path, remote: Path | str, answer: str = ""
) -> subprocess.CompletedProcess[str]:
    target = f"ssh://{getpass.getuser()}@127.0.0.1:{sshd.port}"
    args = ["-i", str(sshd.client_key), "--known-hosts", str(known_hosts)]
    return agent.cli(
        "pair", target, *args, "--remote-command", str(remote), check=False, stdin=answer
    )


def test_ssh_pairing_trusts_both_sides_and_repairing_refreshes_without_duplicates(
    make_agent: MakeAgent, sshd: Sshd
) -> None:
    local = make_agent({"FLORETE_NODE_NAME": "laptop"})
    robot = make_agent({"FLORETE_NODE_NAME": "robot"})
    known_hosts = sshd.dir / "known_hosts"
    remote = wrapper(robot, sshd.dir)

    first = pair(local, sshd, known_hosts, remote, answer="yes\n")
    assert first.returncode == 0, first.stderr + local.log()[-3000:]
    assert f"The authenticity of host '[127.0.0.1]:{sshd.port}" in first.stderr
    assert f"ED25519 key fingerprint is {sshd.host_fingerprint}." in first.stderr
    robot_id = json.loads(robot.cli("status", "-o", "json").stdout)["status"]["nodeID"]
    assert f"Paired with robot ({robot_id}) over SSH" in first.stdout
    assert f"[127.0.0.1]:{sshd.port} ssh-ed25519 " in known_hosts.read_text()

    address = f"ssh://{getpass.getuser()}@127.0.0.1:{sshd.port}"
    seen = peers(local)["robot"]
    assert seen["status"]["state"] == "trusted"
    assert seen["status"]["source"] == "pairing"
    assert seen["status"]["addresses"] == [address]
    assert f"Fingerprint: {seen['status']['fingerprint']}" in first.stdout
    assert peers(robot)["laptop"]["status"]["state"] == "trusted"

    # Again: the host key is known now (no question), and nothing is duplicated.
    local.cli("unpair", "robot")
    again = pair(local, sshd, known_hosts, remote)
    assert again.returncode == 0, again.stderr
    assert "authenticity" not in again.stderr
    assert list(peers(local)) == ["robot"]
    assert peers(local)["robot"]["status"]["state"] == "trusted"
    assert peers(local)["robot"]["status"]["addresses"] == [address]
    assert known_hosts.read_text().count("ssh-ed25519") == 1


def test_ssh_pairing_refuses_a_changed_or_rejected_host_key_and_a_missing_agent(
    make_agent: MakeAgent, sshd: Sshd
) -> None:
    local = make_agent()
    robot = make_agent()
    remote = wrapper(robot, sshd.dir)

    refused = pair(local, sshd, sshd.dir / "kh-no", remote, answer="no\n")
    assert refused.returncode == 1
    assert "host key verification failed" in refused.stderr
    assert not (sshd.dir / "kh-no").exists()

    other = sshd.dir / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    changed = sshd.dir / "kh-changed"
    key = Path(f"{other}.pub").read_text().split()
    changed.write_text(f"[127.0.0.1]:{sshd.port} {key[0]} {key[1]}\n")
    mitm = pair(local, sshd, changed, remote, answer="yes\n")
    assert mitm.returncode == 1
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in mitm.stderr

    known = sshd.dir / "kh"
    missing = pair(local, sshd, known, sshd.dir / "no-such-command", answer="yes\n")
    assert missing.returncode == 1
    assert "florete-agent is not installed on 127.0.0.1" in missing.stderr

    robot.stop()
    stopped = pair(local, sshd, known, remote)
    assert stopped.returncode == 1
    assert "does not answer" in stopped.stderr
    assert json.loads(local.cli("peers", "-o", "json").stdout)["items"] == []
