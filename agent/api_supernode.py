"""API of the supernode: its own routes, and pods and nodes served through it on members.

Routes under ``/apis/florete.io/v1alpha1/``:

* ``GET supernode`` -> ``Supernode`` (members, leader, term, health, capacity, placements);
  404 when this node is not a member.
* ``POST supernode`` ``{"name"}`` -> 201 ``Supernode``: create one with this node as its member.
* ``POST supernode/join`` ``{"name", "timeoutSeconds"?}`` -> ``Supernode``: join through a
  neighbour that is a member.
* ``POST supernode/leave`` ``{"timeoutSeconds"?, "force"?}`` -> ``Status``: leave (pods move
  first); ``force`` forgets the membership here without the others (they are gone).

On a member, :meth:`SupernodeApi.wrap` (installed as :attr:`agent.api.Api.wrap_route`) serves
the core pod and node routes through the supernode: ``POST pods`` applies to the supernode,
``GET pods`` lists every supernode pod with the member it runs on (``spec.nodeName``) beside
this node's own pods, ``GET``/``PUT``/``DELETE pods/{name}`` act on supernode pods, and
``GET nodes`` shows the supernode as one Node. ``GET pods/{name}/log`` and ``pods/{name}/exec``
of a pod placed on another member are carried to that member over the mesh
(:mod:`supernode.proxy`; exec non-interactive, :mod:`agent.api_supernode_exec`). ``GET pods``
with ``watch=true`` polls that list (:mod:`agent.api_supernode_watch`). ``GET events`` lists
this node's events and those of the supernode pods on every reachable member, each supernode
pod's under its supernode uid (:mod:`supernode.events`; a watch of events stays refused, by the
core route). PATCH of supernode pods is not served here. On a node that is not a member every
route behaves as before.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from agent.api_kube import invalid_response, list_response, object_response, watch_response
from agent.api_supernode_exec import exec_upgrade
from agent.api_supernode_watch import PolledPods
from agent.errors import BadRequestError, ManifestError, NotFoundError
from agent.httproute import Handler, Query, Request, Response, StreamingResponse, Upgrade
from agent.kube_select import Selector
from supernode import Supernode
from supernode.pods import is_supernode_pod
from supernode.proxy import open_remote_log, remote_exec
from supernode.state import PodRecord

__all__ = ["SupernodeApi"]

GROUP = "/apis/florete.io/v1alpha1"
_PODS = "/api/v1/namespaces/{namespace}/pods"
_EVENTS = "/api/v1/namespaces/{namespace}/events"


def _body(request: Request) -> dict[str, Any]:
    body = request.json() if request.body else {}
    if not isinstance(body, dict):
        raise BadRequestError("expected a JSON object")
    return body


def _timeout(body: dict[str, Any], default: float) -> float:
    value = body.get("timeoutSeconds", default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
        raise BadRequestError("timeoutSeconds must be a number of seconds in (0, 3600]")
    return float(value)


def _name(body: dict[str, Any]) -> str:
    name = body.get("name")
    if not isinstance(name, str):
        raise BadRequestError('expected {"name": "<supernode name>"}')
    return name


class SupernodeApi:
    """Handlers of the supernode routes and the wrapper of the core pod and node routes.

    Args:
        supernode: the supernode service.
    """

    def __init__(self, supernode: Supernode) -> None:
        self.supernode = supernode
        self.watch = PolledPods(self._pods)
        self._core_log: Handler | None = None
        self._core_events: Handler | None = None
        supernode.serve_logs(self._open_local_log)
        supernode.serve_events(self._local_events)

    def routes(self) -> list[tuple[str, str, Handler]]:
        """``(method, path template, handler)`` for :class:`agent.httproute.Router`."""
        return [
            ("GET", f"{GROUP}/supernode", self.status),
            ("POST", f"{GROUP}/supernode", self.create),
            ("POST", f"{GROUP}/supernode/join", self.join),
            ("POST", f"{GROUP}/supernode/leave", self.leave),
        ]

    async def status(self, request: Request) -> Response:
        """``GET supernode``."""
        return Response.json(self.supernode.status())

    async def create(self, request: Request) -> Response:
        """``POST supernode``."""
        return Response.json(await self.supernode.create(_name(_body(request))), 201)

    async def join(self, request: Request) -> Response:
        """``POST supernode/join``."""
        body = _body(request)
        return Response.json(await self.supernode.join(_name(body), _timeout(body, 30.0)))

    async def leave(self, request: Request) -> Response:
        """``POST supernode/leave``."""
        body = _body(request)
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise BadRequestError("force must be true or false")
        await self.supernode.leave(_timeout(body, 60.0), force)
        return Response.json(
            {"apiVersion": "v1", "kind": "Status", "status": "Success", "message": "left"}
        )

    # ----------------------------------------------------------------- core routes

    def wrap(self, method: str, template: str, handler: Handler) -> Handler:
        """The handler to serve a core route with (see the module docstring)."""
        make: Callable[[Handler], Handler] | None = {
            ("GET", "/api/v1/pods"): self._list_pods,
            ("GET", _PODS): self._list_pods,
            ("POST", _PODS): self._create_pod,
            ("GET", _PODS + "/{name}"): self._get_pod,
            ("GET", _PODS + "/{name}/status"): self._get_pod,
            ("PUT", _PODS + "/{name}"): self._update_pod,
            ("DELETE", _PODS + "/{name}"): self._delete_pod,
            ("PATCH", _PODS + "/{name}"): self._refuse("PATCH"),
            ("GET", _PODS + "/{name}/log"): self._log,
            ("GET", _PODS + "/{name}/exec"): self._exec,
            ("POST", _PODS + "/{name}/exec"): self._exec,
            ("GET", "/api/v1/events"): self._list_events,
            ("GET", _EVENTS): self._list_events,
            ("GET", "/api/v1/nodes"): self._list_nodes,
            ("GET", "/api/v1/nodes/{name}"): self._get_node,
        }.get((method, template))
        return handler if make is None else make(handler)

    def _member(self) -> bool:
        return self.supernode.membership is not None

    def _ours(self, request: Request) -> bool:
        params = request.params
        return self._member() and (
            self.supernode.record(params["namespace"], params["name"]) is not None
        )

    async def _pods(self, namespace: str | None) -> list[dict[str, Any]]:
        """Every supernode pod with the member it runs on, and this node's other pods."""
        objects = await self.supernode.list_pods(namespace)
        reconciler = self.supernode.reconciler
        for stored in reconciler.store.list_pods(namespace):
            if not is_supernode_pod(stored):
                objects.append(reconciler.pod_object(stored))
        return objects

    def _list_pods(self, core: Handler) -> Handler:
        async def handle(request: Request) -> Response | StreamingResponse | Upgrade:
            if not self._member():
                return await core(request)
            namespace = request.params.get("namespace")
            if request.query.get_bool("watch"):
                return watch_response(request, self.watch, namespace, list)
            objects = await self._pods(namespace)
            version = self.watch.remember(namespace, objects)
            return list_response(request, "pods", "PodList", objects, version)

        return handle

    def _create_pod(self, core: Handler) -> Handler:
        async def handle(request: Request) -> Response | StreamingResponse | Upgrade:
            if not self._member():
                return await core(request)
            body = _body(request)
            dry_run = _dry_run(request)
            try:
                obj = await self.supernode.create_pod(body, request.params["namespace"], dry_run)
            except ManifestError as err:
                name = str((body.get("metadata") or {}).get("name", ""))
                return invalid_response("Pod", name, err)
            return Response.json(obj, 201)

        return handle

    def _get_pod(self, core: Handler) -> Handler:
        async def handle(request: Request) -> Response | StreamingResponse | Upgrade:
            if not self._ours(request):
                return await core(request)
            obj = await self.supernode.get_pod(request.params["namespace"], request.params["name"])
            return object_response(request, "pods", obj)

        return handle

    def _update_pod(self, core: Handler) -> Handler:
        async def handle(request: Request) -> Response | StreamingResponse | Upgrade:
            if not self._ours(request):
                return await core(request)
            body = _body(request)
            name = request.params["name"]
            if (body.get("metadata") or {}).get("name") != name:
                raise BadRequestError(
                    f'the name of the object does not match the name on the URL ("{name}")'
                )
            try:
                obj = await self.supernode.update_pod(
                    body, request.params["namespace"], _dry_run(request)
                )
            except ManifestError as err:
                return invalid_response("Pod", name, err)
            return Response.json(obj)

        return handle

    def _delete_pod(self, core: Handler) -> Handler:
        async def handle(request: Request) -> Response | StreamingResponse | Upgrade:
            if not self._ours(request):
                return await core(request)
            grace = request.query.get_int("gracePeriodSeconds")
            if grace is None and request.body:
                value = _body(request).get("gracePeriodSeconds")
                if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                    raise BadRequestError("DeleteOptions.gracePeriodSeconds must be an integer")
                grace = value
            if grace is not None and grace < 0:
                raise BadRequestError("gracePeriodSeconds must be >= 0")
            obj = await self.supernode.delete_pod(
                request.params["namespace"],
                request.params["name"],
                None if grace is None else float(grace),
            )
            return Response.json(obj)

        return handle

    def _refuse(self, what: str) -> Callable[[Handler], Handler]:
        def make(core: Handler) -> Handler:
            async def handle(request: Request) -> Response | StreamingResponse | Upgrade:
                if not self._ours(request):
                    return await core(request)
                raise BadRequestError(
                    f"{what} of a supernode pod is not supported; change its labels and "
                    "annotations with florete-agent apply"
                )

            return handle

        return make

    def _elsewhere(self, request: Request) -> PodRecord | None:
        """The record of a supernode pod placed on another member, or None (serve locally).

        Raises:
            BadRequestError: the pod is not placed on any member yet.
        """
        record = (
            self.supernode.record(request.params["namespace"], request.params["name"])
            if self._member()
            else None
        )
        if record is None or record.member == self.supernode.me:
            return None
        if not record.member:
            raise BadRequestError(f'pod "{record.name}" is not placed on a member yet (Pending)')
        return record

    def _log(self, core: Handler) -> Handler:
        self._core_log = core

        async def handle(request: Request) -> Response | StreamingResponse | Upgrade:
            record = self._elsewhere(request)
            if record is None:
                return await core(request)
            remote = await open_remote_log(
                self.supernode.mesh,
                record.member,
                record.namespace,
                record.name,
                request.query.params,
            )
            follow = request.query.get_bool("follow") and not request.query.get_bool("previous")
            if follow:
                return StreamingResponse(200, "text/plain; charset=utf-8", remote.chunks())
            body = b"".join([chunk async for chunk in remote.chunks()])
            return Response(200, body, "text/plain; charset=utf-8")

        return handle

    async def _open_local_log(
        self, namespace: str, name: str, query: Mapping[str, list[str]]
    ) -> AsyncIterator[bytes]:
        """A local pod's log through this node's own log route, for another member."""
        if self._core_log is None:
            raise NotFoundError("the log route is not served here")
        request = Request(
            "GET",
            f"/api/v1/namespaces/{namespace}/pods/{name}/log",
            query=Query(dict(query)),
            params={"namespace": namespace, "name": name},
        )
        answer = await self._core_log(request)
        if isinstance(answer, StreamingResponse):
            return answer.chunks
        if isinstance(answer, Response) and answer.status == 200:
            return _once(answer.body)
        raise BadRequestError("the log route gave no log")

    def _exec(self, core: Handler) -> Handler:
        async def handle(request: Request) -> Response | StreamingResponse | Upgrade:
            record = self._elsewhere(request)
            if record is None:
                return await core(request)
            argv = request.query.get_all("command")
            containers = record.manifest["spec"]["containers"]
            container = request.query.get("container") or containers[0]["name"]
            if container not in [c["name"] for c in containers]:
                raise BadRequestError(f"container {container} is not valid for pod {record.name}")

            async def command() -> tuple[int, bytes]:
                return await remote_exec(
                    self.supernode.mesh,
                    record.member,
                    record.namespace,
                    record.name,
                    container,
                    list(argv),
                )

            where = f"{record.namespace}/{record.name}/{container}"
            return exec_upgrade(request, command, where)

        return handle

    def _list_events(self, core: Handler) -> Handler:
        self._core_events = core

        async def handle(request: Request) -> Response | StreamingResponse | Upgrade:
            if not self._member() or request.query.get_bool("watch"):
                return await core(request)
            fields = request.query.get("fieldSelector")
            Selector.parse(request.query.get("labelSelector"), fields, "events")  # before asking
            namespace = request.params.get("namespace")
            mine = await self._local_events(namespace)
            objects = await self.supernode.list_events(mine, namespace, fields)
            version = self.supernode.reconciler.store.resource_version()
            return list_response(request, "events", "EventList", objects, version)

        return handle

    async def _local_events(self, namespace: str | None) -> list[dict[str, Any]]:
        """This node's own events (of ``namespace``, or all) through its core events route."""
        if self._core_events is None:
            raise NotFoundError("the events route is not served here")
        path = "/api/v1/events" if namespace is None else f"/api/v1/namespaces/{namespace}/events"
        params = {} if namespace is None else {"namespace": namespace}
        answer = await self._core_events(Request("GET", path, params=params))
        if not isinstance(answer, Response) or answer.status != 200:
            raise BadRequestError("the events route gave no events")
        items = json.loads(answer.body).get("items")
        return [item for item in items or [] if isinstance(item, dict)]

    def _list_nodes(self, core: Handler) -> Handler:
        async def handle(request: Request) -> Response | StreamingResponse | Upgrade:
            if not self._member() or request.query.get_bool("watch"):
                return await core(request)
            store = self.supernode.reconciler.store
            node = self.supernode.node()
            return list_response(request, "nodes", "NodeList", [node], store.resource_version())

        return handle

    def _get_node(self, core: Handler) -> Handler:
        async def handle(request: Request) -> Response | StreamingResponse | Upgrade:
            if not self._member():
                return await core(request)
            if request.params["name"] != self.supernode.name:
                raise NotFoundError(
                    f'nodes "{request.params["name"]}" not found (this node is a member of '
                    f'supernode "{self.supernode.name}")'
                )
            return object_response(request, "nodes", self.supernode.node())

        return handle


def _dry_run(request: Request) -> bool:
    values = request.query.get_all("dryRun")
    if any(v != "All" for v in values):
        raise BadRequestError("dryRun must be All")
    return bool(values)


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body
