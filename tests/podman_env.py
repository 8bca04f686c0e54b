"""Real podman for the tests: configuration, an offline busybox image and a private API service.

Installs nothing: CI installs ``podman uidmap fuse-overlayfs slirp4netns runc busybox-static``
(see ../shared/REAL-COMPONENTS.md). Once per test process, on first use, :func:`environment`

* writes a containers.conf (runc, cgroupfs, ulimits: crun fails on cgroup v1 hybrid hosts),
* builds ``localhost/busybox:latest`` from busybox-static when it is missing (a rootfs with
  ``/bin/busybox`` and its applet links, ``podman import`` with ``CMD ["/bin/sh"]`` and
  ``ENV PATH=/bin``; no registry is reachable),
* starts ``podman system service`` on a socket in a private temp dir, stopped (and the dir
  removed) when the process exits; ``setpriv --pdeathsig`` stops it even if the test process is
  killed; after a case killed it (:func:`outage`) the next :func:`environment` starts it
  again on the same socket. It runs under catatonit as a subreaper: the conmons it
  double-forks are then reaped at once; on hosts whose PID 1 reaps orphans late, their zombies
  keep a pod's cgroup busy and make pod removal retry for 3 s.

:func:`unavailable` skips a case only when podman is not installed; any other setup failure is an
error, so CI really runs the podman cases.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from wri_plugins.api import TaskHandle

IMAGE = "localhost/busybox:latest"
BUSYBOX = Path("/bin/busybox")
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
"""
START_TIMEOUT = 20.0  # seconds the service may take to answer


