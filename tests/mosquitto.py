"""Real mosquitto brokers for tests and benchmarks, started from a config file of their own.

A :class:`Mosquitto` listens on ``127.0.0.1`` on a free port, or, given a
:class:`tests.netbed.NetNode`, inside that node's namespace on port 1883 of every address there
(the namespace's own loopback included). It never runs as a system service; :meth:`close`
kills it (and a :class:`~tests.netbed.NetBed` kills whatever runs in its namespaces anyway).
mosquitto_pub and mosquitto_sub, the reference clients, publish and subscribe.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from tests.netbed import NetNode

__all__ = ["Mosquitto", "Subscriber", "mosquitto_available"]


def mosquitto_available() -> str | None:
    """None when mosquitto and its clients are installed, else the reason (for a skip)."""
    for tool in ("mosquitto", "mosquitto_pub", "mosquitto_sub"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed (apt install mosquitto mosquitto-clients)"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Mosquitto:
    """One broker.

    Args:
        workdir: directory for its config, log and persistence file.
        node: run inside this namespace (listening on every address, port 1883); else on
            127.0.0.1 on a free port.
        persistence: keep sessions and queued messages across a clean restart (SIGTERM).
        extra: more lines for mosquitto.conf (a ``connection`` bridge, say).
        anonymous: allow clients without a user name.
        listener: more lines for the listener (``certfile``, ``password_file``, ...).
        client: more arguments of mosquitto_pub/sub to reach it (``--cafile``, ``-u``, ``-P``).
    """

    def __init__(
        self,
        workdir: Path,
        node: NetNode | None = None,
        *,
        persistence: bool = True,
        extra: str = "",
        anonymous: bool = True,
        listener: str = "",
        client: Sequence[str] = (),
    ) -> None:
        self.workdir = workdir
        self.node = node
        self.host = "127.0.0.1"
        self.port = 1883 if node is not None else _free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        self.client = list(client)
        bind = f"listener {self.port}" if node is not None else f"listener {self.port} {self.host}"
        self.config = workdir / "mosquitto.conf"
        self.config.write_text(
            f"{bind}\n{listener}\n"
            f"allow_anonymous {'true' if anonymous else 'false'}\n"
            "user root\n"
            f"persistence {'true' if persistence else 'false'}\n"
            f"persistence_location {workdir}/\n"
            "max_queued_messages 1000000\n"
            "max_inflight_messages 100\n"
            "log_type error\nlog_type warning\nlog_type notice\nlog_type information\n"
            "connection_messages true\n"
            f"{extra}\n"
        )
        self.log_path = workdir / "mosquitto.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``mqtt://host:port`` as the agent in the same namespace reaches it."""
        return f"mqtt://{self.host}:{self.port}"

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run where the broker is (inside its namespace, if any)."""
        return self.node.argv(argv) if self.node is not None else list(argv)

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it accepts a client.

        Raises:
            RuntimeError: it exited or did not listen within ``timeout`` seconds.
        """
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv(["mosquitto", "-c", str(self.config)]), stdout=log, stderr=log
            )
        deadline = time.monotonic() + timeout
        while True:
            probe = subprocess.run(
                self.argv(
                    [
                        "mosquitto_pub",
                        *self.client_args(),
                        "-t",
                        "probe",
                        "-m",
                        "x",
                        "-i",
                        f"probe-{time.monotonic_ns()}",
                    ]
                ),
                capture_output=True,
                timeout=10,
            )
            if probe.returncode == 0:
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start:\n{self.log()}")
            time.sleep(0.05)

    def client_args(self) -> list[str]:
        """``-h HOST -p PORT`` for mosquitto_pub/sub run where the broker is."""
        return ["-h", self.host, "-p", str(self.port), *self.client]

    def log(self) -> str:
        """The broker's log so far."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop the broker (SIGTERM saves its persistence file; SIGKILL loses it)."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def close(self) -> None:
        """Kill the broker; idempotent."""
        self.stop(signal.SIGKILL)

    def publish(self, topic: str, lines: Sequence[str], qos: int = 1, retain: bool = False) -> None:
        """Publish one message per line with mosquitto_pub (``-l``), in order."""
        argv = ["mosquitto_pub", *self.client_args(), "-q", str(qos), "-t", topic, "-l"]
        if retain:
            argv.append("-r")
        subprocess.run(
            self.argv(argv),
            input="".join(f"{line}\n" for line in lines).encode(),
            check=True,
            capture_output=True,
            timeout=300,
        )

    def publish_one(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        """Publish one message (any bytes, from stdin) with mosquitto_pub."""
        argv = ["mosquitto_pub", *self.client_args(), "-q", str(qos), "-t", topic]
        argv.append("-s" if payload else "-n")  # -n: a zero-length payload
        if retain:
            argv.append("-r")
        subprocess.run(self.argv(argv), input=payload, check=True, capture_output=True, timeout=30)

    def subscribe(self, pattern: str, out: Path, qos: int = 1, client_id: str = "") -> Subscriber:
        """Start mosquitto_sub writing ``topic payload`` lines to ``out``; with ``client_id`` a
        persistent session (it survives broker restarts with persistence)."""
        argv = ["mosquitto_sub", *self.client_args(), "-q", str(qos), "-v", "-t", pattern]
        if client_id:
            argv += ["-c", "-i", client_id]
        return Subscriber(self.argv(argv), out)


class Subscriber:
    """A running mosquitto_sub and the file it writes."""

    def __init__(self, argv: list[str], out: Path) -> None:
        self.out = out
        self._file: IO[bytes] = out.open("wb")
        self.process = subprocess.Popen(argv, stdout=self._file, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # let it subscribe before the test publishes

    def lines(self) -> list[str]:
        """Complete lines received so far."""
        text = self.out.read_text(errors="replace")
        return text.split("\n")[:-1]  # only "\n" ends a line (binary payloads hold others)

    def payloads(self, topic: str | None = None) -> list[str]:
        """Payloads received so far (of ``topic`` only, when given)."""
        found = []
        for line in self.lines():
            t, _, payload = line.partition(" ")
            if topic is None or t == topic:
                found.append(payload)
        return found

    def wait(self, predicate: Any, timeout: float, what: str) -> None:
        """Poll until ``predicate(self)`` holds."""
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.1)

    def close(self) -> None:
        """Stop mosquitto_sub."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._file.close()
