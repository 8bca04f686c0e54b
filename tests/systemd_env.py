"""A real systemd user manager for the tests (../shared/REAL-COMPONENTS.md, systemd route 1).

PID 1 here is not systemd, so the tests start ``systemd --user`` themselves:

* in a private mount namespace (``unshare -m --propagation private``) with a tmpfs on
  ``/run/systemd`` holding ``/run/systemd/system`` (what sd_booted(3) checks), so the manager
  believes the host was booted with systemd and nothing outside the namespace sees the tmpfs;
* in cgroups of its own (``<hierarchy>/florete-test-systemd-<pytest pid>`` in the v2 tree and
  the ``name=systemd`` v1 hierarchy on a hybrid host), where it creates its units' cgroups;
* as **root**, with ``XDG_RUNTIME_DIR=/run/florete-test-systemd-<pid>``: a root user manager, like
  ``user@0.service``. Not as a test user: the units must read and write the pytest tmp dirs
  (working dirs, log files), which belong to root and are mode 0700, and in production the
  system manager runs units as root too. Root then connects to the manager's own bus (the
  dbus-daemon that ``dbus.socket`` starts, from dbus-user-session) with EXTERNAL auth as uid 0,
  the bus owner. (A bus of another user would refuse uid 0: dbus-daemon's session bus admits
  only its owner.)
* with ``--unit=dbus.socket``: only the bus socket, none of root's ``default.target`` units
  (gpg-agent sockets, tmpfiles cleaning of root's home).

The manager is started once per pytest process, on first use (:func:`manager`; the conformance
suite asks through :func:`unavailable`), and stopped at exit (``systemctl --user exit``, then
SIGKILL, then the cgroups are emptied and removed). It runs under ``setpriv --pdeathsig KILL``,
so it dies with pytest even on SIGKILL, and :func:`manager` first removes what such a run left
behind (cgroups and runtime dirs whose pytest process is gone).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from wri_plugins.api import TaskHandle

SYSTEMD = Path("/lib/systemd/systemd")
DBUS_SOCKET_UNIT = Path("/usr/lib/systemd/user/dbus.socket")
PREFIX = "florete-test-systemd-"
CGROUP_ROOT = Path("/sys/fs/cgroup")
START_TIMEOUT = 20.0  # seconds for the manager and its bus to come up
STOP_TIMEOUT = 15.0  # seconds for `systemctl --user exit` before SIGKILL

#: Dies with pytest (even on SIGKILL), in a mount namespace of its own.
_LAUNCH = ("setpriv", "--pdeathsig", "KILL", "unshare", "-m", "--propagation", "private")
_SCRIPT = """
set -e
mkdir -p /run/systemd
mount -t tmpfs -o mode=0755 tmpfs /run/systemd
mkdir /run/systemd/system
for dir in $CGROUPS; do
    mkdir -p "$dir"
    echo $$ > "$dir/cgroup.procs"
