"""Finding a libpod API socket that answers, and running ``podman system service`` when needed.

Order (the ``socket`` and ``start_service`` options of the runtime):

1. ``socket`` set: that socket; if it does not answer and ``start_service`` is true, a service
   is started on that path.
2. ``socket`` unset: podman's default socket (``/run/podman/podman.sock`` as root,
   ``$XDG_RUNTIME_DIR/podman/podman.sock`` otherwise) if it answers; else the runtime's own
   socket ``<state dir>/podman.sock``, started when ``start_service`` is true.

A service this module starts (``podman system service --time=0 unix://PATH``, its own session,
output to ``<state dir>/podman-service.log``) is stopped by :meth:`PodmanService.close`. If the
agent dies first, the service keeps running with its pid in ``<state dir>/podman-service.pid``;
the next agent adopts it and stops it in turn. Containers never depend on the service: each is
watched by its own conmon.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from agent.errors import RuntimeUnavailableError
from wri_plugins.podman.libpod import ApiUnreachableError, LibpodClient, Query

_log = logging.getLogger(__name__)

ROOT_SOCKET = Path("/run/podman/podman.sock")
REQUEST_TIMEOUT = 30.0  # seconds an API request may take (long polls excepted)
START_TIMEOUT = 20.0  # seconds a new service may take to answer
STOP_TIMEOUT = 10.0  # seconds a service may take to exit after SIGTERM
POLL = 0.05  # seconds between pings while a service starts
#: Longest path a Unix socket address can hold (``sun_path`` is 108 bytes with the NUL).
MAX_SOCKET_PATH = 107
SERVICE_LOG = "podman-service.log"
SERVICE_PID = "podman-service.pid"


def default_socket() -> Path:
    """podman's own default API socket for this user."""
    if os.geteuid() == 0:
        return ROOT_SOCKET
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return Path(runtime_dir) / "podman" / "podman.sock"


def own_socket(state_dir: Path) -> Path:
    """``<state_dir>/podman.sock``, or a short path under the temp dir when that is too long."""
    path = state_dir / "podman.sock"
    if len(str(path).encode()) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"florete-podman-{digest}" / "podman.sock"


