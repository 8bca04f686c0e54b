"""Translation between WRI types and libpod's JSON, without I/O.

Request bodies follow libpod's ``SpecGenerator`` (``POST /libpod/containers/create``) and
``PodSpecGenerator`` (``POST /libpod/pods/create``) of podman 4.3 (``pkg/specgen/specgen.go``,
``pkg/specgen/podspecgen.go``; https://docs.podman.io/en/v4.3/_static/api.html). Answers of
``GET /libpod/containers/{name}/json`` (``define.InspectContainerData``) become
:class:`ContainerInfo`.

Names: a Pod ``<namespace>/<name>`` with uid ``U`` becomes the podman pod ``<namespace>_<name>_U``
(``_`` cannot occur in Kubernetes names, so the parts stay unambiguous); a task becomes the
container ``florete-<task id>``. Characters podman does not accept become ``_`` and a name that
had to change, or is longer than :data:`MAX_NAME`, gets a hash of the original so two different
inputs never share a name.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from wri_plugins.api import ExitResult, ResourceLimits, TaskSpec
from wri_plugins.process.crilog import parse_timestamp

LABEL_PREFIX = "io.florete."
TASK_LABEL = LABEL_PREFIX + "task-id"
#: Longest pod or container name produced (podman needs none; this keeps ``ps`` readable).
MAX_NAME = 100
#: CFS period the CPU quota is expressed in (microseconds): the kubelet's 100 ms.
CPU_PERIOD_US = 100_000
#: Smallest CFS quota the kernel accepts (microseconds).
MIN_CPU_QUOTA_US = 1_000
NETWORKS = ("bridge", "host", "none")
#: States in which the container's processes exist (``define.ContainerStatus``).
LIVE_STATES = frozenset({"running", "paused", "stopping"})
#: States after the container ran and its exit code was recorded.
ENDED_STATES = frozenset({"exited", "stopped"})

_UNSAFE = re.compile(r"[^a-zA-Z0-9_.-]")


def safe_name(text: str) -> str:
    """A podman name (``[a-zA-Z0-9][a-zA-Z0-9_.-]*``) for ``text``, at most :data:`MAX_NAME` long.

    Returns:
        ``text`` itself when it already qualifies; otherwise ``text`` with each other character
        as ``_``, cut to fit, followed by ``-`` and 10 hex digits of its SHA-256.
    """
    clean = _UNSAFE.sub("_", text)
    if clean and clean[0].isalnum() and clean == text and len(text) <= MAX_NAME:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    head = clean.lstrip("_.-")[: MAX_NAME - 11] or "x"
    return f"{head}-{digest}"


def pod_name(namespace: str, name: str, uid: str) -> str:
    """The podman pod of a Kubernetes Pod: ``<namespace>_<name>_<uid>`` (see module docstring)."""
    return safe_name(f"{namespace}_{name}_{uid}")


def container_name(task_id: str) -> str:
    """The podman container of a task: ``florete-<task id>``."""
    return safe_name(f"florete-{task_id}")


@dataclass(frozen=True)
class PortMapping:
    """One ``hostPort`` to publish.

    Attributes:
        container_port: the port inside the pod.
        host_port: the port on the host.
        protocol: ``"TCP"``, ``"UDP"`` or ``"SCTP"``.
        host_ip: the host address to bind, or None for the runtime's ``host_ip`` option.
    """

    container_port: int
    host_port: int
    protocol: str = "TCP"
    host_ip: str | None = None


def port_mappings(ports: Iterable[PortMapping], default_host_ip: str) -> list[dict[str, Any]]:
    """libpod ``portmappings`` for a pod: each port bound to its own or the default address.

    Returns:
        ``[{"host_ip", "host_port", "container_port", "protocol"}, ...]`` (protocol lower case).
    """
    return [
        {
            "host_ip": p.host_ip or default_host_ip,
            "host_port": p.host_port,
            "container_port": p.container_port,
            "protocol": p.protocol.lower(),
        }
        for p in ports
    ]


def task_port_mappings(spec: TaskSpec) -> list[PortMapping]:
    """The hostPorts of the task's Pod (``spec.pod_ports``, else its own ``spec.ports``)."""
    return [
        PortMapping(port, host_port, protocol, host_ip)
        for port, protocol, host_port, host_ip in (spec.pod_ports or spec.ports)
        if host_port is not None
    ]


def pod_network(spec: TaskSpec, default: str) -> str:
    """The pod's network mode: ``host`` for a ``hostNetwork`` Pod, else the runtime's option."""
    return "host" if spec.host_network else default


