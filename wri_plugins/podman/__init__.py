"""The ``podman`` workload runtime: Pod containers with an image run as podman containers.

See :mod:`wri_plugins.podman.runtime` for the design (a podman pod per Pod, the libpod REST API on
a Unix socket, CRI logs written by conmon, recovery by container id).
"""

from wri_plugins.podman.runtime import PodmanRuntime

__all__ = ["PodmanRuntime"]
