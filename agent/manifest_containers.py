"""Validate the init and app containers of a Pod manifest into :class:`agent.podspec.Container`.

Part of :mod:`agent.manifest`. Rules from Kubernetes ``pkg/apis/core/validation/validation.go``
(``validateContainers``, ``validateInitContainers``, ``validateContainerPorts``,
``AccumulateUniqueHostPorts``, ``validateEnv``, ``validateObjectFieldSelector``,
``ValidateResourceRequirements``, ``validateProbe``, ``validateHTTPGetAction``) and defaults from
``pkg/apis/core/v1/defaults.go`` (``SetDefaults_Container``, ``SetDefaults_Probe``,
``SetDefaults_HTTPGetAction``, ``defaultHostNetworkPorts``, requests defaulted from limits).
"""

from __future__ import annotations

from typing import Any

from agent.manifest_schema import (
    CONTAINER,
    CONTAINER_PORT,
    CONTAINER_SECURITY_CONTEXT,
    ENV_VAR,
    ENV_VAR_SOURCE,
    EXEC_ACTION,
    HTTP_GET_ACTION,
    HTTP_HEADER,
    NOT_SUPPORTED,
    OBJECT_FIELD_SELECTOR,
    PROBE,
    RESOURCES,
    TCP_SOCKET_ACTION,
    Fields,
    dns1123_label_problem,
    env_var_name_problem,
    header_name_problem,
    ip_problem,
    port_name_problem,
    qualified_name_problem,
)
from agent.podspec import (
    Container,
    ContainerPort,
    EnvVar,
    ExecAction,
    HTTPGetAction,
    Probe,
    ProbeAction,
    Protocol,
    PullPolicy,
    ResourceList,
    Scheme,
    SecurityContext,
    TCPSocketAction,
    split_field_path,
)
from agent.quantity import format_cpu, format_memory, parse_cpu, parse_memory

_PULL_POLICIES: tuple[PullPolicy, ...] = ("Always", "IfNotPresent", "Never")
_PROTOCOLS: tuple[Protocol, ...] = ("TCP", "UDP", "SCTP")
_SCHEMES: tuple[Scheme, ...] = ("HTTP", "HTTPS")
_PROBES = ("livenessProbe", "readinessProbe", "startupProbe")
_HANDLERS = ("exec", "httpGet", "tcpSocket")


def parse_containers(
    spec: Fields, host_network: bool
) -> tuple[tuple[Container, ...], tuple[Container, ...]]:
    """Read ``spec.initContainers`` and ``spec.containers``.

    Args:
        spec: the reader of ``spec``; problems go to its :class:`~agent.manifest_schema.Problems`.
        host_network: ``spec.hostNetwork``, which makes ``hostPort`` default to ``containerPort``.

    Returns:
        ``(init_containers, containers)``; meaningless when problems were reported.
    """
    init = _container_list(spec, "initContainers", host_network)
    apps = _container_list(spec, "containers", host_network)
    if spec.get("containers") in (None, []):
        spec.problems.add(spec.child("containers"), "required (at least one container)")
    first_use: dict[str, str] = {}
    for path, container in (*init, *apps):
        if container.name and container.name in first_use:
            message = (
                f'duplicate container name "{container.name}" (also {first_use[container.name]})'
            )
            spec.problems.add(f"{path}.name", message)
        first_use.setdefault(container.name, f"{path}.name")
    _check_host_ports(spec, apps)
    return tuple(c for _, c in init), tuple(c for _, c in apps)


def _container_list(spec: Fields, key: str, host_network: bool) -> list[tuple[str, Container]]:
    found = []
    for path, item in spec.items(key):
        reader = spec.check_object(path, item, CONTAINER, required=True)
        if reader is not None:
            found.append((path, _container(reader, host_network, init=key == "initContainers")))
    return found


