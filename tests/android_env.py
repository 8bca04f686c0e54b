"""A real OpenSSH sshd standing in for a phone's Termux sshd (../shared/REAL-COMPONENTS.md, SSH).

Started once per pytest process on first use (:func:`environment`; the conformance suite asks
through :func:`unavailable`) and stopped at exit. Never the system's sshd service: this one runs
``/usr/sbin/sshd -D`` with a config of its own in ``/tmp/florete-test-android-<pytest pid>``:

* listening on 127.0.0.1 only, on port 8022 as Termux's does, or on a free port when 8022 is taken
  (another test run, another helper's sshd);
* its own ed25519 host key, written to a known_hosts file the runtime checks it against;
* public-key login only, for the current user, with a generated client key in an
  ``authorized_keys`` of its own (``StrictModes no``: the files live in a temp dir);
* ``SetEnv HOME=<dir>/home PREFIX=<dir>/usr``: a home and a prefix standing in for Termux's
  ``$HOME`` and ``$PREFIX``, so the runtime's files stay inside the temp dir.

It runs under ``setpriv --pdeathsig KILL`` and so dies with pytest even on SIGKILL; a later run
removes what such a run left behind (directories whose pytest process is gone). The death signal
follows the thread that started sshd: one restarted by :meth:`PhoneEnv.outage` in a worker thread
(the conformance hook runs there) dies when that thread ends, and :func:`environment` starts it
again, on the same port and with the same keys, for the next case.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psutil

from wri_plugins.api import TaskHandle

SSHD = Path("/usr/sbin/sshd")
PORT = 8022
PREFIX = "florete-test-android-"
START_TIMEOUT = 15.0  # seconds for sshd to answer with its banner

_CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {dir}/ssh_host_ed25519_key
PidFile none
AuthorizedKeysFile {dir}/authorized_keys
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
PrintMotd no
MaxStartups 100:30:200
SetEnv HOME={dir}/home PREFIX={dir}/usr
LogLevel ERROR
"""


