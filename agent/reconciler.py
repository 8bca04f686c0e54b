"""Desired pods (the store) against running workloads (the runtimes).

The :class:`Reconciler` owns one :class:`~agent.podworker.PodWorker` per desired pod. At start it
re-creates a worker for every pod in the store (which re-attaches to surviving workloads or starts
them again after a reboot); :meth:`Reconciler.create`, :meth:`Reconciler.update` and
:meth:`Reconciler.delete` are what the API calls. Pods are immutable once created, as in
Kubernetes, except for their labels and annotations.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import AlreadyExistsError, FloreteError, ManifestError, NotFoundError
from agent.manifest import parse_pod, pod_to_manifest
from agent.podspec import Pod
from agent.podstatus import rfc3339
from agent.podworker import BackoffSettings, PodWorker
from agent.runtimes import RuntimeRegistry
from agent.store import Store, StoredPod
from agent.taskspec import PodContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeSettings:
    """Facts about this node that pods see.

    Attributes:
        name: node name (``spec.nodeName``).
        host_ip: node address (``status.hostIP``).
        state_dir: the agent's state dir (pod logs and work dirs live under it).
        default_runtime: ``runtime.default`` ("" for automatic selection).
    """

    name: str
    host_ip: str
    state_dir: Path
    default_runtime: str = ""


class Reconciler:
    """Keeps every desired pod running; see the module docstring.

    Args:
        store: the agent's store.
        runtimes: the agent's runtimes.
        node: facts about this node.
        backoff: CrashLoopBackOff parameters.
    """

    def __init__(
        self, store: Store, runtimes: RuntimeRegistry, node: NodeSettings, backoff: BackoffSettings
    ) -> None:
        self.store = store
        self.runtimes = runtimes
        self.node = node
        self.backoff = backoff
        self._workers: dict[str, PodWorker] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._deletions: dict[str, asyncio.Task[None]] = {}
        self._group: asyncio.TaskGroup | None = None
        self._held: set[str] = set()

    async def start(
        self, group: asyncio.TaskGroup, hold: Callable[[StoredPod], bool] | None = None
    ) -> None:
        """Start a worker for every stored pod, finishing deletions that were under way.

        Args:
            group: the task group that owns the workers (the daemon's).
            hold: pods for which it returns True get no worker until :meth:`release` (their
                workloads, if any still run, are left alone meanwhile). The supernode holds
                its pods until it knows they are still placed here, so that a member back from
                a reboot never starts a pod that another member runs now.
        """
        self._group = group
        for stored in self.store.list_pods():
            if hold is not None and hold(stored):
                self._held.add(stored.uid)
                continue
            self._adopt(stored)

    @property
    def held(self) -> frozenset[str]:
        """Uids of the pods held at start and not released yet."""
        return frozenset(self._held)

    def release(self, uid: str) -> None:
        """Start the worker of a held pod (re-attaching to its workloads); no-op otherwise."""
        if uid in self._held:
            self._held.discard(uid)
            stored = self.store.pod_by_uid(uid)
            if stored is not None:
                self._adopt(stored)

    def _adopt(self, stored: StoredPod) -> None:
        """Start the worker of a stored pod, and its deletion if one was under way."""
        try:
            pod = parse_pod(stored.manifest)
        except ManifestError as err:
            log.error(  # noqa: TRY400 - the manifest is at fault, not the code
                "pod %s/%s: stored manifest no longer valid: %s",
                stored.namespace,
                stored.name,
                err,
            )
            return
        try:
            worker = self._spawn(stored, pod)
        except FloreteError as err:
            log.error("pod %s/%s: cannot run it here: %s", stored.namespace, stored.name, err)  # noqa: TRY400
            return
        if stored.deletion_at is not None:
            self._begin_deletion(worker, stored.deletion_grace or 0.0)

    async def stop(self) -> None:
        """Detach from every pod; the workloads keep running.

        Deletions under way are interrupted too; they resume when the agent starts again.
        """
        tasks = {*self._tasks.values(), *self._deletions.values()}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    # --- API operations -----------------------------------------------------------------------

    async def create(
        self, manifest: dict[str, Any], namespace: str | None = None, dry_run: bool = False
    ) -> StoredPod:
        """Create a pod.

        Args:
            manifest: a Pod object (dict) as sent to the API.
            namespace: the namespace of the request path; the manifest's must match it.
            dry_run: validate everything but store and start nothing (Kubernetes ``dryRun=All``).

        Returns:
            The stored pod.

        Raises:
            ManifestError: the manifest is invalid, its namespace does not match, or it asks for
                a runtime that is not available.
            AlreadyExistsError: a pod of that name exists.
        """
        pod = self._parse(manifest, namespace)
        meta = pod.metadata
        await self.runtimes.select(pod, self.node.default_runtime)
        if dry_run:
            self._refuse_existing(meta.namespace, meta.name)
            return StoredPod(
                meta.namespace, meta.name, "", pod_to_manifest(pod), time.time(), 0, None, None, {}
            )
        stored = self.store.create_pod(
            meta.namespace, meta.name, str(uuid.uuid4()), pod_to_manifest(pod)
        )
        self.store.record_event(
            meta.namespace,
            meta.name,
            stored.uid,
            "Normal",
            "Scheduled",
            f"Successfully assigned {meta.namespace}/{meta.name} to {self.node.name}",
        )
        log.info("pod %s/%s: created", meta.namespace, meta.name)
        self._spawn(stored, pod)
        return stored

    async def update(
        self, manifest: dict[str, Any], namespace: str | None = None, dry_run: bool = False
    ) -> StoredPod:
        """Update the labels and annotations of an existing pod (its spec is immutable).

        ``dry_run`` validates without storing anything.

        Raises:
            ManifestError: the manifest is invalid or changes the spec.
            NotFoundError: no such pod.
        """
        pod = self._parse(manifest, namespace)
        meta = pod.metadata
        existing = self.store.get_pod(meta.namespace, meta.name)
        if existing.deletion_at is not None:
            raise ManifestError(
                [
                    f'metadata.name: pod "{meta.name}" is being deleted; apply it '
                    "again once it is gone"
                ]
            )
        normal = pod_to_manifest(pod)
        if normal["spec"] != existing.manifest["spec"]:
            raise ManifestError(
                [
                    "spec: Forbidden: pod updates may not change fields other than "
                    "metadata.labels and metadata.annotations; delete the pod and "
                    "apply it again"
                ]
            )
        if normal == existing.manifest:
            return existing
        if dry_run:
            return dataclasses.replace(existing, manifest=normal)
        stored = self.store.update_manifest(meta.namespace, meta.name, normal)
        worker = self._workers.get(stored.uid)
        if worker is not None:
            worker.pod = pod
        return stored

    def _refuse_existing(self, namespace: str, name: str) -> None:
        try:
            self.store.get_pod(namespace, name)
        except NotFoundError:
            return
        raise AlreadyExistsError(f'pods "{name}" already exists')

    def _parse(self, manifest: dict[str, Any], namespace: str | None) -> Pod:
        pod = parse_pod(manifest)
        errors = []
        if namespace is not None and pod.metadata.namespace != namespace:
            if (manifest.get("metadata") or {}).get("namespace") is not None:
                errors.append(
                    f"metadata.namespace: the namespace of the object "
                    f'("{pod.metadata.namespace}") does not match the namespace of '
                    f'the request ("{namespace}")'
                )
            else:
                pod = parse_pod(
                    {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
                )
        if pod.spec.node_name not in (None, self.node.name):
            errors.append(
                f'spec.nodeName: the pod is bound to node "{pod.spec.node_name}"; '
                f'this node is "{self.node.name}"'
            )
        if errors:
            raise ManifestError(errors)
        return pod

    async def delete(self, namespace: str, name: str, grace: float | None = None) -> StoredPod:
        """Request deletion of a pod; its workloads stop in the background.

        Args:
            namespace: namespace.
            name: name.
            grace: seconds between SIGTERM and SIGKILL; the pod's
                ``terminationGracePeriodSeconds`` when None.

        Returns:
            The pod as stored, with its deletion time set.

        Raises:
            NotFoundError: no such pod.
        """
        stored = self.store.get_pod(namespace, name)
        if grace is None:
            grace = float(stored.manifest["spec"].get("terminationGracePeriodSeconds", 30))
        stored = self.store.mark_deleted(namespace, name, grace)
        self.release(stored.uid)
        worker = self._workers.get(stored.uid)
        if worker is not None and not worker.terminating:
            self._begin_deletion(worker, stored.deletion_grace or 0.0)
        return stored

    def pod_object(self, stored: StoredPod) -> dict[str, Any]:
        """Render a stored pod as a Kubernetes ``Pod`` object with its live status."""
        manifest = stored.manifest
        metadata = {
            **manifest["metadata"],
            "uid": stored.uid,
            "resourceVersion": str(stored.resource_version),
            "creationTimestamp": rfc3339(stored.created_at),
        }
        if stored.deletion_at is not None:
            metadata["deletionTimestamp"] = rfc3339(stored.deletion_at)
            metadata["deletionGracePeriodSeconds"] = int(stored.deletion_grace or 0)
        worker = self._workers.get(stored.uid)
        status = worker.status() if worker is not None else stored.status
        node = self.node.name
        device = self.runtimes.remote_node(worker.runtime.name) if worker is not None else None
        if device is not None:  # a pod on a phone: that node, Unknown while it is unreachable
            node = device.name
            if not device.ready and status.get("phase") in ("Pending", "Running"):
                message = f"Node {node} which was running pod {stored.name} is unresponsive"
                status = {**status, "phase": "Unknown", "reason": "NodeLost", "message": message}
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": {**manifest["spec"], "nodeName": node},
            "status": status,
        }

    def worker(self, uid: str) -> PodWorker:
        """Return the worker of a pod.

        Raises:
            NotFoundError: the pod has no worker (it is being removed).
        """
        try:
            return self._workers[uid]
        except KeyError:
            raise NotFoundError(f"pod {uid} has no worker") from None

    # --- internals ----------------------------------------------------------------------------

    def _context(self, stored: StoredPod) -> PodContext:
        key = f"{stored.namespace}_{stored.name}_{stored.uid}"
        return PodContext(
            uid=stored.uid,
            node_name=self.node.name,
            host_ip=self.node.host_ip,
            log_dir=self.node.state_dir / "logs" / key,
            work_dir=self.node.state_dir / "pods" / key,
        )

    def _spawn(self, stored: StoredPod, pod: Pod) -> PodWorker:
        runtime_name = stored.manifest["spec"].get("runtimeClassName") or self._runtime_of(stored)
        worker = PodWorker(
            stored,
            pod,
            self.runtimes.get(runtime_name),
            self.store,
            self._context(stored),
            self.backoff,
            self.runtimes.limits_problem(runtime_name),
        )
        self._workers[stored.uid] = worker
        if stored.deletion_at is None:
            self._tasks[stored.uid] = self._owner().create_task(self._run(worker))
        return worker

    def _runtime_of(self, stored: StoredPod) -> str:
        tasks = self.store.tasks(stored.uid)
        if tasks:
            return tasks[-1].runtime
        spec = stored.manifest["spec"]
        images = any(c.get("image") for c in (*spec.get("initContainers", []), *spec["containers"]))
        return self.node.default_runtime or ("podman" if images else "process")

    def _owner(self) -> asyncio.TaskGroup:
        if self._group is None:
            raise RuntimeError("Reconciler.start() was not called")
        return self._group

    async def _run(self, worker: PodWorker) -> None:
        key = f"{worker.pod.metadata.namespace}/{worker.pod.metadata.name}"
        try:
            await worker.run()
        except asyncio.CancelledError:
            raise
        except Exception as err:  # one broken pod must not stop the agent
            log.exception("pod %s: worker failed", key)
            worker.event("Warning", "FailedSync", f"internal error: {err}")

    def _begin_deletion(self, worker: PodWorker, grace: float) -> None:
        worker.terminating = True
        self._deletions[worker.uid] = self._owner().create_task(self._delete(worker, grace))

    async def _delete(self, worker: PodWorker, grace: float) -> None:
        key = f"{worker.pod.metadata.namespace}/{worker.pod.metadata.name}"
        task = self._tasks.pop(worker.uid, None)
        if task is not None:
            task.cancel()
            await asyncio.wait({task})
        started = time.monotonic()
        try:
            await worker.kill(grace)
        except Exception:  # the pod stays Terminating; a restart of the agent retries
            log.exception("pod %s: deletion failed", key)
            return
        finally:
            self._deletions.pop(worker.uid, None)
        self._workers.pop(worker.uid, None)
        log.info("pod %s: deleted in %.2f s", key, time.monotonic() - started)
