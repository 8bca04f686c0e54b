"""CrashLoopBackOff: the delay before restarting a container that exited.

Follows the kubelet (``pkg/kubelet/kuberuntime/kuberuntime_manager.go`` ``doBackOff`` with
``client-go/util/flowcontrol.Backoff``): the first restart is immediate; each later one waits
``initial`` seconds (10 s), doubling up to ``maximum`` (300 s). A container that ran for ``reset``
seconds (600 s) before it exited starts over at no delay, as the Kubernetes documentation states
("after a container has run for 10 minutes without any problems, the kubelet resets the restart
backoff timer").

Pure and clock-free: callers pass times in.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CrashLoopBackOff:
    """Per-container restart backoff.

    Args:
        initial: delay before the second restart, in seconds.
        maximum: the delay never exceeds this, in seconds.
        reset: a run at least this long (seconds) resets the backoff.
    """

    initial: float = 10.0
    maximum: float = 300.0
    reset: float = 600.0
    _next: float = 0.0

    def on_exit(self, ran_for: float) -> float:
        """Record that the container exited after running ``ran_for`` seconds.

        Returns:
            How long to wait before restarting it, in seconds (0.0 for an immediate restart).
        """
        if ran_for >= self.reset:
            self._next = 0.0
        delay = self._next
        self._next = min(self.maximum, self.initial if delay == 0.0 else delay * 2)
        return delay