def _container(c: Fields, host_network: bool, *, init: bool) -> Container:
    """Read one container; after a problem (reported) the result is a placeholder."""
    name = c.string("name", required=True) or ""
    if name and (problem := dns1123_label_problem(name)):
        c.problems.add(c.child("name"), problem)
    image = c.string("image")
    if image is not None and (not image or image.strip() != image):
        message = "must not be empty or have surrounding spaces (omit image for a host process)"
        c.problems.add(c.child("image"), message)
    pull_policy = c.choice("imagePullPolicy", _PULL_POLICIES)
    if pull_policy is not None and image is None:
        c.problems.add(c.child("imagePullPolicy"), "may only be set together with image")
    if image and pull_policy is None:
        pull_policy = _default_pull_policy(image)
    command, args = c.strings("command"), c.strings("args")
    working_dir = c.string("workingDir") or None
    env = [_env_var(c, path, item) for path, item in c.items("env")]
    ports = _ports(c, host_network)
    limits, requests = _resources(c)
    security = _security_context(c)
    probes: dict[str, Probe | None] = {}
    for key in _PROBES:
        if init and c.get(key) is not None:
            c.problems.add(c.child(key), "may not be set for init containers")
        else:
            probes[key] = _probe(c, key, ports)
    return Container(
        name=name,
        image=image,
        image_pull_policy=pull_policy,
        command=command,
        args=args,
        env=tuple(e for e in env if e is not None),
        working_dir=working_dir,
        ports=ports,
        limits=limits,
        requests=requests,
        liveness_probe=probes.get("livenessProbe"),
        readiness_probe=probes.get("readinessProbe"),
        startup_probe=probes.get("startupProbe"),
        security_context=security,
    )


#: Largest uid or gid Kubernetes accepts (``pkg/apis/core/validation`` ``ValidateNonnegative``
#: and the int32 of the API type).
_MAX_ID = 2**31 - 1


def _security_context(c: Fields) -> SecurityContext:
    """Read a container's ``securityContext``; ``privileged`` and ``allowPrivilegeEscalation``
    only as false (a container is never privileged here)."""
    s = c.object("securityContext", CONTAINER_SECURITY_CONTEXT)
    if s is None:
        return SecurityContext()
    for key in ("privileged", "allowPrivilegeEscalation"):
        if s.boolean(key):
            s.problems.add(s.child(key), NOT_SUPPORTED)
    return SecurityContext(
        run_as_user=s.integer("runAsUser", minimum=0, maximum=_MAX_ID),
        run_as_group=s.integer("runAsGroup", minimum=0, maximum=_MAX_ID),
        read_only_root_filesystem=s.boolean("readOnlyRootFilesystem") or False,
    )


def _default_pull_policy(image: str) -> PullPolicy:
    """``Always`` for the tag ``latest`` or no tag (and no digest), else ``IfNotPresent``."""
    name, at, _ = image.partition("@")
    last = name.rsplit("/", 1)[-1]
    tag = last.rpartition(":")[2] if ":" in last else ("" if at else "latest")
    return "Always" if tag == "latest" else "IfNotPresent"


def _env_var(c: Fields, path: str, item: Any) -> EnvVar | None:
    e = c.check_object(path, item, ENV_VAR, required=True)
    if e is None:
        return None
    name = e.string("name", required=True)
    if name is not None and (problem := env_var_name_problem(name)):
        e.problems.add(e.child("name"), problem)
    value = e.string("value") or ""
    before = len(e.problems.messages)
    source = e.object("valueFrom", ENV_VAR_SOURCE)
    if source is None:
        return EnvVar(name or "", value)
    if value:
        e.problems.add(e.child("valueFrom"), "may not be set when value is not empty")
    ref = source.object("fieldRef", OBJECT_FIELD_SELECTOR)
    if ref is None:
        if len(e.problems.messages) == before:
            source.problems.add(source.path, "must set fieldRef")
        return None
    ref.choice("apiVersion", ("v1",))
    field_path = ref.string("fieldPath", required=True)
    if field_path is None:
        return None
    try:
        base, key = split_field_path(field_path)
    except ValueError as err:
        ref.problems.add(ref.child("fieldPath"), str(err))
        return None
    if key is not None:
        problem = qualified_name_problem(key if base == "metadata.labels" else key.lower())
        if problem is not None:
            ref.problems.add(ref.child("fieldPath"), problem)
    return EnvVar(name or "", None, field_path)


