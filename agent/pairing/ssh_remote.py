"""The remote host's side of SSH pairing: find the agent there, install it, start it.

Used by :mod:`agent.pairing.ssh` on a logged-in connection. What runs on the remote host is
its ``sh`` (commands) and its ``python3`` (:mod:`agent.pairing.remote_setup`, sent on standard
input); files go over SFTP, or through ``cat`` when the server has no SFTP (Dropbear without
``sftp-server``).

The installation is private to the login user, as the agent is everywhere (an application,
never in a shared site-packages):

* ``~/.local/lib/florete-agent``: a virtual environment of the host's ``python3``, made with
  ``--without-pip``; pip runs from its wheel and installs itself there too;
* ``~/.local/bin/florete-agent``: a launcher (``sh``) that runs the environment's command;
* ``~/.local/lib/florete-agent/agent.log`` and ``agent.pid``: the agent started by pairing.

The wheels are those of :mod:`agent.pairing.wheelhouse`, copied to
``~/.cache/florete-agent/wheels`` and removed after the installation. pip installs from them
alone first (no network needed); what they lack (another CPU or Python there) comes from the
package index when the host can reach it.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import platform
import re
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import asyncssh

from agent.errors import RemoteError
from agent.pairing.wheelhouse import Wheelhouse, minimum_python

__all__ = [
    "LAUNCHER",
    "PREFIX",
    "RemotePython",
    "SshPairingError",
    "compatible",
    "install",
    "output_text",
    "probe_python",
    "run",
    "start",
]

PREFIX = ".local/lib/florete-agent"
"""The virtual environment, relative to the remote home."""
LAUNCHER = ".local/bin/florete-agent"
"""The launcher, relative to the remote home."""
WHEELS = ".cache/florete-agent/wheels"
"""Where the wheels are copied, relative to the remote home (removed afterwards)."""
INSTALL_TIMEOUT = 1800.0  # seconds pip may take on a slow board (it compiles nothing)
COMMAND_TIMEOUT = 60.0  # seconds for any other remote command

_PROBE = (
    "import sys, os, platform, json; "
    "print(json.dumps({'version': list(sys.version_info[:3]), 'machine': platform.machine(), "
    "'libc': platform.libc_ver()[0], 'home': os.path.expanduser('~')}))"
)

Say = Callable[[str], None]


class SshPairingError(RemoteError):
    """SSH pairing failed: the host is unreachable, its key is unknown and was refused or has
    changed, the login failed, or the agent there is missing, cannot be installed or failed
    (the message says which and why)."""

    code = "ssh_pairing_failed"


@dataclasses.dataclass(frozen=True)
class RemotePython:
    """The remote host's ``python3``.

    Attributes:
        version: ``(major, minor, micro)``.
        machine: ``platform.machine()`` (``x86_64``, ``aarch64``, ``armv7l``).
        libc: ``platform.libc_ver()[0]`` (``glibc``; empty for musl and Android's bionic).
        home: the login user's home directory.
    """

    version: tuple[int, int, int]
    machine: str
    libc: str
    home: str

    @property
    def label(self) -> str:
        """``Python 3.11.2 on x86_64 (glibc)``."""
        libc = f" ({self.libc})" if self.libc else ""
        return f"Python {'.'.join(map(str, self.version))} on {self.machine}{libc}"

    def fits_local_wheels(self) -> bool:
        """The wheels packed here (this node's Python, CPU and C library) can run there."""
        here = (sys.version_info[:2], platform.machine(), platform.libc_ver()[0])
        return (self.version[:2], self.machine, self.libc) == here


async def run(
    conn: asyncssh.SSHClientConnection,
    command: str,
    stdin: str | None = None,
    limit: float = COMMAND_TIMEOUT,
) -> Any:
    """Run ``command`` in the remote user's shell; returns asyncssh's completed process.

    Raises:
        SshPairingError: the command could not run or took longer than ``limit`` seconds.
    """
    try:
        return await conn.run(command, input=stdin, check=False, timeout=limit)
    except (TimeoutError, asyncssh.Error, OSError) as err:
        shown = command if len(command) < 80 else command[:77] + "..."
        raise SshPairingError(f"running {shown!r} over SSH failed: {err}") from err


def output_text(result: Any) -> str:
    """The end of a remote command's output on one line, for an error message."""
    text = (str(result.stderr or "") + str(result.stdout or "")).strip()
    return " | ".join(text[-300:].splitlines()) or f"exit status {result.exit_status}"


def version_of(output: str) -> str | None:
    """The agent version in ``florete-agent version`` output (``Client Version: v0.1.0``)."""
    match = re.search(r"Client Version: v?(\S+)", output)
    return match.group(1) if match else None


def compatible(local: str, remote: str) -> bool:
    """Two agent versions work together: the same major version, and for 0.x the same minor
    (semantic versioning: anything may change before 1.0)."""
    a, b = local.split(".")[:2], remote.split(".")[:2]
    return a[0] == b[0] and (a[0] != "0" or a[1:] == b[1:])


async def probe_python(
    conn: asyncssh.SSHClientConnection, host: str, requires_python: str | None
) -> RemotePython:
    """Ask the remote ``python3`` for its version, CPU, C library and home.

    Raises:
        SshPairingError: no ``python3`` there, or one older than ``requires_python`` allows.
    """
    result = await run(conn, f"python3 -c {shlex.quote(_PROBE)}")
    least = minimum_python(requires_python)
    need = f"Python {least[0]}.{least[1]} or later"
    if result.exit_status == 127:
        raise SshPairingError(
            f"{host} has no python3, and florete-agent needs {need}: install it there first "
            "(Debian/Ubuntu: apt install python3; Termux: pkg install python; "
            "OpenWrt: opkg install python3)"
        )
    try:
        found = json.loads(str(result.stdout).strip().splitlines()[-1])
        python = RemotePython(
            tuple(found["version"]), found["machine"], found["libc"], found["home"]
        )
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise SshPairingError(f"python3 on {host} does not work: {output_text(result)}") from err
    if python.version[:2] < least:
        raise SshPairingError(
            f"{host} has {python.label}, and florete-agent needs {need}: install a newer "
            "python3 there"
        )
    return python


def _setup_source() -> str:
    return importlib.resources.files("agent.pairing").joinpath("remote_setup.py").read_text()


async def _setup(
    conn: asyncssh.SSHClientConnection, action: str, args: dict[str, Any], limit: float
) -> tuple[dict[str, Any], str]:
    """Run :mod:`agent.pairing.remote_setup` ``action`` there; returns its answer and output."""
    command = f"python3 - {action} {shlex.quote(json.dumps(args))}"
    result = await run(conn, command, _setup_source(), limit)
    lines = str(result.stdout or "").strip().splitlines()
    try:
        answer: dict[str, Any] = json.loads(lines[-1])
    except (ValueError, IndexError):
        answer = {"ok": False, "output": output_text(result)}
    return answer, str(result.stderr or "")


async def _upload(
    conn: asyncssh.SSHClientConnection, files: Sequence[Path], directory: str, say: Say
) -> None:
    """Copy ``files`` into ``directory`` (relative to the remote home), emptied first."""
    quoted = shlex.quote(directory)
    prepared = await run(conn, f"rm -rf {quoted} && mkdir -p {quoted}")
    if prepared.exit_status != 0:
        raise SshPairingError(f"cannot create ~/{directory}: {output_text(prepared)}")
    sftp: asyncssh.SFTPClient | None = None
    try:
        sftp = await conn.start_sftp_client()
    except (asyncssh.SFTPError, asyncssh.ChannelOpenError) as err:
        say(f"  (no SFTP there: {err}; copying through cat)")
    if sftp is not None:
        try:
            async with sftp:
                await sftp.put([str(f) for f in files], directory)
        except (asyncssh.Error, OSError) as err:
            raise SshPairingError(f"copying the wheels over SFTP failed: {err}") from err
        return
    for path in files:
        target = shlex.quote(f"{directory}/{path.name}")
        try:
            done = await conn.run(
                f"cat > {target}", input=path.read_bytes(), encoding=None, timeout=600
            )
        except (TimeoutError, asyncssh.Error, OSError) as err:
            raise SshPairingError(f"copying {path.name} failed: {err}") from err
        if done.exit_status != 0:
            raise SshPairingError(f"copying {path.name} failed: {output_text(done)}")


async def install(
    conn: asyncssh.SSHClientConnection,
    host: str,
    house: Wheelhouse,
    python: RemotePython,
    say: Say,
) -> None:
    """Copy the wheels that can run there and install the agent (see the module docstring).

    Raises:
        SshPairingError: copying or installing failed; the message says what is missing and
            what to do (no network there for wheels of another platform: ``--wheelhouse``).
    """
    fits = python.fits_local_wheels()
    wheels = [w.path for w in house.wheels if fits or w.pure or w.given]
    size = sum(p.stat().st_size for p in wheels) / 2**20
    say(f"Copying {len(wheels)} wheels ({size:.1f} MiB) to {host}...")
    await _upload(conn, wheels, WHEELS, say)
    say(f"Installing {house.project} {house.version} there ({python.label})...")
    args = {
        "prefix": f"{python.home}/{PREFIX}",
        "wheels": f"{python.home}/{WHEELS}",
        "requirement": f"{house.project}=={house.version}",
        "launcher": f"{python.home}/{LAUNCHER}",
        "index": True,
    }
    try:
        answer, errors = await _setup(conn, "install", args, INSTALL_TIMEOUT)
    finally:
        await run(conn, f"rm -rf {shlex.quote(WHEELS)}")
    if answer.get("ok"):
        if not answer.get("offline"):
            say("  (some packages came from the package index)")
        return
    output = str(answer.get("output", "")) + errors
    if answer.get("stage") == "venv":
        raise SshPairingError(
            f"python3 on {host} cannot make a virtual environment (Debian/Ubuntu: apt install "
            f"python3-venv): {last_lines(output)}"
        )
    raise SshPairingError(install_failure(host, house, python, output))


def install_failure(host: str, house: Wheelhouse, python: RemotePython, output: str) -> str:
    """The message for a failed pip run there; ``output`` is pip's."""
    errors = "\n".join(line for line in output.splitlines() if line.startswith("ERROR"))
    pattern = r"(?:found for|satisfies the requirement) ([A-Za-z0-9._-]+)"
    lacking = sorted(set(re.findall(pattern, errors)))
    if not lacking:
        return f"installing {house.project} on {host} failed: {last_lines(output)}"
    fits = python.fits_local_wheels()
    platform_note = "" if fits else f" (those packed here do not fit its {python.label})"
    return (
        f"installing {house.project} on {host} failed: no wheel for {', '.join(lacking)} "
        f"among those copied{platform_note}, and the package index could not provide it (no "
        "network there?). On a machine with network, download wheels for that host (pip "
        f"download --only-binary=:all: --python-version {python.version[0]}."
        f"{python.version[1]} --platform <its platform tag> -d DIR "
        f"{' '.join(house.requirements)}) and pass --wheelhouse DIR. pip said: "
        f"{last_lines(output)}"
    )


def last_lines(output: str, count: int = 3) -> str:
    """The last ``count`` distinct ``ERROR`` lines of ``output`` (else its last lines), on one
    line."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")] or lines
    distinct = list(dict.fromkeys(errors))
    return " | ".join(distinct[-count:])


async def start(
    conn: asyncssh.SSHClientConnection, host: str, python: RemotePython, *, restart: bool
) -> str:
    """Start the installed agent there (stopping the one pairing started before when
    ``restart``) and wait until it answers.

    Returns:
        Its ``florete-agent version`` output.

    Raises:
        SshPairingError: it exited or did not answer within a minute (with its log's end).
    """
    args = {
        "prefix": f"{python.home}/{PREFIX}",
        "launcher": f"{python.home}/{LAUNCHER}",
        "restart": restart,
        "timeout": COMMAND_TIMEOUT,
    }
    answer, errors = await _setup(conn, "start", args, COMMAND_TIMEOUT + 40)
    if not answer.get("ok"):
        raise SshPairingError(
            f"the agent installed on {host} did not start: "
            f"{last_lines(str(answer.get('output', '')) + errors, 6)} "
            f"(its log: ~/{PREFIX}/agent.log there)"
        )
    return str(answer.get("output", "")).strip()
