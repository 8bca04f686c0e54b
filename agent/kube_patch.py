"""PATCH bodies for pods: JSON merge patch and Kubernetes strategic merge patch.

* ``application/merge-patch+json``: RFC 7386 (objects merge, ``null`` deletes, anything else
  replaces).
* ``application/strategic-merge-patch+json``: what client-side ``kubectl apply``, ``kubectl
  label`` and ``kubectl annotate`` send for built-in types
  (https://github.com/kubernetes/community/blob/master/contributors/devel/sig-api-machinery/strategic-merge-patch.md).
  Like a merge patch, except that lists tagged ``patchStrategy=merge`` in the Pod's Go types
  merge element by element on their ``patchMergeKey`` (containers by ``name``, ports by
  ``containerPort``, volume mounts by ``mountPath`` ...), and these directives are honoured:
  ``$patch: replace|delete|merge``, ``$retainKeys``, ``$setElementOrder/<list>`` and
  ``$deleteFromPrimitiveList/<list>``.

JSON Patch (RFC 6902) is not supported; the error says which types are.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from agent.errors import LocalError

MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

_ORDER = "$setElementOrder/"
_DELETE_PRIMITIVES = "$deleteFromPrimitiveList/"

# Nested object types by field, and merge-strategy lists: field -> (merge key, element type).
# A merge key of "" marks a list of primitives merged as a set. From k8s.io/api/core/v1
# types.go (patchStrategy / patchMergeKey tags).
_OBJECTS: Mapping[str, Mapping[str, str]] = {
    "Pod": {"metadata": "ObjectMeta", "spec": "PodSpec", "status": "PodStatus"},
}
_LISTS: Mapping[str, Mapping[str, tuple[str, str | None]]] = {
    "ObjectMeta": {"ownerReferences": ("uid", None), "finalizers": ("", None)},
    "PodSpec": {
        "containers": ("name", "Container"),
        "initContainers": ("name", "Container"),
        "ephemeralContainers": ("name", "Container"),
        "volumes": ("name", None),
        "imagePullSecrets": ("name", None),
        "hostAliases": ("ip", None),
        "topologySpreadConstraints": ("topologyKey", None),
        "resourceClaims": ("name", None),
        "schedulingGates": ("name", None),
    },
    "Container": {
        "ports": ("containerPort", None),
        "env": ("name", None),
        "volumeMounts": ("mountPath", None),
        "volumeDevices": ("devicePath", None),
    },
    "PodStatus": {"conditions": ("type", None)},
}


class UnsupportedMediaTypeError(LocalError):
    """The PATCH body's content type is not one this API applies (HTTP 415)."""

    code = "unsupported_media_type"
    reason = "UnsupportedMediaType"
    http_status = 415


class PatchError(LocalError):
    """The patch is malformed (HTTP 400 BadRequest)."""

    code = "bad_patch"
    reason = "BadRequest"
    http_status = 400


def apply_patch(content_type: str, target: dict[str, Any], body: bytes) -> dict[str, Any]:
    """Apply a PATCH body to a Pod object.

    Args:
        content_type: the request's media type (parameters ignored).
        target: the current Pod object (not modified).
        body: the patch, JSON.

    Returns:
        The patched object.

    Raises:
        UnsupportedMediaTypeError: the content type is neither merge nor strategic merge patch.
        PatchError: the body is not a JSON object, or a directive or list element is malformed.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media not in (MERGE_PATCH, STRATEGIC_MERGE_PATCH):
        raise UnsupportedMediaTypeError(
            f"the body of the request was in an unknown format ({content_type or 'none'}); "
            f"accepted: {STRATEGIC_MERGE_PATCH}, {MERGE_PATCH}, {APPLY_PATCH}"
        )
    try:
        patch = json.loads(body)
    except ValueError as err:
        raise PatchError(f"the patch is not valid JSON: {err}") from err
    if not isinstance(patch, dict):
        raise PatchError("the patch must be a JSON object")
    if media == MERGE_PATCH:
        merged: dict[str, Any] = merge_patch(target, patch)
        return merged
    result: dict[str, Any] | None = _merge_map(target, patch, "Pod")
    if result is None:
        raise PatchError('"$patch": "delete" cannot delete the whole object; use DELETE')
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 §2 ``MergePatch(Target, Patch)``."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _strip(value: Any) -> Any:
    """A new value from a strategic patch, with its directives applied to nothing."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if not k.startswith("$") and v is not None}
    if isinstance(value, list):
        return [_strip(v) for v in value if not (isinstance(v, dict) and "$patch" in v)]
    return value


def _merge_map(
    original: Mapping[str, Any], patch: Mapping[str, Any], kind: str | None
) -> dict[str, Any] | None:
    """Strategic merge of one object; None when the patch deletes it (``$patch: delete``)."""
    directive = patch.get("$patch", "merge")
    if directive == "delete":
        return None
    if directive == "replace":
        return _strip(dict(patch))  # type: ignore[no-any-return]
    if directive != "merge":
        raise PatchError(f'unknown "$patch" directive {directive!r}')
    result = dict(original)
    orders: dict[str, Any] = {}
    lists = _LISTS.get(kind or "", {})
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith(_ORDER):
            orders[key[len(_ORDER) :]] = value
        elif key.startswith(_DELETE_PRIMITIVES):
            field = key[len(_DELETE_PRIMITIVES) :]
            if not isinstance(value, list):
                raise PatchError(f"{key} must be a list")
            result[field] = [v for v in result.get(field) or [] if v not in value]
        elif value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            child = _OBJECTS.get(kind or "", {}).get(key)
            current = result.get(key)
            merged = _merge_map(current if isinstance(current, dict) else {}, value, child)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list) and key in lists:
            current = result.get(key)
            result[key] = _merge_list(
                current if isinstance(current, list) else [], value, key, lists[key]
            )
        else:
            result[key] = _strip(value)
    for field, order in orders.items():
        if field in result and isinstance(order, list):
            result[field] = _reorder(result[field], order, lists.get(field, ("", None))[0])
    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchError("$retainKeys must be a list")
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _merge_list(
    original: list[Any], patch: list[Any], field: str, strategy: tuple[str, str | None]
) -> list[Any]:
    key, element_kind = strategy
    if any(isinstance(item, dict) and item.get("$patch") == "replace" for item in patch):
        return _strip(patch)  # type: ignore[no-any-return]
    if not key:
        return [*original, *(v for v in patch if v not in original)]
    result = list(original)
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise PatchError(f"{field}: every element of the patch needs its merge key {key!r}")
        index = next(
            (
                i
                for i, cur in enumerate(result)
                if isinstance(cur, dict) and cur.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        merged = _merge_map(result[index] if index is not None else {}, item, element_kind)
        if merged is None:
            continue
        if index is None:
            result.append(merged)
        else:
            result[index] = merged
    return result


def _reorder(items: Any, order: list[Any], key: str) -> Any:
    """``$setElementOrder``: elements named in ``order`` first, in that order, then the rest."""
    if not isinstance(items, list):
        return items

    def ident(item: Any) -> Any:
        return item.get(key) if key and isinstance(item, dict) else item

    wanted = [ident(o) for o in order]
    placed = sorted((i for i in items if ident(i) in wanted), key=lambda i: wanted.index(ident(i)))
    return placed + [i for i in items if ident(i) not in wanted]
