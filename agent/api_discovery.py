"""API discovery and OpenAPI documents, as ``kubectl`` reads them before anything else.

* ``GET /api`` (``APIVersions``), ``GET /apis`` (``APIGroupList``), ``GET /api/v1`` and
  ``GET /apis/florete.io/v1alpha1`` (``APIResourceList``): the legacy (unaggregated) discovery
  of ``k8s.io/apimachinery/pkg/apis/meta/v1``. kubectl 1.32 first asks for aggregated discovery
  (``as=APIGroupDiscoveryList``); a plain ``application/json`` answer makes it fall back to these
  documents, so only they are served.
* ``GET /openapi/v3`` and ``GET /openapi/v3/api/v1``: an OpenAPI 3.0 document whose only purpose
  is to tell kubectl that pod requests accept the ``fieldValidation`` query parameter. kubectl then
  validates on the server (``fieldValidation=Strict``) instead of downloading schemas; this API
  validates every manifest strictly anyway (unknown fields are errors that name the field). The
  check kubectl makes is ``supportsQueryParamV3`` in ``k8s.io/cli-runtime/pkg/resource``: a PATCH
  operation tagged ``x-kubernetes-group-version-kind`` with a query parameter of that name.
  No component schemas are published, so client-side ``kubectl apply`` computes its patches
  from kubectl's own built-in Pod type, and ``kubectl explain`` has nothing to explain.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from agent.httproute import Request, Response

GROUP = "florete.io"
GROUP_VERSION = f"{GROUP}/v1alpha1"
_ALL_VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]


def _resource(
    name: str,
    kind: str,
    verbs: list[str],
    *,
    namespaced: bool = True,
    singular: str = "",
    short: tuple[str, ...] = (),
    categories: tuple[str, ...] = (),
) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": name,
        "singularName": singular,
        "namespaced": namespaced,
        "kind": kind,
        "verbs": verbs,
    }
    if short:
        entry["shortNames"] = list(short)
    if categories:
        entry["categories"] = list(categories)
    return entry


CORE_RESOURCES: list[dict[str, Any]] = [
    _resource("pods", "Pod", _ALL_VERBS, singular="pod", short=("po",), categories=("all",)),
    _resource("pods/exec", "PodExecOptions", ["create", "get"]),
    _resource("pods/log", "Pod", ["get"]),
    _resource("pods/status", "Pod", ["get"]),
    _resource("events", "Event", ["get", "list"], singular="event", short=("ev",)),
    _resource("nodes", "Node", ["get", "list"], namespaced=False, singular="node", short=("no",)),
    _resource(
        "namespaces",
        "Namespace",
        ["get", "list"],
        namespaced=False,
        singular="namespace",
        short=("ns",),
    ),
]
"""Resources of ``/api/v1``, as ``APIResource`` objects (the verbs this API implements)."""

FLORETE_RESOURCES: list[dict[str, Any]] = [
    _resource("peers", "Peer", ["list"], namespaced=False, singular="peer"),
]
"""Resources of ``/apis/florete.io/v1alpha1`` that follow the Kubernetes list conventions."""


def _pod_operation(method: str) -> dict[str, Any]:
    params = [
        {"name": name, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
        for name in ("dryRun", "fieldManager", "fieldValidation")
    ]
    return {
        "operationId": f"{method}CoreV1NamespacedPod",
        "x-kubernetes-action": method,
        "x-kubernetes-group-version-kind": {"group": "", "version": "v1", "kind": "Pod"},
        "parameters": params,
        "responses": {"200": {"description": "OK"}},
    }


OPENAPI_V1: dict[str, Any] = {
    "openapi": "3.0.0",
    "info": {"title": "florete-agent", "version": "v1"},
    "paths": {
        "/api/v1/namespaces/{namespace}/pods": {"post": _pod_operation("post")},
        "/api/v1/namespaces/{namespace}/pods/{name}": {
            "put": _pod_operation("put"),
            "patch": _pod_operation("patch"),
        },
    },
    "components": {"schemas": {}},
}
"""The OpenAPI 3.0 document of ``api/v1`` (see the module docstring)."""

_OPENAPI_V1_BYTES = json.dumps(OPENAPI_V1, separators=(",", ":")).encode()
_OPENAPI_V1_HASH = hashlib.sha256(_OPENAPI_V1_BYTES).hexdigest().upper()


async def api_versions(request: Request) -> Response:
    """``GET /api``: the core group's versions."""
    return Response.json({"kind": "APIVersions", "versions": ["v1"]})


async def api_groups(request: Request) -> Response:
    """``GET /apis``: the named groups (only ``florete.io``)."""
    version = {"groupVersion": GROUP_VERSION, "version": "v1alpha1"}
    return Response.json(
        {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [{"name": GROUP, "versions": [version], "preferredVersion": version}],
        }
    )


async def core_resources(request: Request) -> Response:
    """``GET /api/v1``: the core resources."""
    return Response.json(
        {"kind": "APIResourceList", "groupVersion": "v1", "resources": CORE_RESOURCES}
    )


async def florete_resources(request: Request) -> Response:
    """``GET /apis/florete.io/v1alpha1``: Florete's resources that kubectl can list."""
    return Response.json(
        {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": GROUP_VERSION,
            "resources": FLORETE_RESOURCES,
        }
    )


async def openapi_v3_root(request: Request) -> Response:
    """``GET /openapi/v3``: the group-version documents and their content hashes."""
    url = f"/openapi/v3/api/v1?hash={_OPENAPI_V1_HASH}"
    return Response.json({"paths": {"api/v1": {"serverRelativeURL": url}}})


async def openapi_v3_core(request: Request) -> Response:
    """``GET /openapi/v3/api/v1``: see :data:`OPENAPI_V1`."""
    return Response(200, _OPENAPI_V1_BYTES, "application/json")


ROUTES = (
    ("GET", "/api", api_versions),
    ("GET", "/apis", api_groups),
    ("GET", "/api/v1", core_resources),
    ("GET", f"/apis/{GROUP_VERSION}", florete_resources),
    ("GET", "/openapi/v3", openapi_v3_root),
    ("GET", "/openapi/v3/api/v1", openapi_v3_core),
)
"""``(method, template, handler)`` of every discovery route."""
