"""The ``systemd`` workload runtime: Pod containers without an image run as transient units.

See :mod:`wri_plugins.systemd.runtime` for the design (a transient service per task started over
D-Bus, a log pump as its main process writing the CRI log, units kept until destroy so exit
statuses survive agent restarts). dbus-fast is imported only when the runtime connects.
"""

from wri_plugins.systemd.runtime import SystemdRuntime

__all__ = ["SystemdRuntime"]
