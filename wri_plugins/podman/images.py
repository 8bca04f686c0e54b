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

from agent.errors import RuntimeUnavailableError, WorkloadError
from wri_plugins.podman.libpod import LibpodError, quote_name
from wri_plugins.podman.service import PodmanService

_log = logging.getLogger(__name__)


class ImageError(WorkloadError):
    """A container's image is missing and could not be pulled; ``reason`` is the kubelet's."""

    code = "image_unavailable"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.waiting_reason = reason


class ImagePuller:
    """Ensures images are present; pulls each missing one once at a time.

    Args:
        pull: pulling a missing image is allowed.
        timeout: seconds a pull may take before it is abandoned.
    """

    def __init__(self, pull: bool, timeout: float) -> None:
        self._pull = pull
        self._timeout = timeout
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, service: PodmanService, reference: str) -> None:
        """Return once ``reference`` is in local storage.

        Raises:
            ImageError: ``ErrImageNeverPull`` (absent, pulling not allowed) or ``ErrImagePull``
                (the registry failed, refused, or did not finish within the timeout).
            RuntimeUnavailableError: the API does not answer.
        """
        if await self.present(service, reference):
            return
        if not self._pull:
            raise ImageError(
                "ErrImageNeverPull",
                f"image {reference} is not present and runtimes.podman.pull is false",
            )
        lock = self._locks.setdefault(reference, asyncio.Lock())
        async with lock:
            if not await self.present(service, reference):
                await self._pull_one(service, reference)

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

    async def _pull_one(self, service: PodmanService, reference: str) -> None:
        _log.info("pulling image %s", reference)
        query = {"reference": reference, "policy": "missing", "quiet": False}
        client = await service.client()
        try:
            async with asyncio.timeout(self._timeout):
                async with client.stream("POST", "/images/pull", query=query) as response:
                    async for line in response.lines():
                        _follow_pull(reference, line)
        except TimeoutError:
            raise ImageError(
                "ErrImagePull",
                f"pulling image {reference} did not finish within {self._timeout:g}s",
            ) from None
        except LibpodError as err:
            raise ImageError("ErrImagePull", f"pulling image {reference}: {err}") from err
        except RuntimeUnavailableError:
            raise
        if not await self.present(service, reference):
            raise ImageError("ErrImagePull", f"pull of {reference} ended without the image")
        _log.info("pulled image %s", reference)


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
