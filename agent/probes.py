"""Container probes: exec, httpGet and tcpSocket handlers, and the threshold logic.

Semantics follow the Kubernetes documentation ("Configure Liveness, Readiness and Startup Probes")
and the kubelet's prober (``pkg/kubelet/prober``): a probe runs every ``periodSeconds`` after
``initialDelaySeconds``, each attempt bounded by ``timeoutSeconds``; the result flips to failure
after ``failureThreshold`` consecutive failures and back to success after ``successThreshold``
consecutive successes. httpGet succeeds on a status from 200 to 399; tcpSocket when the connection
opens; exec when the command exits 0.

For host processes there is no pod IP of its own, so httpGet and tcpSocket default to
``127.0.0.1`` (the workload shares the host's network); a probe never leaves the machine unless its
manifest names a host.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import h11

from agent.podspec import ExecAction, HTTPGetAction, Probe, TCPSocketAction

DEFAULT_HOST = "127.0.0.1"
#: Bytes of an httpGet response read at most (the kubelet reads 10 KiB of a probe's body).
MAX_RESPONSE_BYTES = 10 * 1024
USER_AGENT = "kube-probe/florete-agent"

ExecFn = Callable[[tuple[str, ...]], Awaitable[tuple[int, bytes]]]


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of one probe attempt.

    Attributes:
        success: the attempt passed.
        message: why it failed (empty on success), as shown in ``Unhealthy`` events.
    """

    success: bool
    message: str = ""


@dataclass
class ProbeTracker:
    """Consecutive-result thresholds of one probe.

    Args:
        success_threshold: consecutive successes that make the result a success.
        failure_threshold: consecutive failures that make the result a failure.
        healthy: the result before any attempt.
    """

    success_threshold: int
    failure_threshold: int
    healthy: bool
    _successes: int = 0
    _failures: int = 0

    def record(self, success: bool) -> bool:
        """Record one attempt.

        Returns:
            True when this attempt changed :attr:`healthy`.
        """
        if success:
            self._successes += 1
            self._failures = 0
            flip = not self.healthy and self._successes >= self.success_threshold
        else:
            self._failures += 1
            self._successes = 0
            flip = self.healthy and self._failures >= self.failure_threshold
        if flip:
            self.healthy = not self.healthy
        return flip

    @property
    def failures(self) -> int:
        """Consecutive failures so far."""
        return self._failures


async def run_probe(probe: Probe, exec_fn: ExecFn, default_host: str = DEFAULT_HOST) -> ProbeResult:
    """Run one attempt of ``probe``, bounded by its ``timeout_seconds``.

    Args:
        probe: the probe.
        exec_fn: runs a command inside the container; returns (exit code, output).
        default_host: where httpGet and tcpSocket connect when the probe names no host: the
            pod's IP when it has its own network namespace, else ``127.0.0.1``.

    Returns:
        The result; a timeout is a failure with message ``"timeout after N s"``.
    """
    try:
        async with asyncio.timeout(probe.timeout_seconds):
            return await _attempt(probe, exec_fn, default_host)
    except TimeoutError:
        return ProbeResult(False, f"timeout after {probe.timeout_seconds} s")


async def _attempt(probe: Probe, exec_fn: ExecFn, default_host: str) -> ProbeResult:
    action = probe.action
    if isinstance(action, ExecAction):
        code, output = await exec_fn(action.command)
        if code == 0:
            return ProbeResult(True)
        text = output.decode(errors="replace").strip()
        return ProbeResult(False, f"command exited with {code}" + (f": {text}" if text else ""))
    if isinstance(action, TCPSocketAction):
        host = action.host or default_host
        try:
            _, writer = await asyncio.open_connection(host, action.port)
        except OSError as err:
            return ProbeResult(False, f"dial tcp {host}:{action.port}: {err.strerror or err}")
        writer.close()
        await writer.wait_closed()
        return ProbeResult(True)
    return await _http_get(action, default_host)


async def _http_get(action: HTTPGetAction, default_host: str) -> ProbeResult:
    host = action.host or default_host
    url = f"{action.scheme.lower()}://{host}:{action.port}{action.path}"
    context = None
    if action.scheme == "HTTPS":
        # The kubelet does not verify probe certificates either (it probes its own pods).
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    try:
        reader, writer = await asyncio.open_connection(host, action.port, ssl=context)
    except OSError as err:
        return ProbeResult(False, f"Get {url}: {err.strerror or err}")
    try:
        headers = [
            ("Host", f"{host}:{action.port}"),
            ("User-Agent", USER_AGENT),
            ("Connection", "close"),
            *action.http_headers,
        ]
        conn = h11.Connection(h11.CLIENT)
        writer.write(conn.send(h11.Request(method="GET", target=action.path, headers=headers)))
        writer.write(conn.send(h11.EndOfMessage()))
        await writer.drain()
        status = await _read_status(conn, reader)
    except (OSError, h11.ProtocolError) as err:
        return ProbeResult(False, f"Get {url}: {err}")
    finally:
        writer.close()
    if status is None:
        return ProbeResult(False, f"Get {url}: connection closed before a response")
    if 200 <= status < 400:
        return ProbeResult(True)
    return ProbeResult(False, f"HTTP probe failed with statuscode: {status}")


async def _read_status(conn: h11.Connection, reader: asyncio.StreamReader) -> int | None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(MAX_RESPONSE_BYTES)
            conn.receive_data(data)
            continue
        if isinstance(event, h11.Response):
            return event.status_code
        if isinstance(event, h11.ConnectionClosed):
            return None
