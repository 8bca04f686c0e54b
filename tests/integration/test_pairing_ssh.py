"""SSH pairing against a real OpenSSH sshd started by the test (never the system service).

The sshd listens on 127.0.0.1 on a free port with its own ed25519 host key and accepts only a
client key generated here. The "robot" is a second real agent; the remote command is a small
wrapper that runs that agent's CLI (as ``florete-agent`` would on the robot).
"""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import os
import pwd
import shlex
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

import psutil
import pytest

from agent import __version__
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
    """An sshd of its own in ``directory``, with a host key and one client key that logs in
    as any user (``extra_config``: more sshd_config lines)."""

    def __init__(self, directory: Path, extra_config: str = "") -> None:
        self.dir = directory
        directory.chmod(0o755)  # other users read authorized_keys (the private keys are 0600)
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
        config.write_text(_CONFIG.format(port=self.port, dir=directory) + extra_config)
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


# --- installing the agent on a host that has none --------------------------------------------

_REMOTE_CONFIG = """\
Subsystem sftp internal-sftp
SetEnv FLORETE_INTERFACES=lo FLORETE_MDNS=off FLORETE_LINK_PORT=0 FLORETE_NODE_NAME=robot
"""
"""The fresh user's agent must send nothing on the machine's real interface: sshd gives every
session (and so the agent that pairing starts there) this environment."""

_USER_PREFIX = "flpair"


@dataclasses.dataclass(frozen=True)
class User:
    """A login made for one test, with a home of its own and no florete-agent."""

    name: str
    uid: int
    gid: int
    home: Path

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as this user with a clean environment (HOME, a system PATH)."""
        return subprocess.run(
            ["setpriv", f"--reuid={self.uid}", f"--regid={self.gid}", "--init-groups",
             "env", "-i", f"HOME={self.home}", "PATH=/usr/bin:/bin", *argv],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip

    def agent(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``~/.local/bin/florete-agent ARGS`` as this user."""
        return self.run(str(self.home / ".local/bin/florete-agent"), *args)

    def kill_processes(self) -> None:
        """End every process of this user (the agent that pairing started, and its children)."""
        mine = []
        for proc in psutil.process_iter(["uids"]):
            uids = proc.info["uids"]
            if uids is not None and uids.real == self.uid:
                mine.append(proc)
        for proc in mine:
            with contextlib.suppress(psutil.Error):
                proc.terminate()
        _, alive = psutil.wait_procs(mine, timeout=20)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(alive, timeout=10)


def _remove_stale_users() -> None:
    """Users a killed run left behind (their home, in a removed temp dir, is gone)."""
    for entry in pwd.getpwall():
        if entry.pw_name.startswith(_USER_PREFIX) and not Path(entry.pw_dir).exists():
            subprocess.run(["userdel", entry.pw_name], capture_output=True, check=False)


@pytest.fixture
def install_sshd() -> Iterator[Sshd]:
    directory = Path(tempfile.mkdtemp(prefix="flsshd-"))
    server = Sshd(directory, _REMOTE_CONFIG)
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def fresh_user(install_sshd: Sshd) -> Iterator[User]:
    if os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("setpriv") is None:
        pytest.skip("making a fresh user needs root, useradd and setpriv")
    _remove_stale_users()
    name = f"{_USER_PREFIX}{os.getpid() % 1000000}"
    home = install_sshd.dir / name
    # "*": no password, but not a locked account (sshd refuses locked ones, keys or not)
    subprocess.run(
        ["useradd", "--create-home", "--home-dir", str(home), "--shell", "/bin/sh",
         "--password", "*", name],
        check=True, capture_output=True,
    )  # fmt: skip
    entry = pwd.getpwnam(name)
    user = User(name, entry.pw_uid, entry.pw_gid, home)
    try:
        yield user
    finally:
        user.kill_processes()
        subprocess.run(["userdel", name], capture_output=True, check=False)


