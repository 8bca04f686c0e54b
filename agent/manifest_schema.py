"""The whitelist schema of Pod manifests and the reader that enforces it field by field.

Each Kubernetes object type florete-agent reads has an :class:`ObjectSchema`: the fields it
supports, the Kubernetes fields it accepts only at their default values, the server-set fields it
ignores, and every other field Kubernetes defines (so that ``volumeMounts`` is reported as *not
supported* while the typo ``comand`` is reported as an *unknown field* with a suggestion). Field
names come from the Kubernetes API reference, "Pod v1 core" and "Container" (v1.32).

:class:`Fields` reads one JSON object against its schema and collects every problem into
:class:`Problems` as ``"<path>: <message>"``, with kubectl-style paths (``spec.containers[0].name``;
map keys in brackets: ``metadata.labels[app]``). The name rules follow
``k8s.io/apimachinery/pkg/util/validation/validation.go``.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

_Choice = TypeVar("_Choice", bound=str)

#: Message for a Kubernetes field (or value) florete-agent does not implement.
NOT_SUPPORTED = "not supported by florete-agent"


@dataclass(frozen=True, slots=True)
class ObjectSchema:
    """The fields of one Kubernetes object type, as florete-agent treats them.

    Attributes:
        supported: fields the parser reads.
        defaults: Kubernetes fields accepted only with one of the listed values (their defaults).
        ignored: server-set fields accepted with any value and dropped.
        unsupported: the other fields Kubernetes defines; present and set, each is an error.
    """

    supported: frozenset[str]
    defaults: Mapping[str, tuple[object, ...]] = field(default_factory=dict)
    ignored: frozenset[str] = frozenset()
    unsupported: frozenset[str] = frozenset()


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


POD = ObjectSchema(_names("apiVersion kind metadata spec"), ignored=_names("status"))
OBJECT_META = ObjectSchema(
    _names("name namespace labels annotations"),
    ignored=_names(
        "uid resourceVersion creationTimestamp generation managedFields selfLink "
        "deletionTimestamp deletionGracePeriodSeconds"
    ),
    unsupported=_names("generateName ownerReferences finalizers"),
)
POD_SPEC = ObjectSchema(
    _names(
        "containers initContainers restartPolicy terminationGracePeriodSeconds runtimeClassName "
        "hostNetwork nodeName securityContext tolerations"
    ),
    defaults={
        "dnsPolicy": ("ClusterFirst", "ClusterFirstWithHostNet", "Default"),
        "schedulerName": ("default-scheduler",),
        "enableServiceLinks": (True, False),
        "priority": (0,),
        "preemptionPolicy": ("PreemptLowerPriority",),
        "serviceAccountName": ("default",),
        "serviceAccount": ("default",),
        "automountServiceAccountToken": (False,),
    },
    unsupported=_names(
        "activeDeadlineSeconds affinity dnsConfig "
        "ephemeralContainers hostAliases hostIPC hostPID hostUsers hostname imagePullSecrets "
        "nodeSelector os overhead priorityClassName readinessGates resourceClaims resources "
        "schedulingGates setHostnameAsFQDN shareProcessNamespace subdomain "
        "topologySpreadConstraints volumes"
    ),
)
POD_SECURITY_CONTEXT = ObjectSchema(
    frozenset(),
    unsupported=_names(
        "appArmorProfile fsGroup fsGroupChangePolicy runAsGroup runAsNonRoot runAsUser "
        "seLinuxChangePolicy seLinuxOptions seccompProfile supplementalGroups "
        "supplementalGroupsPolicy sysctls windowsOptions"
    ),
)
TOLERATION = ObjectSchema(
    _names("key operator effect tolerationSeconds"), unsupported=_names("value")
)
CONTAINER = ObjectSchema(
    _names(
        "name image imagePullPolicy command args env workingDir ports resources livenessProbe "
        "readinessProbe startupProbe securityContext"
    ),
    defaults={
        "terminationMessagePath": ("/dev/termination-log",),
        "terminationMessagePolicy": ("File",),
        "stdin": (False,),
        "stdinOnce": (False,),
        "tty": (False,),
    },
    unsupported=_names(
        "envFrom lifecycle resizePolicy restartPolicy restartPolicyRules volumeDevices volumeMounts"
    ),
)
CONTAINER_SECURITY_CONTEXT = ObjectSchema(
    _names("runAsUser runAsGroup readOnlyRootFilesystem privileged allowPrivilegeEscalation"),
    unsupported=_names(
        "appArmorProfile capabilities procMount runAsNonRoot seLinuxOptions seccompProfile "
        "windowsOptions"
    ),
)
CONTAINER_PORT = ObjectSchema(_names("containerPort name protocol hostPort hostIP"))
ENV_VAR = ObjectSchema(_names("name value valueFrom"))
ENV_VAR_SOURCE = ObjectSchema(
    _names("fieldRef"),
    unsupported=_names("configMapKeyRef fileKeyRef resourceFieldRef secretKeyRef"),
)
OBJECT_FIELD_SELECTOR = ObjectSchema(_names("apiVersion fieldPath"))
RESOURCES = ObjectSchema(_names("limits requests"), unsupported=_names("claims"))
PROBE = ObjectSchema(
    _names(
        "exec httpGet tcpSocket initialDelaySeconds timeoutSeconds periodSeconds "
        "successThreshold failureThreshold terminationGracePeriodSeconds"
    ),
    unsupported=_names("grpc"),
)
EXEC_ACTION = ObjectSchema(_names("command"))
HTTP_GET_ACTION = ObjectSchema(_names("path port host scheme httpHeaders"))
HTTP_HEADER = ObjectSchema(_names("name value"))
TCP_SOCKET_ACTION = ObjectSchema(_names("port host"))

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_IANA_SVC_NAME = re.compile(r"[-a-z0-9]+")
_ENV_VAR_NAME = re.compile(r"[-._a-zA-Z][-._a-zA-Z0-9]*")
_HTTP_HEADER_NAME = re.compile(r"[-A-Za-z0-9]+")


def describe(value: object) -> str:
    """Show a manifest value in an error message: JSON for scalars, the kind for containers."""
    if isinstance(value, str):
        return json.dumps(value if len(value) <= 60 else value[:57] + "...")
    if value is None or isinstance(value, bool | int | float):
        return json.dumps(value)
    if isinstance(value, list):
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def dns1123_label_problem(value: str) -> str | None:
    """Return why ``value`` is not an RFC 1123 label (``IsDNS1123Label``), or None."""
    if len(value) <= 63 and _DNS_LABEL.fullmatch(value):
        return None
    return (
        "must be a lowercase RFC 1123 label (at most 63 characters: a-z, 0-9 and '-', starting "
        f"and ending with a letter or digit), got {describe(value)}"
    )


def dns1123_subdomain_problem(value: str) -> str | None:
    """Return why ``value`` is not an RFC 1123 subdomain (``IsDNS1123Subdomain``), or None."""
    if len(value) <= 253 and _DNS_SUBDOMAIN.fullmatch(value):
        return None
    return (
        "must be a lowercase RFC 1123 subdomain (at most 253 characters: a-z, 0-9, '-' and '.', "
        f"starting and ending with a letter or digit), got {describe(value)}"
    )


def qualified_name_problem(value: str) -> str | None:
    """Return why ``value`` is not a label or annotation key (``IsQualifiedName``), or None."""
    prefix, slash, name = value.rpartition("/")
    if (
        len(name) <= 63
        and _QUALIFIED_NAME.fullmatch(name)
        and (not slash or (len(prefix) <= 253 and _DNS_SUBDOMAIN.fullmatch(prefix)))
    ):
        return None
    return (
        "key must be [prefix/]name: a name of at most 63 characters (A-Z, a-z, 0-9, '-', '_' and "
        "'.', starting and ending with a letter or digit) after an optional lowercase DNS "
        f"subdomain prefix, got {describe(value)}"
    )


def label_value_problem(value: str) -> str | None:
    """Return why ``value`` is not a label value (``IsValidLabelValue``), or None."""
    if value == "" or (len(value) <= 63 and _QUALIFIED_NAME.fullmatch(value)):
        return None
    return (
        "must be empty or at most 63 characters (A-Z, a-z, 0-9, '-', '_' and '.', starting and "
        f"ending with a letter or digit), got {describe(value)}"
    )


def port_name_problem(value: str) -> str | None:
    """Return why ``value`` is not an IANA service name (``IsValidPortName``), or None."""
    if (
        len(value) <= 15
        and _IANA_SVC_NAME.fullmatch(value)
        and re.search("[a-z]", value)
        and not value.startswith("-")
        and not value.endswith("-")
        and "--" not in value
    ):
        return None
    return (
        "must be an IANA service name (at most 15 characters: a-z, 0-9 and '-', with at least "
        f"one letter and no leading, trailing or double '-'), got {describe(value)}"
    )


def env_var_name_problem(value: str) -> str | None:
    """Return why ``value`` is not an environment variable name (``IsEnvVarName``), or None."""
    if _ENV_VAR_NAME.fullmatch(value) and value != "." and not value.startswith(".."):
        return None
    return (
        "must consist of letters, digits, '-', '_' and '.', must not start with a digit and must "
        f"not be '.' or start with '..', got {describe(value)}"
    )


def header_name_problem(value: str) -> str | None:
    """Return why ``value`` is not an HTTP header name (``IsHTTPHeaderName``), or None."""
    if _HTTP_HEADER_NAME.fullmatch(value):
        return None
    return f"must consist of letters, digits and '-', got {describe(value)}"


def ip_problem(value: str) -> str | None:
    """Return why ``value`` is not an IPv4 or IPv6 address, or None."""
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return f"must be an IPv4 or IPv6 address, got {describe(value)}"
    return None


def _integer_phrase(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"must be an integer between {minimum} and {maximum}"
    if minimum == 0:
        return "must be a non-negative integer"
    if minimum == 1:
        return "must be a positive integer"
    return "must be an integer"


def _one_of(values: tuple[object, ...]) -> str:
    shown = [describe(v) for v in values]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


class Problems:
    """Every problem found in one manifest, in the order found.

    Attributes:
        messages: ``"<path>: <message>"`` strings.
    """

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, path: str, message: str) -> None:
        """Record that the field at ``path`` is wrong, and why."""
        self.messages.append(f"{path}: {message}")


class Fields:
    """Reads the fields of one JSON object at ``path`` against its :class:`ObjectSchema`.

    Construction reports every field the schema does not support. The typed getters report a
    wrong type or range and return None (or the default) instead of the bad value, so parsing
    goes on and collects further problems. A null value counts as absent, as in Kubernetes' JSON.
    """

    def __init__(
        self, problems: Problems, path: str, data: Mapping[Any, Any], schema: ObjectSchema
    ) -> None:
        self.problems = problems
        self.path = path
        self.data = data
        self.schema = schema
        for key, value in data.items():
            self._check_field(str(key), value)

    def _check_field(self, key: str, value: object) -> None:
        schema = self.schema
        if key in schema.supported or key in schema.ignored:
            return
        if key in schema.defaults:
            allowed = schema.defaults[key]
            if value is not None and not any(
                type(value) is type(a) and value == a for a in allowed
            ):
                message = f"only {_one_of(allowed)} is supported, got {describe(value)}"
                self.problems.add(self.child(key), message)
        elif key in schema.unsupported:
            if value not in (None, "", [], {}):
                self.problems.add(self.child(key), NOT_SUPPORTED)
        else:
            self.problems.add(self.child(key), "unknown field" + self._suggestion(key))

    def _suggestion(self, key: str) -> str:
        schema = self.schema
        known = schema.supported | schema.defaults.keys() | schema.ignored | schema.unsupported
        by_lower = {name.lower(): name for name in known}
        close = difflib.get_close_matches(key.lower(), list(by_lower), n=1, cutoff=0.75)
        return f', did you mean "{by_lower[close[0]]}"?' if close else ""

    def child(self, key: str) -> str:
        """Return the path of field ``key`` of this object."""
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str) -> Any:
        """Return the raw value of a supported field, None when absent or null."""
        assert key in self.schema.supported, key  # a parser bug, not a manifest problem
        return self.data.get(key)

    def string(self, key: str, *, required: bool = False) -> str | None:
        """Return a string field; report a missing required one or a non-string."""
        return self.check_string(self.child(key), self.get(key), required=required)

    def check_string(self, path: str, value: Any, *, required: bool = False) -> str | None:
        """Return ``value`` if it is a string; else report it at ``path`` and return None."""
        if value is None:
            if required:
                self.problems.add(path, "required")
            return None
        if isinstance(value, str):
            return value
        hint = ""
        if isinstance(value, int) and not isinstance(value, bool):
            hint = f' (quote it: "{value}")'
        elif isinstance(value, bool | float):  # YAML may have read 1.10 as 1.1, yes as true
            hint = " (quote it in YAML)"
        self.problems.add(path, f"must be a string, got {describe(value)}{hint}")
        return None

    def integer(
        self, key: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        """Return an integer field within ``[minimum, maximum]``; report another value."""
        return self.check_integer(self.child(key), self.get(key), minimum=minimum, maximum=maximum)

    def check_integer(
        self, path: str, value: Any, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        """Return ``value`` if it is an integer in range; else report it at ``path``."""
        if value is None:
            return None
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and (minimum is None or value >= minimum)
            and (maximum is None or value <= maximum)
        ):
            return value
        self.problems.add(path, f"{_integer_phrase(minimum, maximum)}, got {describe(value)}")
        return None

    def boolean(self, key: str) -> bool | None:
        """Return a boolean field; report another value."""
        value = self.get(key)
        if value is None or isinstance(value, bool):
            return value
        self.problems.add(self.child(key), f"must be true or false, got {describe(value)}")
        return None

    def choice(self, key: str, choices: tuple[_Choice, ...]) -> _Choice | None:
        """Return a string field that must be one of ``choices``; report another value."""
        value = self.get(key)
        for choice in choices:
            if value == choice:
                return choice
        if value is not None:
            message = f"must be {_one_of(choices)}, got {describe(value)}"
            self.problems.add(self.child(key), message)
        return None

    def items(self, key: str) -> list[tuple[str, Any]]:
        """Return ``(path, item)`` for each item of a list field; report a non-list."""
        value = self.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problems.add(self.child(key), f"must be a list, got {describe(value)}")
            return []
        return [(f"{self.child(key)}[{i}]", item) for i, item in enumerate(value)]

    def strings(self, key: str) -> tuple[str, ...]:
        """Return a list-of-strings field; report a non-list and each non-string item."""
        found = [self.check_string(path, item, required=True) for path, item in self.items(key)]
        return tuple(s for s in found if s is not None)

    def entries(self, key: str) -> list[tuple[str, str, Any]]:
        """Return ``(path, key, value)`` for each entry of a map field; report a non-mapping."""
        value = self.get(key)
        if value is None:
            return []
        if not isinstance(value, Mapping):
            self.problems.add(self.child(key), f"must be a mapping, got {describe(value)}")
            return []
        return [(f"{self.child(key)}[{k}]", str(k), v) for k, v in value.items()]

    def object(self, key: str, schema: ObjectSchema) -> Fields | None:
        """Return a reader for an object field; None when absent or not a mapping (reported)."""
        return self.check_object(self.child(key), self.get(key), schema)

    def check_object(
        self, path: str, value: Any, schema: ObjectSchema, *, required: bool = False
    ) -> Fields | None:
        """Return a reader for ``value`` at ``path``; report it when it is not a mapping.

        A null ``value`` is absent (None, no report) unless ``required`` (a list item).
        """
        if value is None and not required:
            return None
        if not isinstance(value, Mapping):
            self.problems.add(path, f"must be a mapping, got {describe(value)}")
            return None
        return Fields(self.problems, path, value, schema)
