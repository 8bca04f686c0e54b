"""Command lines for the phone's helper and parsers of what it prints (no I/O here).

The helper (``helper.sh``, POSIX ``sh``) is installed on the phone as
``<base>/bin/helper-<digest>.sh``; the digest is of its text, so agents of different versions
never overwrite a helper that running tasks still read. Every command runs as
``exec sh <helper> <base> <command> <args...>``: ``exec`` makes the helper the leader of the
session sshd created, so what it becomes (an ``exec`` probe) leads a process group that can be
killed as a whole. Arguments are quoted for a POSIX shell, since sshd hands the command line to
the login shell (bash or dash in Termux).
"""

from __future__ import annotations

import hashlib
import re
import shlex
import signal as signal_module
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent.errors import WorkloadError
from wri_plugins.api import ExitResult, TaskSpec, TaskStats

HELPER_TEXT = Path(__file__).with_name("helper.sh").read_bytes()
HELPER_NAME = f"helper-{hashlib.sha256(HELPER_TEXT).hexdigest()[:16]}.sh"
#: The remote directory when ``remote_dir`` is not set: expanded by the phone's shell.
DEFAULT_BASE = '"$HOME"/.florete-agent'
#: Exit code reported for a task whose end was not recorded (the phone rebooted, or its watcher
#: was killed): 137, as the kubelet's ContainerStatusUnknown.
LOST_EXIT_CODE = 137

# helper exit codes (see helper.sh)
EXISTS, NOT_FOUND, BAD_WORKDIR, NO_TASK, NOT_RUNNING = 3, 4, 5, 6, 7

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_TASK_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv8l": "arm", "armv7l": "arm", "i686": "386"}


def base_expr(remote_dir: str) -> str:
    """The phone's directory for the runtime, as a shell word.

    Args:
        remote_dir: the ``remote_dir`` option; empty for ``$HOME/.florete-agent``.
    """
    return shlex.quote(remote_dir) if remote_dir else DEFAULT_BASE


def helper_command(base: str, command: str, *args: str) -> str:
    """``exec sh <helper> <base> <command> <args>``, each argument quoted.

    Args:
        base: :func:`base_expr`'s result.
        command: a helper command (``start``, ``status``, ...).
        args: its arguments.
    """
    quoted = " ".join(shlex.quote(a) for a in args)
    return f"exec sh {base}/bin/{HELPER_NAME} {base} {command} {quoted}".rstrip()


def install_command(base: str) -> str:
    """Install the helper (its text on stdin) with an atomic rename; safe while tasks read it."""
    target = f"{base}/bin/{HELPER_NAME}"
    return (
        f"umask 077 && mkdir -p {base}/bin {base}/tasks && cat > {target}.$$ && "
        f"mv -f {target}.$$ {target}"
    )


def check_task_id(task_id: str) -> str:
    """Return ``task_id`` if it can name a directory and a status field on the phone.

    Raises:
        WorkloadError: it is empty or has characters other than letters, digits, ``.``, ``_``
            and ``-`` (or starts with one of the last three).
    """
    if not _TASK_ID.match(task_id):
        raise WorkloadError(f"task id {task_id!r} cannot name a task on the phone")
    return task_id


def env_file(env: Mapping[str, str]) -> bytes:
    """The task's environment as ``export NAME='value'`` lines for the phone's ``sh``.

    Raises:
        WorkloadError: a name is not a shell variable name (``[A-Za-z_][A-Za-z0-9_]*``), or a
            name or value holds a NUL byte.
    """
    lines = []
    for name, value in env.items():
        if not _NAME.match(name):
            raise WorkloadError(
                f"environment variable {name!r}: the android runtime sets variables with a POSIX "
                "shell, which takes only names of letters, digits and _ (not starting with a digit)"
            )
        if "\0" in value:
            raise WorkloadError(f"environment variable {name}: the value holds a NUL byte")
        lines.append(f"export {name}={shlex.quote(value)}\n")
    return "".join(lines).encode()


def start_args(spec: TaskSpec, working_dir: str, max_bytes: int, max_files: int) -> list[str]:
    """Arguments of the helper's ``start``: id, working dir, log rotation, argv.

    Raises:
        WorkloadError: empty argv, an image, a bad task id, or a NUL byte or newline where
            the phone's shell cannot take one.
    """
    if not spec.argv:
        raise WorkloadError("the android runtime needs a command (argv is empty)")
    if spec.image:
        raise WorkloadError(f"the android runtime runs commands, not images ({spec.image})")
    if any("\0" in a for a in spec.argv):
        raise WorkloadError("a command argument holds a NUL byte")
    if "\0" in working_dir or "\n" in working_dir:
        raise WorkloadError(f"working directory {working_dir!r} holds a NUL byte or a newline")
    check_task_id(spec.task_id)
    return [spec.task_id, working_dir, str(max_bytes), str(max_files), *spec.argv]


def signal_name(signal: int) -> str:
    """The name ``kill -s`` takes for a signal number (``15`` -> ``TERM``).

    Raises:
        WorkloadError: not a signal number of this platform.
    """
    try:
        return signal_module.Signals(signal).name.removeprefix("SIG")
    except ValueError:
        raise WorkloadError(f"{signal} is not a signal number") from None


