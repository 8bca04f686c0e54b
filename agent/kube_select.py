"""Label and field selectors of list and watch requests, as the Kubernetes API parses them.

Label selectors follow ``k8s.io/apimachinery/pkg/labels`` (``Parse``): comma-separated
requirements ``key``, ``!key``, ``key=v``, ``key==v``, ``key!=v``, ``key in (v1,v2)``,
``key notin (v1,v2)``, ``key>N`` and ``key<N``; all must hold. Field selectors follow
``k8s.io/apimachinery/pkg/fields`` (``ParseSelector``): comma-separated ``path=v``, ``path==v`` or
``path!=v`` terms with ``\\`` escaping ``,``, ``=``, ``!`` and ``\\``; each resource supports a
fixed set of paths, and another one is refused as ``field label not supported`` (as the API
server does).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from agent.errors import BadRequestError

LabelOp = Literal["exists", "!exists", "=", "!=", "in", "notin", ">", "<"]

# RFC 1123 subdomain prefix (253 characters), then "/" and a name of 63: labels.IsQualifiedName.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
_KEY = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
_VALUE = re.compile(rf"^({_NAME})?$")
_TERM = re.compile(
    r"^\s*(?P<neg>!)?\s*(?P<key>[^\s!=<>(),]+)\s*"
    r"(?:(?P<op>==|=|!=|>|<)\s*(?P<value>[^\s(),]*)|(?P<set>in|notin)\s*\((?P<values>[^()]*)\))?\s*$"
)

#: Field paths each resource may be selected by (``pkg/registry/core/*/strategy.go``).
FIELDS: Mapping[str, frozenset[str]] = {
    "pods": frozenset(
        {
            "metadata.name",
            "metadata.namespace",
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        }
    ),
    "events": frozenset(
        {
            "metadata.name",
            "metadata.namespace",
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        }
    ),
    "nodes": frozenset({"metadata.name", "spec.unschedulable"}),
    "namespaces": frozenset({"metadata.name", "status.phase"}),
}


@dataclass(frozen=True)
class Requirement:
    """One requirement of a label selector: ``key op values``."""

    key: str
    op: LabelOp
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether ``labels`` satisfy this requirement (``labels.Requirement.Matches``)."""
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        try:
            number, bound = int(value), int(self.values[0])
        except ValueError:
            return False
        return present and (number > bound if self.op == ">" else number < bound)


def _split_terms(text: str) -> list[str]:
    """Split at commas outside parentheses."""
    terms, depth, start = [], 0, 0
    for i, char in enumerate(text):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            terms.append(text[start:i])
            start = i + 1
    terms.append(text[start:])
    return terms


def parse_label_selector(text: str) -> tuple[Requirement, ...]:
    """Parse a label selector such as ``app=web,tier in (a,b),!canary``.

    Returns:
        The requirements (empty for an empty selector, which matches everything).

    Raises:
        BadRequestError: a term does not parse, or a key or value is not a valid label key or
            value (the message names the term).
    """
    if not text.strip():
        return ()
    requirements = []
    for term in _split_terms(text):
        match = _TERM.match(term)
        if match is None:
            raise BadRequestError(f'unable to parse requirement: "{term.strip()}"')
        key = match.group("key")
        if not _KEY.match(key):
            raise BadRequestError(f'unable to parse requirement: invalid label key "{key}"')
        op: LabelOp
        if match.group("set"):
            op = "in" if match.group("set") == "in" else "notin"
            values = tuple(v.strip() for v in match.group("values").split(","))
        elif match.group("op"):
            raw = match.group("op")
            op = "=" if raw in ("=", "==") else "!=" if raw == "!=" else ">" if raw == ">" else "<"
            values = (match.group("value"),)
            if op in (">", "<") and not values[0].lstrip("-").isdigit():
                raise BadRequestError(
                    f'unable to parse requirement: "{term.strip()}": {raw} needs an integer'
                )
        else:
            op, values = ("!exists" if match.group("neg") else "exists"), ()
        if match.group("neg") and op != "!exists":
            raise BadRequestError(f'unable to parse requirement: "{term.strip()}"')
        for value in values:
            if op not in (">", "<") and not _VALUE.match(value):
                raise BadRequestError(f'unable to parse requirement: invalid label value "{value}"')
        requirements.append(Requirement(key, op, values))
    return tuple(requirements)


