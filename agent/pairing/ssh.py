"""Pairing over SSH: ``florete-agent pair ssh://user@host[:port]`` (a robot, a phone in Termux).

The SSH login is the authenticated channel, so no code is needed: the person proves access by
logging in, and the host key is checked as OpenSSH checks it (``known_hosts``; on first contact
the key's SHA256 fingerprint is shown and the person answers yes, no or the fingerprint; a host
whose key changed is refused with OpenSSH's warning). Then, on the remote host:

1. ``florete-agent version``: is the agent installed (exit 127: not found; then also
   ``~/.local/bin/florete-agent``, where an earlier pairing installed it), of a version that
   works with this one, and running?
2. If it is missing (or an incompatible one that pairing installed), and the person agrees
   (``--install``, or ``yes`` to the question): install this node's version there, for the
   login user, from wheels packed here (:mod:`agent.pairing.ssh_remote`,
   :mod:`agent.pairing.wheelhouse`); start it when pairing installed it and it is not running;
3. ``florete-agent peers export``: its certificate, which this node trusts (source ``pairing``,
   address ``ssh://user@host:port``);
4. ``florete-agent peers add -``: this node's certificate on its standard input.

Runs in the CLI process (prompts need the terminal); asyncssh is imported only here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import tempfile
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncssh

from agent import __version__
from agent.errors import LocalError
from agent.pairing import ssh_remote
from agent.pairing.ssh_remote import LAUNCHER, SshPairingError, output_text, run

__all__ = [
    "DEFAULT_COMMAND",
    "LAUNCHER",
    "RemoteAgent",
    "SshPairingError",
    "SshTarget",
    "exchange_identities",
    "parse_target",
]

DEFAULT_COMMAND = "florete-agent"
_OURS = '"$HOME/.local/bin/florete-agent"'  # where pairing installs it (ssh_remote.LAUNCHER)

Ask = Callable[[str], str]
"""Shows a prompt and returns what the person typed (``input`` or ``getpass``)."""


@dataclasses.dataclass(frozen=True)
class SshTarget:
    """``ssh://[user@]host[:port]``.

    Attributes:
        user: the login name, or None for the local user's.
        host: host name or address (IPv6 without brackets).
        port: TCP port (22 by default; Termux's sshd listens on 8022).
    """

    user: str | None
    host: str
    port: int = 22

    @property
    def known_hosts_name(self) -> str:
        """The host as ``known_hosts`` writes it: ``host``, or ``[host]:port`` off port 22."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    def url(self, user: str) -> str:
        """``ssh://user@host:port`` (the address recorded for the peer)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{user}@{host}:{self.port}"


def parse_target(text: str) -> SshTarget:
    """Read ``ssh://[user@]host[:port]``.

    Raises:
        LocalError: not an ``ssh://`` URL, no host, a path, or a port outside 1-65535.
    """
    parts = urllib.parse.urlsplit(text)
    try:
        port = parts.port or 22
    except ValueError:
        raise LocalError(f"{text!r}: the port must be a number 1-65535") from None
    if parts.scheme != "ssh" or not parts.hostname or parts.path not in ("", "/"):
        raise LocalError(f"{text!r} is not ssh://[user@]host[:port]")
    return SshTarget(parts.username or None, parts.hostname, port)


@dataclasses.dataclass(frozen=True)
class RemoteAgent:
    """What the remote host said: its certificate (PEM), its agent's ``version`` output and
    the login name used; whether pairing installed the agent there, and started it."""

    certificate: str
    version: str
    user: str
    installed: bool = False
    started: bool = False


class _Client(asyncssh.SSHClient):
    """Host key confirmation like OpenSSH's ``StrictHostKeyChecking=ask``, and prompts."""

    def __init__(
        self,
        target: SshTarget,
        known_hosts: Path,
        ask: Ask,
        ask_secret: Ask,
        say: Callable[[str], None],
    ) -> None:
        self._target = target
        self._known_hosts = known_hosts
        self._ask, self._ask_secret, self._say = ask, ask_secret, say
        self._password_tries = 0
        self.error: SshPairingError | None = None

    def validate_host_public_key(
        self, host: str, addr: str, port: int, key: asyncssh.SSHKey
    ) -> bool:
        """Called for a key that ``known_hosts`` does not list for this host."""
        name = self._target.known_hosts_name
        fingerprint = key.get_fingerprint("sha256")
        algorithm = _key_type(key.get_algorithm())
        known = _read_known_hosts(self._known_hosts)
        if known is not None and known.match(host, addr, port)[0]:
            self.error = SshPairingError(
                f"REMOTE HOST IDENTIFICATION HAS CHANGED for {name}: it offers the {algorithm} "
                f"key {fingerprint}, not the one in {self._known_hosts}. Someone could be "
                "eavesdropping (a man-in-the-middle attack), or the host key was just changed. "
                f"If the change is expected: ssh-keygen -R '{name}' -f {self._known_hosts}"
            )
            return False
        prompt = (
            f"The authenticity of host '{name} ({addr})' can't be established.\n"
            f"{algorithm} key fingerprint is {fingerprint}.\n"
            "Are you sure you want to continue connecting (yes/no/[fingerprint])? "
        )
        while True:
            answer = self._ask(prompt).strip()
            if answer in ("yes", fingerprint):
                break
            if answer in ("no", ""):
                self.error = SshPairingError(f"host key verification failed: {name} not trusted")
                return False
            prompt = "Please type 'yes', 'no' or the fingerprint: "
        line = key.export_public_key("openssh").decode().split()
        self._known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self._known_hosts.open("a") as file:
            file.write(f"{name} {line[0]} {line[1]}\n")
        self._say(f"Warning: Permanently added '{name}' ({algorithm}) to the list of known hosts.")
        return True

    def password_auth_requested(self) -> str | None:
        self._password_tries += 1
        if self._password_tries > 3:
            return None
        user = self._target.user or ""
        return self._ask_secret(f"{user}@{self._target.host}'s password: ")

    def kbdint_auth_requested(self) -> str | None:
        return ""

    def kbdint_challenge_received(
        self, name: str, instructions: str, lang: str, prompts: Sequence[tuple[str, bool]]
    ) -> Sequence[str] | None:
        if instructions:
            self._say(instructions)
        return [self._ask(p) if echo else self._ask_secret(p) for p, echo in prompts]


def _key_type(algorithm: str) -> str:
    """The key type as OpenSSH names it in prompts: ``ssh-ed25519`` -> ``ED25519``."""
    base = algorithm.removeprefix("ssh-").split("-")[0]
    return "ECDSA" if base.startswith("ecdsa") else base.upper()


def _read_known_hosts(path: Path) -> asyncssh.SSHKnownHosts | None:
    try:
        return asyncssh.read_known_hosts(str(path)) if path.exists() else None
    except (OSError, ValueError) as err:
        raise SshPairingError(f"cannot read {path}: {err}") from err


async def exchange_identities(
    target: SshTarget,
    local_certificate: str,
    trust_remote: Callable[[RemoteAgent], Awaitable[None]],
    *,
    known_hosts: Path,
    client_keys: Sequence[Path] = (),
    remote_command: str = DEFAULT_COMMAND,
    ask: Ask,
    ask_secret: Ask,
    say: Callable[[str], None],
    connect_timeout: float = 20.0,
    install: bool | None = None,
    wheelhouse: Sequence[Path] = (),
) -> RemoteAgent:
    """Log in, check (or install and start) the remote agent, and exchange certificates (see
    the module docstring).

    Args:
        target: where to log in.
        local_certificate: this node's certificate, PEM (given to the remote ``peers add -``).
        trust_remote: called with the remote's certificate before this node's is handed over;
            it stores the trust here (and may raise to stop).
        known_hosts: the ``known_hosts`` file (read, and appended to on first contact).
        client_keys: private key files to offer (``-i``); empty: asyncssh's defaults
            (``~/.ssh/id_*`` and the SSH agent).
        remote_command: how to run the agent's CLI on the remote host (a shell word list).
            Only with the default is the agent installed when missing.
        ask: prompts for visible input; ask_secret: for passwords; say: prints a note.
        connect_timeout: seconds for the TCP connection and the SSH handshake.
        install: True: install (or start) the agent there without asking when needed;
            None: ask; False: never.
        wheelhouse: more wheel files or directories of them to copy when installing (for a
            host of another platform with no network).

    Returns:
        What the remote host said.

    Raises:
        SshPairingError: any step failed (the message says which and why).
    """
    client = _Client(target, known_hosts, ask, ask_secret, say)
    known = _read_known_hosts(known_hosts) or asyncssh.import_known_hosts("")
    options: dict[str, Any] = {
        "known_hosts": known,
        "connect_timeout": connect_timeout,
        "client_factory": lambda: client,
    }
    if target.user:
        options["username"] = target.user
    if client_keys:
        options["client_keys"] = [str(p) for p in client_keys]
    try:
        conn = await asyncssh.connect(target.host, target.port, **options)
    except (TimeoutError, asyncssh.Error, OSError, ValueError) as err:
        if client.error is not None:
            raise client.error from None
        raise SshPairingError(
            f"cannot log in to {target.known_hosts_name}: {_reason(err)}"
        ) from err
    async with conn:
        user = str(conn.get_extra_info("username") or target.user or "")
        setup = _Setup(conn, target.host, user, install, ask, say, wheelhouse)
        command, version = await setup.agent(remote_command)
        exported = await run(conn, f"{command} peers export")
        if exported.exit_status != 0 or "BEGIN CERTIFICATE" not in str(exported.stdout):
            raise SshPairingError(
                f"`peers export` on {target.host} failed: {output_text(exported)}"
            )
        remote = RemoteAgent(
            str(exported.stdout), version.strip(), user, setup.installed, setup.started
        )
        await trust_remote(remote)
        added = await run(conn, f"{command} peers add -", local_certificate)
        if added.exit_status != 0:
            raise SshPairingError(
                f"`peers add` on {target.host} failed (it is trusted here, this node is not "
                f"trusted there): {output_text(added)}"
            )
    return remote


class _Setup:
    """Finds the agent on the remote host and, when needed and agreed, installs or starts it."""

    def __init__(
        self,
        conn: asyncssh.SSHClientConnection,
        host: str,
        user: str,
        install: bool | None,
        ask: Ask,
        say: Callable[[str], None],
        wheelhouse: Sequence[Path],
    ) -> None:
        self._conn, self._host, self._user = conn, host, user
        self._install, self._ask, self._say = install, ask, say
        self._wheelhouse = wheelhouse
        self.installed = False
        self.started = False
        self._version = ""  # `florete-agent version` of the agent started there

    async def agent(self, remote_command: str) -> tuple[str, str]:
        """The command that runs the agent's CLI there and its ``version`` output, once the
        agent runs there.

        Raises:
            SshPairingError: it is missing, incompatible or stopped and was not (or could not
                be) installed or started.
        """
        host, conn = self._host, self._conn
        command = remote_command
        result = await run(conn, f"{command} version")
        ours = False
        if result.exit_status == 127 and command == DEFAULT_COMMAND:
            # Not on the PATH of a non-interactive login: where an earlier pairing put it?
            again = await run(conn, f"{_OURS} version")
            if again.exit_status != 127:
                command, result, ours = _OURS, again, True
        if result.exit_status == 127:
            missing = (
                f"florete-agent is not installed on {host} ({remote_command}: command not found)"
            )
            if remote_command != DEFAULT_COMMAND:
                raise SshPairingError(f"{missing}; install it there first (docs/pairing.md)")
            question = (
                f"{missing}.\nInstall florete-agent {__version__} there for {self._user} "
                f"(~/{ssh_remote.PREFIX}, command ~/{ssh_remote.LAUNCHER}) and start it?"
            )
            await self._setup(question, missing, install=True, restart=False)
            return _OURS, self._version
        found = ssh_remote.version_of(str(result.stdout)) or "?"  # "?": a command of its own
        fits = found == "?" or ssh_remote.compatible(__version__, found)
        if result.exit_status == 0 and fits:
            return command, str(result.stdout)
        if command == DEFAULT_COMMAND and not ours:
            ours = await self._installed_by_pairing()
        if not fits:
            problem = (
                f"{host} has florete-agent {found}, which does not work with {__version__} here"
            )
            if not ours:
                raise SshPairingError(f"{problem}: install {__version__} there")
            question = (
                f"{problem}.\nInstall {__version__} there (over the one an earlier pairing "
                "installed) and restart it?"
            )
            await self._setup(question, problem, install=True, restart=True)
            return _OURS, self._version
        stopped = f"the agent on {host} does not answer: {output_text(result)}"
        if not ours:
            raise SshPairingError(f"{stopped} (is `florete-agent run` running there?)")
        question = f"{stopped}.\nStart it there (florete-agent run, as {self._user})?"
        await self._setup(question, stopped, install=False, restart=False)
        return _OURS, self._version

    async def _installed_by_pairing(self) -> bool:
        """The ``florete-agent`` on the remote PATH is the launcher pairing writes."""
        found = await run(self._conn, "command -v florete-agent")
        return str(found.stdout).strip().endswith(f"/{ssh_remote.LAUNCHER}")

    async def _setup(self, question: str, problem: str, *, install: bool, restart: bool) -> None:
        """Ask (unless told), then install and start, or start only."""
        if self._install is False or (self._install is None and not self._agree(question)):
            hint = "pass --install, or answer yes," if install else "answer yes, or"
            raise SshPairingError(
                f"{problem}; {hint} to let pairing {'install' if install else 'start'} it "
                "(docs/pairing.md)"
            )
        try:
            python = await ssh_remote.probe_python(self._conn, self._host, _requires_python())
        except SshPairingError as err:
            raise SshPairingError(f"{problem}; {err.message}") from err
        if install:
            await self._copy_and_install(python)
            self.installed = True
        self._say(f"Starting florete-agent on {self._host}...")
        self._version = await ssh_remote.start(self._conn, self._host, python, restart=restart)
        self.started = True
        running = ssh_remote.version_of(self._version) or "?"
        if running == "?" or not ssh_remote.compatible(__version__, running):
            raise SshPairingError(
                f"the agent started on {self._host} is version {running}, which does not work "
                f"with {__version__} here"
            )
        self._say(
            f"florete-agent {__version__} runs on {self._host} as {self._user} "
            f"(log: ~/{ssh_remote.PREFIX}/agent.log). It does not start again after a reboot "
            "there: see docs/pairing.md"
        )

    async def _copy_and_install(self, python: ssh_remote.RemotePython) -> None:
        from agent.pairing.wheelhouse import build_wheelhouse

        with tempfile.TemporaryDirectory(prefix="florete-wheels-") as directory:
            self._say("Packing florete-agent and its dependencies from this installation...")
            house = await asyncio.to_thread(
                build_wheelhouse, Path(directory), extra=self._wheelhouse
            )
            if house.missing:
                self._say(
                    f"  (not installed here as wheels can be made from: "
                    f"{', '.join(house.missing)}; pip there fetches them from the index)"
                )
            await ssh_remote.install(self._conn, self._host, house, python, self._say)

    def _agree(self, question: str) -> bool:
        prompt = f"{question} [y/N] "
        while True:
            answer = self._ask(prompt).strip().lower()
            if answer in ("y", "yes"):
                return True
            if answer in ("", "n", "no"):
                return False
            prompt = "Please type 'yes' or 'no': "


def _requires_python() -> str | None:
    try:
        return importlib.metadata.metadata("florete-agent")["Requires-Python"]
    except importlib.metadata.PackageNotFoundError:
        return None


def _reason(err: BaseException) -> str:
    if isinstance(err, asyncssh.PermissionDenied):
        return "permission denied (no key or password was accepted)"
    if isinstance(err, asyncssh.DisconnectError):
        return err.reason
    return str(err) or type(err).__name__
