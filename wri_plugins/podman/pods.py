"""Podman pods for Kubernetes Pods: created with their first container, removed with their last.

WRI starts the containers of a Pod one at a time, so the pod is created lazily by the first
container's start (``POST /libpod/pods/create``) and every container joins it (``pod`` in its
``SpecGenerator``); destroying a container removes the pod once only its infra container is left
(``GET /libpod/pods/{name}/json`` lists ``Containers`` and ``InfraContainerID``).

Within one runtime a lock per pod orders these steps. Across agents (a restarted one next to
a dying one) the API arbitrates: a pod created twice answers 409 and is used; a container
created in a pod that was just removed fails with "no such pod" and is created again after the
pod.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

from agent.errors import WorkloadError
from wri_plugins.api import TaskSpec
from wri_plugins.podman.libpod import LibpodError, quote_name
from wri_plugins.podman.service import PodmanService
from wri_plugins.podman.spec import pod_body, pod_network, task_port_mappings

_log = logging.getLogger(__name__)


class Pods:
    """Creates and removes the podman pods that hold the tasks' containers.

    Args:
        service: the API.
        network: the pods' network mode (``bridge``, ``host``, ``none``).
        host_ip: address hostPorts bind to.
    """

    def __init__(self, service: PodmanService, network: str, host_ip: str) -> None:
        self._service = service
        self._network = network
        self._host_ip = host_ip
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def _lock(self, pod: str) -> asyncio.Lock:
        lock = self._locks.get(pod)
        if lock is None:
            lock = self._locks[pod] = asyncio.Lock()
        return lock

    async def create_container(self, spec: TaskSpec, pod: str, body: dict[str, Any]) -> str:
        """Create the container ``body`` in ``pod``, creating the pod first if needed.

        Returns:
            The container id.

        Raises:
            WorkloadError: a container of that name exists, or podman refused (its message).
        """
        async with self._lock(pod):
            for attempt in (1, 2):
                await self._ensure_pod(spec, pod)
                try:
                    created = await self._service.call("POST", "/containers/create", body=body)
                    return str(created["Id"])
                except LibpodError as err:
                    if "no such pod" in f"{err.cause} {err}" and attempt == 1:
                        continue  # removed by another agent between our look and the create
                    if err.status == 409 or "already in use" in str(err):
                        raise WorkloadError(
                            f"task {spec.task_id} already exists (container {body['name']})"
                        ) from err
                    raise WorkloadError(f"cannot create task {spec.task_id}: {err}") from err
                except (KeyError, TypeError) as err:
                    raise WorkloadError(f"podman answered create without an Id: {err}") from err
        raise WorkloadError(f"cannot create task {spec.task_id}: its pod {pod} keeps vanishing")

    async def _ensure_pod(self, spec: TaskSpec, pod: str) -> None:
        try:
            await self._service.call("GET", f"/pods/{quote_name(pod)}/exists")
        except LibpodError as err:
            if err.status != 404:
                raise WorkloadError(f"cannot look up pod {pod}: {err}") from err
        else:
            return
        network = pod_network(spec, self._network)
        body = pod_body(spec, network, task_port_mappings(spec), self._host_ip)
        try:
            await self._service.call("POST", "/pods/create", body=body)
        except LibpodError as err:
            if err.status != 409 and "already exists" not in str(err):
                raise WorkloadError(f"cannot create pod {pod}: {err}") from err
        else:
            _log.info("created pod %s (network %s)", pod, network)

    async def remove_container(self, container: str, pod: str) -> None:
        """Remove a container, killing it if it runs, then its pod if nothing else is in it.

        Raises:
            WorkloadError: podman refused.
        """
        try:
            query = {"force": True, "timeout": 0}
            await self._service.call("DELETE", f"/containers/{quote_name(container)}", query=query)
        except LibpodError as err:
            if err.status != 404:
                raise WorkloadError(f"cannot remove container {container}: {err}") from err
        if pod:
            await self.remove_if_empty(pod)

    async def remove_if_empty(self, pod: str) -> None:
        """Remove ``pod`` when only its infra container is left (nothing if it is gone).

        Raises:
            WorkloadError: podman refused.
        """
        async with self._lock(pod):
            path = f"/pods/{quote_name(pod)}"
            try:
                data = await self._service.call("GET", f"{path}/json")
                infra = data.get("InfraContainerID")
                if any(c.get("Id") != infra for c in data.get("Containers") or []):
                    return
                await self._service.call("DELETE", path, query={"force": True})
            except LibpodError as err:
                if err.status != 404:
                    raise WorkloadError(f"cannot remove pod {pod}: {err}") from err
                return
        _log.info("removed pod %s: its last container is gone", pod)
