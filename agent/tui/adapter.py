"""The TUI's only door to the agent: blocking calls to the local API, safe from any thread.

Every method sends requests through :class:`agent.apiclient.ApiClient` and returns the decoded
Kubernetes-shaped objects; the TUI calls them from worker threads, never from its event loop.
Errors are :class:`~agent.errors.ApiError`: ``status`` 0 means the agent cannot be reached (not
running, restarting, socket permissions), anything else is the agent's own answer.

This module does not import Textual, so it can be tested and reused without it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.apiclient import ApiClient
from agent.errors import ApiError

__all__ = ["GROUP", "AgentApi", "LogLine", "LogStream", "is_unreachable"]

GROUP = "/apis/florete.io/v1alpha1"

# Metadata the API server sets; a manifest sent back for a restart leaves them out (the API
# would ignore them anyway, see "Manifests: what is accepted" in docs/design.md).
_SERVER_METADATA = (
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "managedFields",
)


def is_unreachable(err: ApiError) -> bool:
    """True when ``err`` says the agent could not be reached (as opposed to an answer)."""
    return err.status == 0


def _pods_path(namespace: str) -> str:
    return f"/api/v1/namespaces/{namespace}/pods"


@dataclass(frozen=True)
class LogLine:
    """One line of a container's log.

    Attributes:
        time: the runtime's RFC 3339 timestamp with nanoseconds
            (``2024-05-01T10:00:00.123456789Z``);
            fixed width, so timestamps compare as strings.
        text: the line without its timestamp and newline (invalid UTF-8 replaced).
    """

    time: str
    text: str


class LogStream:
    """A followed log (``GET .../log?follow=true&timestamps=true``) that another thread may end.

    Iterate :meth:`lines` in one thread; call :meth:`close` from any thread to end it, even while
    the agent sends nothing (the socket is shut down under the reading thread).
    """

    def __init__(self, client: ApiClient, path: str, query: dict[str, str]) -> None:
        self._client = client
        self._path = path
        self._query = query
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._closed = False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def _attach(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self._closed:
                _shutdown(sock)

    def close(self) -> None:
        """End the stream: :meth:`lines` returns soon after, from whichever thread reads it."""
        with self._lock:
            self._closed = True
            if self._sock is not None:
                _shutdown(self._sock)

    def lines(self) -> Iterator[LogLine]:
        """Yield the log's lines as the agent sends them.

        Returns when the agent ends the stream (the container ended) or after :meth:`close`.

        Raises:
            ApiError: the agent cannot be reached, refused the request (404 when the pod is
                gone, 400 while its container waits to start), or the stream broke off
                (not raised after :meth:`close`).
        """
        raw = self._client.stream_lines(self._path, self._query, self._attach)
        try:
            for line in raw:
                stamp, _, text = line.partition(b" ")
                yield LogLine(stamp.decode("ascii", "replace"), text.decode("utf-8", "replace"))
        except ApiError:
            if not self._closed:
                raise
        finally:
            raw.close()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the reader: nothing left to end
        sock.shutdown(socket.SHUT_RDWR)


class AgentApi:
    """Blocking client of one agent's local API, shared by the TUI's worker threads.

    Args:
        socket_path: the agent's Unix socket.
        timeout: seconds allowed to connect and for each answer (a hung agent shows as
            unreachable after this long).

    Requests are serialised on one kept-alive connection; log streams each open their own.
    """

    def __init__(self, socket_path: Path, timeout: float = 5.0) -> None:
        self.socket_path = socket_path
        self.timeout = timeout
        self._client = ApiClient(socket_path, timeout=timeout)
        self._lock = threading.Lock()
        self._streams: set[LogStream] = set()

    @property
    def address(self) -> str:
        """Where the agent is expected, for messages."""
        return str(self.socket_path)

    def close(self) -> None:
        """End every open log stream and close the kept-alive connection."""
        with self._lock:
            streams = list(self._streams)
            self._streams.clear()
            self._client.close()
        for stream in streams:
            stream.close()

    def request(
        self,
        method: str,
        path: str,
        query: dict[str, str] | None = None,
        body: Any = None,
    ) -> Any:
        """One request; see :meth:`agent.apiclient.ApiClient.request` (same answers, errors)."""
        with self._lock:
            return self._client.request(method, path, query=query, body=body)

    def optional(self, resource: str) -> dict[str, Any] | None:
        """``GET /apis/florete.io/v1alpha1/<resource>``, or None when the agent answers 404
        (the feature is not configured, or this agent does not have it)."""
        try:
            answer: dict[str, Any] = self.request("GET", f"{GROUP}/{resource}")
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return answer

    # --- node ---------------------------------------------------------------------------------

    def agent_status(self) -> dict[str, Any]:
        """The ``status`` of ``GET /apis/florete.io/v1alpha1/agent``: identity, version,
        uptime, runtimes, pod counts and ``host`` figures (see :mod:`agent.hoststats`)."""
        answer: dict[str, Any] = self.request("GET", f"{GROUP}/agent")
        status: dict[str, Any] = answer["status"]
        return status

    # --- pods ---------------------------------------------------------------------------------

    def pods(self) -> list[dict[str, Any]]:
        """Every pod in every namespace (``GET /api/v1/pods``), in the API's order."""
        items: list[dict[str, Any]] = self.request("GET", "/api/v1/pods")["items"]
        return items

    def pod(self, namespace: str, name: str) -> dict[str, Any]:
        """One pod. Raises ApiError (404) when it does not exist."""
        pod: dict[str, Any] = self.request("GET", f"{_pods_path(namespace)}/{name}")
        return pod

    def pod_events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The events of one pod, oldest first."""
        answer = self.request(
            "GET",
            f"/api/v1/namespaces/{namespace}/events",
            query={"fieldSelector": f"involvedObject.name={name}"},
        )
        items: list[dict[str, Any]] = answer["items"]
        return items

    def delete_pod(self, namespace: str, name: str) -> None:
        """Ask the agent to delete a pod; returns at once (the pod shows as Terminating)."""
        self.request("DELETE", f"{_pods_path(namespace)}/{name}")

    def restart_pod(self, namespace: str, name: str, timeout: float = 120.0) -> None:
        """Restart a pod as ``kubectl replace --force`` does: delete it, wait until it is gone,
        and create it again from the same manifest.

        Pods are immutable and the API has no restart verb, so this is the only restart that
        runs the pod's containers afresh; the new pod has a new uid and restart counts from 0.

        Args:
            namespace: the pod's namespace.
            name: the pod's name.
            timeout: seconds to wait for the old pod to be gone (its grace period included).

        Raises:
            ApiError: the pod does not exist, or the agent refused a step; after a timeout the
                old pod is still terminating and nothing was created (``api_reason`` Timeout).
        """
        manifest = self.pod(namespace, name)
        manifest.pop("status", None)
        for key in _SERVER_METADATA:
            manifest["metadata"].pop(key, None)
        self.delete_pod(namespace, name)
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.pod(namespace, name)
            except ApiError as err:
                if err.status != 404:
                    raise
                break
            if time.monotonic() > deadline:
                raise ApiError(
                    f"pod {namespace}/{name} was still terminating after {timeout:g} s; "
                    "it was not created again",
                    status=504,
                    api_reason="Timeout",
                )
            time.sleep(0.2)
        self.request("POST", _pods_path(namespace), body=manifest)

    def open_log(
        self,
        namespace: str,
        name: str,
        container: str,
        tail: int | None = None,
        since_seconds: int | None = None,
    ) -> LogStream:
        """Open a followed, timestamped log of one container; iterate ``lines()`` to read it.

        Args:
            namespace: the pod's namespace.
            name: the pod's name.
            container: the container's name.
            tail: lines from the end to start with (None: all).
            since_seconds: only lines newer than this many seconds.
        """
        query = {"container": container, "follow": "true", "timestamps": "true"}
        if tail is not None:
            query["tailLines"] = str(tail)
        if since_seconds is not None:
            query["sinceSeconds"] = str(since_seconds)
        # A client of its own: a stream never uses the shared kept-alive connection.
        stream = LogStream(
            ApiClient(self.socket_path, timeout=self.timeout),
            f"{_pods_path(namespace)}/{name}/log",
            query,
        )
        with self._lock:
            self._streams.add(stream)
        return stream

    def forget(self, stream: LogStream) -> None:
        """Close ``stream`` and stop tracking it."""
        stream.close()
        with self._lock:
            self._streams.discard(stream)

    # --- mesh ---------------------------------------------------------------------------------

    def neighbours(self) -> list[dict[str, Any]]:
        """The neighbour table (``GET neighbours``; item shape in
        :meth:`agent.neighbours.NeighbourTable.snapshot`)."""
        items: list[dict[str, Any]] = self.request("GET", f"{GROUP}/neighbours")["items"]
        return items

    def links(self) -> list[dict[str, Any]]:
        """Every link with live metrics (``GET links``): ``rttSeconds``, ``loss`` (0-1),
        ``rxBytes``, ``txBytes``, ``state``, ``up``, ``peerName``, ``nodeID``, ..."""
        items: list[dict[str, Any]] = self.request("GET", f"{GROUP}/links")["items"]
        return items

    def peers(self) -> list[dict[str, Any]]:
        """The trust store as ``Peer`` objects (``GET peers``)."""
        items: list[dict[str, Any]] = self.request("GET", f"{GROUP}/peers")["items"]
        return items

    def revoke_peer(self, node_id: str) -> dict[str, Any]:
        """Revoke a peer (its sessions close at once); returns the revoked ``Peer``."""
        peer: dict[str, Any] = self.request("DELETE", f"{GROUP}/peers/{node_id}")
        return peer

    # --- pairing ------------------------------------------------------------------------------

    def pairing_status(self) -> dict[str, Any] | None:
        """``GET pairing`` (``PairingStatus``: ``state``, ``failures``, ``maxFailures``,
        ``expiresInSeconds``, ``events``, ``peer``), or None when the agent has no pairing."""
        return self.optional("pairing")

    def show_pairing_code(self) -> dict[str, Any]:
        """``POST pairing``: show a new one-time code; returns ``{"code", "uri", "expiresAt",
        "expiresInSeconds", "maxFailures", "nodeID", "name"}``. Raises ApiError (404 when no
        link runs, so nobody could reach this node)."""
        shown: dict[str, Any] = self.request("POST", f"{GROUP}/pairing")
        return shown

    def cancel_pairing_code(self) -> None:
        """``DELETE pairing``: stop showing the code."""
        self.request("DELETE", f"{GROUP}/pairing")

    def join_pairing(self, code: str, timeout: float = 60.0) -> dict[str, Any]:
        """``POST pairing/join``: pair with the neighbour that shows ``code``.

        Args:
            code: the code (``4821-0937``) or a pairing URI.
            timeout: seconds to wait for the key exchange (it runs over the mesh).

        Returns:
            ``{"nodeID", "name", "fingerprint", "address"}`` of the peer now trusted.

        Raises:
            ApiError: the attempt failed; the message says why (wrong code, expired, ...).
        """
        # Its own client: the exchange may take longer than other requests are allowed.
        with ApiClient(self.socket_path, timeout=timeout) as client:
            peer: dict[str, Any] = client.request(
                "POST", f"{GROUP}/pairing/join", body={"code": code}
            )
        return peer
