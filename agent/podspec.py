"""The typed model of the Kubernetes Pod subset florete-agent runs.

Every class is a frozen dataclass whose fields are the snake_case forms of the Kubernetes ``v1``
field names (``terminationGracePeriodSeconds`` -> ``termination_grace_period_seconds``) with the
Kubernetes defaults already applied. Instances are built by :func:`agent.manifest.parse_pod`, which
validates a manifest, and turned back into a manifest by :func:`agent.manifest.pod_to_manifest`.
Source: Kubernetes API reference, "Pod v1 core"
(https://kubernetes.io/docs/reference/kubernetes-api/workload-resources/pod-v1/).

The module also implements two kubelet rules every consumer of the model needs: ``$(VAR)``
expansion (:func:`expand_vars`) and the ``fieldRef`` paths of the downward API
(:data:`FIELD_PATHS`, :func:`split_field_path`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

RestartPolicy = Literal["Always", "OnFailure", "Never"]
PullPolicy = Literal["Always", "IfNotPresent", "Never"]
Protocol = Literal["TCP", "UDP", "SCTP"]
Scheme = Literal["HTTP", "HTTPS"]

#: ``fieldRef.fieldPath`` values without a subscript that florete-agent resolves (the downward
#: API; Kubernetes API reference, ``ObjectFieldSelector``; ``pkg/apis/core/validation``
#: ``validEnvDownwardAPIFieldPathExpressions``).
FIELD_PATHS: Final = frozenset(
    {
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "spec.nodeName",
        "status.podIP",
        "status.hostIP",
    }
)
#: ``fieldRef.fieldPath`` prefixes that take one key as a subscript: ``metadata.labels['app']``.
SUBSCRIPTED_FIELD_PATHS: Final = frozenset({"metadata.labels", "metadata.annotations"})


@dataclass(frozen=True, slots=True)
class ObjectMeta:
    """The metadata of a Pod that florete-agent keeps.

    Attributes:
        name: the pod name, a DNS-1123 subdomain (at most 253 characters).
        namespace: a DNS-1123 label (at most 63 characters).
        labels: label key -> value. Treat as read-only.
        annotations: annotation key -> value. Treat as read-only.
    """

    name: str
    namespace: str = "default"
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True, slots=True)
class EnvVar:
    """One environment variable of a container.

    Attributes:
        name: the variable name.
        value: the literal value (``$(VAR)`` references not yet expanded), or None when the
            value comes from ``field_path``. A variable with neither has the value ``""``.
        field_path: a ``valueFrom.fieldRef.fieldPath`` (one of :data:`FIELD_PATHS`, or a
            :data:`SUBSCRIPTED_FIELD_PATHS` prefix with a key), or None.
    """

    name: str
    value: str | None = ""
    field_path: str | None = None


@dataclass(frozen=True, slots=True)
class ContainerPort:
    """One port a container listens on.

    Attributes:
        container_port: the port number, 1-65535.
        name: an IANA service name (at most 15 characters), or None; probes may refer to it.
        protocol: the transport protocol.
        host_port: the port exposed on the host, 1-65535, or None. Kubernetes sets it to
            ``container_port`` when the pod uses the host network.
        host_ip: the host address to bind ``host_port`` to, or None for all addresses.
    """

    container_port: int
    name: str | None = None
    protocol: Protocol = "TCP"
    host_port: int | None = None
    host_ip: str | None = None


@dataclass(frozen=True, slots=True)
class ResourceList:
    """CPU and memory amounts of a container's ``resources.limits`` or ``resources.requests``.

    Attributes:
        cpu_millis: CPU in millicores (1000 = one core), or None when not set.
        memory_bytes: memory in bytes, or None when not set.
    """

    cpu_millis: int | None = None
    memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class SecurityContext:
    """The container ``securityContext`` fields florete-agent honours.

    ``privileged`` and ``allowPrivilegeEscalation`` are accepted only as false, so they are not
    kept: every container is unprivileged.

    Attributes:
        run_as_user: uid the container's process runs as, 0-2147483647, or None for the image's.
        run_as_group: gid the container's process runs as, 0-2147483647, or None.
        read_only_root_filesystem: the container's root filesystem is mounted read-only.
    """

    run_as_user: int | None = None
    run_as_group: int | None = None
    read_only_root_filesystem: bool = False


@dataclass(frozen=True, slots=True)
class ExecAction:
    """A probe that runs a command in the container; exit status 0 is success.

    Attributes:
        command: the argv (not run through a shell; never empty).
    """

    command: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class HTTPGetAction:
    """A probe that sends ``GET``; a status code from 200 to 399 is success.

    Attributes:
        port: the TCP port number, 1-65535 (a named port is resolved when the manifest is parsed).
        path: the request target.
        host: the host to connect to, or None for the pod's IP (this host).
        scheme: ``"HTTP"`` or ``"HTTPS"`` (certificates are not verified, as in the kubelet).
        http_headers: extra request headers as ``(name, value)`` pairs, in manifest order.
    """

    port: int
    path: str = "/"
    host: str | None = None
    scheme: Scheme = "HTTP"
    http_headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class TCPSocketAction:
    """A probe that opens a TCP connection; connecting is success.

    Attributes:
        port: the TCP port number, 1-65535 (a named port is resolved when the manifest is parsed).
        host: the host to connect to, or None for the pod's IP (this host).
    """

    port: int
    host: str | None = None


ProbeAction = ExecAction | HTTPGetAction | TCPSocketAction


@dataclass(frozen=True, slots=True)
class Probe:
    """A liveness, readiness or startup probe.

    Attributes:
        action: what the probe does.
        initial_delay_seconds: seconds after the container starts before the first probe.
        period_seconds: seconds between probes (at least 1).
        timeout_seconds: seconds after which one probe counts as failed (at least 1).
        success_threshold: consecutive successes that make a failed probe succeed (1 for
            liveness and startup probes).
        failure_threshold: consecutive failures that make the probe fail (at least 1).
        termination_grace_period_seconds: grace period, in seconds, when a failed liveness or
            startup probe kills the container; None uses the pod's.
    """

    action: ProbeAction
    initial_delay_seconds: int = 0
    period_seconds: int = 10
    timeout_seconds: int = 1
    success_threshold: int = 1
    failure_threshold: int = 3
    termination_grace_period_seconds: int | None = None


@dataclass(frozen=True, slots=True)
class Container:
    """One init or app container of a Pod.

    Attributes:
        name: a DNS-1123 label, unique across the pod's init and app containers.
        image: the container image, or None to run ``command`` as a host process.
        image_pull_policy: when to pull ``image`` (Kubernetes default: ``"Always"`` for the tag
            ``latest`` or no tag, else ``"IfNotPresent"``); None when there is no image.
        command: the entrypoint argv (``$(VAR)`` not yet expanded); empty for the image's.
        args: arguments appended to ``command`` (``$(VAR)`` not yet expanded).
        env: environment variables, in manifest order.
        working_dir: the working directory, or None for the runtime's default.
        ports: the ports the container listens on.
        limits: resource limits.
        requests: resource requests (Kubernetes copies a limit into an unset request).
        liveness_probe: restarts the container when it fails.
        readiness_probe: marks the container not ready while it fails.
        startup_probe: holds back the other probes until it succeeds once.
        security_context: uid, gid and root filesystem settings.
    """

    name: str
    image: str | None = None
    image_pull_policy: PullPolicy | None = None
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    working_dir: str | None = None
    ports: tuple[ContainerPort, ...] = ()
    limits: ResourceList = ResourceList()
    requests: ResourceList = ResourceList()
    liveness_probe: Probe | None = None
    readiness_probe: Probe | None = None
    startup_probe: Probe | None = None
    security_context: SecurityContext = SecurityContext()


@dataclass(frozen=True, slots=True)
class PodSpec:
    """What runs in a Pod and how.

    Attributes:
        containers: the app containers (at least one), started after the init containers.
        init_containers: run one at a time, in order, each to successful completion.
        restart_policy: when to restart exited containers.
        termination_grace_period_seconds: seconds between SIGTERM and SIGKILL on stop.
        runtime_class_name: the RuntimeClass (a DNS-1123 subdomain), or None for the default.
        host_network: the pod uses the host's network namespace.
        node_name: the node the pod is bound to, or None.
    """

    containers: tuple[Container, ...]
    init_containers: tuple[Container, ...] = ()
    restart_policy: RestartPolicy = "Always"
    termination_grace_period_seconds: int = 30
    runtime_class_name: str | None = None
    host_network: bool = False
    node_name: str | None = None


@dataclass(frozen=True, slots=True)
class Pod:
    """A validated Pod.

    Attributes:
        api_version: always ``"v1"``.
        kind: always ``"Pod"``.
        metadata: name, namespace, labels and annotations.
        spec: the containers and pod-level settings.
    """

    api_version: Literal["v1"]
    kind: Literal["Pod"]
    metadata: ObjectMeta
    spec: PodSpec


def split_field_path(path: str) -> tuple[str, str | None]:
    """Split a ``fieldRef.fieldPath`` into its field and its subscript.

    Follows ``k8s.io/kubernetes/pkg/fieldpath.SplitMaybeSubscriptedPath``: a subscript is written
    ``['key']`` at the end of the path.

    Args:
        path: e.g. ``"metadata.name"`` or ``"metadata.labels['app']"``.

    Returns:
        ``(field, key)``, e.g. ``("metadata.labels", "app")``; key is None without a subscript.

    Raises:
        ValueError: the path is not one florete-agent resolves (the message lists those it does).
    """
    base, key = path, None
    if path.endswith("']") and "['" in path:
        base, _, key = path[:-2].partition("['")
    if (key is None and base in FIELD_PATHS) or (
        key is not None and base in SUBSCRIPTED_FIELD_PATHS
    ):
        return base, key
    supported = sorted(FIELD_PATHS) + [f"{p}['<key>']" for p in sorted(SUBSCRIPTED_FIELD_PATHS)]
    raise ValueError(f"unsupported field path {path!r}; supported: {', '.join(supported)}")


def expand_vars(text: str, env: Mapping[str, str]) -> str:
    """Expand ``$(VAR_NAME)`` references the way the kubelet does.

    ``$(NAME)`` becomes ``env[NAME]``; a reference to an unknown name, and an unclosed ``$(``,
    stay as written; ``$$`` becomes ``$`` (so ``$$(NAME)`` is the literal ``$(NAME)``); any other
    ``$`` stays. The replacement is not expanded again. Source: ``k8s.io/kubernetes``
    ``third_party/forked/golang/expansion/expand.go`` (``Expand``, ``tryReadVariableName``),
    documented under "Define dependent environment variables" in the Kubernetes tasks docs.
    Go scans bytes and mangles a non-ASCII character right after ``$``; this scans characters.

    Args:
        text: the string to expand (a command or args item, or an env value).
        env: variable name -> value.

    Returns:
        The expanded string.
    """
    out: list[str] = []
    checkpoint = 0
    cursor = 0
    while cursor < len(text):
        if text[cursor] == "$" and cursor + 1 < len(text):
            out.append(text[checkpoint:cursor])
            following = text[cursor + 1]
            if following == "$":
                out.append("$")
                cursor += 1
            elif following == "(" and (close := text.find(")", cursor + 2)) != -1:
                name = text[cursor + 2 : close]
                out.append(env.get(name, f"$({name})"))
                cursor = close
            else:
                out.append("$" + following)
                cursor += 1
            checkpoint = cursor + 1
        cursor += 1
    out.append(text[checkpoint:])
    return "".join(out)
