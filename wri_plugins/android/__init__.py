"""The ``android`` WRI runtime: workloads on a paired phone over SSH to Termux."""

from wri_plugins.android.runtime import AndroidRuntime

__all__ = ["AndroidRuntime"]
