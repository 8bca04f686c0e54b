"""Was a container's memory cgroup hit by the kernel's OOM killer? Asked of the kernel log.

Podman learns of OOM kills from conmon, which watches the container's memory cgroup
(``memory.oom_control`` events on cgroup v1, ``memory.events`` on v2). On some hosts that report
never arrives: on the cgroup v1 hybrid hosts of this project (Linux 6.x) the kernel counts the
kill (``oom_kill 1``) yet conmon writes no ``oom`` file, so podman says ``OOMKilled: false``.

The kernel also logs every OOM kill, naming the memory cgroup whose limit was hit, e.g.
(``mm/oom_kill.c`` ``dump_oom_summary``)::

    6,2508,2869236359,-;oom-kill:constraint=CONSTRAINT_MEMCG,...,
        oom_memcg=/libpod_parent/libpod-<container id>,task_memcg=...,task=tail,pid=17796,uid=0

cAdvisor's ``utils/oomparser`` reads the same lines for the kubelet's OOM events. This module
reads the records currently in ``/dev/kmsg`` (``Documentation/ABI/testing/dev-kmsg``) once,
without waiting for new ones; it needs root (``CAP_SYSLOG`` when ``dmesg_restrict`` is set).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Iterable, Iterator

_log = logging.getLogger(__name__)

KMSG = "/dev/kmsg"
RECORD_MAX = 8192  # bytes; one read(2) of /dev/kmsg returns one record of at most this size


def oom_kill_in(records: Iterable[bytes], container_id: str) -> bool:
    """Whether one of ``records`` reports an OOM kill charged to the container's cgroup.

    Args:
        records: kernel log records (``/dev/kmsg`` lines, with or without their prefix).
        container_id: the full container id (64 hex digits; shorter ids are refused).

    Returns:
        True when an ``oom-kill:`` record names a memory cgroup (``oom_memcg=`` or
        ``task_memcg=``) whose path contains the id.
    """
    if len(container_id) < 32:
        return False
    needle = container_id.encode()
    for record in records:
        marker = record.find(b"oom-kill:")
        if marker < 0:
            continue
        for field in record[marker + 9 :].split(b","):
            key, _, value = field.partition(b"=")
            if key in (b"oom_memcg", b"task_memcg") and needle in value:
                return True
    return False


def read_kmsg(path: str = KMSG) -> Iterator[bytes]:
    """Yield the records in the kernel's log buffer now, oldest first (blocking: use a thread).

    Raises:
        OSError: the log cannot be opened (no permission, no such device).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        while True:
            try:
                record = os.read(fd, RECORD_MAX)
            except BlockingIOError:
                return  # EAGAIN: no more records
            except OSError as err:
                if err.errno == errno.EPIPE:  # overwritten while we read: skip to the next
                    continue
                raise
            if not record:
                return
            yield record
    finally:
        os.close(fd)


def kernel_saw_oom_kill(container_id: str, path: str = KMSG) -> bool | None:
    """Whether the kernel log reports an OOM kill in the container's memory cgroup.

    Blocking (reads the whole buffer, typically < 1 MiB); run it in a thread.

    Returns:
        True or False; None when the kernel log cannot be read.
    """
    try:
        return oom_kill_in(read_kmsg(path), container_id)
    except OSError as err:
        _log.debug("cannot read the kernel log %s: %s", path, err)
        return None