@dataclass(frozen=True)
class FieldTerm:
    """One term of a field selector: ``path op value`` with ``op`` ``=`` or ``!=``."""

    path: str
    op: Literal["=", "!="]
    value: str

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether ``obj`` (a Kubernetes object dict) satisfies this term; absent is ``""``."""
        actual = field_value(obj, self.path)
        return (actual == self.value) == (self.op == "=")


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The value at dotted ``path`` in ``obj`` as a field selector compares it (``""`` if absent;
    booleans as ``true``/``false``; ``source`` of an event is its component)."""
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return ""
        node = node.get(part)
    if path == "source" and isinstance(node, Mapping):
        node = node.get("component")
    if isinstance(node, bool):
        return "true" if node else "false"
    return "" if node is None else str(node)


def _split_unescaped(text: str, separator: str) -> list[str]:
    """Split ``text`` at each ``separator`` not escaped by ``\\``, keeping the escapes."""
    pieces, start, i = [], 0, 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text[i] == separator:
            pieces.append(text[start:i])
            start = i + 1
        i += 1
    pieces.append(text[start:])
    return pieces


def _find_unescaped(text: str, needle: str) -> int:
    i = 0
    while i < len(text):
        if text[i] == "\\":
            i += 2
            continue
        if text.startswith(needle, i):
            return i
        i += 1
    return -1


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def parse_field_selector(text: str, resource: str) -> tuple[FieldTerm, ...]:
    """Parse a field selector such as ``status.phase!=Failed,spec.nodeName=board-1``.

    Args:
        text: the ``fieldSelector`` query value.
        resource: plural resource name, e.g. ``"pods"``; picks the supported paths.

    Raises:
        BadRequestError: a term has no operator, or names a path the resource does not
            support (``field label not supported: PATH``).
    """
    supported = FIELDS.get(resource, frozenset({"metadata.name", "metadata.namespace"}))
    terms = []
    for raw in _split_unescaped(text, ","):
        if not raw.strip():
            continue
        term = _parse_field_term(raw)
        if term.path not in supported:
            raise BadRequestError(
                f"field label not supported: {term.path} "
                f"(supported for {resource}: {', '.join(sorted(supported))})"
            )
        terms.append(term)
    return tuple(terms)


def _parse_field_term(raw: str) -> FieldTerm:
    for op, spelled in (("!=", "!="), ("=", "=="), ("=", "=")):
        index = _find_unescaped(raw, spelled)
        if index >= 0:
            path = _unescape(raw[:index]).strip()
            value = _unescape(raw[index + len(spelled) :])
            return FieldTerm(path, "!=" if op == "!=" else "=", value)
    raise BadRequestError(f"invalid field selector: '{raw}': expected path=value or path!=value")


@dataclass(frozen=True)
class Selector:
    """The label and field selectors of one request; :meth:`matches` applies both."""

    labels: tuple[Requirement, ...] = ()
    fields: tuple[FieldTerm, ...] = ()

    @classmethod
    def parse(
        cls, label_selector: str | None, field_selector: str | None, resource: str
    ) -> Selector:
        """Parse the ``labelSelector`` and ``fieldSelector`` query values (either may be None).

        Raises:
            BadRequestError: either selector is malformed (see the parse functions).
        """
        return cls(
            parse_label_selector(label_selector or ""),
            parse_field_selector(field_selector, resource) if field_selector else (),
        )

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Whether the object dict satisfies every label requirement and field term."""
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(r.matches(labels) for r in self.labels) and all(
            t.matches(obj) for t in self.fields
        )

    def filter(self, objects: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        """The objects that match, in order."""
        return [obj for obj in objects if self.matches(obj)]
