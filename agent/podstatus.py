"""Pod and container status, shaped as Kubernetes ``PodStatus`` (core/v1).

The reconciler keeps one :class:`ContainerStatus` per container and renders the whole pod's status
with :func:`pod_status`; the phase follows the kubelet's ``getPhase``
(``pkg/kubelet/kubelet_pods.go``) and the conditions its ``status`` package.
Statuses are stored as the Kubernetes dicts and read back with :meth:`ContainerStatus.from_k8s`
so that restart counts and last states survive an agent restart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

StateKind = Literal["waiting", "running", "terminated"]


def rfc3339(ts: float | None) -> str | None:
    """Format seconds since the epoch as RFC 3339 UTC with second precision (as Kubernetes)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str | None) -> float | None:
    """Parse what :func:`rfc3339` wrote (None for None or an unparsable value)."""
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


@dataclass(frozen=True)
class ContainerState:
    """One Kubernetes ``ContainerState``: waiting, running or terminated.

    Attributes:
        kind: which of the three.
        reason: e.g. ``ContainerCreating``, ``CrashLoopBackOff``, ``Completed``, ``Error``,
            ``OOMKilled``.
        message: human detail.
        started_at: seconds since the epoch (running, terminated).
        finished_at: seconds since the epoch (terminated).
        exit_code: exit code (terminated).
        signal: the signal that ended it (terminated), or None.
        container_id: ``<runtime>://<task id>``.
    """

    kind: StateKind
    reason: str = ""
    message: str = ""
    started_at: float | None = None
    finished_at: float | None = None
    exit_code: int | None = None
    signal: int | None = None
    container_id: str = ""

    def to_k8s(self) -> dict[str, Any]:
        """Render as a Kubernetes ``ContainerState`` dict."""
        body: dict[str, Any]
        if self.kind == "running":
            body = {"startedAt": rfc3339(self.started_at)}
        elif self.kind == "waiting":
            body = {"reason": self.reason}
        else:
            body = {
                "exitCode": self.exit_code,
                "reason": self.reason,
                "startedAt": rfc3339(self.started_at),
                "finishedAt": rfc3339(self.finished_at),
                "containerID": self.container_id,
            }
            if self.signal:
                body["signal"] = self.signal
        if self.message:
            body["message"] = self.message
        return {self.kind: body}

    @classmethod
    def from_k8s(cls, data: Mapping[str, Any]) -> ContainerState | None:
        """Read a ``ContainerState`` dict back; None when it is empty or not one."""
        kinds: tuple[StateKind, ...] = ("running", "terminated", "waiting")
        for kind in kinds:
            body = data.get(kind)
            if isinstance(body, Mapping):
                return cls(
                    kind=kind,
                    reason=str(body.get("reason", "")),
                    message=str(body.get("message", "")),
                    started_at=parse_rfc3339(body.get("startedAt")),
                    finished_at=parse_rfc3339(body.get("finishedAt")),
                    exit_code=body.get("exitCode"),
                    signal=body.get("signal"),
                    container_id=str(body.get("containerID", "")),
                )
        return None


WAITING_CREATING = ContainerState("waiting", "ContainerCreating")
WAITING_INITIALIZING = ContainerState("waiting", "PodInitializing")


@dataclass
class ContainerStatus:
    """Mutable status of one container, rendered as a Kubernetes ``ContainerStatus``."""

    name: str
    image: str
    state: ContainerState = WAITING_CREATING
    last_state: ContainerState | None = None
    ready: bool = False
    started: bool = False
    restart_count: int = 0
    container_id: str = ""

    def to_k8s(self) -> dict[str, Any]:
        """Render as a Kubernetes ``ContainerStatus`` dict."""
        body: dict[str, Any] = {
            "name": self.name,
            "image": self.image,
            "imageID": "",
            "state": self.state.to_k8s(),
            "lastState": self.last_state.to_k8s() if self.last_state else {},
            "ready": self.ready,
            "started": self.started,
            "restartCount": self.restart_count,
        }
        if self.container_id:
            body["containerID"] = self.container_id
        return body

    @classmethod
    def from_k8s(cls, data: Mapping[str, Any]) -> ContainerStatus:
        """Read a stored ``ContainerStatus`` dict back."""
        return cls(
            name=str(data.get("name", "")),
            image=str(data.get("image", "")),
            state=ContainerState.from_k8s(data.get("state") or {}) or WAITING_CREATING,
            last_state=ContainerState.from_k8s(data.get("lastState") or {}),
            ready=bool(data.get("ready", False)),
            started=bool(data.get("started", False)),
            restart_count=int(data.get("restartCount", 0)),
            container_id=str(data.get("containerID", "")),
        )