def _ports(c: Fields, host_network: bool) -> tuple[ContainerPort, ...]:
    ports: list[ContainerPort] = []
    names: dict[str, str] = {}
    for path, item in c.items("ports"):
        p = c.check_object(path, item, CONTAINER_PORT, required=True)
        if p is None:
            continue
        number = p.integer("containerPort", minimum=1, maximum=65535)
        if p.get("containerPort") is None:
            p.problems.add(p.child("containerPort"), "required")
        name = p.string("name") or None
        if name is not None:
            if problem := port_name_problem(name):
                p.problems.add(p.child("name"), problem)
            elif name in names:
                p.problems.add(
                    p.child("name"), f'duplicate port name "{name}" (also {names[name]})'
                )
            names.setdefault(name, p.child("name"))
        # hostPort 0 means unset (the field is omitempty in the Kubernetes API).
        zero = type(p.get("hostPort")) is int and p.get("hostPort") == 0
        host_port = None if zero else p.integer("hostPort", minimum=1, maximum=65535)
        if host_network and number is not None:
            if host_port is None:
                host_port = number
            elif host_port != number:
                message = f"must equal containerPort ({number}) when hostNetwork is true"
                p.problems.add(p.child("hostPort"), message)
        host_ip = p.string("hostIP") or None
        if host_ip is not None and (problem := ip_problem(host_ip)):
            p.problems.add(p.child("hostIP"), problem)
        protocol = p.choice("protocol", _PROTOCOLS) or "TCP"
        if number is not None:
            ports.append(ContainerPort(number, name, protocol, host_port, host_ip))
    return tuple(ports)


def _check_host_ports(spec: Fields, containers: list[tuple[str, Container]]) -> None:
    """Report a host port used twice (same protocol and host IP) across the app containers."""
    first_use: dict[tuple[int, str, str | None], str] = {}
    for path, container in containers:
        for index, port in enumerate(container.ports):
            if port.host_port is None:
                continue
            key = (port.host_port, port.protocol, port.host_ip)
            here = f"{path}.ports[{index}].hostPort"
            if key in first_use:
                message = (
                    f"duplicate host port {port.host_port}/{port.protocol} (also {first_use[key]})"
                )
                spec.problems.add(here, message)
            first_use.setdefault(key, here)


def _resources(c: Fields) -> tuple[ResourceList, ResourceList]:
    r = c.object("resources", RESOURCES)
    if r is None:
        return ResourceList(), ResourceList()
    limits = _resource_list(r, "limits")
    requests = _resource_list(r, "requests")
    requests = ResourceList(
        limits.cpu_millis if requests.cpu_millis is None else requests.cpu_millis,
        limits.memory_bytes if requests.memory_bytes is None else requests.memory_bytes,
    )
    checks = (
        ("cpu", requests.cpu_millis, limits.cpu_millis, format_cpu),
        ("memory", requests.memory_bytes, limits.memory_bytes, format_memory),
    )
    for resource, request, limit, show in checks:
        if request is not None and limit is not None and request > limit:
            message = (
                f"must be less than or equal to the {resource} limit ({show(limit)}), "
                f"got {show(request)}"
            )
            r.problems.add(f"{r.child('requests')}[{resource}]", message)
    return limits, requests