def labels(spec: TaskSpec) -> dict[str, str]:
    """Labels that tie podman objects to the Pod and the task (``io.florete.*``)."""
    return {
        LABEL_PREFIX + "namespace": spec.pod_namespace,
        LABEL_PREFIX + "pod": spec.pod_name,
        LABEL_PREFIX + "pod-uid": spec.pod_uid,
        LABEL_PREFIX + "container": spec.container,
        TASK_LABEL: spec.task_id,
    }


def pod_body(
    spec: TaskSpec, network: str, ports: Iterable[PortMapping], host_ip: str
) -> dict[str, Any]:
    """The ``PodSpecGenerator`` of the pod that ``spec`` belongs to.

    The pod has an infra container holding its namespaces (Kubernetes' pause container); its
    hostname is the Pod's name, as in Kubernetes.

    Args:
        spec: a task of the pod (its pod fields are used).
        network: ``"bridge"`` (a network namespace of its own on podman's default network),
            ``"host"`` or ``"none"``.
        ports: hostPorts to publish (ignored on the host network, where they need no mapping).
        host_ip: default address for them.

    Raises:
        ValueError: ``network`` is not one of :data:`NETWORKS`.
    """
    if network not in NETWORKS:
        raise ValueError(f"network must be one of {', '.join(NETWORKS)}, not {network!r}")
    pod_labels = {k: v for k, v in labels(spec).items() if k != TASK_LABEL}
    pod_labels.pop(LABEL_PREFIX + "container")
    body: dict[str, Any] = {
        "name": pod_name(spec.pod_namespace, spec.pod_name, spec.pod_uid),
        "hostname": spec.pod_name[:63].rstrip("-.") or "pod",
        "labels": pod_labels,
        "netns": {"nsmode": network},
    }
    mappings = port_mappings(ports, host_ip) if network == "bridge" else []
    if mappings:
        body["portmappings"] = mappings
    return body