@dataclass
class PodStatusInput:
    """Everything :func:`pod_status` needs, gathered by the pod worker."""

    restart_policy: str
    init_statuses: Sequence[ContainerStatus]
    statuses: Sequence[ContainerStatus]
    initialized: bool
    host_ip: str
    start_time: float | None
    created_at: float
    now: float
    qos_class: str
    pod_ip: str = ""
    transitions: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    message: str = ""


def pod_phase(
    restart_policy: str, init_failed: bool, initialized: bool, statuses: Sequence[ContainerStatus]
) -> str:
    """Compute the pod phase from its containers (kubelet ``getPhase``).

    Args:
        restart_policy: ``Always``, ``OnFailure`` or ``Never``.
        init_failed: an init container failed and will not be restarted.
        initialized: every init container completed.
        statuses: the app containers' statuses.

    Returns:
        ``Pending``, ``Running``, ``Succeeded`` or ``Failed``.
    """
    if init_failed:
        return "Failed"
    if not initialized:
        return "Pending"
    running = waiting = stopped = succeeded = 0
    for status in statuses:
        if status.state.kind == "running":
            running += 1
        elif status.state.kind == "terminated":
            stopped += 1
            succeeded += status.state.exit_code == 0
        elif status.last_state is not None and status.last_state.kind == "terminated":
            stopped += 1
        else:
            waiting += 1
    if waiting:
        return "Pending"
    if running:
        return "Running"
    if restart_policy == "Always":
        return "Running"
    if stopped == succeeded:
        return "Succeeded"
    if restart_policy == "Never":
        return "Failed"
    return "Running"


def init_failed(restart_policy: str, init_statuses: Sequence[ContainerStatus]) -> bool:
    """True when an init container failed and the policy will not retry it (``Never``)."""
    return restart_policy == "Never" and any(
        s.state.kind == "terminated" and s.state.exit_code != 0 for s in init_statuses
    )


def pod_status(data: PodStatusInput) -> dict[str, Any]:
    """Render a Kubernetes ``PodStatus`` dict.

    ``data.transitions`` remembers when each condition last changed (seconds since the epoch,
    keyed by ``"<type>=<True|False>"``) and is updated in place; a condition seen for the first
    time dates from the pod's creation.
    """
    failed = init_failed(data.restart_policy, data.init_statuses)
    phase = pod_phase(data.restart_policy, failed, data.initialized, data.statuses)
    ready = phase == "Running" and all(s.ready for s in data.statuses)
    conditions = []
    for ctype, value in (
        ("PodScheduled", True),
        ("Initialized", data.initialized),
        ("ContainersReady", ready),
        ("Ready", ready),
    ):
        text = "True" if value else "False"
        key = f"{ctype}={text}"
        first = not any(k.startswith(f"{ctype}=") for k in data.transitions)
        since = data.transitions.setdefault(key, data.created_at if first else data.now)
        data.transitions.pop(f"{ctype}={'False' if value else 'True'}", None)
        conditions.append(
            {
                "type": ctype,
                "status": text,
                "lastProbeTime": None,
                "lastTransitionTime": rfc3339(since),
            }
        )
    status: dict[str, Any] = {
        "phase": phase,
        "conditions": conditions,
        "hostIP": data.host_ip,
        "hostIPs": [{"ip": data.host_ip}],
        "podIP": data.pod_ip or data.host_ip,
        "podIPs": [{"ip": data.pod_ip or data.host_ip}],
        "startTime": rfc3339(data.start_time),
        "containerStatuses": [s.to_k8s() for s in data.statuses],
        "qosClass": data.qos_class,
    }
    if data.init_statuses:
        status["initContainerStatuses"] = [s.to_k8s() for s in data.init_statuses]
    if data.reason:
        status["reason"] = data.reason
    if data.message:
        status["message"] = data.message
    return status
