"""Property tests: garbage either parses or raises ManifestError, never anything else."""

from __future__ import annotations

import copy
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from agent import manifest_schema
from agent.errors import ManifestError
from agent.manifest import parse_pod, pod_to_manifest
from agent.manifest_yaml import load_documents
from tests.unit.test_manifest import FULL

KNOWN_NAMES = sorted(
    {
        name
        for schema in vars(manifest_schema).values()
        if isinstance(schema, manifest_schema.ObjectSchema)
        for name in (
            schema.supported | schema.defaults.keys() | schema.ignored | schema.unsupported
        )
    }
    | {"cpu", "memory", "v1", "Pod"}
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["v1", "Pod", "http", "500m", "1Gi", "metadata.name", "Always", "-1"])
)
KEYS = st.sampled_from(KNOWN_NAMES) | st.text(max_size=8)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=5),
    max_leaves=25,
)
YAML_TOKENS = st.sampled_from(
    [
        *":-[]{}#&*!|>'\"%@`,?\t\n",
        " ",
        "  ",
        "a",
        "1",
        "---",
        "...",
        "!!int ",
        "!!binary ",
        "!!timestamp ",
        "<<",
        "&x ",
        "*x",
        "\x00",
        "\ud800",
        "é",
        "0x",
        "1e3",
        "2024-13-45",
        "~",
    ]
)
FULL_MANIFEST: dict[str, Any] = load_documents(FULL)[0]


def check_pod(obj: Any) -> None:
    """parse_pod returns a pod that round-trips, or raises ManifestError with messages."""
    try:
        pod = parse_pod(obj)
    except ManifestError as err:
        assert_messages(err)
        return
    assert parse_pod(pod_to_manifest(pod)) == pod


def assert_messages(err: ManifestError) -> None:
    """The error carries at least one message, and every message is a non-empty string."""
    assert err.errors
    assert all(isinstance(m, str) and m for m in err.errors)


def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indexes) into a JSON value, the root included."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += paths(item, (*prefix, index))
    return found


@settings(max_examples=300, deadline=None)
@given(JSON)
def test_arbitrary_json_is_a_pod_or_a_manifest_error(obj: Any) -> None:
    check_pod(obj)


@settings(max_examples=300, deadline=None)
@given(JSON, JSON)
def test_arbitrary_pod_shaped_json(metadata: Any, spec: Any) -> None:
    check_pod({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec})
    check_pod(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "p"},
            "spec": {"containers": [spec]},
        }
    )


@settings(max_examples=500, deadline=None)
@given(st.data())
def test_mutated_full_manifest(data: st.DataObject) -> None:
    manifest = copy.deepcopy(FULL_MANIFEST)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths(manifest)[1:]))
        parent = manifest
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = data.draw(JSON)
    check_pod(manifest)


@settings(max_examples=300, deadline=None)
@given(st.text() | st.lists(YAML_TOKENS, max_size=40).map("".join))
def test_arbitrary_text_loads_or_raises_manifest_error(text: str) -> None:
    try:
        documents = load_documents(text, "fuzz.yaml")
    except ManifestError as err:
        assert_messages(err)
        return
    assert all(isinstance(d, dict) for d in documents)
    for document in documents:
        check_pod(document)
