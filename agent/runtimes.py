"""The runtimes this agent has, and which one runs a given pod.

Runtime classes come from the ``florete.wri`` entry-point group; each is constructed with its own
state dir and its validated ``runtimes.<name>`` options. A runtime whose backend is missing stays
registered but unhealthy, so pods that need it are rejected with a message that says what to do,
and it never stops the agent from starting.

Selection (ARCHITECTURE.md §3): ``spec.runtimeClassName`` names the runtime; without it a pod whose
containers name no image runs on ``process``, and one whose containers name images runs on
``podman`` when podman is healthy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.config import validate_runtime_options
from agent.errors import ConfigError, ManifestError, RuntimeUnavailableError
from agent.podspec import Pod
from agent.store import Store
from wri_plugins.api import Fingerprint, RuntimeContext, WorkloadRuntime, discover_runtimes

log = logging.getLogger(__name__)

#: Length of a pod uid (a UUID string), the prefix of its task ids.
UID_LENGTH = 36
#: Seconds a fingerprint is reused before the runtime is asked again.
FINGERPRINT_TTL = 10.0


@dataclass(frozen=True)
class RemoteNode:
    """The device a remote runtime (capability ``remote``) runs its pods on.

    Attributes:
        name: its node name (fingerprint attribute ``node_name``).
        ready: the device answered at the runtime's last fingerprint.
        why: that fingerprint's description.
    """

    name: str
    ready: bool
    why: str


class RuntimeRegistry:
    """The constructed runtimes, with cached fingerprints.

    Args:
        state_dir: the agent's state dir; runtime ``name`` keeps its files in
            ``<state_dir>/runtimes/<name>``.
        node_name: this node's name.
        options: ``runtimes.<name>`` config tables (name -> options).
        classes: runtime classes by name; defaults to the ``florete.wri`` entry points.
        store: where events that runtimes report (``RuntimeContext.events``, e.g. image pulls)
            are recorded for the task's pod; None drops them.

    Raises:
        ConfigError: options for a runtime that does not exist, or invalid options.
    """

    def __init__(
        self,
        state_dir: Path,
        node_name: str,
        options: Mapping[str, Mapping[str, Any]],
        classes: Mapping[str, type[WorkloadRuntime]] | None = None,
        store: Store | None = None,
    ) -> None:
        self.store = store
        classes = dict(classes if classes is not None else discover_runtimes())
        unknown = sorted(set(options) - set(classes))
        if unknown:
            raise ConfigError(
                f'unknown runtime "{unknown[0]}" in [runtimes]; available: '
                f"{', '.join(sorted(classes))}"
            )
        self.runtimes: dict[str, WorkloadRuntime] = {}
        for name, cls in sorted(classes.items()):
            opts = validate_runtime_options(name, options.get(name, {}), cls.OPTIONS, "config")
            directory = state_dir / "runtimes" / name
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            context = RuntimeContext(directory, node_name, opts, events=self.record_event)
            self.runtimes[name] = cls(context)
        self._fingerprints: dict[str, tuple[float, Fingerprint]] = {}

    def record_event(self, task_id: str, type_: str, reason: str, message: str) -> None:
        """Record an event a runtime reports about a task, on the task's pod.

        The pod is found by the uid that starts the task id (``<pod uid>-<container>-<attempt>``,
        the uid a 36-character UUID). Never raises: an event of an unknown pod, or without a
        store, is logged at DEBUG and dropped.
        """
        uid = task_id[:UID_LENGTH]
        store = self.store
        try:
            pod = store.pod_by_uid(uid) if store is not None else None
            if store is None or pod is None:
                log.debug("event %s %s of task %s dropped: %s", type_, reason, task_id, message)
                return
            store.record_event(pod.namespace, pod.name, uid, type_, reason, message)
        except Exception:  # an event must never fail the runtime's operation
            log.exception("cannot record event %s of task %s", reason, task_id)

    async def fingerprint(self, name: str, fresh: bool = False) -> Fingerprint:
        """Return a runtime's fingerprint, cached for :data:`FINGERPRINT_TTL` seconds."""
        cached = self._fingerprints.get(name)
        now = time.monotonic()
        if cached and not fresh and now - cached[0] < FINGERPRINT_TTL:
            return cached[1]
        try:
            result = await self.runtimes[name].fingerprint()
        except Exception as err:  # a plugin must never take the agent down
            log.exception("runtime %s: fingerprint failed", name)
            result = Fingerprint(False, f"fingerprint failed: {err}")
        if cached is None or cached[1].healthy != result.healthy:
            level = logging.INFO if result.healthy else logging.WARNING
            log.log(level, "runtime %s: %s", name, result.description)
        self._fingerprints[name] = (now, result)
        return result

    def limits_problem(self, name: str) -> str | None:
        """Why a runtime does not enforce resource limits, from its last fingerprint.

        Returns:
            The runtime's sentence (``limits`` attribute), or None when limits are enforced or
            the runtime was not fingerprinted yet.
        """
        cached = self._fingerprints.get(name)
        if cached is None or cached[1].attributes.get("limits_enforced", "true") == "true":
            return None
        return cached[1].attributes.get("limits", "limits are not enforced")

    def remote_node(self, name: str) -> RemoteNode | None:
        """The device of remote runtime ``name`` as its last fingerprint saw it; None for a
        local runtime, one not fingerprinted yet, or one whose fingerprint names no node."""
        runtime, cached = self.runtimes.get(name), self._fingerprints.get(name)
        if runtime is None or not runtime.capabilities.remote or cached is None:
            return None
        fingerprint = cached[1]
        node = fingerprint.attributes.get("node_name")
        if not node or not fingerprint.attributes.get("host"):
            return None
        return RemoteNode(node, fingerprint.healthy, fingerprint.description)

    async def watch_remote(self, stop: asyncio.Event) -> None:
        """Fingerprint the remote runtimes every :data:`FINGERPRINT_TTL` seconds until ``stop``
        is set, so :meth:`remote_node` follows a device that goes away and comes back."""
        remote = [name for name, rt in self.runtimes.items() if rt.capabilities.remote]
        while remote and not stop.is_set():
            for name in remote:
                await self.fingerprint(name, fresh=True)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), FINGERPRINT_TTL)

    async def fingerprints(self) -> dict[str, Fingerprint]:
        """Return every runtime's fingerprint, by name."""
        return {name: await self.fingerprint(name) for name in self.runtimes}

    def get(self, name: str) -> WorkloadRuntime:
        """Return a runtime by name.

        Raises:
            RuntimeUnavailableError: no runtime of that name is installed.
        """
        try:
            return self.runtimes[name]
        except KeyError:
            raise RuntimeUnavailableError(f'runtime "{name}" is not installed') from None

    async def select(self, pod: Pod, default: str = "") -> str:
        """Choose the runtime for ``pod``.

        Args:
            pod: the parsed pod.
            default: the configured default runtime (``runtime.default``), or "" for automatic.

        Returns:
            The runtime's name.

        Raises:
            ManifestError: the pod names an unknown or unhealthy runtime, or needs one that is not
                available; the message names the field and what to set.
        """
        paths = [(f"spec.initContainers[{i}]", c) for i, c in enumerate(pod.spec.init_containers)]
        paths += [(f"spec.containers[{i}]", c) for i, c in enumerate(pod.spec.containers)]
        wanted = pod.spec.runtime_class_name or default
        field = "spec.runtimeClassName" if pod.spec.runtime_class_name else "runtime.default"
        advice = "set spec.runtimeClassName to a healthy runtime"
        if not wanted:
            with_image = [path for path, c in paths if c.image]
            wanted, field = (
                ("podman", f"{with_image[0]}.image")
                if with_image
                else ("process", "spec.containers")
            )
            if with_image:
                advice += ", or remove image to run a host process"
        if wanted not in self.runtimes:
            raise ManifestError(
                [
                    f'{field}: runtime "{wanted}" is not available on this node '
                    f"(installed: {', '.join(sorted(self.runtimes))}); {advice}"
                ]
            )
        fingerprint = await self.fingerprint(wanted)
        if not fingerprint.healthy:
            raise ManifestError(
                [f'{field}: runtime "{wanted}" is unhealthy ({fingerprint.description}); {advice}']
            )
        isolated = self.runtimes[wanted].capabilities.fs_isolation
        for path, c in paths:
            if c.image and not isolated:
                raise ManifestError(
                    [
                        f'{path}.image: runtime "{wanted}" runs host processes and '
                        "cannot run images; remove image or choose a container "
                        "runtime"
                    ]
                )
            if not c.command and not c.image:
                raise ManifestError([f"{path}.command: required for a container without image"])
        return wanted

    async def close(self) -> None:
        """Close every runtime (their tasks keep running)."""
        for runtime in self.runtimes.values():
            try:
                await runtime.close()
            except Exception:  # closing must go on for the others
                log.exception("runtime %s: close failed", runtime.name)
