"""The local API: Kubernetes-shaped REST routes over the reconciler and the store.

Paths follow the Kubernetes API (core/v1): ``/api/v1/namespaces/{namespace}/pods[/{name}[/log|
/status]]``, ``/api/v1/nodes``, events, ``/version``; Florete's own resources live under
``/apis/florete.io/v1alpha1/``. Errors are ``Status`` objects (see :mod:`agent.httproute`).
The CLI and TUI use only these routes; they never open the database. What the real ``kubectl``
needs besides (selectors, Tables, watch, PATCH, exec, discovery) is in :mod:`agent.api_kube`.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import psutil

from agent import __version__
from agent.api_kube import KubeApi, invalid_response, list_response, object_response, watch_response
from agent.api_pki import ApiPki
from agent.errors import BadRequestError, ManifestError, NotFoundError
from agent.hoststats import host_stats
from agent.httproute import Handler, Request, Response, Router, StreamingResponse
from agent.identity import Identity, certificate_not_before
from agent.podstatus import rfc3339
from agent.reconciler import Reconciler
from agent.remote_nodes import remote_nodes
from agent.runtimes import RuntimeRegistry
from agent.store import StoredEvent, StoredPod
from agent.watch import WatchHub
from wri_plugins.api import LogRecord, TaskHandle

#: Minor version of the Kubernetes API that the API follows (kubectl 1.32's).
KUBE_MINOR = 32
#: Pods a node admits (the kubelet's default ``maxPods``), shown as capacity.
MAX_PODS = 110
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "armv6l": "arm"}


@dataclass(frozen=True)
class AgentInfo:
    """Facts the API reports about the running agent."""

    identity: Identity
    state_dir: str
    socket: str
    interfaces: tuple[str, ...]
    host_ip: str
    started_at: float


def _event_object(ev: StoredEvent, node: str) -> dict[str, Any]:
    # Named like the kubelet's events: the object's name and the first time, in hex nanoseconds.
    name = f"{ev.pod}.{int(ev.first_at * 1e9):x}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": name,
            "namespace": ev.namespace,
            "uid": f"{ev.pod_uid}.{int(ev.first_at * 1e9):x}",
            "creationTimestamp": rfc3339(ev.first_at),
        },
        "involvedObject": {
            "kind": "Pod",
            "namespace": ev.namespace,
            "name": ev.pod,
            "uid": ev.pod_uid,
            "apiVersion": "v1",
        },
        "type": ev.type,
        "reason": ev.reason,
        "message": ev.message,
        "count": ev.count,
        "firstTimestamp": rfc3339(ev.first_at),
        "lastTimestamp": rfc3339(ev.last_at),
        "source": {"component": "florete-agent", "host": node},
    }


def _format_record(record: LogRecord, timestamps: bool) -> bytes:
    line = record.text if record.partial else record.text + b"\n"
    if timestamps:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.time))
        return f"{stamp}.{int(record.time % 1 * 1e9):09d}Z ".encode() + line
    return line


class Api:
    """Route handlers; :meth:`router` builds the :class:`Router` the HTTP server serves.

    Args:
        reconciler: the reconciler (pods).
        runtimes: the runtimes (logs, health).
        info: facts about the agent.
        extra_routes: more ``(method, template, handler)`` routes (the mesh's, see
            :mod:`agent.api_mesh`).
        pki: the API client CA (:mod:`agent.api_pki`) when the TCP API is on, else None.

    Attributes:
        kube: kubectl's extra routes; the daemon sets ``kube.tcp_address`` once it listens.
        watch: the pod watch hub (a listener of the store).
        wrap_route: when set before :meth:`router`, ``wrap_route(method, template, handler)``
            returns the handler to serve each route with (the supernode serves pods and nodes
            of its members this way, see :mod:`agent.api_supernode`).
    """

    def __init__(
        self,
        reconciler: Reconciler,
        runtimes: RuntimeRegistry,
        info: AgentInfo,
        extra_routes: Sequence[tuple[str, str, Handler]] = (),
        pki: ApiPki | None = None,
    ) -> None:
        self.extra_routes = tuple(extra_routes)
        self.reconciler = reconciler
        self.store = reconciler.store
        self.runtimes = runtimes
        self.info = info
        self.watch = WatchHub(self._pod_object, self.store.resource_version())
        self.store.add_pod_listener(self.watch.pod_changed)
        self.kube = KubeApi(
            reconciler, runtimes, info.identity.name, info.host_ip, info.started_at, pki
        )
        self.wrap_route: Callable[[str, str, Handler], Handler] | None = None

    def router(self) -> Router:
        """Return a router with every route of the API."""
        router = Router()
        pods = "/api/v1/namespaces/{namespace}/pods"
        for method, template, handler in (
            ("GET", "/version", self.version),
            ("GET", "/healthz", self.healthz),
            ("GET", "/readyz", self.healthz),
            ("GET", "/api/v1/pods", self.list_pods),
            ("GET", pods, self.list_pods),
            ("POST", pods, self.create_pod),
            ("GET", pods + "/{name}", self.get_pod),
            ("GET", pods + "/{name}/status", self.get_pod),
            ("PUT", pods + "/{name}", self.update_pod),
            ("DELETE", pods + "/{name}", self.delete_pod),
            ("GET", pods + "/{name}/log", self.pod_log),
            ("GET", "/api/v1/events", self.list_events),
            ("GET", "/api/v1/namespaces/{namespace}/events", self.list_events),
            ("GET", "/api/v1/nodes", self.list_nodes),
            ("GET", "/api/v1/nodes/{name}", self.get_node),
            ("GET", "/apis/florete.io/v1alpha1/agent", self.agent_status),
            *self.kube.routes(),
            *self.extra_routes,
        ):
            if self.wrap_route is not None:
                handler = self.wrap_route(method, template, handler)
            router.add(method, template, handler)
        return router

    # --- pods ---------------------------------------------------------------------------------

    def _pod_object(self, stored: StoredPod) -> dict[str, Any]:
        """A pod as reads show it: ``Pending`` until its worker reports a status."""
        obj = self.reconciler.pod_object(stored)
        if not obj["status"]:
            obj["status"] = {"phase": "Pending"}
        return obj

    async def list_pods(self, request: Request) -> Response | StreamingResponse:
        """``GET /api/v1[/namespaces/{ns}]/pods`` -> ``PodList`` (or a Table), filtered by
        ``labelSelector`` and ``fieldSelector``; with ``watch=true`` a watch stream."""
        namespace = request.params.get("namespace")

        def current() -> list[dict[str, Any]]:
            return [self._pod_object(p) for p in self.store.list_pods(namespace)]

        if request.query.get_bool("watch"):
            return watch_response(request, self.watch, namespace, current)
        version = self.store.resource_version()
        return list_response(request, "pods", "PodList", current(), version)

    async def create_pod(self, request: Request) -> Response:
        """``POST .../pods`` with a Pod -> 201 Pod; 409 when it exists, 422 when invalid."""
        body = self._object(request)
        try:
            stored = await self.reconciler.create(
                body, request.params["namespace"], dry_run=self._dry_run(request)
            )
        except ManifestError as err:
            return invalid_response("Pod", str((body.get("metadata") or {}).get("name", "")), err)
        return Response.json(self.reconciler.pod_object(stored), 201)

    async def update_pod(self, request: Request) -> Response:
        """``PUT .../pods/{name}``: change labels and annotations; the spec is immutable."""
        body = self._object(request)
        name = request.params["name"]
        self.store.get_pod(request.params["namespace"], name)
        if (body.get("metadata") or {}).get("name") != name:
            raise BadRequestError(
                f'the name of the object does not match the name on the URL ("{name}")'
            )
        try:
            stored = await self.reconciler.update(
                body, request.params["namespace"], dry_run=self._dry_run(request)
            )
        except ManifestError as err:
            return invalid_response("Pod", name, err)
        return Response.json(self.reconciler.pod_object(stored))

    async def get_pod(self, request: Request) -> Response:
        """``GET .../pods/{name}[/status]`` -> Pod (or a one-row Table)."""
        stored = self.store.get_pod(request.params["namespace"], request.params["name"])
        return object_response(request, "pods", self._pod_object(stored))

    async def delete_pod(self, request: Request) -> Response:
        """``DELETE .../pods/{name}`` -> the Pod, now terminating.

        The grace period comes from ``?gracePeriodSeconds=N`` or a ``DeleteOptions`` body
        (what kubectl sends); the pod's ``terminationGracePeriodSeconds`` without either.
        """
        grace = request.query.get_int("gracePeriodSeconds")
        if grace is None and request.body:
            options = request.json()
            value = options.get("gracePeriodSeconds") if isinstance(options, dict) else None
            if value is not None and not isinstance(value, int):
                raise BadRequestError("DeleteOptions.gracePeriodSeconds must be an integer")
            grace = value
        if grace is not None and grace < 0:
            raise BadRequestError("gracePeriodSeconds must be >= 0")
        stored = await self.reconciler.delete(
            request.params["namespace"],
            request.params["name"],
            None if grace is None else float(grace),
        )
        return Response.json(self.reconciler.pod_object(stored))

    async def pod_log(self, request: Request) -> Response | StreamingResponse:
        """``GET .../pods/{name}/log``: ``container``, ``follow``, ``previous``, ``tailLines``,
        ``sinceSeconds``, ``timestamps`` as in Kubernetes; text/plain, streamed when following.
        """
        stored = self.store.get_pod(request.params["namespace"], request.params["name"])
        container = self._log_container(stored, request.query.get("container"))
        previous = request.query.get_bool("previous")
        tail = request.query.get_int("tailLines")
        since_seconds = request.query.get_int("sinceSeconds")
        follow = request.query.get_bool("follow") and not previous
        timestamps = request.query.get_bool("timestamps")
        records = [r for r in self.store.tasks(stored.uid, container) if r.handle]
        if previous:
            if len(records) < 2:
                raise BadRequestError(
                    f'previous terminated container "{container}" in pod "{stored.name}" not found'
                )
            record = records[-2]
        elif records:
            record = records[-1]
        else:
            raise BadRequestError(
                f'container "{container}" in pod "{stored.name}" is waiting to start'
            )
        assert record.handle is not None
        handle = TaskHandle.from_json(record.handle)
        runtime = self.runtimes.get(record.runtime)
        since = time.time() - since_seconds if since_seconds is not None else None
        lines = runtime.logs(handle, follow=follow, tail=tail, since=since)

        async def chunks() -> AsyncIterator[bytes]:
            async for item in lines:
                yield _format_record(item, timestamps)

        if follow:
            return StreamingResponse(200, "text/plain; charset=utf-8", chunks())
        body = b"".join([chunk async for chunk in chunks()])
        return Response(200, body, "text/plain; charset=utf-8")

    @staticmethod
    def _log_container(stored: StoredPod, wanted: str | None) -> str:
        spec = stored.manifest["spec"]
        names = [c["name"] for c in (*spec.get("initContainers", []), *spec["containers"])]
        if wanted:
            if wanted not in names:
                raise BadRequestError(f"container {wanted} is not valid for pod {stored.name}")
            return wanted
        if len(spec["containers"]) == 1:
            return str(spec["containers"][0]["name"])
        raise BadRequestError(
            f"a container name must be specified for pod {stored.name}, "
            f"choose one of: [{' '.join(c['name'] for c in spec['containers'])}]"
        )

    @staticmethod
    def _dry_run(request: Request) -> bool:
        values = request.query.get_all("dryRun")
        if any(v != "All" for v in values):
            raise BadRequestError("dryRun must be All")
        return bool(values)

    @staticmethod
    def _object(request: Request) -> dict[str, Any]:
        body = request.json()
        if not isinstance(body, dict):
            raise BadRequestError("request body must be a JSON object (a Pod)")
        return body

    # --- events, nodes, agent -----------------------------------------------------------------

    async def list_events(self, request: Request) -> Response:
        """``GET /api/v1[/namespaces/{ns}]/events``, filtered by selectors
        (``fieldSelector=involvedObject.name=X,involvedObject.uid=Y`` and the like)."""
        if request.query.get_bool("watch"):
            raise BadRequestError("watch is served for pods only")
        events = self.store.events(request.params.get("namespace"))
        items = [_event_object(ev, self.info.identity.name) for ev in events]
        version = self.store.resource_version()
        return list_response(request, "events", "EventList", items, version)

    async def list_nodes(self, request: Request) -> Response:
        """``GET /api/v1/nodes`` -> ``NodeList`` with this node (or a Table)."""
        if request.query.get_bool("watch"):
            raise BadRequestError("watch is served for pods only")
        version = self.store.resource_version()
        nodes = [self._node(), *await self._remote_nodes()]
        return list_response(request, "nodes", "NodeList", nodes, version)

    async def get_node(self, request: Request) -> Response:
        """``GET /api/v1/nodes/{name}`` -> Node (or a one-row Table)."""
        name = request.params["name"]
        if name == self.info.identity.name:
            return object_response(request, "nodes", self._node())
        for node in await self._remote_nodes():
            if node["metadata"]["name"] == name:
                return object_response(request, "nodes", node)
        raise NotFoundError(f'nodes "{name}" not found')

    async def _remote_nodes(self) -> list[dict[str, Any]]:
        """The devices of remote runtimes (a phone), see :mod:`agent.remote_nodes`."""
        return await remote_nodes(self.runtimes, self.info.identity.name, self.info.started_at)

    def _node(self) -> dict[str, Any]:
        ident = self.info.identity
        arch = _ARCH.get(platform.machine(), platform.machine())
        memory = psutil.virtual_memory().total
        capacity = {
            "cpu": str(os.cpu_count() or 1),
            "memory": f"{memory // 1024}Ki",
            "pods": str(MAX_PODS),
        }
        started = rfc3339(self.info.started_at)
        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": ident.name,
                "uid": ident.node_id,
                "labels": {
                    "kubernetes.io/hostname": ident.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": arch,
                    "florete.io/node-id": ident.node_id,
                },
                "annotations": {"florete.io/certificate-sha256": ident.fingerprint},
                "creationTimestamp": rfc3339(certificate_not_before(ident.certificate).timestamp()),
            },
            "spec": {},
            "status": {
                "capacity": capacity,
                "allocatable": capacity,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "AgentReady",
                        "message": "florete-agent is posting ready status",
                        "lastHeartbeatTime": rfc3339(time.time()),
                        "lastTransitionTime": started,
                    }
                ],
                "addresses": [
                    {"type": "InternalIP", "address": self.info.host_ip},
                    {"type": "Hostname", "address": ident.name},
                ],
                "nodeInfo": {
                    "architecture": arch,
                    "operatingSystem": "linux",
                    "kernelVersion": platform.release(),
                    "osImage": _os_image(),
                    "kubeletVersion": f"v{__version__}-florete",
                    "containerRuntimeVersion": ",".join(sorted(self.runtimes.runtimes)),
                    "bootID": _boot_id(),
                    "machineID": "",
                    "systemUUID": "",
                    "kubeProxyVersion": "",
                },
            },
        }

    async def agent_status(self, request: Request) -> Response:
        """``GET /apis/florete.io/v1alpha1/agent``: identity, runtimes, pod counts and the host's
        CPU, memory and temperature (:func:`agent.hoststats.host_stats`)."""
        ident = self.info.identity
        runtimes = []
        for name, fp in (await self.runtimes.fingerprints()).items():
            caps = self.runtimes.runtimes[name].capabilities
            runtimes.append(
                {
                    "name": name,
                    "healthy": fp.healthy,
                    "description": fp.description,
                    "attributes": dict(fp.attributes),
                    "capabilities": {k: v for k, v in vars(caps).items() if v},
                }
            )
        phases: dict[str, int] = {}
        for stored in self.store.list_pods():
            phase = self.reconciler.pod_object(stored)["status"].get("phase", "Pending")
            phases[phase] = phases.get(phase, 0) + 1
        return Response.json(
            {
                "apiVersion": "florete.io/v1alpha1",
                "kind": "AgentStatus",
                "metadata": {"name": ident.name},
                "status": {
                    "nodeID": ident.node_id,
                    "name": ident.name,
                    "certificateSHA256": ident.fingerprint,
                    "version": __version__,
                    "stateDir": self.info.state_dir,
                    "socket": self.info.socket,
                    "interfaces": list(self.info.interfaces),
                    "hostIP": self.info.host_ip,
                    "startedAt": rfc3339(self.info.started_at),
                    "uptimeSeconds": round(time.time() - self.info.started_at, 1),
                    "rssBytes": psutil.Process().memory_info().rss,
                    "runtimes": runtimes,
                    "pods": phases,
                    "host": host_stats(),
                },
            }
        )

    async def version(self, request: Request) -> Response:
        """``GET /version``: a Kubernetes ``version.Info``.

        It names the Kubernetes API level this API follows (:data:`KUBE_MINOR`) with the agent's
        own version after it, e.g. ``v1.32.0-florete.0.1.0``: kubectl warns when the server's
        minor version is more than one away from its own, and version-dispatching kubectl
        wrappers (Google Cloud SDK's) pick the client by it.
        """
        return Response.json(
            {
                "major": "1",
                "minor": str(KUBE_MINOR),
                "gitVersion": f"v1.{KUBE_MINOR}.0-florete.{__version__}",
                "platform": f"linux/{_ARCH.get(platform.machine(), 'unknown')}",
                "goVersion": "",
                "compiler": "florete-agent",
            }
        )

    async def healthz(self, request: Request) -> Response:
        """``GET /healthz`` and ``/readyz``: ``ok`` while the agent serves."""
        return Response(200, b"ok", "text/plain; charset=utf-8")


def _os_image() -> str:
    try:
        return platform.freedesktop_os_release().get("PRETTY_NAME", "")
    except OSError:
        return ""


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip()
    except OSError:
        return ""
