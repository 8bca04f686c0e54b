"""Where a pod can run and where it should: the leader's filter and score, without I/O.

Modelled on the Kubernetes scheduler's two phases (``pkg/scheduler/framework``: filter plugins,
then score plugins, highest score wins):

**Filters**, in this order; the first that fails names the member's reason in the Pending
message (``0/3 members are available: 1 member is down, 2 members lack device camera``):

1. the member is up (the leader heard from it within the failover timeout) and has reported;
2. ``spec.nodeName`` pins the pod to one member (by name or node ID);
3. ``spec.nodeSelector``: every label matches the member's labels (node labels from its config,
   plus ``kubernetes.io/hostname``, ``kubernetes.io/arch``, ``kubernetes.io/os``,
   ``florete.io/node-id``);
4. the runtime the pod needs is installed and healthy there (``runtimeClassName``, or the
   automatic choice: ``podman`` when a container names an image, else ``process``);
5. free CPU and memory: the pod's requests fit beside the requests of the pods already placed
   there (``NodeResourcesFit``), its memory request fits the memory the member measures as
   available, and the member has a pod slot left;
6. devices: each device class the pod asks for (annotation ``florete.io/devices``) has a unit
   left on the member (devices are exclusive: one pod per unit).

**Score** (higher wins; ties go to the lower node ID, so every leader decides alike): the mean
of the shares left free after placing it — CPU and memory by requests (``LeastAllocated``),
pod slots, measured idle CPU and measured available memory — which spreads pods over members.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent.errors import RemoteProtocolError
from supernode.state import PodRecord

__all__ = ["DEVICES_ANNOTATION", "MemberReport", "Usage", "choose", "describe_unschedulable"]

DEVICES_ANNOTATION = "florete.io/devices"
"""Pod annotation naming the devices it needs: device classes, comma-separated, one per unit
(``"camera"``, ``"serial,serial"``)."""


@dataclasses.dataclass(frozen=True)
class MemberReport:
    """What a member tells the others about itself, every report interval.

    Attributes:
        node_id: its node ID.
        name: its node name.
        cpu_millis: CPU capacity, millicores (cores x 1000).
        memory_bytes: memory capacity, bytes.
        memory_available: memory available now, bytes (``psutil.virtual_memory().available``).
        cpu_idle: share of CPU idle now, 0.0 to 1.0.
        max_pods: pods it admits.
        runtimes: runtime name -> healthy.
        labels: its node labels.
        devices: device class -> units it has (``serial``, ``camera``, ...).
        terminal: ``"namespace/name"`` -> phase, for its supernode pods that ended
            (``Succeeded`` or ``Failed``): a finished ``OnFailure`` pod is not restarted elsewhere.
    """

    node_id: str
    name: str
    cpu_millis: int
    memory_bytes: int
    memory_available: int
    cpu_idle: float
    max_pods: int
    runtimes: Mapping[str, bool]
    labels: Mapping[str, str]
    devices: Mapping[str, int]
    terminal: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        """The report as plain data for a mesh message."""
        out = dataclasses.asdict(self)
        return {k: dict(v) if isinstance(v, Mapping) else v for k, v in out.items()}

    @classmethod
    def from_wire(cls, body: Any) -> MemberReport:
        """Parse a report received from a member.

        Raises:
            RemoteProtocolError: a field is missing, of the wrong type or out of range.
        """
        if not isinstance(body, dict):
            raise RemoteProtocolError("member report: expected a map")
        try:
            report = cls(
                node_id=_typed(body, "node_id", str),
                name=_typed(body, "name", str),
                cpu_millis=_typed(body, "cpu_millis", int),
                memory_bytes=_typed(body, "memory_bytes", int),
                memory_available=_typed(body, "memory_available", int),
                cpu_idle=float(_typed(body, "cpu_idle", (int, float))),
                max_pods=_typed(body, "max_pods", int),
                runtimes=_typed_map(body, "runtimes", bool),
                labels=_typed_map(body, "labels", str),
                devices=_typed_map(body, "devices", int),
                terminal=_typed_map(body, "terminal", str),
            )
        except (KeyError, TypeError) as err:
            raise RemoteProtocolError(f"member report: {err}") from None
        numbers = (report.cpu_millis, report.memory_bytes, report.memory_available, report.max_pods)
        if min(numbers) < 0 or not 0.0 <= report.cpu_idle <= 1.0:
            raise RemoteProtocolError("member report: negative capacity or idle share not 0..1")
        if any(v < 0 for v in report.devices.values()):
            raise RemoteProtocolError("member report: negative device count")
        return report


def _typed(body: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in body:
        raise KeyError(f"{key} missing")
    value = body[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise TypeError(f"{key}: wrong type {type(value).__name__}")
    return value


def _typed_map(body: Mapping[str, Any], key: str, kind: type) -> dict[str, Any]:
    value = _typed(body, key, dict)
    for k, v in value.items():
        if (
            not isinstance(k, str)
            or not isinstance(v, kind)
            or (isinstance(v, bool) and kind is not bool)
        ):
            raise TypeError(f"{key}: expected a map of str to {kind.__name__}")
    return dict(value)


def parse_devices(annotation: str) -> list[str]:
    """The device classes of a ``florete.io/devices`` annotation, one entry per unit.

    Raises:
        ValueError: an entry is empty or not a DNS-1123 label (``a-z0-9-``, at most 63).
    """
    classes = [part.strip() for part in annotation.split(",")]
    for part in classes:
        if (
            not part
            or len(part) > 63
            or not all(c.isdigit() or "a" <= c <= "z" or c == "-" for c in part)
        ):
            raise ValueError(
                f"{DEVICES_ANNOTATION}: {part!r} is not a device class "
                "(lower-case letters, digits and '-', e.g. \"camera,serial\")"
            )
    return sorted(classes)


@dataclasses.dataclass
class Usage:
    """What the pods placed on one member ask for (by requests), kept up to date as a placement
    round places more."""

    cpu_millis: int = 0
    memory_bytes: int = 0
    pods: int = 0
    devices: Counter[str] = dataclasses.field(default_factory=Counter)

    def add(self, pod: PodRecord) -> None:
        """Count ``pod`` as placed here."""
        self.cpu_millis += pod.cpu_millis
        self.memory_bytes += pod.memory_bytes
        self.pods += 1
        self.devices.update(pod.devices)

    @classmethod
    def of(cls, pods: Iterable[PodRecord]) -> Usage:
        """The usage of these pods together."""
        usage = cls()
        for pod in pods:
            usage.add(pod)
        return usage


def _misfit(pod: PodRecord, report: MemberReport, usage: Usage) -> str | None:
    """The first filter ``report``'s member fails for ``pod`` (a phrase for the Pending
    message), or None when the pod fits there."""
    if pod.pinned and pod.pinned not in (report.name, report.node_id):
        return "is not the pinned member"
    if any(report.labels.get(k) != v for k, v in pod.node_selector.items()):
        return "didn't match nodeSelector"
    if not report.runtimes.get(pod.runtime, False):
        if pod.runtime in report.runtimes:
            return f"has runtime {pod.runtime} unhealthy"
        return f"lacks runtime {pod.runtime}"
    if usage.cpu_millis + pod.cpu_millis > report.cpu_millis:
        return "has insufficient cpu"
    if usage.memory_bytes + pod.memory_bytes > report.memory_bytes or (
        pod.memory_bytes > report.memory_available
    ):
        return "has insufficient memory"
    if usage.pods + 1 > report.max_pods:
        return "has too many pods"
    for device, count in Counter(pod.devices).items():
        if usage.devices[device] + count > report.devices.get(device, 0):
            return f"lacks device {device}"
    return None


def _score(pod: PodRecord, report: MemberReport, usage: Usage) -> float:
    def free(capacity: float, used: float) -> float:
        return max(0.0, capacity - used) / capacity if capacity > 0 else 0.0

    shares = (
        free(report.cpu_millis, usage.cpu_millis + pod.cpu_millis),
        free(report.memory_bytes, usage.memory_bytes + pod.memory_bytes),
        free(report.max_pods, usage.pods + 1),
        report.cpu_idle,
        free(report.memory_bytes, report.memory_bytes - report.memory_available),
    )
    return sum(shares) / len(shares)


def choose(
    pod: PodRecord,
    candidates: Sequence[MemberReport],
    usage: Mapping[str, Usage],
    unavailable: Mapping[str, str] | None = None,
) -> tuple[str | None, str]:
    """Pick the member for ``pod``.

    Args:
        pod: the pod to place.
        candidates: reports of the members that are up, in any order.
        usage: node ID -> what is placed there already (missing: nothing).
        unavailable: node ID -> reason, members that cannot take pods at all (down, no report);
            they only count in the Pending message.

    Returns:
        ``(node ID, "")`` of the best member, or ``(None, message)`` with the scheduler's
        Pending message when none fits.
    """
    best: tuple[float, str] | None = None
    reasons: Counter[str] = Counter((unavailable or {}).values())
    for report in candidates:
        here = usage.get(report.node_id) or Usage()
        misfit = _misfit(pod, report, here)
        if misfit is not None:
            reasons[misfit] += 1
            continue
        score = _score(pod, report, here)
        if best is None or score > best[0] or (score == best[0] and report.node_id < best[1]):
            best = (score, report.node_id)
    if best is not None:
        return best[1], ""
    return None, describe_unschedulable(len(candidates) + len(unavailable or {}), reasons)


def describe_unschedulable(total: int, reasons: Mapping[str, int]) -> str:
    """``0/N members are available: 1 member is down, 2 members lack device camera.``"""
    parts = [
        f"{n} {'member' if n == 1 else 'members'} {_plural(reason, n)}"
        for reason, n in sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    ]
    return f"0/{total} members are available" + (": " + ", ".join(parts) if parts else "") + "."


def _plural(phrase: str, n: int) -> str:
    if n == 1:
        return phrase
    for singular, plural in (("is ", "are "), ("has ", "have "), ("lacks ", "lack ")):
        if phrase.startswith(singular):
            return plural + phrase[len(singular) :]
    return phrase
