"""One pod's lifecycle: init containers, app containers, restarts, probes, status.

A :class:`PodWorker` drives one desired pod toward running, the way the kubelet's pod workers do:
init containers one after another to completion, then every app container at once, each under a
supervisor that starts it, watches its probes, records how it ended and restarts it according to
``restartPolicy`` with :class:`~agent.backoff.CrashLoopBackOff`.

The worker never owns the workloads: cancelling :meth:`PodWorker.run` (agent shutdown) leaves them
running, and a new worker re-attaches through the store's task records and
:meth:`WorkloadRuntime.recover`. Only :meth:`PodWorker.kill` (pod deletion) stops them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from agent.backoff import CrashLoopBackOff
from agent.errors import FloreteError, RuntimeUnavailableError
from agent.podspec import Container, Pod, Probe
from agent.podstatus import (
    WAITING_CREATING,
    WAITING_INITIALIZING,
    ContainerState,
    ContainerStatus,
    PodStatusInput,
    pod_status,
)
from agent.probes import DEFAULT_HOST, ProbeTracker, run_probe
from agent.store import Store, StoredPod
from agent.taskspec import PodContext, build_task_spec, log_path
from wri_plugins.api import ExitResult, TaskHandle, WorkloadRuntime

log = logging.getLogger(__name__)

#: exit code and reason reported for a task the runtime no longer knows (kubelet's values).
LOST_EXIT_CODE = 137
LOST_REASON = "ContainerStatusUnknown"
#: Waiting reasons of a container whose image cannot be had (``pkg/kubelet/images/types.go``);
#: a runtime's :class:`WorkloadError` message starts with one of them and ``:``.
ERR_IMAGE_PULL = "ErrImagePull"
ERR_IMAGE_NEVER_PULL = "ErrImageNeverPull"


@dataclass(frozen=True)
class BackoffSettings:
    """CrashLoopBackOff parameters, in seconds (see :class:`CrashLoopBackOff`)."""

    initial: float = 10.0
    maximum: float = 300.0
    reset: float = 600.0


_T = TypeVar("_T")


class _ContainerLog(logging.LoggerAdapter[logging.Logger]):
    def process(self, msg: str, kwargs: Any) -> tuple[str, Any]:
        extra = self.extra or {}
        return f"pod={extra['pod']} container={extra['container']}: {msg}", kwargs


def qos_class(pod: Pod) -> str:
    """Return the pod's QoS class (Guaranteed, Burstable or BestEffort) as Kubernetes defines it."""
    containers = (*pod.spec.init_containers, *pod.spec.containers)
    limits = [(c.limits.cpu_millis, c.limits.memory_bytes) for c in containers]
    requests = [(c.requests.cpu_millis, c.requests.memory_bytes) for c in containers]
    if all(cpu is None and mem is None for cpu, mem in limits + requests):
        return "BestEffort"
    guaranteed = all(
        lim[0] is not None
        and lim[1] is not None
        and req[0] in (None, lim[0])
        and req[1] in (None, lim[1])
        for lim, req in zip(limits, requests, strict=True)
    )
    return "Guaranteed" if guaranteed else "Burstable"