def signal_number(name: str) -> int:
    """The number of a signal named as SSH names it (``"TERM"``); 0 for an unknown name."""
    try:
        return int(signal_module.Signals[f"SIG{name}"])
    except KeyError:
        return 0


def exit_result(code: int, finished_at: float) -> ExitResult:
    """How a task ended, from the exit status its watcher recorded.

    The watcher is a shell: a workload killed by signal N reports 128 + N, as any shell (and
    the kubelet) shows it; such a status is taken to mean that signal.
    """
    signal = code - 128 if 128 < code < 128 + 65 else None
    return ExitResult(exit_code=code, signal=signal, finished_at=finished_at)


@dataclass(frozen=True)
class RemoteState:
    """A task as the helper sees it.

    Attributes:
        task_id: the task.
        state: ``"running"``, ``"exited"``, ``"lost"`` (no process left, no exit record) or
            ``"gone"`` (no task directory).
        pid: the workload's pid on the phone, or None when not known.
        started_at: wall-clock start, seconds since the epoch (0 when not known).
        exit: how it ended, once ``state`` is ``"exited"``.
    """

    task_id: str
    state: str
    pid: int | None = None
    started_at: float = 0.0
    exit: ExitResult | None = None

    @property
    def ended(self) -> bool:
        """The task will not run again: exited, lost or gone."""
        return self.state != "running"


def parse_state(line: str) -> RemoteState:
    """Parse one ``task_state`` line of the helper.

    Raises:
        ValueError: the line is not one.
    """
    fields = line.split()
    if len(fields) < 2:
        raise ValueError(f"not a task state: {line!r}")
    task_id, state = fields[0], fields[1]
    if state == "gone" and len(fields) == 2:
        return RemoteState(task_id, state)
    if state in ("running", "lost") and len(fields) == 4:
        pid = int(fields[2])
        return RemoteState(task_id, state, pid or None, float(fields[3]))
    if state == "exited" and len(fields) == 6:
        pid = int(fields[4])
        result = exit_result(int(fields[2]), float(fields[3]))
        return RemoteState(task_id, state, pid or None, float(fields[5]), result)
    raise ValueError(f"not a task state: {line!r}")


def parse_states(output: bytes, task_ids: Sequence[str]) -> dict[str, RemoteState]:
    """Parse the helper's ``status`` output for ``task_ids``.

    Raises:
        ValueError: a line does not parse, or a task is missing.
    """
    states = {}
    for line in output.decode(errors="replace").splitlines():
        state = parse_state(line)
        states[state.task_id] = state
    missing = set(task_ids) - states.keys()
    if missing:
        raise ValueError(f"no state for task {sorted(missing)[0]} in {output[:200]!r}")
    return states


@dataclass(frozen=True)
class Started:
    """What the helper's ``start`` printed: the watcher's and the workload's pids with their
    start times (clock ticks after boot), the boot id and the wall-clock start."""

    pid: int
    pid_start: int
    boot_id: str
    wpid: int
    wpid_start: int
    started_at: float


def parse_started(output: bytes) -> Started:
    """Parse ``PID START BOOT_ID WPID WSTART STARTED``.

    Raises:
        ValueError: the output is not that.
    """
    fields = output.decode(errors="replace").split()
    if len(fields) != 6:
        raise ValueError(f"unexpected answer of start: {output[:200]!r}")
    pid, start, boot, wpid, wstart, started = fields
    return Started(int(pid), int(start), boot, int(wpid), int(wstart), float(started))


def parse_probe(output: bytes) -> dict[str, str]:
    """Parse the helper's ``probe`` output: one ``KEY=VALUE`` a line."""
    facts = {}
    for line in output.decode(errors="replace").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            facts[key.strip()] = value.strip()
    return facts


def go_arch(machine: str) -> str:
    """Go-style architecture name of ``uname -m`` (``aarch64`` -> ``arm64``)."""
    return _ARCH.get(machine, machine)


def parse_stats(output: bytes) -> TaskStats:
    """Sum the helper's ``stats`` lines over the workload's process group.

    The first line is ``CLK_TCK PAGE_SIZE``; each further line ``PID UTIME STIME RSS_PAGES
    READ_BYTES WRITE_BYTES`` (``/proc/PID/stat`` fields 14, 15 and 24 and ``/proc/PID/io``;
    proc(5)).

    Raises:
        ValueError: the output is not that.
    """
    lines = output.decode(errors="replace").split("\n")
    head = lines[0].split()
    if len(head) != 2:
        raise ValueError(f"unexpected answer of stats: {output[:200]!r}")
    ticks, page = int(head[0]) or 100, int(head[1]) or 4096
    cpu = rss = read = write = 0
    for line in filter(None, lines[1:]):
        fields = line.split()
        if len(fields) != 6:
            raise ValueError(f"unexpected line of stats: {line[:200]!r}")
        _, utime, stime, pages, rbytes, wbytes = map(int, fields)
        cpu += utime + stime
        rss += pages * page
        read += rbytes
        write += wbytes
    return TaskStats(cpu_seconds=cpu / ticks, rss_bytes=rss, read_bytes=read, write_bytes=write)
