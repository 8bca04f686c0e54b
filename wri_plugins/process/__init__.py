"""The ``process`` workload runtime: Pod containers without an image run as host processes.

See :mod:`wri_plugins.process.runtime` for the design (a detached shim per task, CRI logs, cgroup
limits, recovery after an agent restart).
"""

from wri_plugins.process.runtime import ProcessRuntime

__all__ = ["ProcessRuntime"]