class PodmanService:
    """The libpod API the runtime talks to; see the module docstring.

    Args:
        state_dir: the runtime's state dir (own socket, service log and pid file).
        socket: the ``socket`` option, or None.
        start: the ``start_service`` option.
        podman: the podman executable (name on PATH or path).
        containers_conf: a containers.conf for a started service (``CONTAINERS_CONF``), or None.
    """

    def __init__(
        self,
        state_dir: Path,
        socket: str | None,
        start: bool,
        podman: str,
        containers_conf: str | None,
    ) -> None:
        self._state_dir = state_dir
        self._configured = Path(socket) if socket else None
        self._start = start
        self._podman = podman
        self._containers_conf = containers_conf
        self._client: LibpodClient | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._adopted: psutil.Process | None = None
        self._lock = asyncio.Lock()

    @property
    def socket(self) -> Path | None:
        """The socket in use, or None before the first successful :meth:`client`."""
        return self._client.socket_path if self._client else None

    def broken(self) -> None:
        """Forget the socket after a failed request: the next :meth:`client` looks again."""
        self._client = None

    async def client(self) -> LibpodClient:
        """A client of an API that answered, starting a service if needed and allowed.

        Raises:
            RuntimeUnavailableError: no API answers and none could be started; the message
                says why (podman not installed, start not allowed, service failed).
        """
        if self._client is not None:
            return self._client
        async with self._lock:
            if self._client is None:
                self._client = await self._find_or_start()
            return self._client

    async def call(
        self,
        method: str,
        path: str,
        *,
        query: Query | None = None,
        body: Any = None,
        long_poll: bool = False,
    ) -> Any:
        """One JSON request (see :meth:`LibpodClient.json`), bounded by :data:`REQUEST_TIMEOUT`
        unless it is a long poll. When the socket refuses the connection, the API is looked for
        again (or restarted, see :meth:`client`) and the request sent once more.

        Raises:
            RuntimeUnavailableError: no API answers, or not within :data:`REQUEST_TIMEOUT`.
            LibpodError: the API answered with an error.
            RemoteProtocolError: the answer is not HTTP or not JSON.
        """
        for attempt in (1, 2):
            client = await self.client()
            try:
                async with asyncio.timeout(None if long_poll else REQUEST_TIMEOUT):
                    return await client.json(method, path, query=query, body=body)
            except ApiUnreachableError:
                self.broken()  # never reached podman: look again (or restart it) once
                if attempt == 2:
                    raise
            except RuntimeUnavailableError:
                self.broken()
                raise
            except TimeoutError:
                self.broken()
                raise RuntimeUnavailableError(
                    f"podman API at {client.socket_path} did not answer {method} {path} "
                    f"within {REQUEST_TIMEOUT:g}s"
                ) from None
        raise AssertionError("unreachable")

    async def find(self) -> str | None:
        """Look for an API that answers, without starting a service.

        Returns:
            None when a client is ready (an API answered); else the sentence :meth:`client`
            would fail with, or ``"start"`` when it would start a service on first use.
        """
        if self._client is not None:
            return None
        own = self._configured or own_socket(self._state_dir)
        candidates = [own] if self._configured else [default_socket(), own]
        for path in candidates:
            client = LibpodClient(path)
            if await client.ping():
                if path == own:
                    self._adopt(path)
                self._client = client
                return None
        if shutil.which(self._podman) is None:
            return f"podman is not installed (no executable {self._podman!r} on PATH)"
        if not self._start:
            return "no libpod API answers, and runtimes.podman.start_service is false"
        return "start"

    async def _find_or_start(self) -> LibpodClient:
        missing = await self.find()
        if missing == "start":
            binary = shutil.which(self._podman)
            if binary is not None:
                return await self._spawn(binary, self._configured or own_socket(self._state_dir))
            missing = f"podman is not installed (no executable {self._podman!r} on PATH)"
        if missing is not None or self._client is None:
            raise RuntimeUnavailableError(missing or "no libpod API answers")
        _log.debug("podman API at %s answers", self._client.socket_path)
        return self._client

    def _adopt(self, path: Path) -> None:
        """Take over a service an earlier agent started on our socket (from its pid file)."""
        if self._process is not None and self._process.poll() is None:
            return
        try:
            record = json.loads((self._state_dir / SERVICE_PID).read_text())
            proc = psutil.Process(int(record["pid"]))
            if str(path) in " ".join(proc.cmdline()) and proc.create_time() == record["ctime"]:
                self._adopted = proc
                _log.info("adopting podman service pid %d on %s", proc.pid, path)
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            pass

    async def _spawn(self, binary: str, path: Path) -> LibpodClient:
        """Start ``podman system service`` on ``path`` and wait until it answers."""
        await self._stop_own()
        log_path = self._state_dir / SERVICE_LOG
        self._process = await asyncio.to_thread(self._popen, binary, path, log_path)
        _log.info("started podman system service pid %d on %s", self._process.pid, path)
        client = LibpodClient(path)
        deadline = time.monotonic() + START_TIMEOUT
        while not await client.ping(1.0):
            code = self._process.poll()
            if code is not None or time.monotonic() > deadline:
                tail = _last_line(log_path)
                await self._stop_own()
                what = f"exited with code {code}" if code is not None else "did not answer"
                raise RuntimeUnavailableError(
                    f"podman system service on {path} {what}: {tail or 'no output'} "
                    f"(see {log_path})"
                )
            await asyncio.sleep(POLL)
        return client

    def _popen(self, binary: str, path: Path, log_path: Path) -> subprocess.Popen[bytes]:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        env = dict(os.environ)
        if self._containers_conf:
            env["CONTAINERS_CONF"] = self._containers_conf
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                [binary, "system", "service", "--time=0", f"unix://{path}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,  # a Ctrl-C at the agent's terminal is not for it
            )
        with contextlib.suppress(psutil.Error, OSError):
            record = {"pid": proc.pid, "ctime": psutil.Process(proc.pid).create_time()}
            (self._state_dir / SERVICE_PID).write_text(json.dumps(record))
        return proc

    async def _stop_own(self) -> None:
        """Stop the service this object started or adopted (SIGTERM, then SIGKILL)."""
        proc, self._process = self._process, None
        adopted, self._adopted = self._adopted, None
        if proc is not None:
            await asyncio.to_thread(_terminate, proc)
        if adopted is not None:
            await asyncio.to_thread(_terminate_other, adopted)
        if proc is not None or adopted is not None:
            with contextlib.suppress(OSError):
                (self._state_dir / SERVICE_PID).unlink()

    async def close(self) -> None:
        """Stop an own service; containers keep running (each has its conmon)."""
        self._client = None
        await self._stop_own()


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _terminate_other(proc: psutil.Process) -> None:
    with contextlib.suppress(psutil.Error):
        proc.terminate()
        _, alive = psutil.wait_procs([proc], timeout=STOP_TIMEOUT)
        for p in alive:
            p.kill()


def _last_line(path: Path) -> str:
    try:
        lines = path.read_bytes()[-4096:].decode("utf-8", "replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1] if lines else ""
