"""Making sure a container's image is in local storage: use it, or pull it within a time bound.

Errors carry the kubelet's Waiting reasons as a prefix, so the agent can show them as they are
(``pkg/kubelet/images/types.go``): ``ErrImagePull: ...`` when a pull fails or takes longer than
the bound, ``ErrImageNeverPull: ...`` when the image is missing and pulling is not allowed.

Pulls use ``POST /libpod/images/pull?reference=R&policy=missing``, which streams JSON objects:
``{"stream": "Copying blob ..."}`` lines (progress, logged at INFO), ``{"error": "..."}`` on
failure and ``{"id": "...", "images": [...]}`` at the end (podman 4.3 API). Two tasks that need
the same missing image share one pull.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from agent.errors import WorkloadError
from wri_plugins.podman.libpod import LibpodError, quote_name
from wri_plugins.podman.service import PodmanService

_log = logging.getLogger(__name__)


class ImageError(WorkloadError):
    """A container's image is missing and could not be pulled; ``reason`` is the kubelet's."""

    code = "image_unavailable"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.waiting_reason = reason


#: Reports one event of a task: ``(type, reason, message)``, e.g.
#: ``("Normal", "Pulling", 'Pulling image "busybox"')``.
EventSink = Callable[[str, str, str], None]


def _no_events(kind: str, reason: str, message: str) -> None:
    """An :data:`EventSink` that drops everything."""


class ImagePuller:
    """Ensures images are present, honouring the Kubernetes ``imagePullPolicy``.

    ``Never``: use the local image, never pull. ``IfNotPresent`` (and no policy): pull only when
    missing. ``Always``: pull every time, even with a local copy; as in the kubelet a registry
    that cannot be reached is ``ErrImagePull`` even when the image is local (the kubelet resolves
    the digest with the registry before it uses any image). With the runtime option ``pull``
    false no policy pulls: a present image is used, a missing one is ``ErrImageNeverPull``.
    Pulls of the same image run one at a time (the second ``IfNotPresent`` finds it present).

    Args:
        pull: pulling is allowed at all.
        timeout: seconds a pull may take before it is abandoned.
    """

    def __init__(self, pull: bool, timeout: float) -> None:
        self._pull = pull
        self._timeout = timeout
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(
        self,
        service: PodmanService,
        reference: str,
        policy: str | None = None,
        events: EventSink = _no_events,
    ) -> None:
        """Return once ``reference`` is in local storage (pulled first when ``policy`` says so).

        Args:
            service: the API.
            reference: the image.
            policy: ``"Always"``, ``"IfNotPresent"``, ``"Never"`` or None (as IfNotPresent).
            events: told ``Pulling``, ``Pulled`` and ``Failed`` (the kubelet's event reasons,
                ``pkg/kubelet/events/event.go``) and ``ErrImageNeverPull``.

        Raises:
            ImageError: ``ErrImageNeverPull`` (absent, pulling not allowed) or ``ErrImagePull``
                (the registry failed, refused, or did not finish within the timeout).
            RuntimeUnavailableError: the API does not answer.
        """
        always = policy == "Always" and self._pull
        if not always and await self.present(service, reference):
            return
        if policy == "Never" or not self._pull:
            why = "pull policy of Never" if policy == "Never" else "runtimes.podman.pull false"
            message = f'Container image "{reference}" is not present with {why}'
            events("Warning", "ErrImageNeverPull", message)
            raise ImageError("ErrImageNeverPull", message)
        lock = self._locks.setdefault(reference, asyncio.Lock())
        async with lock:
            if always or not await self.present(service, reference):
                await self._pull_one(service, reference, always, events)

    @staticmethod
    async def present(service: PodmanService, reference: str) -> bool:
        """Whether local storage has ``reference`` (short names resolve as podman resolves them)."""
        try:
            await service.call("GET", f"/images/{quote_name(reference)}/exists")
        except LibpodError as err:
            if err.status == 404:
                return False
            raise WorkloadError(f"cannot look up image {reference}: {err}") from err
        return True

    async def _pull_one(
        self, service: PodmanService, reference: str, always: bool, events: EventSink
    ) -> None:
        _log.info("pulling image %s", reference)
        events("Normal", "Pulling", f'Pulling image "{reference}"')
        began = time.monotonic()
        try:
            await self._stream_pull(service, reference, always)
        except ImageError as err:
            detail = str(err).removeprefix("ErrImagePull: ")
            events("Warning", "Failed", f'Failed to pull image "{reference}": {detail}')
            raise
        took = time.monotonic() - began
        events("Normal", "Pulled", f'Successfully pulled image "{reference}" in {took:.1f}s')
        _log.info("pulled image %s in %.1fs", reference, took)

    async def _stream_pull(self, service: PodmanService, reference: str, always: bool) -> None:
        query = {"reference": reference, "policy": "always" if always else "missing"}
        client = await service.client()
        try:
            async with asyncio.timeout(self._timeout):
                async with client.stream(
                    "POST", "/images/pull", query={**query, "quiet": False}
                ) as response:
                    async for line in response.lines():
                        _follow_pull(reference, line)
        except TimeoutError:
            raise ImageError(
                "ErrImagePull",
                f"pulling image {reference} did not finish within {self._timeout:g}s",
            ) from None
        except LibpodError as err:
            raise ImageError("ErrImagePull", f"pulling image {reference}: {err}") from err
        if not await self.present(service, reference):
            raise ImageError("ErrImagePull", f"pull of {reference} ended without the image")


def _follow_pull(reference: str, line: bytes) -> None:
    """Log one object of the pull stream.

    Raises:
        ImageError: the object reports an error.
    """
    if not line.strip():
        return
    try:
        item = json.loads(line)
    except ValueError:
        _log.debug("pull %s: not JSON: %r", reference, line[:200])
        return
    if not isinstance(item, dict):
        return
    if item.get("error"):
        raise ImageError("ErrImagePull", f"pulling image {reference}: {item['error']}")
    if item.get("stream"):
        _log.info("pull %s: %s", reference, str(item["stream"]).strip())