def _resource_list(r: Fields, key: str) -> ResourceList:
    amounts: dict[str, int] = {}
    for path, resource, value in r.entries(key):
        parse = {"cpu": parse_cpu, "memory": parse_memory}.get(resource)
        if parse is None:
            r.problems.add(path, NOT_SUPPORTED)
            continue
        try:
            amounts[resource] = parse(value, path)
        except ValueError as err:  # the message starts with the path
            r.problems.messages.append(str(err))
    return ResourceList(amounts.get("cpu"), amounts.get("memory"))


def _probe(c: Fields, key: str, ports: tuple[ContainerPort, ...]) -> Probe | None:
    p = c.object(key, PROBE)
    if p is None:
        return None
    handlers = [h for h in _HANDLERS if p.get(h) is not None]
    if len(handlers) > 1 or (not handlers and not p.data.get("grpc")):
        got = " and ".join(handlers) or "none"
        p.problems.add(
            p.path, f"must have exactly one handler (exec, httpGet or tcpSocket), got {got}"
        )
    actions = [_action(p, h, ports) for h in handlers]
    delay = p.integer("initialDelaySeconds", minimum=0)
    timeout = p.integer("timeoutSeconds", minimum=1)
    period = p.integer("periodSeconds", minimum=1)
    success = p.integer("successThreshold", minimum=1)
    failure = p.integer("failureThreshold", minimum=1)
    grace = p.integer("terminationGracePeriodSeconds", minimum=1)
    if key != "readinessProbe" and success not in (None, 1):
        p.problems.add(p.child("successThreshold"), f"must be 1 for a {key}, got {success}")
    if key == "readinessProbe" and grace is not None:
        p.problems.add(
            p.child("terminationGracePeriodSeconds"), "must not be set for a readinessProbe"
        )
    if len(actions) != 1 or actions[0] is None:
        return None
    return Probe(
        action=actions[0],
        initial_delay_seconds=0 if delay is None else delay,
        period_seconds=10 if period is None else period,
        timeout_seconds=1 if timeout is None else timeout,
        success_threshold=1 if success is None else success,
        failure_threshold=3 if failure is None else failure,
        termination_grace_period_seconds=grace,
    )


def _action(p: Fields, handler: str, ports: tuple[ContainerPort, ...]) -> ProbeAction | None:
    if handler == "exec":
        e = p.object("exec", EXEC_ACTION)
        if e is None:
            return None
        if not e.get("command"):
            e.problems.add(e.child("command"), "required (at least one item)")
        command = e.strings("command")
        return ExecAction(command) if command else None
    if handler == "tcpSocket":
        t = p.object("tcpSocket", TCP_SOCKET_ACTION)
        if t is None:
            return None
        port = _probe_port(t, ports)
        host = t.string("host") or None
        return None if port is None else TCPSocketAction(port, host)
    h = p.object("httpGet", HTTP_GET_ACTION)
    if h is None:
        return None
    port = _probe_port(h, ports)
    headers = []
    for path, item in h.items("httpHeaders"):
        header = h.check_object(path, item, HTTP_HEADER, required=True)
        if header is None:
            continue
        name = header.string("name", required=True)
        if name is not None and (problem := header_name_problem(name)):
            header.problems.add(header.child("name"), problem)
        headers.append((name or "", header.string("value") or ""))
    scheme = h.choice("scheme", _SCHEMES) or "HTTP"
    path = h.string("path") or "/"
    host = h.string("host") or None
    return None if port is None else HTTPGetAction(port, path, host, scheme, tuple(headers))


def _probe_port(action: Fields, ports: tuple[ContainerPort, ...]) -> int | None:
    """Read a probe's ``port``: a number, or the name of one of the container's ports."""
    value, path = action.get("port"), action.child("port")
    if value is None:
        action.problems.add(path, "required")
        return None
    if not isinstance(value, str):
        return action.check_integer(path, value, minimum=1, maximum=65535)
    for port in ports:
        if port.name == value:
            return port.container_port
    problem = port_name_problem(value) or f'no port named "{value}" in this container\'s ports'
    action.problems.add(path, problem)
    return None
