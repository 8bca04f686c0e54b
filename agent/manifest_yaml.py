"""Read Pod manifests from YAML (or JSON) text, as kubectl does.

Only the CLI reads YAML: the daemon receives JSON, so PyYAML is never imported by the daemon
(it costs about 1 MiB of RSS). Errors name the source, line and column.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import yaml

from agent.errors import ManifestError
from agent.manifest_schema import describe

try:
    from yaml import CSafeLoader as _BaseLoader
except ImportError:  # PyYAML built without libyaml
    from yaml import SafeLoader as _BaseLoader  # type: ignore[assignment]

#: Characters YAML forbids in a stream (YAML 1.1 section 5.1; PyYAML ``Reader.NON_PRINTABLE``).
_NON_PRINTABLE = re.compile(
    "[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
#: Deepest nesting of mappings and lists accepted (managedFields, the deepest part of a real
#: pod, nests about 15 levels).
_MAX_DEPTH = 100


class _Loader(_BaseLoader):
    """Safe YAML loader that reads as Kubernetes does (``sigs.k8s.io/yaml``).

    Duplicate mapping keys are errors (kubectl rejects them) and timestamps stay strings. A
    scalar its tag cannot hold (``!!int ""``, ``!!bool maybe``, an integer longer than
    ``sys.get_int_max_str_digits()``) is a positioned error instead of a bare Python exception.
    """

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, LookupError, OverflowError) as err:
            kind = node.tag.rpartition(":")[2]
            message = f"invalid {kind} {describe(node.value)}"
            raise yaml.constructor.ConstructorError(None, None, message, node.start_mark) from err

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # unhashable: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {describe(key)}", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)

    def construct_timestamp(self, node: yaml.ScalarNode) -> str:
        return self.construct_scalar(node)


_Loader.add_constructor("tag:yaml.org,2002:timestamp", _Loader.construct_timestamp)


def load_documents(text: str, source: str = "-") -> list[dict[str, Any]]:
    """Split a YAML (or JSON) stream into Kubernetes objects.

    Args:
        text: one or more YAML documents separated by ``---``, or JSON.
        source: the file name shown in error messages (``-`` for stdin).

    Returns:
        One mapping per non-empty document, in order; a ``kind: List`` (or ``PodList``) document
        contributes its ``items`` instead.

    Raises:
        ManifestError: the text is not valid YAML (``"<source>:<line>:<column>: <problem>"``,
            1-based), or documents are not mappings (``"<source>: document <n>: ..."``, 1-based).
    """
    bad = _NON_PRINTABLE.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        char = f"#x{ord(bad.group()):04x}"
        raise ManifestError([f"{source}:{line}:{column}: unacceptable character {char}"])
    try:
        _check_depth(text, source)
        loaded = list(yaml.load_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as err:
        where = _position(source, err.problem_mark or err.context_mark)
        raise ManifestError([f"{where}: {err.problem or err.context}"]) from err
    except yaml.YAMLError as err:
        raise ManifestError([f"{source}: {err}"]) from err
    documents: list[dict[str, Any]] = []
    errors: list[str] = []
    for number, document in enumerate(loaded, start=1):
        where = f"{source}: document {number}"
        if document is None:
            continue
        if not isinstance(document, dict):
            errors.append(
                f"{where}: must be a mapping (a Kubernetes object), got {describe(document)}"
            )
        elif document.get("kind") in ("List", "PodList"):
            items = document.get("items") or []
            if not isinstance(items, list):
                errors.append(f"{where}: items: must be a list, got {describe(items)}")
                continue
            for index, item in enumerate(items):
                if isinstance(item, dict):
                    documents.append(item)
                else:
                    errors.append(
                        f"{where}: items[{index}]: must be a mapping, got {describe(item)}"
                    )
        else:
            documents.append(document)
    if errors:
        raise ManifestError(errors)
    return documents


class _Mark(Protocol):
    """A position in a YAML stream (``yaml.Mark``, or libyaml's), both 0-based."""

    line: int
    column: int


def _position(source: str, mark: _Mark | None) -> str:
    """Return ``"<source>:<line>:<column>"`` (1-based) for a YAML mark, or the source alone."""
    return source if mark is None else f"{source}:{mark.line + 1}:{mark.column + 1}"


def _check_depth(text: str, source: str) -> None:
    """Reject nesting deeper than :data:`_MAX_DEPTH` before a recursive composer sees it.

    The parsers are iterative, but composing nodes recurses: libyaml's composer overflows the C
    stack (the process dies) near 100,000 levels, the Python one raises ``RecursionError``.

    Raises:
        ManifestError: ``"<source>:<line>:<column>: nested deeper than <n> levels"``.
        yaml.MarkedYAMLError: the text is not YAML.
    """
    depth = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > _MAX_DEPTH:
                where = _position(source, event.start_mark)
                raise ManifestError([f"{where}: nested deeper than {_MAX_DEPTH} levels"])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