def test_ssh_pairing_installs_the_agent_for_a_user_that_has_none_and_starts_it(
    make_agent: MakeAgent, install_sshd: Sshd, fresh_user: User
) -> None:
    local = make_agent({"FLORETE_NODE_NAME": "laptop"})
    user, home = fresh_user, fresh_user.home
    known_hosts = install_sshd.dir / "known_hosts"
    target = f"ssh://{user.name}@127.0.0.1:{install_sshd.port}"
    pair = ["pair", target, "-i", str(install_sshd.client_key), "--known-hosts", str(known_hosts)]
    assert user.run("sh", "-c", "command -v florete-agent").returncode != 0

    # Asked, and declined: nothing is installed.
    declined = local.cli(*pair, check=False, stdin="yes\nno\n")
    assert declined.returncode == 1, declined.stderr
    assert "florete-agent is not installed on 127.0.0.1" in declined.stderr
    assert f"Install florete-agent {__version__} there for {user.name}" in declined.stderr
    assert "pass --install" in declined.stderr
    assert not (home / ".local").exists()

    # --install: packed here, copied, installed offline, started; then trust both ways.
    started = time.monotonic()
    first = local.cli(*pair, "--install", check=False, timeout=300)
    took = time.monotonic() - started
    assert first.returncode == 0, first.stderr + local.log()[-3000:]
    sys.stdout.write(f"\nssh pairing with install: {took:.1f} s\n")
    assert "Copying" in first.stderr
    assert "Installing florete-agent" in first.stderr
    assert "package index" not in first.stderr  # everything came from the copied wheels
    assert f"Installed on 127.0.0.1 for {user.name}: ~/.local/bin/florete-agent" in first.stdout
    assert not (home / ".cache/florete-agent/wheels").exists()  # removed after installing

    version = user.agent("version")
    assert version.returncode == 0, version.stderr
    assert f"Client Version: v{__version__}" in version.stdout
    assert "Server Version: " in version.stdout  # the agent pairing started answers
    venv_python = home / ".local/lib/florete-agent/bin/python"
    assert Path(os.path.realpath(venv_python)).stat().st_uid == 0  # the host's own python3
    robot_id = json.loads(user.agent("status", "-o", "json").stdout)["status"]["nodeID"]
    assert f"Paired with robot ({robot_id}) over SSH" in first.stdout

    seen = peers(local)["robot"]
    assert seen["status"]["state"] == "trusted"
    assert seen["status"]["addresses"] == [f"ssh://{user.name}@127.0.0.1:{install_sshd.port}"]
    there = {
        p["spec"]["name"]: p for p in json.loads(user.agent("peers", "-o", "json").stdout)["items"]
    }
    assert there["laptop"]["status"]["state"] == "trusted"

    # Again with the agent running there: found in ~/.local/bin, nothing installed or asked.
    local.cli("unpair", "robot")
    again = local.cli(*pair, check=False)
    assert again.returncode == 0, again.stderr
    assert "Install" not in again.stderr
    assert "Installed" not in again.stdout

    # The agent there stopped: pairing offers to start it.
    pid = int((home / ".local/lib/florete-agent/agent.pid").read_text())
    proc = psutil.Process(pid)
    proc.terminate()
    proc.wait(timeout=30)
    local.cli("unpair", "robot")
    restarted = local.cli(*pair, check=False, stdin="yes\n")
    assert restarted.returncode == 0, restarted.stderr
    assert "Start it there" in restarted.stderr
    assert f"Started on 127.0.0.1 as {user.name}" in restarted.stdout
    assert user.agent("version").returncode == 0


def test_ssh_pairing_says_why_it_cannot_install_without_a_recent_python3(
    make_agent: MakeAgent,
) -> None:
    """A host with no python3 on its PATH, then one whose python3 is too old (a stand-in that
    answers the probe as Python 3.9 would): nothing is copied, and the message says why."""
    directory = Path(tempfile.mkdtemp(prefix="flsshd-"))
    (directory / "bin").mkdir()
    (directory / "home").mkdir()
    server = Sshd(directory, f"SetEnv PATH={directory}/bin HOME={directory}/home\n")
    try:
        local = make_agent()
        target = f"ssh://{getpass.getuser()}@127.0.0.1:{server.port}"
        known = ["-i", str(server.client_key), "--known-hosts", str(directory / "known_hosts")]
        none = local.cli("pair", target, *known, "--install", check=False, stdin="yes\n")
        assert none.returncode == 1
        assert "florete-agent is not installed on 127.0.0.1" in none.stderr
        assert "127.0.0.1 has no python3, and florete-agent needs Python 3.11 or later" in (
            none.stderr
        )

        old = directory / "bin" / "python3"
        answer = {"version": [3, 9, 2], "machine": "armv7l", "libc": "glibc", "home": "/x"}
        old.write_text(f"#!/bin/sh\necho {shlex.quote(json.dumps(answer))}\n")
        old.chmod(0o755)
        too_old = local.cli("pair", target, *known, "--install", check=False)
        assert too_old.returncode == 1
        assert "has Python 3.9.2 on armv7l (glibc), and florete-agent needs Python 3.11" in (
            too_old.stderr
        )
        assert "Copying" not in too_old.stderr
        assert list((directory / "home").iterdir()) == []
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