def _free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _banner(port: int) -> bool:
    """True when an SSH server answers on 127.0.0.1:port."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            return sock.recv(64).startswith(b"SSH-")
    except OSError:
        return False


class PhoneEnv:
    """The sshd and its files (see the module docstring).

    Args:
        directory: where its config, keys, log and the stand-in home live.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.home = directory / "home"
        self.client_key = directory / "client_ed25519"
        self.known_hosts = directory / "known_hosts"
        self.log = directory / "sshd.log"
        self.port = PORT
        self.proc: subprocess.Popen[bytes] | None = None

    def options(self) -> dict[str, Any]:
        """The android runtime's options to reach this sshd."""
        return {
            "host": "127.0.0.1",
            "port": self.port,
            "user": getpass.getuser(),
            "key_file": str(self.client_key),
            "known_hosts": str(self.known_hosts),
            "connect_timeout": 10.0,
            "command_timeout": 20.0,
            "probe_timeout": 15.0,
            "poll_interval": 0.25,
            "log_max_bytes": 1 << 20,
        }

    def prepare(self) -> None:
        """Create the directory, keys, known_hosts and authorized_keys.

        Raises:
            subprocess.CalledProcessError: ssh-keygen failed.
        """
        self.directory.mkdir(mode=0o700)
        for sub in ("home", "usr", "home/tmp"):
            (self.directory / sub).mkdir(mode=0o700)
        for key in (self.directory / "ssh_host_ed25519_key", self.client_key):
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "florete-test", "-f",
                 str(key)],
                check=True, capture_output=True, timeout=30,
            )  # fmt: skip
        shutil.copy(self.client_key.with_suffix(".pub"), self.directory / "authorized_keys")

    def start(self) -> None:
        """Start sshd on 8022, or on a free port when 8022 is taken, and wait for its banner.

        Raises:
            RuntimeError: sshd exited or did not answer within 15 s (with its log).
        """
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation dir
        for _ in range(3):
            if self.proc is None and not _free(self.port):
                self.port = _free_port()
            if self._launch():
                host_key = (self.directory / "ssh_host_ed25519_key.pub").read_text().split()
                entry = f"[127.0.0.1]:{self.port} {host_key[0]} {host_key[1]}\n"
                self.known_hosts.write_text(entry)
                return
            self.port = _free_port()
        raise RuntimeError(f"sshd did not start: {self.log.read_text(errors='replace')[-2000:]}")

    def _launch(self) -> bool:
        config = self.directory / "sshd_config"
        config.write_text(_CONFIG.format(port=self.port, dir=self.directory))
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                ["setpriv", "--pdeathsig", "KILL", str(SSHD), "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if _banner(self.port):
                return True
            time.sleep(0.05)
        self._kill()
        return False

    def _kill(self) -> None:
        """SIGKILL the listener and every sshd of its connections; the workloads live on."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(psutil.Error):
            listener = psutil.Process(proc.pid)
            doomed = [listener] + [
                p for p in listener.children(recursive=True) if p.name().startswith("sshd")
            ]
            for p in doomed:
                with contextlib.suppress(psutil.Error):
                    p.kill()
            psutil.wait_procs(doomed, timeout=10)
        proc.wait(10)

    @contextlib.contextmanager
    def outage(self) -> Iterator[None]:
        """The phone unreachable for the block: sshd and its connections are killed (the
        connection's socket closes, new ones are refused); the tasks run on. Afterwards sshd
        starts again on the same port and this returns once it answers.

        Raises:
            RuntimeError: sshd did not come back within 15 s.
        """
        self._kill()
        try:
            yield
        finally:
            if not self._launch():
                raise RuntimeError("sshd did not come back within 15 s")

    def stop(self) -> None:
        """Stop sshd, kill what the tasks left and remove the directory. Safe to call twice."""
        self._kill()
        _kill_tasks(self.home)
        shutil.rmtree(self.directory, ignore_errors=True)


def _start_ticks(pid: int) -> str:
    """Field 22 of ``/proc/<pid>/stat`` (start time in clock ticks), or "" when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _kill_group(pid: int, start: str) -> None:
    """SIGKILL the process group led by ``pid`` if that very process (same start) still runs."""
    if _start_ticks(pid) == start:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def _kill_tasks(home: Path) -> None:
    """SIGKILL the process groups of the watchers and workloads still running under ``home``
    (``pid`` / ``wpid`` files: pid and start time, so a reused pid is left alone)."""
    for pid_file in home.glob(".florete-agent/tasks/*/*pid"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid, start = pid_file.read_text().split()[:2]
            _kill_group(int(pid), start)


def _remove_stale() -> None:
    """Remove the directories of environments whose pytest process is gone."""
    for path in Path("/tmp").glob(PREFIX + "*"):
        pid = path.name.removeprefix(PREFIX)
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            _kill_tasks(path / "home")
            shutil.rmtree(path, ignore_errors=True)


_ENV: PhoneEnv | None = None


def environment() -> PhoneEnv:
    """The environment of this pytest process, started on first call and stopped at exit.

    Raises:
        RuntimeError: sshd did not start.
    """
    global _ENV
    if _ENV is None:
        _remove_stale()
        env = PhoneEnv(Path("/tmp") / f"{PREFIX}{os.getpid()}")
        env.prepare()
        atexit.register(env.stop)
        env.start()
        _ENV = env
    elif _ENV.proc is None or _ENV.proc.poll() is not None:
        _ENV.start()  # killed by a case: again, on the same port
    return _ENV


def unavailable() -> str | None:
    """Why the android cases cannot run here, or None (then sshd is started).

    Only missing software is a reason to skip; an sshd that is installed but does not start
    raises, so CI fails instead of skipping.
    """
    if not SSHD.exists():
        return f"openssh-server is not installed ({SSHD} missing; apt-get install openssh-server)"
    for tool in ("ssh-keygen", "setpriv"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    environment()
    return None


class Options(Mapping[str, Any]):
    """The runtime options of the conformance entry, resolved on first read (after
    :func:`unavailable` has started sshd)."""

    def __getitem__(self, key: str) -> Any:
        return environment().options()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(environment().options())

    def __len__(self) -> int:
        return len(environment().options())


def power_cut(handle: TaskHandle) -> None:
    """SIGKILL a task's watcher (with its log stampers) and its workload's process group at
    once, as a power cut would; wait until they are gone."""
    procs = []
    for key in ("pid", "wpid"):
        pid = int(handle.state[key])
        with contextlib.suppress(psutil.Error):
            procs.append(psutil.Process(pid))
        _kill_group(pid, str(handle.state[f"{key}_start"]))
    psutil.wait_procs(procs, timeout=10)


def outage() -> contextlib.AbstractContextManager[None]:
    """:meth:`PhoneEnv.outage` of this process's environment (conformance suite hook)."""
    return environment().outage()
