"""Logs and exec of a supernode pod that runs on another member, carried over the mesh.

A member asked for the log or an exec of a pod placed on another member forwards the request to
that member over their mutually authenticated session (:meth:`agent.mesh.Mesh.request`); the
pod's member answers only members of its Raft configuration. Mesh methods:

* ``supernode.log.open`` ``{"namespace", "name", "query"}`` -> ``{"stream"}``: open the pod's
  log with the query parameters of ``GET .../log`` (``container``, ``follow``, ``previous``,
  ``tailLines``, ``sinceSeconds``, ``timestamps``), served by the member's own log route.
* ``supernode.log.read`` ``{"stream", "offset", "wait"}`` -> ``{"data", "offset", "end"}``: the
  log's bytes from ``offset`` (what the caller has received so far), at most
  :data:`CHUNK_BYTES`; when there are none yet it waits up to ``wait`` seconds (a long poll).
  ``end`` says the log ended (or, when following, the container stopped).
* ``supernode.log.close`` ``{"stream"}``.
* ``supernode.exec`` ``{"namespace", "name", "container", "command"}`` -> ``{"exitCode",
  "output"}``: run a command to completion in the pod's container (the runtime's ``exec``).

Errors of the pod's member (no such pod, container not running, ...) come back in-band as
``{"error": {"status", "reason", "message"}}`` and are raised here as
:class:`RemoteStatusError` with the same HTTP status, so the caller sees what a local request
would have shown.

**Following over a lossy link.** A followed log is a series of reads, each saying how much the
caller has received: the pod's member keeps what it sent until a later read acknowledges it, so
a read whose answer is lost (a session that breaks and comes back, a timeout on a radio) is
simply asked again and no byte is lost or repeated. Reads that fail are retried with a backoff
(0.5 s doubling to 5 s) for up to :data:`IDLE_SECONDS`, as long as the pod's member keeps an
unread stream; after that the log ends. At most :data:`CHUNK_BYTES` travel per answer (about 7 s
on a 9600-baud radio), and the member reads the container's log no faster than it is fetched.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import (
    BadRequestError,
    FloreteError,
    NotFoundError,
    RemoteError,
    RemoteProtocolError,
)
from agent.identity import short_id
from agent.mesh import Mesh
from agent.rpc import STATUS_BUSY, RpcError, RpcTimeoutError
from agent.runtimes import RuntimeRegistry
from agent.session import SessionClosedError
from agent.store import Store
from wri_plugins.api import TaskHandle

__all__ = [
    "CHUNK_BYTES",
    "EXEC_TIMEOUT",
    "IDLE_SECONDS",
    "LogStreams",
    "RemoteStatusError",
    "open_remote_log",
    "remote_exec",
    "run_exec",
]

log = logging.getLogger(__name__)

CHUNK_BYTES = 8 * 1024
"""Log bytes per read answer."""
WAIT_SECONDS = 5.0
"""How long a read waits for new lines of a followed log before answering with none."""
READ_TIMEOUT = 30.0
"""Seconds a read may take beyond its wait (a slow radio) before it is asked again."""
IDLE_SECONDS = 60.0
"""A stream nobody read for this long is closed by the pod's member."""
MAX_STREAMS = 16
"""Log streams one member may keep open on another; opening more closes the least used."""
EXEC_TIMEOUT = 600.0
"""Longest time a proxied command may run, in seconds."""

LogOpener = Callable[[str, str, Mapping[str, list[str]]], Awaitable[AsyncIterator[bytes]]]
"""Opens a local pod's log: ``(namespace, name, query parameters) -> chunks``."""


class RemoteStatusError(RemoteError):
    """The pod's member refused a log or exec request; carries its HTTP status and reason."""

    code = "supernode_remote_status"

    def __init__(self, message: str, status: int, reason: str) -> None:
        super().__init__(message)
        self.http_status = status
        self.reason = reason


