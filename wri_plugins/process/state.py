"""What the process runtime keeps about a task: the handle's state, the task dir and its files.

A task dir ``<state_dir>/tasks/<task_id>/`` holds:

* ``env`` (0600): the task's environment, NUL-separated ``KEY=VALUE`` (read by the shim and by
  ``exec``);
* ``task.json``: working dir and the handle state below (written atomically before ``start``
  returns);
* ``shim.log``: the shim's own errors;
* ``exit.json``: the exit record, written by the shim when the workload ended.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import WorkloadError
from wri_plugins.api import ExitResult
from wri_plugins.process.procs import is_alive

EXIT_RECORD = "exit.json"  # the shim's name for it (shim.EXIT_RECORD; the shim is not imported)
TASK_FILE = "task.json"
ENV_FILE = "env"
SHIM_LOG = "shim.log"
STATE_VERSION = 1


@dataclass(frozen=True)
class TaskState:
    """The process runtime's ``TaskHandle.state``, typed.

    Attributes:
        task_dir: the task's directory.
        shim_pid: pid of the task's shim.
        shim_ctime: creation time of the shim, seconds since the epoch (psutil's ``create_time``).
        pid: pid of the workload; also its process group id.
        pid_ctime: creation time of the workload, seconds since the epoch.
        started_at: wall-clock start time, seconds since the epoch.
        cgroups: the task's cgroup directories (empty when limits are not enforced).
        log_path: the task's CRI log file.
    """

    task_dir: Path
    shim_pid: int
    shim_ctime: float
    pid: int
    pid_ctime: float
    started_at: float
    cgroups: tuple[Path, ...]
    log_path: Path

    def to_state(self) -> dict[str, Any]:
        """JSON-serialisable form for ``TaskHandle.state``."""
        return {
            "version": STATE_VERSION,
            "task_dir": str(self.task_dir),
            "shim_pid": self.shim_pid,
            "shim_ctime": self.shim_ctime,
            "pid": self.pid,
            "pid_ctime": self.pid_ctime,
            "started_at": self.started_at,
            "cgroups": [str(p) for p in self.cgroups],
            "log_path": str(self.log_path),
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> TaskState:
        """Parse what :meth:`to_state` produced.

        Raises:
            WorkloadError: the state is not a process-runtime handle state.
        """
        if state.get("version") != STATE_VERSION:
            raise WorkloadError(f"handle state version {state.get('version')!r} is unknown")
        try:
            return cls(
                task_dir=Path(state["task_dir"]),
                shim_pid=int(state["shim_pid"]),
                shim_ctime=float(state["shim_ctime"]),
                pid=int(state["pid"]),
                pid_ctime=float(state["pid_ctime"]),
                started_at=float(state["started_at"]),
                cgroups=tuple(Path(p) for p in state["cgroups"]),
                log_path=Path(state["log_path"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise WorkloadError(f"not a process runtime handle state: {err}") from err

    def exit_result(self) -> ExitResult | None:
        """The exit record, if the shim wrote one (a small file read)."""
        return read_exit_record(self.task_dir)

    def shim_alive(self) -> bool:
        """The task's shim still runs (not reused by another process)."""
        return is_alive(self.shim_pid, self.shim_ctime)

    def workload_alive(self) -> bool:
        """The workload's main process still runs (not a zombie, not a reused pid)."""
        return is_alive(self.pid, self.pid_ctime)


def read_exit_record(task_dir: Path) -> ExitResult | None:
    """Read ``exit.json`` of a task.

    Returns:
        The result, or None when there is no (readable, well-formed) record yet.
    """
    try:
        data = json.loads((task_dir / EXIT_RECORD).read_bytes())
        return ExitResult(
            exit_code=int(data["exit_code"]),
            signal=None if data["signal"] is None else int(data["signal"]),
            oom_killed=bool(data["oom_killed"]),
            finished_at=float(data["finished_at"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_atomic(path: Path, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix.

    Writes ``<path>.tmp``, renames it over ``path`` and, when ``durable``, fsyncs the file and the
    directory so it survives a power loss once this returns. Files that describe a running task
    need not be durable (a power loss ends the task too; the agent then finds it lost) and skip
    the two fsyncs, which cost about 1 ms of every start. Blocking: call it in a thread from
    async code.

    Raises:
        OSError: the file could not be written.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if not durable:
        return
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def encode_env(env: Mapping[str, str]) -> bytes:
    """Encode an environment for the shim: ``KEY=VALUE`` items, each ended by NUL.

    Raises:
        WorkloadError: a key is empty or contains ``=`` or NUL, or a value contains NUL.
    """
    items = []
    for key, value in env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise WorkloadError(f"invalid environment variable {key!r}")
        items.append(os.fsencode(key) + b"=" + os.fsencode(value) + b"\0")
    return b"".join(items)


def decode_env(data: bytes) -> dict[str, str]:
    """Inverse of :func:`encode_env`."""
    env = {}
    for item in data.split(b"\0"):
        if item:
            key, _, value = item.partition(b"=")
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env
