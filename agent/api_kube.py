"""What the real ``kubectl`` needs from the local API beyond plain reads and writes.

* Reads: label and field selectors (:mod:`agent.kube_select`), server-side Tables
  (:mod:`agent.kube_tables`) and watch streams (:mod:`agent.watch`), through
  :func:`list_response` and :func:`object_response`, which the handlers of :mod:`agent.api`
  call.
* ``PATCH .../pods/{name}``: strategic merge and merge patches (:mod:`agent.kube_patch`) and
  server-side apply (``application/apply-patch+yaml``: the applied manifest creates the pod, or
  replaces its labels and annotations; field managers are not tracked).
* ``GET /api/v1/namespaces[/{name}]``: namespaces are implicit here: ``default`` and every
  namespace that has pods.
* ``POST /apis/florete.io/v1alpha1/clientcertificates``: the agent's CA signs a client
  certificate for ``florete-agent kubeconfig`` (:mod:`agent.api_pki`); only over the Unix socket.
* Discovery and OpenAPI (:mod:`agent.api_discovery`) and exec (:mod:`agent.api_exec`).
* Invalid manifests answer ``422 Invalid`` with ``details.kind``, ``details.name`` and one cause
  per problem (``field`` and the message after it), which kubectl prints as
  ``The Pod "x" is invalid: * spec.containers[0].foo: unknown field``; ``message`` stays the
  florete-agent CLI's text.
"""

from __future__ import annotations

import datetime
import pwd
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import yaml

from agent.api_discovery import GROUP_VERSION
from agent.api_discovery import ROUTES as DISCOVERY_ROUTES
from agent.api_exec import ExecApi
from agent.api_pki import ApiPki
from agent.errors import BadRequestError, ManifestError, NotFoundError
from agent.httproute import (
    Handler,
    PeerCredentials,
    Request,
    Response,
    StreamingResponse,
    TlsPeer,
    status_object,
    status_response,
)
from agent.kube_patch import APPLY_PATCH, apply_patch
from agent.kube_select import Selector
from agent.kube_tables import TABLE_CONTENT_TYPE, negotiate, table
from agent.podstatus import rfc3339
from agent.reconciler import Reconciler
from agent.runtimes import RuntimeRegistry
from agent.watch import DEFAULT_TIMEOUT, EventSource, WatchRequest, encode_event

_FIELD_PREFIX = re.compile(r"^([A-Za-z0-9_$.\[\]-]+): ")
_LEASES = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases"
#: Client certificate validity when the request does not say (days).
DEFAULT_CLIENT_DAYS = 365


def _render(obj: Any, request: Request, resource: str) -> Response:
    shape = negotiate(request)
    if not shape.table:
        return Response.json(obj)
    items = obj["items"] if "items" in obj else [obj]
    version = (obj.get("metadata") or {}).get("resourceVersion", "")
    body = table(resource, items, version, shape.include)
    return Response(200, Response.json(body).body, TABLE_CONTENT_TYPE)


def object_response(request: Request, resource: str, obj: dict[str, Any]) -> Response:
    """One object, as JSON or as a one-row Table (see :func:`agent.kube_tables.negotiate`)."""
    return _render(obj, request, resource)


def list_response(
    request: Request,
    resource: str,
    kind: str,
    objects: Sequence[dict[str, Any]],
    version: int,
) -> Response:
    """A ``<kind>List`` of the objects that match the request's selectors, or its Table.

    Raises:
        BadRequestError: a selector is malformed or names an unsupported field.
        NotAcceptableError: the client accepts neither JSON nor Tables.
    """
    selector = Selector.parse(
        request.query.get("labelSelector"), request.query.get("fieldSelector"), resource
    )
    items = [obj for obj in objects if selector.matches(obj)]
    body = {
        "apiVersion": "v1",
        "kind": kind,
        "metadata": {"resourceVersion": str(version)},
        "items": items,
    }
    return _render(body, request, resource)


def watch_response(
    request: Request,
    hub: EventSource,
    namespace: str | None,
    current: Callable[[], Sequence[dict[str, Any]]],
) -> StreamingResponse:
    """A pod watch stream for ``?watch=true`` (see :mod:`agent.watch`).

    Args:
        request: the list request with ``watch=true``.
        hub: where the events come from: the pod watch hub, or on a supernode member
            :class:`agent.api_supernode_watch.PolledPods`.
        namespace: the path's namespace, or None for all.
        current: the current pods of that namespace (unfiltered).

    Raises:
        BadRequestError: a selector, ``resourceVersion`` or ``timeoutSeconds`` is malformed.
        NotAcceptableError: the client accepts neither JSON nor Tables.
    """
    shape = negotiate(request)
    selector = Selector.parse(
        request.query.get("labelSelector"), request.query.get("fieldSelector"), "pods"
    )
    raw_version = request.query.get("resourceVersion") or "0"
    if not raw_version.isdigit():
        raise BadRequestError(f"resourceVersion {raw_version!r} is not a version of this API")
    timeout = request.query.get_int("timeoutSeconds")
    if timeout is not None and timeout < 0:
        raise BadRequestError("timeoutSeconds must be >= 0")
    watch = WatchRequest(
        namespace,
        selector,
        None if raw_version == "0" else int(raw_version),
        initial_events=request.query.get_bool("sendInitialEvents"),
        bookmarks=request.query.get_bool("allowWatchBookmarks"),
        timeout=float(timeout) if timeout else DEFAULT_TIMEOUT,
    )

    def visible() -> list[dict[str, Any]]:
        return [obj for obj in current() if watch.visible(obj)]

    async def chunks() -> AsyncIterator[bytes]:
        async for kind, obj in hub.events(watch, visible):
            if shape.table and kind in ("ADDED", "MODIFIED", "DELETED"):
                obj = table("pods", [obj], obj["metadata"]["resourceVersion"], shape.include)
            yield encode_event(kind, obj)

    content_type = TABLE_CONTENT_TYPE if shape.table else "application/json"
    return StreamingResponse(200, content_type, chunks())