class MemberUnreachableError(RemoteError):
    """The member that runs the pod cannot be reached now."""

    code = "supernode_member_unreachable"
    reason = "ServiceUnavailable"
    http_status = 503


def _error(err: FloreteError) -> dict[str, Any]:
    return {"error": {"status": err.http_status, "reason": err.reason, "message": err.message}}


def _raise_for(answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise RemoteProtocolError("supernode proxy: the answer is not a map")
    error = answer.get("error")
    if isinstance(error, dict):
        status = error.get("status")
        raise RemoteStatusError(
            str(error.get("message", "")),
            status if isinstance(status, int) and 400 <= status < 600 else 500,
            str(error.get("reason", "InternalError")),
        )
    return answer


# --------------------------------------------------------------------------- the pod's member


@dataclass
class _Stream:
    peer: str
    chunks: AsyncIterator[bytes]
    used: float
    buffer: bytearray = field(default_factory=bytearray)
    base: int = 0  # log offset of buffer[0]
    pending: asyncio.Task[bytes] | None = None
    ended: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def close(self) -> None:
        if self.pending is not None:
            self.pending.cancel()
            with contextlib.suppress(BaseException):
                await self.pending
            self.pending = None
        if isinstance(self.chunks, AsyncGenerator):
            with contextlib.suppress(Exception):
                await self.chunks.aclose()
        self.ended = True


async def _next(chunks: AsyncIterator[bytes]) -> bytes:
    return await anext(chunks)


class LogStreams:
    """The log streams this member serves to others (see the module docstring).

    Args:
        opener: opens a local pod's log (this node's own log route).
        clock: monotonic seconds (tests pass their own).
    """

    def __init__(self, opener: LogOpener, clock: Callable[[], float] | None = None) -> None:
        self._opener = opener
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._streams: dict[int, _Stream] = {}
        self._ids = itertools.count(1)

    async def on_open(self, peer: str, body: Any) -> dict[str, Any]:
        """``supernode.log.open`` from member ``peer``."""
        await self._expire()
        if not isinstance(body, dict) or not isinstance(body.get("query"), dict):
            raise BadRequestError("supernode.log.open: expected {namespace, name, query}")
        query = {
            str(k): [str(v) for v in values]
            for k, values in body["query"].items()
            if isinstance(values, list)
        }
        try:
            chunks = await self._opener(str(body.get("namespace")), str(body.get("name")), query)
        except FloreteError as err:
            return _error(err)
        mine = sorted((s.used, i) for i, s in self._streams.items() if s.peer == peer)
        for _, old in mine[: max(0, len(mine) - MAX_STREAMS + 1)]:
            await self._streams.pop(old).close()
        stream_id = next(self._ids)
        self._streams[stream_id] = _Stream(peer, chunks, self._clock())
        return {"stream": stream_id}

    async def on_read(self, peer: str, body: Any) -> dict[str, Any]:
        """``supernode.log.read`` from member ``peer``."""
        await self._expire()
        if not isinstance(body, dict):
            raise BadRequestError("supernode.log.read: expected {stream, offset, wait}")
        stream = self._stream(peer, body.get("stream"))
        offset, wait = body.get("offset"), body.get("wait", 0)
        if not isinstance(offset, int) or not isinstance(wait, int | float):
            raise BadRequestError("supernode.log.read: offset and wait must be numbers")
        async with stream.lock:
            stream.used = self._clock()
            if not stream.base <= offset <= stream.base + len(stream.buffer):
                raise BadRequestError(
                    f"supernode.log.read: offset {offset} outside {stream.base}.."
                    f"{stream.base + len(stream.buffer)}"
                )
            del stream.buffer[: offset - stream.base]
            stream.base = offset
            deadline = self._clock() + min(max(float(wait), 0.0), WAIT_SECONDS)
            while not stream.ended and len(stream.buffer) < CHUNK_BYTES:
                if stream.pending is None:
                    stream.pending = asyncio.ensure_future(_next(stream.chunks))
                task = stream.pending
                timeout = 0.0 if stream.buffer else max(0.0, deadline - self._clock())
                done, _ = await asyncio.wait({task}, timeout=timeout)
                if not done:
                    break
                if stream.pending is not task or task.cancelled():
                    break  # the stream was closed meanwhile (close, eviction, shutdown)
                stream.pending = None
                try:
                    stream.buffer += task.result()
                except StopAsyncIteration:
                    stream.ended = True
                except (FloreteError, OSError) as err:
                    log.warning("log stream for %s ended: %s", short_id(peer), err)
                    stream.ended = True
            stream.used = self._clock()
            data = bytes(stream.buffer[:CHUNK_BYTES])
            return {
                "data": data,
                "offset": stream.base,
                "end": stream.ended and len(data) == len(stream.buffer),
            }

    async def on_close(self, peer: str, body: Any) -> None:
        """``supernode.log.close`` from member ``peer``."""
        stream_id = body.get("stream") if isinstance(body, dict) else None
        stream = self._streams.get(stream_id) if isinstance(stream_id, int) else None
        if stream is not None and stream.peer == peer:
            del self._streams[stream_id]  # type: ignore[arg-type]
            await stream.close()

    def _stream(self, peer: str, stream_id: Any) -> _Stream:
        stream = self._streams.get(stream_id) if isinstance(stream_id, int) else None
        if stream is None or stream.peer != peer:
            raise NotFoundError(
                f"log stream {stream_id} is closed (unread for {IDLE_SECONDS:g} s?)"
            )
        return stream

    async def _expire(self) -> None:
        limit = self._clock() - IDLE_SECONDS
        for stream_id in [i for i, s in self._streams.items() if s.used < limit]:
            stream = self._streams.pop(stream_id)
            if not stream.lock.locked():
                await stream.close()

    async def close_all(self) -> None:
        """Close every stream (the agent stops, or this node left the supernode)."""
        streams, self._streams = list(self._streams.values()), {}
        for stream in streams:
            await stream.close()

    def __len__(self) -> int:
        return len(self._streams)


async def run_exec(store: Store, runtimes: RuntimeRegistry, body: Any) -> dict[str, Any]:
    """``supernode.exec``: run a command to completion in a container of a local pod.

    Returns:
        ``{"exitCode": int, "output": bytes}`` (stdout and stderr together, as the runtime's
        ``exec`` returns them), or ``{"error": ...}`` with the status a local exec would give.
    """
    try:
        if not isinstance(body, dict):
            raise BadRequestError("supernode.exec: expected {namespace, name, container, command}")
        argv = body.get("command")
        if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
            raise BadRequestError("you must specify at least one command for the container")
        stored = store.get_pod(str(body.get("namespace")), str(body.get("name")))
        names = [c["name"] for c in stored.manifest["spec"]["containers"]]
        container = body.get("container") or names[0]
        if container not in names:
            raise BadRequestError(f"container {container} is not valid for pod {stored.name}")
        records = [r for r in store.tasks(stored.uid, container) if r.handle]
        if not records or records[-1].handle is None:
            raise BadRequestError(f'container "{container}" in pod "{stored.name}" is not running')
        runtime = runtimes.get(records[-1].runtime)
        if not runtime.capabilities.exec:
            raise BadRequestError(f"runtime {runtime.name} cannot exec into a container")
        handle = TaskHandle.from_json(records[-1].handle)
        async with asyncio.timeout(EXEC_TIMEOUT):
            result = await runtime.exec(handle, tuple(argv))
    except TimeoutError:
        return _error(BadRequestError(f"command did not finish within {EXEC_TIMEOUT:.0f} s"))
    except FloreteError as err:
        return _error(err)
    log.info("exec for a member in %s/%s/%s: %s", stored.namespace, stored.name, container, argv[0])
    return {"exitCode": result.exit_code, "output": result.output}


# --------------------------------------------------------------------------- the asking member


async def _ask(mesh: Mesh, node_id: str, method: str, body: Any, timeout: float) -> Any:  # noqa: ASYNC109
    try:
        return await mesh.request(node_id, method, body, timeout)
    except NotFoundError as err:  # no session to it
        raise MemberUnreachableError(
            f"member {short_id(node_id)} that runs the pod is not reachable: {err}"
        ) from None


class RemoteLog:
    """A pod's log on another member, opened (see :func:`open_remote_log`)."""

    def __init__(self, mesh: Mesh, node_id: str, stream: int) -> None:
        self.mesh = mesh
        self.node_id = node_id
        self.stream = stream

    async def chunks(self) -> AsyncIterator[bytes]:
        """The log's bytes as they come; closes the stream on the member when done (also
        when the caller stops early).

        Raises:
            RemoteStatusError, MemberUnreachableError: the stream failed for good.
        """
        offset, backoff, failing_since = 0, 0.5, None
        loop = asyncio.get_running_loop()
        try:
            while True:
                body = {"stream": self.stream, "offset": offset, "wait": WAIT_SECONDS}
                try:
                    answer = _raise_for(
                        await _ask(
                            self.mesh,
                            self.node_id,
                            "supernode.log.read",
                            body,
                            WAIT_SECONDS + READ_TIMEOUT,
                        )
                    )
                except (
                    RpcError,
                    RpcTimeoutError,
                    SessionClosedError,
                    MemberUnreachableError,
                ) as err:
                    if isinstance(err, RpcError) and err.status != STATUS_BUSY:
                        raise
                    # a timeout, a session that broke, a busy member: ask again
                    now = loop.time()
                    failing_since = failing_since if failing_since is not None else now
                    if now - failing_since > IDLE_SECONDS:
                        raise
                    log.debug("log read from %s: %s; again in %g s", self.node_id, err, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
                    continue
                failing_since, backoff = None, 0.5
                data = answer.get("data")
                if not isinstance(data, bytes) or answer.get("offset") != offset:
                    raise RemoteProtocolError("supernode.log.read: bad answer")
                offset += len(data)
                if data:
                    yield data
                if answer.get("end"):
                    return
        finally:
            with contextlib.suppress(FloreteError):
                await self.mesh.request(
                    self.node_id, "supernode.log.close", {"stream": self.stream}, 5.0
                )


async def open_remote_log(
    mesh: Mesh, node_id: str, namespace: str, name: str, query: Mapping[str, list[str]]
) -> RemoteLog:
    """Open the log of pod ``namespace/name`` on member ``node_id``.

    Raises:
        RemoteStatusError: the member refused (no such pod or container, ...), with its status.
        MemberUnreachableError: no session to the member.
        FloreteError: the request failed (e.g. :class:`agent.rpc.RpcTimeoutError`).
    """
    body = {"namespace": namespace, "name": name, "query": {k: list(v) for k, v in query.items()}}
    answer = _raise_for(await _ask(mesh, node_id, "supernode.log.open", body, READ_TIMEOUT))
    stream = answer.get("stream")
    if not isinstance(stream, int):
        raise RemoteProtocolError("supernode.log.open: bad answer")
    return RemoteLog(mesh, node_id, stream)


async def remote_exec(
    mesh: Mesh, node_id: str, namespace: str, name: str, container: str, argv: list[str]
) -> tuple[int, bytes]:
    """Run ``argv`` in a container of pod ``namespace/name`` on member ``node_id``.

    Returns:
        ``(exit code, output)``.

    Raises:
        RemoteStatusError: the member refused (no such container, not running, ...).
        MemberUnreachableError: no session to the member.
        FloreteError: the request failed or timed out.
    """
    body = {"namespace": namespace, "name": name, "container": container, "command": argv}
    answer = _raise_for(
        await _ask(mesh, node_id, "supernode.exec", body, EXEC_TIMEOUT + READ_TIMEOUT)
    )
    code, output = answer.get("exitCode"), answer.get("output")
    if not isinstance(code, int) or not isinstance(output, bytes):
        raise RemoteProtocolError("supernode.exec: bad answer")
    return code, output
