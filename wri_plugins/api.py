"""Workload Runtime Interface (WRI): the contract every runtime plugin implements.

Modelled on Nomad's task-driver plugins (hashicorp/nomad ``plugins/drivers/driver.go``): a runtime
declares its :class:`Capabilities`, reports its health with :meth:`WorkloadRuntime.fingerprint`,
starts one container of a Pod as a task and returns a :class:`TaskHandle` that the agent persists,
so that after an agent restart :meth:`WorkloadRuntime.recover` re-attaches to the same workload.

Runtimes are found through the ``florete.wri`` entry-point group; see :func:`discover_runtimes`.
A runtime is constructed with a :class:`RuntimeContext` and must never crash the agent: a missing
backend makes it unhealthy (``Fingerprint.healthy = False``).
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import signal as signal_module
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, ClassVar, Protocol

from agent.errors import CapabilityError

ENTRY_POINT_GROUP = "florete.wri"
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Capabilities:
    """Optional features of a runtime; callers check these instead of probing with ``hasattr``.

    Attributes:
        send_signals: :meth:`WorkloadRuntime.stop` can deliver an arbitrary signal.
        exec: :meth:`WorkloadRuntime.exec` runs a command inside a running task.
        exec_interactive: :meth:`WorkloadRuntime.exec_interactive` runs a command attached to
            the caller's streams: stdin, separate stdout and stderr, optionally a terminal
            (``kubectl exec -it``). Implies ``exec``.
        fs_isolation: tasks get their own root filesystem (containers).
        resource_limits: memory and CPU limits are enforced (may depend on the host; see
            ``Fingerprint.attributes["limits"]``).
        remote: tasks run on another device (for example a paired phone).
    """

    send_signals: bool = False
    exec: bool = False
    exec_interactive: bool = False
    fs_isolation: bool = False
    resource_limits: bool = False
    remote: bool = False


@dataclass(frozen=True)
class Fingerprint:
    """Health and attributes of a runtime at one moment.

    Attributes:
        healthy: the runtime can start tasks now.
        description: one human sentence, e.g. ``"podman 4.3.1 on /run/podman/podman.sock"`` or why
            it is unhealthy.
        attributes: facts; these keys mean the same for every runtime: ``version``, ``arch``
            (Go-style: amd64, arm64, arm), ``limits`` (how limits are enforced, e.g.
            ``"cgroup-v1"``, or the sentence saying why they are not) and ``limits_enforced``
            (``"true"`` or ``"false"``).
    """

    healthy: bool
    description: str
    attributes: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ResourceLimits:
    """Resource limits of one task.

    Attributes:
        cpu_millis: CPU limit in millicores (1000 = one core), or None for unlimited.
        memory_bytes: memory limit in bytes, or None for unlimited.
    """

    cpu_millis: int | None = None
    memory_bytes: int | None = None


#: One container port of a :class:`TaskSpec`: ``(port, protocol, host_port, host_ip)``.
PortSpec = tuple[int, str, int | None, str | None]


@dataclass(frozen=True)
class TaskSpec:
    """Everything a runtime needs to start one container of a Pod.

    Attributes:
        task_id: unique, stable, filesystem-safe id of this attempt
            (``<pod uid>-<container>-<attempt>``).
        pod_namespace: namespace of the Pod.
        pod_name: name of the Pod.
        pod_uid: uid of the Pod.
        container: container name.
        image: container image, or None for a host process.
        argv: the command line (Kubernetes ``command`` + ``args``, already resolved).
            Empty means the image's default (container runtimes only).
        env: environment variables, already resolved (``$(VAR)`` expanded, fieldRefs filled).
        working_dir: working directory, or None for the runtime's default.
        limits: resource limits.
        log_path: file the runtime writes the task's output to, in CRI log format
            (``<RFC 3339 time> <stdout|stderr> <F|P> <text>``).
        ports: container ports as ``(port, protocol, host_port, host_ip)``: ``host_port`` is
            None when the port is not published on the host, ``host_ip`` None for the runtime's
            default address. Informational for host processes.
        image_pull_policy: ``"Always"``, ``"IfNotPresent"`` or ``"Never"`` (the manifest's,
            defaulted as Kubernetes does), or None for the runtime's own rule.
        command: Kubernetes ``command`` resolved: replaces the image's ENTRYPOINT when not empty.
        args: Kubernetes ``args`` resolved: replaces the image's CMD when not empty (with an
            empty ``command`` the image's ENTRYPOINT stays).
        host_network: the Pod uses the host's network namespace.
        pod_ports: the ports of every container of the Pod that have a ``host_port``, in the
            shape of ``ports``; a runtime that publishes them per Pod (podman) needs them all
            when it creates the Pod with its first container.
        run_as_user: uid the workload runs as, or None for the image's (container) or the
            agent's (host process).
        run_as_group: gid the workload runs as, or None for the default.
        read_only_root_fs: mount the container's root filesystem read-only.
    """

    task_id: str
    pod_namespace: str
    pod_name: str
    pod_uid: str
    container: str
    image: str | None
    argv: tuple[str, ...]
    env: Mapping[str, str]
    working_dir: str | None
    limits: ResourceLimits
    log_path: Path
    ports: tuple[PortSpec, ...] = ()
    image_pull_policy: str | None = None
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    host_network: bool = False
    pod_ports: tuple[PortSpec, ...] = ()
    run_as_user: int | None = None
    run_as_group: int | None = None
    read_only_root_fs: bool = False


@dataclass(frozen=True)
class TaskHandle:
    """Persistable reference to a started task, opaque to everything but its runtime.

    Attributes:
        runtime: name of the runtime that started the task.
        task_id: the ``TaskSpec.task_id`` it was started from.
        state: runtime-private, JSON-serialisable data (pid, container id, paths).
    """

    runtime: str
    task_id: str
    state: Mapping[str, Any]

    def to_json(self) -> str:
        """Serialise for the store.

        Returns:
            A JSON object string.
        """
        return json.dumps({"runtime": self.runtime, "task_id": self.task_id, "state": self.state})

    @classmethod
    def from_json(cls, text: str) -> TaskHandle:
        """Parse what :meth:`to_json` wrote.

        Raises:
            ValueError: the text is not a handle.
        """
        data = json.loads(text)
        if not isinstance(data, dict) or not {"runtime", "task_id", "state"} <= data.keys():
            raise ValueError(f"not a task handle: {text[:80]!r}")
        return cls(str(data["runtime"]), str(data["task_id"]), dict(data["state"]))


@dataclass(frozen=True)
class ExitResult:
    """How a task ended.

    Attributes:
        exit_code: the process exit code; 128 + N when killed by signal N (as a shell and the
            kubelet report it).
        signal: the signal that killed it, or None.
        oom_killed: the kernel's OOM killer ended it (memory limit reached).
        finished_at: wall-clock time it ended, seconds since the epoch.
    """

    exit_code: int
    signal: int | None = None
    oom_killed: bool = False
    finished_at: float = 0.0


@dataclass(frozen=True)
class TaskStatus:
    """What :meth:`WorkloadRuntime.inspect` knows about a task.

    Attributes:
        running: the task is alive.
        pid: main process id on this host, when there is one.
        started_at: wall-clock start time, seconds since the epoch.
        exit: how it ended, once it has.
        ip: the address of the task's own network namespace (a podman pod's IP), or None when
            it shares the host's network; probes without a host and ``status.podIP`` use it.
    """

    running: bool
    pid: int | None
    started_at: float
    exit: ExitResult | None = None
    ip: str | None = None


@dataclass(frozen=True)
class TaskStats:
    """Resource usage of a running task.

    Attributes:
        cpu_seconds: user + system CPU time used so far, in seconds.
        rss_bytes: resident memory in bytes.
        read_bytes: bytes read from storage.
        write_bytes: bytes written to storage.
    """

    cpu_seconds: float
    rss_bytes: int
    read_bytes: int = 0
    write_bytes: int = 0


@dataclass(frozen=True)
class LogRecord:
    """One line (or partial line) of a task's output.

    Attributes:
        time: wall-clock time it was written, seconds since the epoch.
        stream: ``"stdout"`` or ``"stderr"``.
        text: the bytes, without the trailing newline.
        partial: the line was split (longer than the runtime's buffer, or cut at exit).
    """

    time: float
    stream: str
    text: bytes
    partial: bool = False


@dataclass(frozen=True)
class ExecResult:
    """Result of :meth:`WorkloadRuntime.exec`.

    Attributes:
        exit_code: exit code of the command.
        output: stdout and stderr combined, truncated to 10 KiB (as the kubelet does for probes).
    """

    exit_code: int
    output: bytes


@dataclass(frozen=True)
class TerminalSize:
    """Size of a terminal in character cells (``remotecommand.TerminalSize``).

    Attributes:
        columns: width, 1-65535.
        rows: height, 1-65535.
    """

    columns: int
    rows: int


class ExecIO(Protocol):
    """The caller's side of :meth:`WorkloadRuntime.exec_interactive`, as the runtime sees it.

    Modelled on Nomad's ``ExecOptions`` (``plugins/drivers/driver.go``: ``Tty``, ``Stdin``,
    ``Stdout``, ``Stderr``, ``ResizeCh``). :class:`ExecStreams` is the implementation callers
    use.

    Attributes:
        tty: run the command on a new pseudo-terminal, which is its stdin, stdout and stderr
            and its controlling terminal: all output comes as ``"stdout"``, and the caller's
            input goes through the terminal's line discipline (echo, ``^C`` -> SIGINT).
        stdin: the caller sends input. Without it the command's stdin is empty (``/dev/null``),
            or with ``tty`` a terminal nobody types on.
    """

    @property
    def tty(self) -> bool: ...

    @property
    def stdin(self) -> bool: ...

    async def read_stdin(self) -> bytes:
        """The next piece of input (at most 64 KiB); ``b""`` once it ended, and after that."""
        ...

    async def write(self, stream: str, data: bytes) -> None:
        """Hand output to the caller; returns once it may take more (backpressure).

        Args:
            stream: ``"stdout"`` or ``"stderr"``.
            data: the bytes, never empty.
        """
        ...

    async def next_size(self) -> TerminalSize:
        """Wait for the terminal's next size; the first call returns the first size known."""
        ...


