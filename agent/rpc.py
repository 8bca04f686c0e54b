"""Request/response and publish/subscribe over one :class:`~agent.session.SecureSession`.

An :class:`Endpoint` owns one dispatcher task that reads the session and routes what arrives:

* :class:`~agent.messages.Request` to the handler registered for its method, each in its own task
  (so a handler may itself call the peer); the handler's result or error goes back as one
  :class:`~agent.messages.Response`. Statuses are HTTP-like: 200 ok, 404 unknown method, a
  :class:`~agent.errors.FloreteError`'s ``http_status`` for one raised by the handler, 500 for
  any other failure, 503 when :data:`MAX_HANDLERS` handlers are already running.
* :class:`~agent.messages.Response` to the pending :meth:`Endpoint.request` with its id.
* :class:`~agent.messages.Subscribe` / :class:`~agent.messages.Unsubscribe` into the set of the
  peer's patterns: :meth:`Endpoint.publish` sends only what the peer asked for.
* :class:`~agent.messages.Publish` to the local callbacks whose patterns match the topic.

The supernode's Raft transport and the MQTT bridge build on this.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

from agent.errors import (
    FloreteError,
    LocalProtocolError,
    RemoteError,
    RemoteProtocolError,
)
from agent.identity import short_id
from agent.messages import (
    Message,
    Publish,
    Request,
    Response,
    Subscribe,
    Unsubscribe,
    topic_matches,
    validate_pattern,
    validate_topic,
)
from agent.session import SecureSession, SessionClosedError

__all__ = [
    "MAX_HANDLERS",
    "MAX_PEER_SUBSCRIPTIONS",
    "Endpoint",
    "EndpointMetrics",
    "PublishCallback",
    "RequestHandler",
    "RpcError",
    "RpcTimeoutError",
]

log = logging.getLogger(__name__)

MAX_HANDLERS = 32
"""Requests served at once per endpoint; beyond, the peer gets status 503 (and beyond twice as
many, requests are dropped unanswered)."""
MAX_PEER_SUBSCRIPTIONS = 256
"""Patterns a peer may subscribe to; further Subscribe messages are dropped."""
_TOPIC_CACHE = 256  # topics whose pattern matches are remembered, per direction

STATUS_OK = 200
STATUS_NOT_FOUND = 404
STATUS_INTERNAL = 500
STATUS_BUSY = 503

RequestHandler = Callable[[Any], Awaitable[Any]]
"""Serves one method: ``await handler(body) -> result body`` (plain data)."""
PublishCallback = Callable[[str, Any], None]
"""Receives a publication: ``callback(topic, body)``; called in the dispatcher, must not block."""


class RpcError(RemoteError):
    """The peer answered a request with an error status.

    Attributes:
        status: the Response status (HTTP-like, e.g. 404 unknown method, 500 handler failed).
    """

    code = "rpc_error"

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RpcTimeoutError(RemoteError):
    """No response to a request arrived within its timeout."""

    code = "rpc_timeout"


@dataclasses.dataclass
class EndpointMetrics:
    """Counters of an endpoint.

    Attributes:
        requests_sent: requests this side made.
        requests_served: requests answered with any status.
        timeouts: requests that timed out.
        dropped: messages ignored: late responses, unsolicited publications, requests beyond the
            busy limit, subscriptions beyond :data:`MAX_PEER_SUBSCRIPTIONS`, stray pairing ones.
    """

    requests_sent: int = 0
    requests_served: int = 0
    timeouts: int = 0
    dropped: int = 0


class Endpoint:
    """RPC and pub/sub with the peer of one established session.

    Use as an async context manager; leaving it closes the session (the peer gets a Goodbye)::

        async with Endpoint(session) as ep:
            ep.on_request("echo", echo)
            answer = await ep.request("status", None, timeout=5.0)

    Args:
        session: an established session; the endpoint owns it from here on.
        max_handlers: see :data:`MAX_HANDLERS`.
    """

    def __init__(self, session: SecureSession, *, max_handlers: int = MAX_HANDLERS) -> None:
        self._session = session
        self._max_handlers = max_handlers
        self._handlers: dict[str, RequestHandler] = {}
        self._pending: dict[int, tuple[str, asyncio.Future[Any]]] = {}
        self._next_id = 0
        self._subscriptions: dict[str, list[PublishCallback]] = {}
        self._peer_patterns: set[str] = set()
        # Topic -> does a peer pattern match / which local patterns match; cleared whenever a
        # subscription changes (a stream of publications mostly repeats a few topics).
        self._peer_wants: dict[str, bool] = {}
        self._local_matches: dict[str, list[str]] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._closed_reason: str | None = None
        self.metrics = EndpointMetrics()

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> Endpoint:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def start(self) -> None:
        """Start the dispatcher task (``async with`` does it)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._dispatch(), name=f"rpc-{short_id(self._session.peer_id)}"
            )

    async def close(self) -> None:
        """Close the session and stop the dispatcher; pending requests fail with
        :class:`~agent.session.SessionClosedError`. Idempotent."""
        await self._session.close()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        """Wait until the dispatcher stopped (the session closed, from either side)."""
        if self._task is not None:
            await self._task

    @property
    def closed(self) -> bool:
        """True once the dispatcher stopped."""
        return self._closed_reason is not None

    @property
    def peer_patterns(self) -> frozenset[str]:
        """The patterns the peer subscribed to."""
        return frozenset(self._peer_patterns)

    # ----------------------------------------------------------------- RPC

    def on_request(self, method: str, handler: RequestHandler) -> None:
        """Serve ``method`` with ``handler`` (replacing any earlier one).

        Args:
            method: 1..64 characters, e.g. ``"raft.append"``.
            handler: ``await handler(body)`` returns the response body; raising a
                :class:`~agent.errors.FloreteError` answers with its ``http_status`` and message,
                raising anything else answers 500 (and logs the traceback here).
        """
        self._handlers[method] = handler

    async def request(
        self,
        method: str,
        body: Any = None,
        timeout: float = 10.0,  # noqa: ASYNC109 (a deadline per request, as the caller sets it)
    ) -> Any:
        """Call ``method`` on the peer and return its response body.

        Args:
            method: the method name.
            body: plain data (see :mod:`agent.messages`).
            timeout: seconds for sending and the answer together.

        Returns:
            The body of a 2xx response.

        Raises:
            RpcError: the peer answered with another status (404: no such method).
            RpcTimeoutError: no answer within ``timeout``.
            SessionClosedError: the session closed before the answer came.
            LocalProtocolError: the endpoint is not started or ``body`` cannot be encoded.
        """
        if self._task is None:
            raise LocalProtocolError("Endpoint.request before start()")
        if self._closed_reason is not None:
            raise SessionClosedError(self._closed_reason)
        request_id = self._allocate_id()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = (method, future)
        try:
            async with asyncio.timeout(timeout):
                await self._session.send(Request(request_id, method, body))
                self.metrics.requests_sent += 1
                return await future
        except TimeoutError:
            self.metrics.timeouts += 1
            raise RpcTimeoutError(
                f"request {method!r} (id {request_id}) to node "
                f"{short_id(self._session.peer_id)}: no response within {timeout} s"
            ) from None
        finally:
            self._pending.pop(request_id, None)

    def _allocate_id(self) -> int:
        while True:
            self._next_id = (self._next_id + 1) & 0xFFFFFFFF
            if self._next_id not in self._pending:
                return self._next_id

    # ----------------------------------------------------------------- pub/sub

    async def publish(self, topic: str, body: Any = None) -> bool:
        """Send a publication if the peer subscribed to a pattern matching ``topic``.

        Args:
            topic: a topic name (no wildcards; see :func:`agent.messages.validate_topic`).
            body: plain data.

        Returns:
            True when sent, False when the peer has no matching subscription.

        Raises:
            LocalProtocolError: the topic or body is invalid.
            SessionClosedError: the session is closed.
        """
        wanted = self._peer_wants.get(topic)
        if wanted is None:
            try:
                validate_topic(topic)
            except ValueError as err:
                raise LocalProtocolError(str(err)) from None
            wanted = any(topic_matches(pattern, topic) for pattern in self._peer_patterns)
            if len(self._peer_wants) >= _TOPIC_CACHE:
                self._peer_wants.clear()
            self._peer_wants[topic] = wanted
        if not wanted:
            return False
        await self._session.send(Publish(topic, body))
        return True

    async def subscribe(self, pattern: str, callback: PublishCallback) -> None:
        """Call ``callback(topic, body)`` for what the peer publishes on topics matching
        ``pattern`` (MQTT-style ``+`` and ``#``); asks the peer for it on first use of a pattern.

        Raises:
            LocalProtocolError: the pattern is invalid.
            SessionClosedError: the session is closed.
        """
        try:
            validate_pattern(pattern)
        except ValueError as err:
            raise LocalProtocolError(str(err)) from None
        callbacks = self._subscriptions.setdefault(pattern, [])
        callbacks.append(callback)
        self._local_matches.clear()
        if len(callbacks) == 1:
            await self._session.send(Subscribe(pattern))

    async def unsubscribe(self, pattern: str) -> None:
        """Drop every callback of ``pattern`` and tell the peer; nothing happens for an unknown
        pattern.

        Raises:
            SessionClosedError: the session is closed.
        """
        if self._subscriptions.pop(pattern, None) is not None:
            self._local_matches.clear()
            await self._session.send(Unsubscribe(pattern))

    # ----------------------------------------------------------------- dispatcher

    async def _dispatch(self) -> None:
        reason = "session closed"
        try:
            async with asyncio.TaskGroup() as group:
                try:
                    while True:
                        self._route(await self._session.receive(), group)
                except (SessionClosedError, RemoteProtocolError) as err:
                    reason = str(err)
                finally:
                    for task in self._serving:
                        task.cancel()
        finally:
            self._closed_reason = reason
            for method, future in self._pending.values():
                if not future.done():
                    future.set_exception(SessionClosedError(f"no response to {method!r}: {reason}"))

    def _route(self, msg: Message, group: asyncio.TaskGroup) -> None:
        if isinstance(msg, Request):
            self._start_serving(msg, group)
        elif isinstance(msg, Response):
            self._resolve(msg)
        elif isinstance(msg, Publish):
            self._deliver(msg)
        elif isinstance(msg, Subscribe):
            if len(self._peer_patterns) >= MAX_PEER_SUBSCRIPTIONS:
                self._drop(f"subscription beyond {MAX_PEER_SUBSCRIPTIONS} patterns")
            else:
                self._peer_patterns.add(msg.pattern)
                self._peer_wants.clear()
        elif isinstance(msg, Unsubscribe):
            self._peer_patterns.discard(msg.pattern)
            self._peer_wants.clear()
        else:
            self._drop(f"{type(msg).__name__} on an established session")

    def _drop(self, what: str) -> None:
        self.metrics.dropped += 1
        log.debug("[peer=%s] dropped: %s", short_id(self._session.peer_id), what)

    def _start_serving(self, req: Request, group: asyncio.TaskGroup) -> None:
        busy = len(self._serving) >= self._max_handlers
        if len(self._serving) >= 2 * self._max_handlers:
            self._drop(f"request {req.method!r}: too many in progress")
            return
        task = group.create_task(self._serve(req, busy=busy))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(self, req: Request, *, busy: bool) -> None:
        handler = self._handlers.get(req.method)
        status: int
        body: Any
        if busy:
            status, body = STATUS_BUSY, f"busy: {self._max_handlers} requests in progress"
        elif handler is None:
            status, body = STATUS_NOT_FOUND, f"unknown method {req.method!r}"
        else:
            try:
                status, body = STATUS_OK, await handler(req.body)
            except FloreteError as err:
                status, body = err.http_status, err.message
            except Exception:
                log.exception("handler of %r failed", req.method)
                status, body = STATUS_INTERNAL, f"handler of {req.method!r} failed"
        self.metrics.requests_served += 1
        with contextlib.suppress(SessionClosedError):
            try:
                await self._session.send(Response(req.id, status, body))
            except LocalProtocolError as err:
                log.warning(
                    "handler of %r returned a body that cannot be sent: %s", req.method, err
                )
                await self._session.send(
                    Response(req.id, STATUS_INTERNAL, f"result of {req.method!r} not encodable")
                )

    def _resolve(self, resp: Response) -> None:
        entry = self._pending.get(resp.id)
        if entry is None or entry[1].done():
            self._drop(f"response to unknown or expired request {resp.id}")
            return
        method, future = entry
        if 200 <= resp.status < 300:
            future.set_result(resp.body)
        else:
            future.set_exception(
                RpcError(f"{method!r} failed with status {resp.status}: {resp.body}", resp.status)
            )

    def _deliver(self, pub: Publish) -> None:
        patterns = self._local_matches.get(pub.topic)
        if patterns is None:
            patterns = [p for p in self._subscriptions if topic_matches(p, pub.topic)]
            if len(self._local_matches) >= _TOPIC_CACHE:
                self._local_matches.clear()
            self._local_matches[pub.topic] = patterns
        for pattern in patterns:
            callbacks = self._subscriptions.get(pattern, ())
            for callback in list(callbacks):
                try:
                    callback(pub.topic, pub.body)
                except Exception:
                    log.exception("subscriber of %r failed on %r", pattern, pub.topic)
        if not patterns:
            self._drop(f"publication on {pub.topic!r}, not subscribed")