def invalid_response(kind: str, name: str, err: ManifestError) -> Response:
    """``422 Invalid`` for a rejected manifest, with causes kubectl lists field by field."""
    causes = []
    for message in err.errors:
        match = _FIELD_PREFIX.match(message)
        field, text = (match.group(1), message[match.end() :]) if match else ("manifest", message)
        causes.append({"reason": "FieldValueInvalid", "message": text, "field": field})
    status = status_object(422, "Invalid", err.message, causes)
    status.setdefault("details", {}).update({"name": name, "kind": kind})
    return Response(422, Response.json(status).body)


class KubeApi:
    """Handlers of the kubectl-only routes (see the module docstring).

    Args:
        reconciler: the reconciler (pods).
        runtimes: the runtimes (exec).
        node_name: this node's name (``spec.nodeName`` of every pod).
        host_ip: this node's address, used in a kubeconfig when the listener is on a wildcard.
        started_at: agent start (seconds since the epoch), the age of the ``default`` namespace.
        pki: the API CA, or None when the TCP API is off.

    Attributes:
        tcp_address: the bound ``(host, port)`` of the mutual-TLS listener, set by the daemon.
    """

    def __init__(
        self,
        reconciler: Reconciler,
        runtimes: RuntimeRegistry,
        node_name: str,
        host_ip: str,
        started_at: float,
        pki: ApiPki | None,
    ) -> None:
        self.reconciler = reconciler
        self.store = reconciler.store
        self.node_name = node_name
        self.host_ip = host_ip
        self.started_at = started_at
        self.pki = pki
        self.tcp_address: tuple[str, int] | None = None
        self.exec = ExecApi(self.store, runtimes)

    def routes(self) -> list[tuple[str, str, Handler]]:
        """``(method, path template, handler)`` for :class:`agent.httproute.Router`."""
        pod = "/api/v1/namespaces/{namespace}/pods/{name}"
        return [
            *DISCOVERY_ROUTES,
            ("PATCH", pod, self.patch_pod),
            ("GET", pod + "/exec", self.exec.exec_pod),
            ("POST", pod + "/exec", self.exec.exec_pod),
            ("GET", "/api/v1/namespaces", self.list_namespaces),
            ("GET", "/api/v1/namespaces/{name}", self.get_namespace),
            ("POST", f"/apis/{GROUP_VERSION}/clientcertificates", self.issue_certificate),
            ("GET", _LEASES + "/{name}", self.get_lease),
        ]

    # --- pods ---------------------------------------------------------------------------------

    async def patch_pod(self, request: Request) -> Response:
        """``PATCH .../pods/{name}``: strategic merge, merge, or server-side apply.

        Raises:
            NotFoundError: no such pod (except for server-side apply, which creates it).
            UnsupportedMediaTypeError: another patch type (JSON Patch).
            PatchError: a malformed patch.
        """
        namespace, name = request.params["namespace"], request.params["name"]
        dry_run = bool(request.query.get_all("dryRun"))
        media = (request.header("content-type") or "").split(";", 1)[0].strip().lower()
        if media == APPLY_PATCH:
            return await self._server_side_apply(request, namespace, name, dry_run)
        stored = self.store.get_pod(namespace, name)
        patched = apply_patch(media, self.reconciler.pod_object(stored), request.body)
        spec = patched.get("spec")
        if isinstance(spec, dict) and spec.get("nodeName") == self.node_name:
            patched["spec"] = {k: v for k, v in spec.items() if k != "nodeName"}
        patched.pop("status", None)
        return await self._update(patched, namespace, name, dry_run)

    async def _server_side_apply(
        self, request: Request, namespace: str, name: str, dry_run: bool
    ) -> Response:
        try:
            applied = yaml.safe_load(request.body)
        except yaml.YAMLError as err:
            raise BadRequestError(f"the applied configuration is not YAML: {err}") from err
        if not isinstance(applied, dict):
            raise BadRequestError("the applied configuration must be a Pod object")
        if (applied.get("metadata") or {}).get("name") != name:
            raise BadRequestError(
                f'the name of the object does not match the name on the URL ("{name}")'
            )
        try:
            self.store.get_pod(namespace, name)
        except NotFoundError:
            try:
                stored = await self.reconciler.create(applied, namespace, dry_run=dry_run)
            except ManifestError as err:
                return invalid_response("Pod", name, err)
            return Response.json(self.reconciler.pod_object(stored), 201)
        return await self._update(applied, namespace, name, dry_run)

    async def _update(
        self, manifest: dict[str, Any], namespace: str, name: str, dry_run: bool
    ) -> Response:
        try:
            stored = await self.reconciler.update(manifest, namespace, dry_run=dry_run)
        except ManifestError as err:
            return invalid_response("Pod", name, err)
        return Response.json(self.reconciler.pod_object(stored))

    # --- namespaces ---------------------------------------------------------------------------

    def _namespaces(self) -> dict[str, float]:
        """Namespace name -> the creation time of its oldest pod (agent start for default)."""
        seen: dict[str, float] = {"default": self.started_at}
        for pod in self.store.list_pods():
            seen[pod.namespace] = min(seen.get(pod.namespace, pod.created_at), pod.created_at)
        return seen

    @staticmethod
    def _namespace(name: str, created: float) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "creationTimestamp": rfc3339(created)},
            "spec": {},
            "status": {"phase": "Active"},
        }

    async def list_namespaces(self, request: Request) -> Response:
        """``GET /api/v1/namespaces``: ``default`` and every namespace with pods."""
        items = [self._namespace(n, t) for n, t in sorted(self._namespaces().items())]
        version = self.store.resource_version()
        return list_response(request, "namespaces", "NamespaceList", items, version)

    async def get_namespace(self, request: Request) -> Response:
        """``GET /api/v1/namespaces/{name}``.

        Raises:
            NotFoundError: not ``default`` and no pod lives there.
        """
        name = request.params["name"]
        created = self._namespaces().get(name)
        if created is None:
            raise NotFoundError(f'namespaces "{name}" not found')
        return object_response(request, "namespaces", self._namespace(name, created))

    async def get_lease(self, request: Request) -> Response:
        """``GET .../kube-node-lease/leases/{node}``: the node's heartbeat, renewed now while
        the agent answers (``kubectl describe node`` shows it).

        Raises:
            NotFoundError: the name is not this node's.
        """
        if request.params["name"] != self.node_name:
            raise NotFoundError(f'leases.coordination.k8s.io "{request.params["name"]}" not found')
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return Response.json(
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.node_name, "namespace": "kube-node-lease"},
                "spec": {
                    "holderIdentity": self.node_name,
                    "leaseDurationSeconds": 40,
                    "renewTime": now,
                },
            }
        )

    # --- client certificates ------------------------------------------------------------------

    async def issue_certificate(self, request: Request) -> Response:
        """``POST .../clientcertificates`` with ``{"csr": PEM, "user": NAME, "days": N}``.

        Returns:
            A ``ClientCertificate`` whose ``status`` holds ``certificate``,
            ``certificateAuthority`` (PEM), ``notAfter``, ``server`` (``https://host:port``),
            ``tlsServerName`` and ``cluster`` (the node name).

        Raises:
            BadRequestError: the TCP API is off, or the body or CSR is invalid.
        """
        if isinstance(request.peer, TlsPeer):
            return status_response(
                403,
                "Forbidden",
                "client certificates are issued only over the agent's Unix socket",
            )
        if self.pki is None or self.tcp_address is None:
            raise BadRequestError(
                "the agent serves no TCP API, which kubectl needs: set api.listen (e.g. "
                "FLORETE_API_LISTEN=127.0.0.1:6443, or [api] listen in agent.toml) and restart "
                "the agent"
            )
        body = request.json()
        if not isinstance(body, dict) or not isinstance(body.get("csr"), str):
            raise BadRequestError('the body must be {"csr": "<PEM>", "user": "...", "days": N}')
        user = body.get("user") or self._user_of(request)
        days = body.get("days", DEFAULT_CLIENT_DAYS)
        if not isinstance(user, str) or not isinstance(days, int):
            raise BadRequestError("user must be a string and days an integer")
        issued = self.pki.issue_client(body["csr"].encode(), user, days)
        host, port = self.tcp_address
        if host in ("0.0.0.0", "::", ""):
            host = self.host_ip
        if ":" in host:
            host = f"[{host}]"
        return Response.json(
            {
                "apiVersion": GROUP_VERSION,
                "kind": "ClientCertificate",
                "metadata": {"name": user},
                "status": {
                    "certificate": issued.certificate_pem.decode(),
                    "certificateAuthority": issued.ca_pem.decode(),
                    "notAfter": rfc3339(issued.not_after),
                    "server": f"https://{host}:{port}",
                    "tlsServerName": self.pki.server_name,
                    "cluster": self.node_name,
                },
            },
            201,
        )

    @staticmethod
    def _user_of(request: Request) -> str:
        if isinstance(request.peer, PeerCredentials):
            try:
                return pwd.getpwuid(request.peer.uid).pw_name
            except KeyError:
                return f"uid-{request.peer.uid}"
        return "kubectl"
