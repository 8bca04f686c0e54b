"""Pairing over SSH: ``florete-agent pair ssh://user@host[:port]`` (a robot, a phone in Termux).

The SSH login is the authenticated channel, so no code is needed: the person proves access by
logging in, and the host key is checked as OpenSSH checks it (``known_hosts``; on first contact
the key's SHA256 fingerprint is shown and the person answers yes, no or the fingerprint; a host
whose key changed is refused with OpenSSH's warning). Then, on the remote host:

1. ``florete-agent version``: the agent must be installed (exit 127: not found) and running;
2. ``florete-agent peers export``: its certificate, which this node trusts (source ``pairing``,
   address ``ssh://user@host:port``);
3. ``florete-agent peers add -``: this node's certificate on its standard input.

Runs in the CLI process (prompts need the terminal); asyncssh is imported only here.
"""

from __future__ import annotations

import dataclasses
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncssh

from agent.errors import LocalError, RemoteError

__all__ = ["RemoteAgent", "SshPairingError", "SshTarget", "exchange_identities", "parse_target"]

Ask = Callable[[str], str]
"""Shows a prompt and returns what the person typed (``input`` or ``getpass``)."""


class SshPairingError(RemoteError):
    """SSH pairing failed: the host is unreachable, its key is unknown and was refused or has
    changed, the login failed, or the agent there is missing or failed (the message says)."""

    code = "ssh_pairing_failed"


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
    """What the remote host said: its certificate (PEM), its agent's version line and the
    login name used."""

    certificate: str
    version: str
    user: str


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


async def _run(conn: asyncssh.SSHClientConnection, command: str, stdin: str | None) -> Any:
    try:
        return await conn.run(command, input=stdin, check=False, timeout=60)
    except (TimeoutError, asyncssh.Error, OSError) as err:
        raise SshPairingError(f"running {command!r} over SSH failed: {err}") from err


async def exchange_identities(
    target: SshTarget,
    local_certificate: str,
    trust_remote: Callable[[RemoteAgent], Awaitable[None]],
    *,
    known_hosts: Path,
    client_keys: Sequence[Path] = (),
    remote_command: str = "florete-agent",
    ask: Ask,
    ask_secret: Ask,
    say: Callable[[str], None],
    connect_timeout: float = 20.0,
) -> RemoteAgent:
    """Log in, check the remote agent, and exchange certificates (see the module docstring).

    Args:
        target: where to log in.
        local_certificate: this node's certificate, PEM (given to the remote ``peers add -``).
        trust_remote: called with the remote's certificate before this node's is handed over;
            it stores the trust here (and may raise to stop).
        known_hosts: the ``known_hosts`` file (read, and appended to on first contact).
        client_keys: private key files to offer (``-i``); empty: asyncssh's defaults
            (``~/.ssh/id_*`` and the SSH agent).
        remote_command: how to run the agent's CLI on the remote host (a shell word list).
        ask: prompts for visible input; ask_secret: for passwords; say: prints a note.
        connect_timeout: seconds for the TCP connection and the SSH handshake.

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
        version = await _run(conn, f"{remote_command} version", None)
        if version.exit_status == 127:
            raise SshPairingError(
                f"florete-agent is not installed on {target.host} ({remote_command}: command not "
                "found); install it there first (see docs/pairing.md)"
            )
        if version.exit_status != 0:
            raise SshPairingError(
                f"the agent on {target.host} does not answer: {_text(version)} (is "
                "`florete-agent run` running there?)"
            )
        exported = await _run(conn, f"{remote_command} peers export", None)
        if exported.exit_status != 0 or "BEGIN CERTIFICATE" not in str(exported.stdout):
            raise SshPairingError(f"`peers export` on {target.host} failed: {_text(exported)}")
        remote = RemoteAgent(str(exported.stdout), str(version.stdout).strip(), user)
        await trust_remote(remote)
        added = await _run(conn, f"{remote_command} peers add -", local_certificate)
        if added.exit_status != 0:
            raise SshPairingError(
                f"`peers add` on {target.host} failed (it is trusted here, this node is not "
                f"trusted there): {_text(added)}"
            )
    return remote


def _reason(err: BaseException) -> str:
    if isinstance(err, asyncssh.PermissionDenied):
        return "permission denied (no key or password was accepted)"
    if isinstance(err, asyncssh.DisconnectError):
        return err.reason
    return str(err) or type(err).__name__


def _text(result: Any) -> str:
    """The end of a remote command's output on one line, for an error message."""
    text = (str(result.stderr or "") + str(result.stdout or "")).strip()
    return " | ".join(text[-300:].splitlines()) or f"exit status {result.exit_status}"