@dataclass
class PodmanEnv:
    """The prepared environment.

    Attributes:
        directory: private temp dir (containers.conf, socket, service log).
        containers_conf: path of the containers.conf.
        socket: the API socket of the session's service.
        service: the service process (replaced when :func:`environment` restarts it).
    """

    directory: Path
    containers_conf: Path
    socket: Path
    service: subprocess.Popen[bytes]

    def env(self) -> dict[str, str]:
        """The process environment with ``CONTAINERS_CONF`` set, for podman commands."""
        return {**os.environ, "CONTAINERS_CONF": str(self.containers_conf)}

    def podman(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        """Run the podman CLI (local storage, not through the service) and capture its output.

        Raises:
            subprocess.CalledProcessError: it failed and ``check`` is set.
        """
        return subprocess.run(
            ["podman", *args], env=self.env(), capture_output=True, check=check, timeout=60
        )


_env: PodmanEnv | None = None


def unavailable() -> str | None:
    """Why the podman cases cannot run here, or None (and the environment is then ready).

    Only a missing podman is a reason; everything else raises.
    """
    if shutil.which("podman") is None:
        return (
            "podman is not installed (apt-get install -y podman uidmap fuse-overlayfs "
            "slirp4netns runc busybox-static)"
        )
    environment()
    return None


def environment() -> PodmanEnv:
    """The session's environment, prepared on first call (see the module docstring).

    Raises:
        RuntimeError: busybox-static is missing, the image cannot be built, or the service
            does not start.
    """
    global _env
    if _env is not None:
        if _env.service.poll() is not None:  # killed by a case: again, on the same socket
            _env.service = _start_service(_env.directory, _env.socket, _env.env())
        return _env
    directory = Path(tempfile.mkdtemp(prefix="florete-podman-"))
    conf = directory / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    sock = directory / "podman.sock"
    env = {**os.environ, "CONTAINERS_CONF": str(conf)}
    _build_image(env)
    _env = PodmanEnv(directory, conf, sock, _start_service(directory, sock, env))
    atexit.register(_teardown, _env)
    return _env


def _start_service(directory: Path, sock: Path, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start ``podman system service`` on ``sock`` and wait until it answers.

    Raises:
        RuntimeError: it exited or did not answer within 20 s (with its output).
    """
    log = directory / "service.log"
    reaper = ["catatonit", "--"] if shutil.which("catatonit") else []
    command = ["setpriv", "--pdeathsig", "TERM", *reaper, "podman", "system", "service"]
    with open(log, "ab") as out:
        service = subprocess.Popen(
            [*command, "--time=0", f"unix://{sock}"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + START_TIMEOUT
    while not ping(sock):
        if service.poll() is not None or time.monotonic() > deadline:
            _terminate(service)
            raise RuntimeError(f"podman system service did not start: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return service


@contextlib.contextmanager
def outage() -> Iterator[None]:
    """Kill the session's ``podman system service`` (SIGKILL, only the podman process: its
    reaper and the containers' conmons live on) for the block; the socket then refuses
    connections. Afterwards the service starts again on the same socket.

    Raises:
        RuntimeError: the service did not die within 10 s, or did not come back.
    """
    env = environment()
    launcher = psutil.Process(env.service.pid)
    for proc in [launcher, *launcher.children()]:
        with contextlib.suppress(psutil.Error):
            if proc.name() == "podman":
                proc.kill()
    try:
        env.service.wait(10)  # catatonit ends with its child
    except subprocess.TimeoutExpired:
        raise RuntimeError("podman system service did not die within 10 s") from None
    try:
        yield
    finally:
        environment()


def _build_image(env: Mapping[str, str]) -> None:
    """Build :data:`IMAGE` from busybox-static unless it exists."""
    exists = subprocess.run(["podman", "image", "exists", IMAGE], env=env, check=False)
    if exists.returncode == 0:
        return
    if not BUSYBOX.is_file():
        raise RuntimeError(f"{BUSYBOX} is missing: apt-get install -y busybox-static")
    with tempfile.TemporaryDirectory(prefix="florete-rootfs-") as root:
        bindir = Path(root) / "bin"
        bindir.mkdir()
        (Path(root) / "tmp").mkdir(mode=0o1777)
        shutil.copy2(BUSYBOX, bindir / "busybox")
        applets = subprocess.run(
            [str(BUSYBOX), "--list"], capture_output=True, check=True, text=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox":
                (bindir / applet).symlink_to("busybox")
        tar = subprocess.Popen(["tar", "-C", root, "-c", "."], stdout=subprocess.PIPE)
        changes = ["--change", 'CMD ["/bin/sh"]', "--change", "ENV PATH=/bin"]
        imported = subprocess.run(
            ["podman", "import", *changes, "-", IMAGE],
            stdin=tar.stdout,
            env=env,
            capture_output=True,
            check=False,
        )
        assert tar.stdout is not None
        tar.stdout.close()
        tar.wait()
        if imported.returncode != 0:
            raise RuntimeError(f"podman import failed: {imported.stderr.decode()[-2000:]}")


def ping(sock: Path, timeout: float = 1.0) -> bool:
    """Whether the libpod API on ``sock`` answers ``GET /_ping`` with 200 (blocking)."""
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(timeout)
            s.connect(str(sock))
            s.sendall(b"GET /_ping HTTP/1.1\r\nHost: podman\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _terminate(service: subprocess.Popen[bytes]) -> None:
    service.terminate()
    try:
        service.wait(10)
    except subprocess.TimeoutExpired:
        service.kill()
        service.wait()


def _teardown(env: PodmanEnv) -> None:
    _terminate(env.service)
    shutil.rmtree(env.directory, ignore_errors=True)


class Options(Mapping[str, Any]):
    """Runtime options of the conformance entry: the session service's socket, no own service.

    Resolved on first read, after :func:`unavailable` has prepared the environment.
    """

    def _data(self) -> dict[str, Any]:
        return {"socket": str(environment().socket), "start_service": False}

    def __getitem__(self, key: str) -> Any:
        return self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())


def power_cut(handle: TaskHandle) -> None:
    """SIGKILL a container's conmon and main process at once; wait until both are gone."""
    ref = str(handle.state.get("id") or "")
    out = environment().podman("inspect", "--format", "{{.State.ConmonPid}} {{.State.Pid}}", ref)
    procs = []
    for pid in map(int, out.stdout.split()):
        with contextlib.suppress(psutil.Error):
            if pid > 0:
                procs.append(psutil.Process(pid))
                os.kill(pid, signal.SIGKILL)
    psutil.wait_procs(procs, timeout=10)