class ExecStreams:
    """An :class:`ExecIO` whose output goes to a callback and whose input and sizes are fed.

    The caller runs :meth:`WorkloadRuntime.exec_interactive` with it and meanwhile feeds input
    with :meth:`feed_stdin` (``b""`` ends it) and sizes with :meth:`resize`. Input is queued up
    to :data:`STDIN_QUEUE` pieces: :meth:`feed_stdin` waits while the command does not read.

    Args:
        output: called with ``(stream, data)`` for every piece of output, awaited before the
            next (its slowness slows the command's output down, as a full pipe would).
        tty: see :attr:`ExecIO.tty`.
        stdin: see :attr:`ExecIO.stdin`.
    """

    STDIN_QUEUE = 16

    def __init__(
        self, output: Callable[[str, bytes], Awaitable[None]], *, tty: bool, stdin: bool
    ) -> None:
        self._output = output
        self._tty = tty
        self._stdin = stdin
        self._input: asyncio.Queue[bytes] = asyncio.Queue(self.STDIN_QUEUE)
        self._input_ended = not stdin
        self._fed_end = not stdin
        self._size: TerminalSize | None = None
        self._size_changed = asyncio.Event()

    @property
    def tty(self) -> bool:
        """See :attr:`ExecIO.tty`."""
        return self._tty

    @property
    def stdin(self) -> bool:
        """See :attr:`ExecIO.stdin`."""
        return self._stdin

    async def feed_stdin(self, data: bytes) -> None:
        """Queue input for the command; ``b""`` ends it. Input after the end is dropped."""
        if self._fed_end:
            return
        self._fed_end = not data
        await self._input.put(bytes(data))

    def close(self) -> None:
        """Drop queued and further input (the command ended); a waiting :meth:`feed_stdin`
        returns."""
        self._fed_end = True
        while not self._input.empty():
            self._input.get_nowait()

    def resize(self, size: TerminalSize) -> None:
        """Set the terminal's size (only the latest unread one is kept)."""
        self._size = size
        self._size_changed.set()

    async def read_stdin(self) -> bytes:
        """See :meth:`ExecIO.read_stdin`."""
        if self._input_ended:
            return b""
        data = await self._input.get()
        self._input_ended = not data
        return data

    async def write(self, stream: str, data: bytes) -> None:
        """See :meth:`ExecIO.write`."""
        if data:
            await self._output(stream, data)

    async def next_size(self) -> TerminalSize:
        """See :meth:`ExecIO.next_size`."""
        await self._size_changed.wait()
        self._size_changed.clear()
        assert self._size is not None
        return self._size


