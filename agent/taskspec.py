"""Turn one container of a Pod into the :class:`TaskSpec` a runtime starts.

Resolves what the kubelet resolves before it creates a container: the environment (literal values
and ``fieldRef`` values, each ``$(VAR)`` expanded against the variables defined before it), the
command line (``command`` + ``args``, expanded against the container's environment), the working
directory and the limits (``pkg/kubelet/kuberuntime/kuberuntime_container.go``,
``pkg/kubelet/kubelet_pods.go`` ``makeEnvironmentVariables``).

Host processes do not inherit the agent's environment (a container does not inherit the
kubelet's): they get ``PATH``, ``HOME`` and ``HOSTNAME`` (the pod name, as in a container), then
the manifest's variables. A container with an image gets ``HOSTNAME`` and the manifest's
variables only: its image supplies ``PATH`` and ``HOME``. So does a task of a remote runtime (a
phone): the device's login supplies them, and its default working directory too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from agent.podspec import Container, ContainerPort, Pod, expand_vars
from wri_plugins.api import PortSpec, ResourceLimits, TaskSpec

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LABEL_REF = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


@dataclass(frozen=True)
class PodContext:
    """Facts about where a pod runs, for ``fieldRef`` values and paths.

    Attributes:
        uid: the pod's uid.
        node_name: this node's name (``spec.nodeName``).
        host_ip: this node's address (``status.hostIP``; also ``status.podIP`` for host
            processes, which share the host's network).
        log_dir: directory of the pod's container logs (``<container>/<attempt>.log`` inside).
        work_dir: default working directory of the pod's host processes.
    """

    uid: str
    node_name: str
    host_ip: str
    log_dir: Path
    work_dir: Path


def task_id(uid: str, container: str, attempt: int) -> str:
    """Return the stable id of one attempt of a container: ``<pod uid>-<container>-<attempt>``."""
    return f"{uid}-{container}-{attempt}"


def field_value(pod: Pod, ctx: PodContext, field_path: str) -> str:
    """Return the value of a ``fieldRef.fieldPath`` (the manifest layer validated the path).

    Raises:
        KeyError: the path is not one of ``agent.podspec.FIELD_PATHS``.
    """
    simple = {
        "metadata.name": pod.metadata.name,
        "metadata.namespace": pod.metadata.namespace,
        "metadata.uid": ctx.uid,
        "spec.nodeName": ctx.node_name,
        "status.podIP": ctx.host_ip,
        "status.hostIP": ctx.host_ip,
    }
    if field_path in simple:
        return simple[field_path]
    match = _LABEL_REF.match(field_path)
    if match is None:
        raise KeyError(field_path)
    table = pod.metadata.labels if match.group(1) == "labels" else pod.metadata.annotations
    return table.get(match.group(2), "")


def container_env(
    pod: Pod, container: Container, ctx: PodContext, remote: bool = False
) -> dict[str, str]:
    """Build a container's environment, in the kubelet's order.

    Args:
        pod: the pod.
        container: one of its containers.
        ctx: where it runs.
        remote: the runtime runs it on another device, which supplies ``PATH`` and ``HOME``.

    Returns:
        Variable name -> value.
    """
    env = {"HOSTNAME": pod.metadata.name}
    if not container.image and not remote:
        env["PATH"] = os.environ.get("PATH", DEFAULT_PATH)
        env["HOME"] = os.environ.get("HOME", "/")
    for var in container.env:
        if var.field_path is not None:
            env[var.name] = field_value(pod, ctx, var.field_path)
        else:
            env[var.name] = expand_vars(var.value or "", env)
    return env


def build_task_spec(
    pod: Pod, container: Container, ctx: PodContext, attempt: int, remote: bool = False
) -> TaskSpec:
    """Build the runtime's spec for one attempt of one container.

    Args:
        pod: the pod.
        container: one of its init or app containers.
        ctx: where it runs.
        attempt: 0 for the first start, one more per restart.
        remote: the runtime runs it on another device (capability ``remote``): no agent
            ``PATH``, ``HOME`` or working directory, the device's own apply.

    Returns:
        The task spec; its log goes to ``<ctx.log_dir>/<container>/<attempt>.log``.
    """
    env = container_env(pod, container, ctx, remote)
    command = tuple(expand_vars(a, env) for a in container.command)
    args = tuple(expand_vars(a, env) for a in container.args)
    security = container.security_context
    return TaskSpec(
        task_id=task_id(ctx.uid, container.name, attempt),
        pod_namespace=pod.metadata.namespace,
        pod_name=pod.metadata.name,
        pod_uid=ctx.uid,
        container=container.name,
        image=container.image,
        argv=(*command, *args),
        env=env,
        working_dir=container.working_dir
        or (None if container.image or remote else str(ctx.work_dir)),
        limits=ResourceLimits(
            cpu_millis=container.limits.cpu_millis, memory_bytes=container.limits.memory_bytes
        ),
        log_path=log_path(ctx, container.name, attempt),
        ports=tuple(_port_spec(p) for p in container.ports),
        image_pull_policy=container.image_pull_policy if container.image else None,
        command=command,
        args=args,
        host_network=pod.spec.host_network,
        pod_ports=tuple(
            _port_spec(p)
            for c in (*pod.spec.init_containers, *pod.spec.containers)
            for p in c.ports
            if p.host_port is not None
        ),
        run_as_user=security.run_as_user,
        run_as_group=security.run_as_group,
        read_only_root_fs=security.read_only_root_filesystem,
    )


def _port_spec(port: ContainerPort) -> PortSpec:
    return (port.container_port, port.protocol, port.host_port, port.host_ip)


def log_path(ctx: PodContext, container: str, attempt: int) -> Path:
    """Return the log file of one attempt of a container."""
    return ctx.log_dir / container / f"{attempt}.log"
