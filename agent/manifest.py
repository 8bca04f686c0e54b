"""Load Pod manifests (YAML or JSON) and validate them into the :mod:`agent.podspec` model.

Validation is strict and whitelist-based (:mod:`agent.manifest_schema`): every problem is
collected and raised together as one :class:`~agent.errors.ManifestError` whose messages start
with the kubectl-style field path. The rules follow Kubernetes' ``pkg/apis/core/validation``
(``validation.go``: ``ValidatePodSpec``, ``validateContainers``, ``validateProbe``,
``validateEnv``, ``ValidateResourceRequirements``) and its defaulting (``pkg/apis/core/v1/
defaults.go``), so that ``kubectl get pod -o yaml`` output is accepted back.

Decisions on fields florete-agent does not run:

======================================  ========================================================
Field                                   Treatment
======================================  ========================================================
``status``                              accepted and ignored
``metadata.uid``, ``resourceVersion``,  accepted and ignored (server-set)
``creationTimestamp``, ``generation``,
``managedFields``, ``selfLink``,
``deletionTimestamp``,
``deletionGracePeriodSeconds``
``metadata.generateName``,              not supported
``ownerReferences``, ``finalizers``
``spec.dnsPolicy``                      ``ClusterFirst``, ``ClusterFirstWithHostNet`` or
                                        ``Default`` (no cluster DNS: all use the host's resolver)
``spec.schedulerName``                  only ``default-scheduler``
``spec.enableServiceLinks``             true or false (no Services: nothing is injected)
``spec.priority``                       only 0
``spec.preemptionPolicy``               only ``PreemptLowerPriority``
``spec.serviceAccountName``,            only ``default``
``spec.serviceAccount``
``spec.automountServiceAccountToken``   only false (there is no API server, so no token)
``spec.securityContext``                only ``{}``; each field set in it is not supported
``spec.tolerations``                    only the ``node.kubernetes.io/not-ready`` and
                                        ``unreachable`` ``NoExecute`` tolerations Kubernetes adds
``terminationMessagePath``              only ``/dev/termination-log``
``terminationMessagePolicy``            only ``File``
``stdin``, ``stdinOnce``, ``tty``       only false
container ``securityContext``           ``runAsUser``, ``runAsGroup``, ``readOnlyRootFilesystem``;
                                        ``privileged`` and ``allowPrivilegeEscalation`` only
                                        false; any other field is not supported
``resources.limits``/``requests``       ``cpu`` and ``memory``; any other resource is not
                                        supported
other Kubernetes fields                 not supported when set; null, ``""``, ``[]`` and ``{}``
                                        count as unset and are accepted
unknown field names                     ``unknown field``, with the closest known name
======================================  ========================================================

Defaults applied as the API server does: ``namespace`` ``default``; ``imagePullPolicy`` from the
image tag; ``hostPort`` = ``containerPort`` under ``hostNetwork``; an unset request copied from
its limit; probe and ``httpGet`` defaults. Probe ``timeoutSeconds``, ``periodSeconds``,
``successThreshold`` and ``failureThreshold`` must be at least 1 (the documented minimum; the API
server would silently turn 0 into the default). ``image`` is optional: without it the container
runs ``command`` as a host process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.errors import ManifestError
from agent.manifest_containers import parse_containers
from agent.manifest_schema import (
    OBJECT_META,
    POD,
    POD_SECURITY_CONTEXT,
    POD_SPEC,
    TOLERATION,
    Fields,
    Problems,
    describe,
    dns1123_label_problem,
    dns1123_subdomain_problem,
    label_value_problem,
    qualified_name_problem,
)
from agent.podspec import (
    Container,
    EnvVar,
    ExecAction,
    HTTPGetAction,
    ObjectMeta,
    Pod,
    PodSpec,
    Probe,
    ResourceList,
    RestartPolicy,
)
from agent.quantity import format_cpu, format_memory

#: Total size limit of a pod's annotations (``TotalAnnotationSizeLimitB``), in bytes.
_MAX_ANNOTATIONS_BYTES = 256 * 1024
_RESTART_POLICIES: tuple[RestartPolicy, ...] = ("Always", "OnFailure", "Never")
_DEFAULT_TOLERATION_KEYS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")


def parse_pod(obj: Mapping[str, Any]) -> Pod:
    """Validate a Pod manifest and build its model, with Kubernetes defaults applied.

    Args:
        obj: one document from :func:`agent.manifest_yaml.load_documents` (or a decoded JSON body).

    Returns:
        The pod; ``parse_pod(pod_to_manifest(pod)) == pod``.

    Raises:
        ManifestError: every problem found, each ``"<field path>: <message>"``. A wrong
            ``apiVersion`` or ``kind`` is reported alone, since the rest would not apply.
    """
    if not isinstance(obj, Mapping):
        raise ManifestError([f"a Pod must be a mapping, got {describe(obj)}"])
    problems = Problems()
    for key, expected in (("apiVersion", "v1"), ("kind", "Pod")):
        value = obj.get(key)
        if value is None:
            problems.add(key, f'required (must be "{expected}")')
        elif value != expected:
            problems.add(key, f'only "{expected}" is supported, got {describe(value)}')
    if problems.messages:
        raise ManifestError(problems.messages)
    root = Fields(problems, "", obj, POD)
    metadata = _metadata(root)
    spec = _pod_spec(root)
    if problems.messages:
        raise ManifestError(problems.messages)
    return Pod("v1", "Pod", metadata, spec)


def _metadata(root: Fields) -> ObjectMeta:
    meta = root.object("metadata", OBJECT_META)
    if meta is None:
        if root.get("metadata") is None:
            root.problems.add("metadata.name", "required")
        return ObjectMeta("")
    name = meta.string("name", required=True) or ""
    if name and (problem := dns1123_subdomain_problem(name)):
        meta.problems.add(meta.child("name"), problem)
    namespace = meta.string("namespace") or "default"
    if problem := dns1123_label_problem(namespace):
        meta.problems.add(meta.child("namespace"), problem)
    labels = _string_map(meta, "labels")
    annotations = _string_map(meta, "annotations")
    size = sum(len(_utf8(k)) + len(_utf8(v)) for k, v in annotations.items())
    if size > _MAX_ANNOTATIONS_BYTES:
        message = f"must be at most {_MAX_ANNOTATIONS_BYTES} bytes in total, got {size}"
        meta.problems.add(meta.child("annotations"), message)
    return ObjectMeta(name, namespace, labels, annotations)


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a JSON body may hold a lone surrogate


def _string_map(meta: Fields, key: str) -> dict[str, str]:
    """Read ``labels`` or ``annotations``: keys are qualified names, values strings."""
    result: dict[str, str] = {}
    for path, name, raw in meta.entries(key):
        # Annotation keys are checked in lower case (ValidateAnnotations).
        problem = qualified_name_problem(name if key == "labels" else name.lower())
        value = meta.check_string(path, "" if raw is None else raw)
        if problem is None and key == "labels" and value is not None:
            problem = label_value_problem(value)
        if problem is not None:
            meta.problems.add(path, problem)
        elif value is not None:
            result[name] = value
    return result


def _pod_spec(root: Fields) -> PodSpec:
    spec = root.object("spec", POD_SPEC)
    if spec is None:
        if root.get("spec") is None:
            root.problems.add("spec", "required")
        return PodSpec(())
    host_network = spec.boolean("hostNetwork") or False
    init_containers, containers = parse_containers(spec, host_network)
    restart_policy = spec.choice("restartPolicy", _RESTART_POLICIES) or "Always"
    grace = spec.integer("terminationGracePeriodSeconds", minimum=0)
    runtime_class = spec.string("runtimeClassName") or None
    node_name = spec.string("nodeName") or None
    for key, value in (("runtimeClassName", runtime_class), ("nodeName", node_name)):
        if value is not None and (problem := dns1123_subdomain_problem(value)):
            spec.problems.add(spec.child(key), problem)
    spec.object("securityContext", POD_SECURITY_CONTEXT)
    _check_tolerations(spec)
    return PodSpec(
        containers=containers,
        init_containers=init_containers,
        restart_policy=restart_policy,
        termination_grace_period_seconds=30 if grace is None else grace,
        runtime_class_name=runtime_class,
        host_network=host_network,
        node_name=node_name,
    )


def _check_tolerations(spec: Fields) -> None:
    """Accept only the tolerations the DefaultTolerationSeconds admission plugin adds."""
    for path, item in spec.items("tolerations"):
        toleration = spec.check_object(path, item, TOLERATION, required=True)
        if toleration is None:
            continue
        toleration.integer("tolerationSeconds", minimum=0)
        if (
            toleration.get("key") not in _DEFAULT_TOLERATION_KEYS
            or toleration.get("operator") != "Exists"
            or toleration.get("effect") != "NoExecute"
        ):
            spec.problems.add(
                path,
                "only the default tolerations are supported (key node.kubernetes.io/not-ready "
                "or node.kubernetes.io/unreachable, operator Exists, effect NoExecute)",
            )


def pod_to_manifest(pod: Pod) -> dict[str, Any]:
    """Render a pod as a Kubernetes-shaped manifest with every default written out.

    Shaped like ``kubectl get pod -o yaml`` output without the server-set fields: camelCase
    keys, quantities in Kubernetes notation (``500m``, ``128Mi``), empty optional fields left
    out. The result is JSON-serialisable and ``parse_pod(pod_to_manifest(pod)) == pod``.

    Args:
        pod: a pod from :func:`parse_pod`.

    Returns:
        ``{"apiVersion": "v1", "kind": "Pod", "metadata": {...}, "spec": {...}}``.
    """
    meta = pod.metadata
    metadata: dict[str, Any] = {"name": meta.name, "namespace": meta.namespace}
    if meta.labels:
        metadata["labels"] = dict(meta.labels)
    if meta.annotations:
        metadata["annotations"] = dict(meta.annotations)
    spec = pod.spec
    rendered: dict[str, Any] = {}
    if spec.init_containers:
        rendered["initContainers"] = [_render_container(c) for c in spec.init_containers]
    rendered["containers"] = [_render_container(c) for c in spec.containers]
    rendered["restartPolicy"] = spec.restart_policy
    rendered["terminationGracePeriodSeconds"] = spec.termination_grace_period_seconds
    if spec.runtime_class_name is not None:
        rendered["runtimeClassName"] = spec.runtime_class_name
    if spec.host_network:
        rendered["hostNetwork"] = True
    if spec.node_name is not None:
        rendered["nodeName"] = spec.node_name
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": rendered}


def _render_container(c: Container) -> dict[str, Any]:
    out: dict[str, Any] = {"name": c.name}
    optional = {
        "image": c.image,
        "imagePullPolicy": c.image_pull_policy,
        "command": list(c.command) or None,
        "args": list(c.args) or None,
        "env": [_render_env(e) for e in c.env] or None,
        "workingDir": c.working_dir,
        "ports": [
            {
                k: v
                for k, v in (
                    ("containerPort", p.container_port),
                    ("name", p.name),
                    ("protocol", p.protocol),
                    ("hostPort", p.host_port),
                    ("hostIP", p.host_ip),
                )
                if v is not None
            }
            for p in c.ports
        ]
        or None,
    }
    out.update((k, v) for k, v in optional.items() if v is not None)
    resources = {
        key: amounts
        for key, amounts in (
            ("limits", _render_resources(c.limits)),
            ("requests", _render_resources(c.requests)),
        )
        if amounts
    }
    out["resources"] = resources
    security = c.security_context
    rendered_security = {
        k: v
        for k, v in (
            ("runAsUser", security.run_as_user),
            ("runAsGroup", security.run_as_group),
            ("readOnlyRootFilesystem", security.read_only_root_filesystem or None),
        )
        if v is not None
    }
    if rendered_security:
        out["securityContext"] = rendered_security
    for key, probe in (
        ("livenessProbe", c.liveness_probe),
        ("readinessProbe", c.readiness_probe),
        ("startupProbe", c.startup_probe),
    ):
        if probe is not None:
            out[key] = _render_probe(probe)
    return out


def _render_env(e: EnvVar) -> dict[str, Any]:
    if e.field_path is not None:
        return {
            "name": e.name,
            "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": e.field_path}},
        }
    return {"name": e.name, "value": e.value} if e.value else {"name": e.name}


def _render_resources(amounts: ResourceList) -> dict[str, str]:
    out = {}
    if amounts.cpu_millis is not None:
        out["cpu"] = format_cpu(amounts.cpu_millis)
    if amounts.memory_bytes is not None:
        out["memory"] = format_memory(amounts.memory_bytes)
    return out


def _render_probe(probe: Probe) -> dict[str, Any]:
    action = probe.action
    handler: dict[str, Any]
    if isinstance(action, ExecAction):
        handler = {"exec": {"command": list(action.command)}}
    elif isinstance(action, HTTPGetAction):
        get: dict[str, Any] = {"path": action.path, "port": action.port, "scheme": action.scheme}
        if action.host is not None:
            get["host"] = action.host
        if action.http_headers:
            get["httpHeaders"] = [{"name": n, "value": v} for n, v in action.http_headers]
        handler = {"httpGet": get}
    else:
        socket: dict[str, Any] = {"port": action.port}
        if action.host is not None:
            socket["host"] = action.host
        handler = {"tcpSocket": socket}
    timing = {
        "initialDelaySeconds": probe.initial_delay_seconds,
        "timeoutSeconds": probe.timeout_seconds,
        "periodSeconds": probe.period_seconds,
        "successThreshold": probe.success_threshold,
        "failureThreshold": probe.failure_threshold,
    }
    if probe.termination_grace_period_seconds is not None:
        timing["terminationGracePeriodSeconds"] = probe.termination_grace_period_seconds
    return handler | timing