@dataclass(frozen=True)
class RuntimeContext:
    """What the agent gives a runtime when it constructs it.

    Attributes:
        state_dir: a directory private to this runtime (created, 0700), for its handles' files.
        node_name: the node's human name.
        options: the runtime's section of the agent config (``runtimes.<name>``), already validated
            by the runtime's ``OPTIONS`` table.
        events: records an event of a task's Pod, called as ``(task_id, type, reason,
            message)`` with type ``"Normal"`` or ``"Warning"`` and a kubelet reason (e.g.
            ``"Pulling"``), or None when nobody listens. Must not block; never raises.
    """

    state_dir: Path
    node_name: str
    options: Mapping[str, Any] = field(default_factory=dict)
    events: Callable[[str, str, str, str], None] | None = None


class WorkloadRuntime(abc.ABC):
    """Base class of every WRI runtime.

    Subclasses set :attr:`name`, :attr:`capabilities` and :attr:`OPTIONS` and implement the
    abstract methods. Every method may raise :class:`agent.errors.WorkloadError` (the task could
    not be handled), :class:`agent.errors.RuntimeUnavailableError` (the backend is gone) or
    :class:`agent.errors.CapabilityError` (an optional feature is missing).
    """

    name: ClassVar[str]
    capabilities: ClassVar[Capabilities]
    #: Config keys this runtime accepts under ``runtimes.<name>`` with their defaults.
    OPTIONS: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, context: RuntimeContext) -> None:
        self.context = context

    @abc.abstractmethod
    async def fingerprint(self) -> Fingerprint:
        """Report health and attributes. Never raises: problems make the runtime unhealthy."""

    @abc.abstractmethod
    async def start(self, spec: TaskSpec) -> TaskHandle:
        """Start a task; the handle is persistable once this returns.

        Raises:
            WorkloadError: the task could not be started (the message says why: executable not
                found, permission denied, image missing).
        """

    @abc.abstractmethod
    async def wait(self, handle: TaskHandle) -> ExitResult:
        """Wait until the task ends and return how it ended (at once if it already has)."""

    @abc.abstractmethod
    async def stop(
        self, handle: TaskHandle, grace: float, signal: int = signal_module.SIGTERM
    ) -> None:
        """Ask the task to stop with ``signal``, then kill it after ``grace`` seconds.

        Returns once the task has ended. Stopping a task that already ended is not an error.
        """

    @abc.abstractmethod
    async def destroy(self, handle: TaskHandle, force: bool = False) -> None:
        """Release everything the task holds (cgroups, files, containers).

        Args:
            handle: the task.
            force: kill it first if it still runs; otherwise a running task raises WorkloadError.
        """

    @abc.abstractmethod
    async def inspect(self, handle: TaskHandle) -> TaskStatus:
        """Return the task's current status."""

    @abc.abstractmethod
    async def stats(self, handle: TaskHandle) -> TaskStats:
        """Return resource usage of a running task.

        Raises:
            WorkloadError: the task is not running.
        """

    @abc.abstractmethod
    def logs(
        self,
        handle: TaskHandle,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
    ) -> AsyncIterator[LogRecord]:
        """Yield the task's output records, oldest first.

        Args:
            handle: the task.
            follow: keep yielding new records until the task ends.
            tail: only the last ``tail`` records that exist now.
            since: only records written at or after this wall-clock time (seconds since epoch).
        """

    @abc.abstractmethod
    async def recover(self, handle: TaskHandle) -> bool:
        """Re-attach to a task after an agent restart.

        The handle may carry an empty ``state``: the agent recorded the task id before calling
        :meth:`start` and stopped before it could store the handle. The runtime then finds the
        task by ``handle.task_id`` alone, and every other method accepts that handle too. This
        is what keeps a crash in the middle of a start from producing a duplicate.

        Returns:
            True when the task runs, or ended with a recorded exit result that :meth:`wait`
            returns; False when it is gone without a recorded end (the host rebooted, or no
            trace of it is left). :meth:`destroy` still releases what a lost task left behind.
        """

    async def exec(self, handle: TaskHandle, argv: tuple[str, ...]) -> ExecResult:
        """Run ``argv`` inside the running task's environment and wait for it.

        Callers bound the time with ``asyncio.timeout``; on cancellation the command is killed
        before the cancellation propagates.

        Raises:
            CapabilityError: the runtime has no ``exec`` capability.
        """
        raise CapabilityError(f"runtime {self.name} cannot exec into a task")

    async def exec_interactive(self, handle: TaskHandle, argv: tuple[str, ...], io: ExecIO) -> int:
        """Run ``argv`` inside the running task's environment, attached to ``io``, until it ends.

        The runtime copies ``io``'s input to the command's stdin (closing it when the input
        ends, unless ``io.tty``), the command's stdout and stderr to :meth:`ExecIO.write`, and
        with ``io.tty`` every :meth:`ExecIO.next_size` to the terminal. It returns once the
        command ended and its output was written; output of processes the command left behind
        that still hold its stdout is given up after a short wait. Unlike :meth:`exec`, output
        is not cut.

        Callers bound the time with ``asyncio.timeout``; on cancellation, or when a method of
        ``io`` raises, the command is killed before the exception propagates.

        Returns:
            The command's exit code: 128 + N when a signal N killed it; 127 when ``argv[0]``
            was not found and 126 when it could not be run (with a message on stderr).

        Raises:
            CapabilityError: the runtime has no ``exec_interactive`` capability.
            WorkloadError: empty argv, or the task is not running.
        """
        raise CapabilityError(f"runtime {self.name} cannot attach to a command in a task")

    async def close(self) -> None:  # noqa: B027 - optional hook with a no-op default
        """Release the runtime's own resources at agent shutdown. Tasks keep running."""


def discover_runtimes() -> dict[str, type[WorkloadRuntime]]:
    """Load every runtime class registered in the ``florete.wri`` entry-point group.

    A plugin that cannot be loaded (missing dependency, broken install, not a runtime class) is
    logged and left out: one bad plugin never keeps the agent from starting.

    Returns:
        Runtime name (the entry point's name) -> class.
    """
    found: dict[str, type[WorkloadRuntime]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            cls = ep.load()
        except Exception:  # a third-party plugin may fail in any way
            _log.exception("runtime plugin %s (%s) cannot be loaded; left out", ep.name, ep.value)
            continue
        if not (isinstance(cls, type) and issubclass(cls, WorkloadRuntime)):
            _log.error(
                "runtime plugin %s = %s is not a WorkloadRuntime; left out", ep.name, ep.value
            )
            continue
        found[ep.name] = cls
    return found
