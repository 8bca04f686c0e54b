"""A task's directory under the runtime's state dir, and checking a spec before its start.

``<state_dir>/tasks/<unit name>/`` (named after the unit, not the task id: a unit name is at
most 255 bytes of a safe alphabet and derived from the task id alone) holds:

* ``env`` (0600): the task's environment, NUL-separated ``KEY=VALUE``, read by the log pump. Not
  a unit ``Environment=``: any local user can read unit properties over D-Bus.
* ``task.json``: the unit and the log path, for a handle that carries only the task id (the
  agent stopped between recording the id and storing the handle);
* ``pump.log``: the pump's own messages (the unit's ``StandardOutput=append:``).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.errors import WorkloadError
from wri_plugins.api import TaskSpec
from wri_plugins.process.launch import resolve_executable
from wri_plugins.process.state import encode_env, write_atomic

ENV_FILE, TASK_FILE, PUMP_LOG = "env", "task.json", "pump.log"


@dataclass(frozen=True)
class Prepared:
    """A checked spec with its task dir written.

    Attributes:
        task_dir: the task's directory.
        cwd: absolute working directory.
        executable: absolute path of ``argv[0]``.
    """

    task_dir: Path
    cwd: str
    executable: str


def prepare(spec: TaskSpec, tasks_dir: Path, unit: str) -> Prepared:
    """Check ``spec`` and write its task dir. Blocking: run it in a thread.

    Args:
        spec: the task.
        tasks_dir: ``<state_dir>/tasks`` (created 0700 if missing).
        unit: the task's unit name (``units.unit_name``): the task dir's name.

    Raises:
        WorkloadError: empty argv, an image was given, a missing working dir, executable not
            found or not executable, a bad environment variable, the task dir exists already or
            cannot be written. Nothing is left behind.
    """
    if not spec.argv:
        raise WorkloadError("systemd runtime needs a command (argv is empty)")
    if spec.image:
        raise WorkloadError(f"systemd runtime runs host commands, not images ({spec.image})")
    cwd = spec.working_dir or "/"
    if not os.path.isabs(cwd) or not os.path.isdir(cwd):
        raise WorkloadError(f"working directory {cwd} does not exist")
    executable = resolve_executable(spec.argv[0], spec.env, cwd)
    env = encode_env(spec.env)
    task_dir = tasks_dir / unit
    try:
        tasks_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        task_dir.mkdir(mode=0o700)
    except FileExistsError:
        raise WorkloadError(f"task {spec.task_id} already exists ({task_dir})") from None
    except OSError as err:
        raise WorkloadError(f"cannot create task dir {task_dir}: {err.strerror}") from err
    try:
        write_atomic(task_dir / ENV_FILE, env, durable=False)
        record = {"unit": unit, "log_path": str(spec.log_path)}
        write_atomic(task_dir / TASK_FILE, json.dumps(record).encode(), durable=False)
        spec.log_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        shutil.rmtree(task_dir, ignore_errors=True)
        raise WorkloadError(f"cannot prepare task {spec.task_id}: {err}") from err
    return Prepared(task_dir, cwd, executable)


def user_args(spec: TaskSpec, manager_uid: int, manager_gid: int | None) -> tuple[str, ...]:
    """The pump's ``--uid``/``--gid`` for ``spec.run_as_user``/``spec.run_as_group``.

    A unit runs as its manager's user: the system manager and a root user manager are root,
    and their pump switches the workload to any uid and gid before exec. A user manager of
    another user cannot switch users (setuid(2) needs ``CAP_SETUID``): it accepts only its own
    uid and gid, which need no switch.

    Args:
        spec: the task.
        manager_uid: the uid systemd runs as (``bus.Connection.manager_credentials``).
        manager_gid: its real gid, or None when unknown.

    Returns:
        ``("--uid", "N", "--gid", "G")``, either pair left out when not asked for (or when no
        switch is needed).

    Raises:
        WorkloadError: the manager is not root and another uid or gid is asked for.
    """
    uid, gid = spec.run_as_user, spec.run_as_group
    if manager_uid != 0:
        if (uid is not None and uid != manager_uid) or (gid is not None and gid != manager_gid):
            own = f"uid {manager_uid}" + (f" gid {manager_gid}" if manager_gid is not None else "")
            raise WorkloadError(
                f"runAsUser {uid} / runAsGroup {gid}: the systemd user manager runs units as "
                f"{own} and cannot switch users; run the agent as root with "
                'runtimes.systemd.bus = "system", or leave runAsUser/runAsGroup out'
            )
        return ()
    args: tuple[str, ...] = ()
    if uid is not None:
        args += ("--uid", str(uid))
    if gid is not None:
        args += ("--gid", str(gid))
    return args


def read_record(task_dir: Path) -> dict[str, Any]:
    """The ``task.json`` of a task. Blocking.

    Raises:
        WorkloadError: it is missing or unreadable (the task is unknown here).
    """
    try:
        record = json.loads((task_dir / TASK_FILE).read_bytes())
    except (OSError, ValueError) as err:
        raise WorkloadError(f"task {task_dir.name} is unknown here ({err})") from err
    if not isinstance(record, dict):
        raise WorkloadError(f"task {task_dir.name}: {TASK_FILE} is not an object")
    return record


def pump_message(task_dir: Path) -> str:
    """The last line the pump wrote to ``pump.log`` (why a start failed), or ``""``. Blocking."""
    try:
        lines = (task_dir / PUMP_LOG).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1].removeprefix("pump: ") if lines else ""