done
exec "$SYSTEMD" --user --unit=dbus.socket
"""


def _hierarchies(root: Path = CGROUP_ROOT) -> list[Path]:
    """Where the manager needs a cgroup: the v2 tree and, on hybrid hosts, ``name=systemd``."""
    if (root / "cgroup.controllers").exists():
        return [root]
    return [p for p in (root / "unified", root / "systemd") if p.is_dir()]


def unavailable() -> str | None:
    """Why a systemd user manager cannot be started here, or None (then it is started).

    Only missing software is a reason to skip; a manager that is installed but does not come up
    raises, so CI fails instead of skipping.

    Raises:
        RuntimeError: the manager did not start (the message holds its output).
    """
    if not SYSTEMD.exists():
        return f"systemd is not installed ({SYSTEMD} missing; apt-get install systemd)"
    if not DBUS_SOCKET_UNIT.exists():
        return f"dbus-user-session is not installed ({DBUS_SOCKET_UNIT} missing)"
    for tool in ("unshare", "setpriv", "systemctl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if os.geteuid() != 0:
        return "starting a systemd manager in its own mount namespace needs root"
    manager()
    return None


class SystemdManager:
    """One ``systemd --user`` manager (see the module docstring).

    Args:
        name: its cgroups' and runtime dir's name.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.runtime_dir = Path("/run") / name
        self.cgroups = [h / name for h in _hierarchies()]
        self.log = Path("/run") / f"{name}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bus_address(self) -> str:
        """The D-Bus address of the manager's bus (for the runtime option ``bus_address``)."""
        return f"unix:path={self.runtime_dir}/bus"

    def env(self) -> dict[str, str]:
        """Environment for ``systemctl --user`` and ``busctl --user`` to reach this manager."""
        return {
            "PATH": os.environ.get("PATH", os.defpath),
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "DBUS_SESSION_BUS_ADDRESS": self.bus_address,
        }

    def systemctl(self, *args: str, check: bool = True) -> str:
        """Run ``systemctl --user ARGS`` against this manager; returns stdout.

        Raises:
            subprocess.CalledProcessError: it failed and ``check`` is set.
        """
        done = subprocess.run(
            ["systemctl", "--user", *args],
            env=self.env(),
            capture_output=True,
            timeout=STOP_TIMEOUT,
            check=check,
        )
        return done.stdout.decode()

    def start(self) -> None:
        """Start the manager and wait until its bus answers.

        Raises:
            RuntimeError: it exited or did not answer within 20 s (with its output).
        """
        self.runtime_dir.mkdir(mode=0o700, exist_ok=True)
        env = {
            **self.env(),
            "HOME": "/root",
            "SYSTEMD": str(SYSTEMD),
            "CGROUPS": " ".join(map(str, self.cgroups)),
        }
        with self.log.open("wb") as log:
            self._proc = subprocess.Popen(
                [*_LAUNCH, "sh", "-c", _SCRIPT],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        if self._until_answering():
            return
        output = self.log.read_text(errors="replace")
        self.stop()
        raise RuntimeError(f"systemd --user did not come up in {START_TIMEOUT}s: {output[-2000:]}")

    def _until_answering(self) -> bool:
        """Wait (at most 20 s) until systemd answers on the bus; False if it did not, or the
        manager exited."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self._proc is None or self._proc.poll() is not None:
                return False
            probe = subprocess.run(
                ["busctl", "--user", "get-property", "org.freedesktop.systemd1",
                 "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager", "Version"],
                env=self.env(), capture_output=True, timeout=10, check=False,
            )  # fmt: skip
            if probe.returncode == 0:
                return True
            time.sleep(0.05)
        return False

    @contextlib.contextmanager
    def bus_outage(self) -> Iterator[None]:
        """Take the manager's D-Bus away for the block: ``dbus.socket`` and ``dbus.service``
        stop (``systemctl`` talks over systemd's private socket), the bus socket refuses
        connections; systemd and its units run on. Afterwards the bus is started again and
        this returns once systemd answers on it.

        Raises:
            RuntimeError: systemd did not answer on the bus again within 20 s.
        """
        self.systemctl("stop", "dbus.socket", "dbus.service")
        try:
            yield
        finally:
            self.systemctl("start", "dbus.socket")
            if not self._until_answering():
                raise RuntimeError("systemd did not come back on its bus within 20 s")

    def stop(self) -> None:
        """Stop the manager (``systemctl --user exit``, SIGKILL after 15 s), remove its cgroups
        and runtime dir. Safe to call twice."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                self.systemctl("exit", check=False)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        _remove_cgroups(self.cgroups)
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        self.log.unlink(missing_ok=True)

    def power_cut(self, handle: TaskHandle) -> None:
        """Make a task's unit vanish without an exit record: SIGKILL all its processes, then
        reset and unload it (what a reboot does to a transient unit)."""
        unit = str(handle.state["unit"])
        self.systemctl("kill", "--kill-whom=all", "--signal=SIGKILL", unit, check=False)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.systemctl("show", "-p", "MainPID", "--value", unit).strip() in ("0", ""):
                break
            time.sleep(0.02)
        self.systemctl("reset-failed", unit, check=False)


def _remove_cgroups(dirs: list[Path]) -> None:
    """SIGKILL every process in the cgroup trees and remove them, deepest first (5 s at most)."""
    deadline = time.monotonic() + 5
    for top in dirs:
        while top.exists() and time.monotonic() < deadline:
            tree = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
            for cgroup in [*tree, top]:
                with contextlib.suppress(OSError, ValueError):
                    for pid in (cgroup / "cgroup.procs").read_text().split():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(int(pid), signal.SIGKILL)
                with contextlib.suppress(OSError):
                    cgroup.rmdir()
            if top.exists():
                time.sleep(0.05)


def _remove_stale() -> None:
    """Remove cgroups and runtime dirs of managers whose pytest process is gone."""
    found = [p for h in _hierarchies() for p in h.glob(PREFIX + "*")]
    found += list(Path("/run").glob(PREFIX + "*"))
    for path in found:
        pid = path.name.removeprefix(PREFIX).removesuffix(".log")
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            if path.is_dir() and str(path).startswith(str(CGROUP_ROOT)):
                _remove_cgroups([path])
            elif path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


_MANAGER: SystemdManager | None = None


def manager() -> SystemdManager:
    """The manager of this pytest process, started on first call and stopped at exit."""
    global _MANAGER
    if _MANAGER is None:
        _remove_stale()
        started = SystemdManager(PREFIX + str(os.getpid()))
        started.start()
        atexit.register(started.stop)
        _MANAGER = started
    return _MANAGER


def bus_address() -> str:
    """The bus address the manager of this pytest process has (or will have once started)."""
    return SystemdManager(PREFIX + str(os.getpid())).bus_address


def power_cut(handle: TaskHandle) -> None:
    """:meth:`SystemdManager.power_cut` on this process's manager (conformance suite hook)."""
    manager().power_cut(handle)


def bus_outage() -> contextlib.AbstractContextManager[None]:
    """:meth:`SystemdManager.bus_outage` on this process's manager (conformance suite hook)."""
    return manager().bus_outage()


def require_manager() -> SystemdManager:
    """The manager for a test that needs one; skips the test when systemd is not installed."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    return manager()