class PodWorker:
    """Drives one pod; see the module docstring.

    Args:
        stored: the pod as stored (uid, creation time, last status).
        pod: the parsed manifest.
        runtime: the runtime chosen for it.
        store: the agent's store.
        ctx: where the pod runs.
        backoff: restart backoff parameters.
        limits_problem: why the runtime does not enforce resource limits, or None when it does;
            containers with limits then get a ``LimitsNotEnforced`` warning event.
    """

    def __init__(
        self,
        stored: StoredPod,
        pod: Pod,
        runtime: WorkloadRuntime,
        store: Store,
        ctx: PodContext,
        backoff: BackoffSettings,
        limits_problem: str | None = None,
    ) -> None:
        self.pod = pod
        self._limits_problem = limits_problem
        self.uid = stored.uid
        self.runtime = runtime
        self.store = store
        self.ctx = ctx
        self._backoff = backoff
        self._created_at = stored.created_at
        previous = stored.status
        self._start_time: float | None = None
        self._pod_ip: str | None = None  # the pod's own network namespace, when it has one
        self._transitions: dict[str, float] = {}
        self.init_statuses = self._restore(
            pod.spec.init_containers, previous.get("initContainerStatuses", [])
        )
        self.statuses = self._restore(pod.spec.containers, previous.get("containerStatuses", []))
        self.initialized = all(_succeeded(s) for s in self.init_statuses.values())
        self._last_published: dict[str, Any] = previous
        self.terminating = stored.deletion_at is not None

    @staticmethod
    def _restore(
        containers: tuple[Container, ...], saved: list[dict[str, Any]]
    ) -> dict[str, ContainerStatus]:
        by_name = {s.get("name"): s for s in saved if isinstance(s, dict)}
        result = {}
        for c in containers:
            if c.name in by_name:
                result[c.name] = ContainerStatus.from_k8s(by_name[c.name])
            else:
                result[c.name] = ContainerStatus(c.name, c.image or "")
        return result

    # --- status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Return the pod's current Kubernetes ``PodStatus`` dict."""
        return pod_status(
            PodStatusInput(
                restart_policy=self.pod.spec.restart_policy,
                init_statuses=list(self.init_statuses.values()),
                statuses=list(self.statuses.values()),
                initialized=self.initialized,
                host_ip=self.ctx.host_ip,
                pod_ip=self._pod_ip or self.ctx.host_ip,
                start_time=self._start_time or self._created_at,
                created_at=self._created_at,
                now=time.time(),
                qos_class=qos_class(self.pod),
                transitions=self._transitions,
            )
        )

    def _publish(self) -> None:
        status = self.status()
        if status != self._last_published:
            self._last_published = status
            self.store.save_status(self.uid, status)

    def event(self, type_: str, reason: str, message: str) -> None:
        """Record an event about this pod (shown by ``describe``)."""
        meta = self.pod.metadata
        self.store.record_event(meta.namespace, meta.name, self.uid, type_, reason, message)

    # --- lifecycle ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Drive the pod until every container is finished for good; cancel to detach."""
        self._start_time = self._start_time or time.time()
        for status in self.statuses.values():
            if not self.initialized and status.state == WAITING_CREATING:
                status.state = WAITING_INITIALIZING
        self._publish()
        init_policy = "Never" if self.pod.spec.restart_policy == "Never" else "OnFailure"
        for container in self.pod.spec.init_containers:
            if _succeeded(self.init_statuses[container.name]):
                continue
            await self._supervise(container, self.init_statuses[container.name], init_policy)
            if not _succeeded(self.init_statuses[container.name]):
                self._publish()
                return
        if not self.initialized:
            self.initialized = True
            for status in self.statuses.values():
                if status.state == WAITING_INITIALIZING:
                    status.state = WAITING_CREATING
            self._publish()
        async with asyncio.TaskGroup() as group:
            for container in self.pod.spec.containers:
                group.create_task(
                    self._supervise(
                        container, self.statuses[container.name], self.pod.spec.restart_policy
                    )
                )
        self._publish()

    async def _supervise(self, c: Container, status: ContainerStatus, policy: str) -> None:
        clog = _ContainerLog(log, {"pod": self._pod_key(), "container": c.name})
        backoff = CrashLoopBackOff(
            self._backoff.initial, self._backoff.maximum, self._backoff.reset
        )
        handle, attempt = await self._recover(c, status, clog)
        if handle is None and status.state.kind == "terminated":
            if not _should_restart(policy, status.state.exit_code):
                return
            status.last_state = status.state
            attempt += 1
        delay = 0.0
        image_error: str | None = None
        while True:
            if handle is None:
                if delay:
                    await self._back_off(c, status, delay, image_error)
                try:
                    handle = await self._start(c, status, attempt)
                except FloreteError as err:  # a bad spec, a missing image, a backend down
                    clog.warning("start failed: %s", err)
                    image_error = _image_reason(err)
                    reason = image_error or "RunContainerError"
                    status.state = ContainerState("waiting", reason, str(err))
                    self.event("Warning", "Failed", f"Error: {err}")
                    self._publish()
                    delay = backoff.on_exit(0.0)
                    if policy == "Never" and image_error is None:
                        status.state = ContainerState(
                            "terminated",
                            "StartError",
                            str(err),
                            exit_code=128,
                            finished_at=time.time(),
                        )
                        self._publish()
                        return
                    continue
            try:
                exit_result, started_at = await self._watch(c, status, handle)
                reason = _exit_reason(exit_result)
            except FloreteError as err:
                # the runtime lost the task (its files vanished, its backend went away)
                clog.warning("lost track of the container: %s", err)
                exit_result = ExitResult(LOST_EXIT_CODE, finished_at=time.time())
                started_at = status.state.started_at or time.time()
                reason = LOST_REASON
            clog.info("exited with code %d (%s)", exit_result.exit_code, reason)
            status.state = ContainerState(
                "terminated",
                reason,
                exit_code=exit_result.exit_code,
                signal=exit_result.signal,
                started_at=started_at,
                finished_at=exit_result.finished_at or time.time(),
                container_id=status.container_id,
            )
            status.ready = status.started = False
            if not _should_restart(policy, exit_result.exit_code):
                self._publish()
                return
            delay = backoff.on_exit((status.state.finished_at or time.time()) - started_at)
            status.last_state = status.state
            status.state = WAITING_CREATING
            self._publish()
            attempt += 1
            handle = None

    async def _recover(
        self, c: Container, status: ContainerStatus, clog: _ContainerLog
    ) -> tuple[TaskHandle | None, int]:
        """Re-attach to the container's latest task; return (handle or None, its attempt)."""
        records = self.store.tasks(self.uid, c.name)
        if not records:
            return None, 0
        last = records[-1]
        handle = (
            TaskHandle.from_json(last.handle)
            if last.handle
            else TaskHandle(last.runtime, last.task_id, {})
        )
        if await self._while_unavailable(lambda: self.runtime.recover(handle), clog):
            clog.info("re-attached to task %s", last.task_id)
            return handle, last.attempt
        if last.handle is None:
            return None, last.attempt
        clog.warning("task %s is gone (reboot?)", last.task_id)
        status.state = ContainerState(
            "terminated",
            LOST_REASON,
            "The container could not be located when the agent restarted",
            exit_code=LOST_EXIT_CODE,
            finished_at=time.time(),
            container_id=status.container_id,
        )
        status.ready = status.started = False
        return None, last.attempt

    async def _while_unavailable(
        self, call: Callable[[], Awaitable[_T]], clog: logging.LoggerAdapter[Any] | None
    ) -> _T:
        """``call()``, again with back-off while the runtime's backend cannot be reached (a phone
        out of reach): the task runs on without it, and taking it for lost would start a
        duplicate once the backend is back."""
        delay = self._backoff.initial
        while True:
            try:
                return await call()
            except RuntimeUnavailableError as err:
                (clog or log).warning("runtime unreachable, trying again in %gs: %s", delay, err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff.maximum)

    async def _back_off(
        self, c: Container, status: ContainerStatus, delay: float, image_error: str | None
    ) -> None:
        if image_error is not None:
            await self._image_back_off(c, status, delay, image_error)
            return
        message = f"back-off {delay:g}s restarting failed container={c.name} pod={self._pod_key()}"
        status.state = ContainerState("waiting", "CrashLoopBackOff", message)
        self.event(
            "Warning",
            "BackOff",
            f"Back-off restarting failed container {c.name} in pod {self._pod_key()}",
        )
        self._publish()
        await asyncio.sleep(delay)

    async def _image_back_off(
        self, c: Container, status: ContainerStatus, delay: float, image_error: str
    ) -> None:
        """Wait before the next try of a container whose image could not be had.

        As the kubelet (``pkg/kubelet/images/image_manager.go``): a failed pull waits as
        ``ImagePullBackOff`` with a ``BackOff`` event; ``ErrImageNeverPull`` keeps its reason
        (there is nothing to back off from, the image may appear in local storage).
        """
        if image_error == ERR_IMAGE_PULL:
            message = f'Back-off pulling image "{c.image}"'
            status.state = ContainerState("waiting", "ImagePullBackOff", message)
            self.event("Normal", "BackOff", message)
            self._publish()
        await asyncio.sleep(delay)

    async def _start(self, c: Container, status: ContainerStatus, attempt: int) -> TaskHandle:
        remote = self.runtime.capabilities.remote
        spec = build_task_spec(self.pod, c, self.ctx, attempt, remote)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        if spec.working_dir == str(self.ctx.work_dir):
            self.ctx.work_dir.mkdir(parents=True, exist_ok=True)
        self.store.record_task_intent(self.uid, c.name, attempt, spec.task_id, self.runtime.name)
        handle = await self.runtime.start(spec)
        self.store.record_task_handle(self.uid, c.name, attempt, handle.to_json())
        status.restart_count = attempt
        status.container_id = f"{self.runtime.name}://{spec.task_id}"
        self.event("Normal", "Started", f"Started container {c.name}")
        if self._limits_problem and (c.limits.cpu_millis or c.limits.memory_bytes):
            self.event(
                "Warning",
                "LimitsNotEnforced",
                f"resources.limits of container {c.name} are not enforced: {self._limits_problem}",
            )
        await self._prune(c.name, attempt)
        return handle

    async def _prune(self, container: str, attempt: int) -> None:
        """Destroy tasks and logs older than the previous attempt (kept for ``--previous``)."""
        for record in self.store.tasks(self.uid, container):
            if record.attempt >= attempt - 1:
                continue
            if record.handle:
                with contextlib.suppress(FloreteError):
                    await self.runtime.destroy(TaskHandle.from_json(record.handle), force=True)
            log_path(self.ctx, container, record.attempt).unlink(missing_ok=True)
        self.store.forget_tasks_before(self.uid, container, attempt)

    async def _watch(
        self, c: Container, status: ContainerStatus, handle: TaskHandle
    ) -> tuple[ExitResult, float]:
        """Mark the container running, run its probes, and wait until it exits."""
        info = await self._while_unavailable(lambda: self.runtime.inspect(handle), clog=None)
        self._pod_ip = info.ip or self._pod_ip
        status.state = ContainerState("running", started_at=info.started_at)
        status.started = c.startup_probe is None
        status.ready = status.started and c.readiness_probe is None
        self._publish()
        if info.exit is not None:
            return info.exit, info.started_at
        async with asyncio.TaskGroup() as group:
            probes = group.create_task(self._probes(c, status, handle))
            result = await self.runtime.wait(handle)
            probes.cancel()
        return result, info.started_at

    # --- probes -------------------------------------------------------------------------------

    async def _probes(self, c: Container, status: ContainerStatus, handle: TaskHandle) -> None:
        started = asyncio.Event()
        async with asyncio.TaskGroup() as group:
            if c.startup_probe is not None:
                group.create_task(
                    self._probe_loop("Startup", c.startup_probe, c, status, handle, started)
                )
            else:
                started.set()
            if c.liveness_probe is not None:
                group.create_task(
                    self._probe_loop("Liveness", c.liveness_probe, c, status, handle, started)
                )
            if c.readiness_probe is not None:
                group.create_task(
                    self._probe_loop("Readiness", c.readiness_probe, c, status, handle, started)
                )

    async def _probe_loop(
        self,
        kind: str,
        probe: Probe,
        c: Container,
        status: ContainerStatus,
        handle: TaskHandle,
        started: asyncio.Event,
    ) -> None:
        if kind != "Startup":
            await started.wait()
        await asyncio.sleep(probe.initial_delay_seconds)
        tracker = ProbeTracker(
            probe.success_threshold, probe.failure_threshold, healthy=kind == "Liveness"
        )

        async def exec_fn(argv: tuple[str, ...]) -> tuple[int, bytes]:
            result = await self.runtime.exec(handle, argv)
            return result.exit_code, result.output

        while True:
            try:
                result = await run_probe(probe, exec_fn, self._pod_ip or DEFAULT_HOST)
            except FloreteError as err:
                result_ok, message = False, str(err)
            else:
                result_ok, message = result.success, result.message
            if not result_ok:
                self.event("Warning", "Unhealthy", f"{kind} probe failed: {message}")
            flipped = tracker.record(result_ok)
            if kind == "Startup" and tracker.healthy:
                status.started = True
                status.ready = c.readiness_probe is None
                started.set()
                self._publish()
                return
            if kind == "Readiness" and flipped:
                status.ready = tracker.healthy
                self._publish()
            if kind != "Readiness" and tracker.failures >= probe.failure_threshold:
                self.event(
                    "Normal",
                    "Killing",
                    f"Container {c.name} failed {kind.lower()} probe, will be restarted",
                )
                grace = probe.termination_grace_period_seconds
                if grace is None:
                    grace = self.pod.spec.termination_grace_period_seconds
                await self.runtime.stop(handle, float(grace))
                return
            await asyncio.sleep(probe.period_seconds)

    # --- deletion -----------------------------------------------------------------------------

    async def kill(self, grace: float) -> None:
        """Stop every task of the pod (SIGTERM, SIGKILL after ``grace`` seconds) and free all.

        Removes the tasks, the pod's log and work directories, and the pod from the store.
        """
        records = self.store.tasks(self.uid)
        async with asyncio.TaskGroup() as group:
            for record in records:
                group.create_task(
                    self._kill_task(
                        record.container, record.runtime, record.task_id, record.handle, grace
                    )
                )
        shutil.rmtree(self.ctx.log_dir, ignore_errors=True)
        shutil.rmtree(self.ctx.work_dir, ignore_errors=True)
        self.store.remove_pod(self.uid)

    async def _kill_task(
        self, container: str, runtime: str, task: str, handle_json: str | None, grace: float
    ) -> None:
        handle = TaskHandle.from_json(handle_json) if handle_json else TaskHandle(runtime, task, {})
        clog = _ContainerLog(log, {"pod": self._pod_key(), "container": container})
        try:
            known = await self.runtime.recover(handle)
            if known and (await self.runtime.inspect(handle)).running:
                self.event("Normal", "Killing", f"Stopping container {container}")
                await self.runtime.stop(handle, grace)
            if known or handle_json:
                await self.runtime.destroy(handle, force=True)
        except FloreteError as err:
            clog.warning("could not clean up task %s: %s", task, err)

    def _pod_key(self) -> str:
        return f"{self.pod.metadata.namespace}/{self.pod.metadata.name}"


def _succeeded(status: ContainerStatus) -> bool:
    return status.state.kind == "terminated" and status.state.exit_code == 0


def _image_reason(err: FloreteError) -> str | None:
    """``ErrImagePull`` or ``ErrImageNeverPull`` when ``err`` says so by its prefix, else None."""
    prefix = str(err).partition(":")[0]
    return prefix if prefix in (ERR_IMAGE_PULL, ERR_IMAGE_NEVER_PULL) else None


def _should_restart(policy: str, exit_code: int | None) -> bool:
    if policy == "Always":
        return True
    if policy == "OnFailure":
        return exit_code != 0
    return False


def _exit_reason(result: ExitResult) -> str:
    if result.oom_killed:
        return "OOMKilled"
    return "Completed" if result.exit_code == 0 else "Error"