def resource_limits(limits: ResourceLimits) -> dict[str, Any]:
    """libpod ``resource_limits`` (an OCI ``LinuxResources``) for ``limits``.

    Memory: ``limit`` and ``swap`` (memory + swap) both the limit, so the container cannot swap
    (the kubelet's default). CPU: a CFS quota of ``cpu_millis / 1000`` cores per 100 ms period,
    at least 1 ms (``pkg/kubelet/cm/helpers_linux.go`` ``MilliCPUToQuota``).

    Returns:
        ``{}`` without limits, else ``{"memory": {...}}`` and/or ``{"cpu": {"quota", "period"}}``.
    """
    body: dict[str, Any] = {}
    if limits.memory_bytes is not None:
        body["memory"] = {"limit": limits.memory_bytes, "swap": limits.memory_bytes}
    if limits.cpu_millis is not None:
        quota = max(limits.cpu_millis * CPU_PERIOD_US // 1000, MIN_CPU_QUOTA_US)
        body["cpu"] = {"quota": quota, "period": CPU_PERIOD_US}
    return body


def container_body(spec: TaskSpec, pod: str | None, log_max_bytes: int) -> dict[str, Any]:
    """The ``SpecGenerator`` of the task's container.

    Kubernetes ``command`` becomes the entrypoint and ``args`` the command, so ``command``
    alone drops the image's CMD, ``args`` alone keep its ENTRYPOINT, neither keeps both
    (podman's ``makeCommand`` uses the image's CMD only when no entrypoint is given). A spec
    with ``argv`` but neither (not built from a Pod) runs exactly ``argv`` as the entrypoint.
    ``run_as_user``/``run_as_group`` become ``user`` (``uid[:gid]``; podman needs a user
    with a group, so a gid alone runs as uid 0 with that group, not as the image's user);
    ``read_only_root_fs`` becomes ``read_only_filesystem``. The environment is added to the
    image's. The log is a ``k8s-file`` (CRI format) at ``spec.log_path``, written by conmon;
    the container is never restarted by podman (``restart_policy: no``): restarts are the agent's.

    Args:
        spec: the task; ``spec.image`` must be set.
        pod: the podman pod to join, or None for none.
        log_max_bytes: size at which conmon truncates the log (0: unlimited).
    """
    body: dict[str, Any] = {
        "name": container_name(spec.task_id),
        "image": spec.image,
        "env": dict(spec.env),
        "labels": labels(spec),
        "restart_policy": "no",
        "terminal": False,
        "stdin": False,
        "log_configuration": {"driver": "k8s-file", "path": str(spec.log_path)},
    }
    if log_max_bytes > 0:
        body["log_configuration"]["size"] = log_max_bytes
    if pod is not None:
        body["pod"] = pod
    if spec.command or spec.args:
        if spec.command:
            body["entrypoint"] = list(spec.command)
        if spec.args:
            body["command"] = list(spec.args)
    elif spec.argv:
        body["entrypoint"] = list(spec.argv)
    if spec.run_as_user is not None or spec.run_as_group is not None:
        uid = "" if spec.run_as_user is None else str(spec.run_as_user)
        body["user"] = uid if spec.run_as_group is None else f"{uid or 0}:{spec.run_as_group}"
    if spec.read_only_root_fs:
        body["read_only_filesystem"] = True
    if spec.working_dir:
        body["work_dir"] = spec.working_dir
        body["create_working_dir"] = True
    limits = resource_limits(spec.limits)
    if limits:
        body["resource_limits"] = limits
    return body


def _time(value: Any) -> float:
    """Seconds since the epoch of a libpod time; 0.0 for Go's zero time or nothing."""
    if not isinstance(value, str) or not value:
        return 0.0
    try:
        seconds = parse_timestamp(value.encode())
    except ValueError:
        return 0.0
    return max(seconds, 0.0)


@dataclass(frozen=True)
class ContainerInfo:
    """What the runtime needs of a container's inspect data.

    Attributes:
        id: the container id (64 hex digits).
        name: the container name.
        task_id: the ``io.florete.task-id`` label, or "".
        status: libpod's state: ``created``, ``running``, ``paused``, ``stopping``,
            ``stopped``, ``exited``, ``configured``, ...
        exit_code: the recorded exit code (meaningful once ended).
        oom_killed: podman saw the OOM killer end it (conmon's report).
        pid: the main process on the host, or None.
        conmon_pid: the conmon that watches it, or None.
        started_at: start time, seconds since the epoch (0.0: never started).
        finished_at: end time, seconds since the epoch (0.0: not ended).
        pod: the pod id, or "".
        log_path: the ``k8s-file`` log, or "".
        memory_limit: memory limit in bytes, 0 for none.
        ip: the address of its network namespace (its pod's, on podman's bridge), or "" when it
            has none of its own (host network).
    """

    id: str
    name: str
    task_id: str
    status: str
    exit_code: int
    oom_killed: bool
    pid: int | None
    conmon_pid: int | None
    started_at: float
    finished_at: float
    pod: str
    log_path: str
    memory_limit: int
    ip: str = ""

    @classmethod
    def parse(cls, data: Mapping[str, Any]) -> ContainerInfo:
        """Parse ``GET /libpod/containers/{name}/json``.

        Raises:
            ValueError: ``data`` has no ``Id`` or ``State``.
        """
        state = data.get("State")
        if not isinstance(state, dict) or not data.get("Id"):
            raise ValueError("container inspect data without Id or State")
        config = data.get("Config") or {}
        host = data.get("HostConfig") or {}
        log_config = host.get("LogConfig") or {}
        return cls(
            id=str(data["Id"]),
            name=str(data.get("Name", "")),
            task_id=str((config.get("Labels") or {}).get(TASK_LABEL, "")),
            status=str(state.get("Status", "")),
            exit_code=int(state.get("ExitCode") or 0),
            oom_killed=bool(state.get("OOMKilled")),
            pid=int(state.get("Pid") or 0) or None,
            conmon_pid=int(state.get("ConmonPid") or 0) or None,
            started_at=_time(state.get("StartedAt")),
            finished_at=_time(state.get("FinishedAt")),
            pod=str(data.get("Pod") or ""),
            log_path=str(log_config.get("Path") or ""),
            memory_limit=int(host.get("Memory") or 0),
            ip=str((data.get("NetworkSettings") or {}).get("IPAddress") or ""),
        )

    @property
    def live(self) -> bool:
        """Podman holds the container for running (its processes may have died unseen)."""
        return self.status in LIVE_STATES

    @property
    def ended(self) -> bool:
        """It ran and its exit code is recorded."""
        return self.status in ENDED_STATES and self.started_at > 0

    def exit_result(self, oom_killed: bool = False) -> ExitResult:
        """How it ended (call only when :attr:`ended`).

        Podman records only an exit code; a code of 128 + N (N a signal number, 1-64) is taken
        as death by signal N, as a shell reports it.

        Args:
            oom_killed: the OOM killer ended it by another account than podman's.
        """
        code = self.exit_code
        signal = code - 128 if 128 < code <= 128 + 64 else None
        return ExitResult(
            exit_code=code,
            signal=signal,
            oom_killed=self.oom_killed or oom_killed,
            finished_at=self.finished_at,
        )
