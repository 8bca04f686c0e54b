"""The ``podman`` runtime: each task is a podman container, each Pod a podman pod.

It talks to the libpod REST API (https://docs.podman.io/en/v4.3/_static/api.html) on a Unix
socket (see :mod:`.service` for which one, and when it starts ``podman system service`` itself).

=====================  ==========================================================================
Decision               Why
=====================  ==========================================================================
Pod = podman pod       Created with the Pod's first container (WRI starts containers one by
                       one), named ``<namespace>_<name>_<uid>``; its infra container holds the
                       network namespace as Kubernetes' pause container does, so containers of a
                       Pod reach each other on 127.0.0.1. Removed with its last container.
Network ``bridge``     A network namespace per Pod on podman's default network, as Kubernetes
                       gives each Pod its own; option ``network``: ``bridge``, ``host``, ``none``.
hostPorts on           Every container's hostPort of the Pod (``TaskSpec.pod_ports``) is published
127.0.0.1              with the podman pod, on the port's ``hostIP`` if set, else on option
                       ``host_ip`` (default 127.0.0.1), never on every address unless configured.
hostNetwork = host     A ``hostNetwork`` Pod's podman pod uses the host network (no mapping).
command / args         Kubernetes ``command`` -> podman entrypoint, ``args`` -> podman command:
                       command alone drops the image's CMD, args alone keep its ENTRYPOINT.
securityContext        runAsUser/runAsGroup -> ``user``, readOnlyRootFilesystem ->
                       ``read_only_filesystem``; never privileged (the manifest refuses it).
Logs: CRI file         conmon writes a ``k8s-file`` log (CRI format) at ``TaskSpec.log_path``;
                       ``logs()`` reads it. Podman 4.3's logs endpoint serves the same file with
                       timestamps cut to whole seconds, too coarse for ``since``.
Stop: kill + wait      The requested signal, ``grace`` seconds (fractions too; the stop endpoint
                       takes whole seconds), then SIGKILL.
No restarts by podman  ``restart_policy: no``: restarts are the agent's, so a container that
                       exited while the agent was down is reported once, never restarted twice
                       (nomad-driver-podman #229, #432).
Lost = conmon gone     A container podman calls running whose conmon died (host crash, kill -9)
                       has no exit record: ``recover`` says False, ``wait`` reports 137. This
                       needs the agent in podman's PID namespace (it shares its socket anyway).
API outage             Containers run on without the API (conmon watches each): ``wait`` keeps
                       waiting while the container's conmon runs and raises
                       ``RuntimeUnavailableError`` once it does not (ended meanwhile); every
                       other call, and the fingerprint's health, fail at once.
OOM from two sources   podman's ``OOMKilled``, or, when it says no, the kernel log (see ``oom``).
Images                 imagePullPolicy as the kubelet: Never uses the local image only
                       (``ErrImageNeverPull:``), IfNotPresent pulls when missing, Always pulls
                       each time, so an unreachable registry is ``ErrImagePull:`` even when the
                       image is local. Option ``pull`` false forbids every pull. Pulls are
                       bounded by ``pull_timeout`` and reported as Pulling/Pulled/Failed events.
=====================  ==========================================================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as signal_module
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar, Literal

import psutil

from agent.errors import RemoteError, RuntimeUnavailableError, WorkloadError
from wri_plugins.api import (
    Capabilities,
    ExecIO,
    ExecResult,
    ExitResult,
    Fingerprint,
    LogRecord,
    RuntimeContext,
    TaskHandle,
    TaskSpec,
    TaskStats,
    TaskStatus,
    WorkloadRuntime,
)
from wri_plugins.podman.execs import run_attached, run_exec
from wri_plugins.podman.images import EventSink, ImagePuller
from wri_plugins.podman.libpod import LibpodError, quote_name
from wri_plugins.podman.oom import kernel_saw_oom_kill
from wri_plugins.podman.options import OPTIONS, validate
from wri_plugins.podman.pods import Pods
from wri_plugins.podman.service import PodmanService
from wri_plugins.podman.spec import (
    ContainerInfo,
    container_body,
    container_name,
    pod_name,
)
from wri_plugins.process.logreader import read_logs

_log = logging.getLogger(__name__)

EXEC_OUTPUT_LIMIT = 10 * 1024  # bytes of exec output kept (the kubelet's probe limit)
KILL_TIMEOUT = 10.0  # seconds a container may take to end after SIGKILL
WAIT_SLICE = 10.0  # seconds one wait request may last before the container is looked at again
API_RETRY = 1.0  # seconds between attempts of wait() while the API does not answer
WAIT_INTERVAL = "100ms"  # how often podman looks at a container it waits for
#: Exit code reported for a lost container (no exit record), as the kubelet's
#: ContainerStatusUnknown and the process runtime do.
LOST_EXIT_CODE = 137
FINGERPRINT_TIMEOUT = 10.0  # seconds

Phase = Literal["running", "ended", "lost"]


def _conmon_alive(pid: int | None) -> bool:
    """Whether ``pid`` is a live conmon (the name guards against a reused pid)."""
    if pid is None:
        return False
    try:
        proc = psutil.Process(pid)
        return proc.status() != psutil.STATUS_ZOMBIE and proc.name() == "conmon"
    except psutil.Error:
        return False


def conmon_watching(ref: str, pid: int | None) -> bool:
    """Whether a conmon still watches container ``ref``, without asking podman.

    Blocking (may read every process's command line); run it in a thread.

    Args:
        ref: the container's id or name (conmon has both on its command line, ``-c``/``-n``).
        pid: the conmon's pid as podman last reported it, or None when unknown.
    """
    if pid is not None:
        return _conmon_alive(pid)
    for proc in psutil.process_iter(["name", "cmdline", "status"]):
        if proc.info["name"] == "conmon" and proc.info["status"] != psutil.STATUS_ZOMBIE:
            if ref in (proc.info["cmdline"] or []):
                return True
    return False


def phase(info: ContainerInfo) -> Phase:
    """``running`` (conmon watches it), ``ended`` (exit recorded) or ``lost`` (neither).

    Lost covers a live state with a dead conmon (killed, host crashed), a state podman reset at
    boot and a container that was created but never started (the agent died mid-start).
    """
    if info.live:
        return "running" if _conmon_alive(info.conmon_pid) else "lost"
    return "ended" if info.ended else "lost"


class PodmanRuntime(WorkloadRuntime):
    """Runs tasks as podman containers grouped in podman pods. See the module docstring.

    Options (``runtimes.podman``): ``socket`` (API socket; "" for podman's default, else our
    own), ``start_service`` (start ``podman system service`` when no API answers),
    ``podman`` (executable), ``containers_conf`` (``CONTAINERS_CONF`` of a started service),
    ``network`` (``bridge``, ``host``, ``none``), ``host_ip`` (address hostPorts bind to),
    ``pull`` (pulls allowed at all), ``pull_timeout`` (seconds), ``log_max_bytes`` (conmon
    truncates a log above this size; 0 unlimited).
    """

    name: ClassVar[str] = "podman"
    capabilities: ClassVar[Capabilities] = Capabilities(
        send_signals=True, exec=True, exec_interactive=True, fs_isolation=True, resource_limits=True
    )
    OPTIONS: ClassVar[dict[str, Any]] = OPTIONS

    def __init__(self, context: RuntimeContext) -> None:
        """Create the runtime; starts nothing until a method needs the API.

        Raises:
            ConfigError: an option is unknown or has a bad value (the message names it).
        """
        super().__init__(context)
        options = validate(context.options)
        self._service = PodmanService(
            context.state_dir,
            options["socket"] or None,
            options["start_service"],
            options["podman"],
            options["containers_conf"] or None,
        )
        self._network: str = options["network"]
        self._host_ip: str = options["host_ip"]
        self._log_max_bytes: int = options["log_max_bytes"]
        self._images = ImagePuller(options["pull"], float(options["pull_timeout"]))
        self._pods = Pods(self._service, self._network, self._host_ip)
        self._host_info: tuple[Path | None, dict[str, Any]] | None = None
        self._oom: dict[str, bool] = {}  # container id -> the kernel log's verdict
        self._lost_tasks: set[str] = set()  # warned about once each

    # -- helpers ------------------------------------------------------------------------------

    def _task_events(self, task_id: str) -> EventSink:
        """An event sink for one task: the context's ``events`` callback, or a no-op."""
        record = self.context.events

        def sink(kind: str, reason: str, message: str) -> None:
            if record is not None:
                record(task_id, kind, reason, message)

        return sink

    def _ref(self, handle: TaskHandle) -> str:
        """The container of a handle: its id, or the name derived from the task id."""
        if handle.runtime != self.name:
            raise WorkloadError(f"handle of runtime {handle.runtime!r}, not {self.name!r}")
        return str(handle.state.get("id") or container_name(handle.task_id))

    async def _inspect(self, handle: TaskHandle) -> ContainerInfo | None:
        """The handle's container, or None when it does not exist.

        Raises:
            WorkloadError: the API failed, or the container belongs to another task.
        """
        ref = self._ref(handle)
        try:
            data = await self._service.call("GET", f"/containers/{quote_name(ref)}/json")
            info = ContainerInfo.parse(data)
        except LibpodError as err:
            if err.status == 404:
                return None
            raise WorkloadError(f"task {handle.task_id}: cannot inspect {ref}: {err}") from err
        except (ValueError, TypeError, RemoteError) as err:
            raise WorkloadError(f"task {handle.task_id}: bad inspect data: {err}") from err
        if info.task_id and info.task_id != handle.task_id:
            raise WorkloadError(f"container {ref} belongs to task {info.task_id}")
        return info

    async def _current(self, handle: TaskHandle) -> tuple[ContainerInfo | None, Phase]:
        """The container and its phase; a dead conmon is confirmed by a second look.

        conmon writes the exit record and then exits: a container seen live just before its
        conmon ended shows its real exit once inspected again.
        """
        info = await self._inspect(handle)
        if info is None:
            return None, "lost"
        now = phase(info)
        if now == "lost" and info.live:
            info = await self._inspect(handle)
            now = phase(info) if info is not None else "lost"
        return info, now

    async def _exit(self, handle: TaskHandle, info: ContainerInfo | None, now: Phase) -> ExitResult:
        """The exit record of an ended or lost container."""
        if info is None or now != "ended":
            return self._lost(handle)
        oom = False
        if not info.oom_killed and info.exit_code == 137 and info.memory_limit > 0:
            if info.id not in self._oom:
                found = await asyncio.to_thread(kernel_saw_oom_kill, info.id)
                self._oom[info.id] = bool(found)
            oom = self._oom[info.id]
        return info.exit_result(oom)

    def _lost(self, handle: TaskHandle) -> ExitResult:
        if handle.task_id not in self._lost_tasks:
            self._lost_tasks.add(handle.task_id)
            _log.warning(
                "task %s: container is gone or its conmon died without an exit record; "
                "reporting exit code %d",
                handle.task_id,
                LOST_EXIT_CODE,
            )
        return ExitResult(exit_code=LOST_EXIT_CODE)

    # -- WRI ----------------------------------------------------------------------------------

    async def fingerprint(self) -> Fingerprint:
        """Report health from the API's ``/version`` and (once per socket) ``/info``.

        Starts no service: before the first container, when no API answers but podman is
        installed and may start one, the runtime is healthy and says the service starts later
        (a board that runs only host processes never pays for a podman service).

        Returns:
            Unhealthy with the reason when podman is missing or its API does not answer;
            else attributes ``version``, ``arch`` (Go-style), ``limits`` (``cgroup-v1`` or
            ``cgroup-v2`` and the cgroup manager), ``limits_enforced``, ``socket``,
            ``oci_runtime``, ``network``.
        """
        try:
            async with asyncio.timeout(FINGERPRINT_TIMEOUT):
                missing = await self._service.find()
        except TimeoutError:
            missing = "the podman API did not answer in time"
        if missing == "start":
            # no service runs yet: it starts with the first container, not with the agent
            return Fingerprint(
                healthy=True,
                description="podman installed; its API service starts with the first container",
                attributes={
                    "limits": "known once the podman service runs",
                    "network": self._network,
                },
            )
        if missing is not None:
            return Fingerprint(False, missing)
        try:
            async with asyncio.timeout(FINGERPRINT_TIMEOUT):
                version = await self._service.call("GET", "/version")
                socket = self._service.socket
                if self._host_info is None or self._host_info[0] != socket:
                    info = await self._service.call("GET", "/info")
                    self._host_info = (socket, info)
            host = self._host_info[1].get("host") or {}
        except (RuntimeUnavailableError, RemoteError, TimeoutError) as err:
            self._service.broken()
            return Fingerprint(False, str(err) or "the podman API did not answer in time")
        cgroup = str(host.get("cgroupVersion", "")).lstrip("v") or "?"
        enforced = "memory" in (host.get("cgroupControllers") or [])
        limits = f"cgroup-v{cgroup} ({host.get('cgroupManager', '?')})"
        if not enforced:
            limits = f"no memory controller for podman ({limits})"
        return Fingerprint(
            healthy=True,
            description=f"podman {version.get('Version')} on {socket}",
            attributes={
                "version": str(version.get("Version", "")),
                "arch": str(version.get("Arch", "")),
                "limits": limits,
                "limits_enforced": str(enforced).lower(),
                "socket": str(socket),
                "oci_runtime": str((host.get("ociRuntime") or {}).get("name", "")),
                "network": self._network,
            },
        )

    async def start(self, spec: TaskSpec) -> TaskHandle:
        """Create the task's container in its Pod's podman pod (created if needed) and start it.

        Raises:
            ImageError: the image is missing and cannot be pulled (``ErrImagePull: ...``).
            WorkloadError: no image, the container exists already, or podman refused to
                create or start it (the message carries podman's, e.g. executable not found).
            RuntimeUnavailableError: no API answers.
        """
        if not spec.image:
            raise WorkloadError(
                f"task {spec.task_id}: the podman runtime runs images; the container has none"
            )
        await self._images.ensure(
            self._service, spec.image, spec.image_pull_policy, self._task_events(spec.task_id)
        )
        await asyncio.to_thread(spec.log_path.parent.mkdir, parents=True, exist_ok=True)
        pod = pod_name(spec.pod_namespace, spec.pod_name, spec.pod_uid)
        body = container_body(spec, pod, self._log_max_bytes)
        container_id = await self._pods.create_container(spec, pod, body)
        try:
            await self._service.call("POST", f"/containers/{container_id}/start")
        except BaseException as err:
            with contextlib.suppress(WorkloadError, RuntimeUnavailableError, RemoteError):
                await self._pods.remove_container(container_id, pod)
            if isinstance(err, LibpodError):
                raise WorkloadError(f"cannot start task {spec.task_id}: {err}") from err
            raise
        _log.info("task %s: started container %s in pod %s", spec.task_id, body["name"], pod)
        state = {"id": container_id, "pod": pod, "log_path": str(spec.log_path)}
        return TaskHandle(self.name, spec.task_id, state)

    async def wait(self, handle: TaskHandle) -> ExitResult:
        """Wait for the container's end with libpod's wait endpoint and return its exit record.

        The container does not need the API to run: while the API does not answer, this keeps
        waiting as long as the container's conmon runs, looking again every :data:`API_RETRY`
        seconds (a warning first, then quietly).

        Raises:
            WorkloadError: the container does not exist.
            RuntimeUnavailableError: the API does not answer and no conmon watches the
                container any more: it ended, and its exit record is readable only once the
                API answers again.
        """
        ref = self._ref(handle)
        path = f"/containers/{quote_name(ref)}/wait"
        query = [("condition", "exited"), ("condition", "stopped"), ("interval", WAIT_INTERVAL)]
        outage = False
        conmon: int | None = None  # as podman last reported it
        while True:
            try:
                info, now = await self._current(handle)
                if info is None:
                    raise WorkloadError(f"task {handle.task_id}: no container {ref}")
                if now != "running":
                    return await self._exit(handle, info, now)
                conmon = info.conmon_pid
                async with asyncio.timeout(WAIT_SLICE):
                    await self._service.call("POST", path, query=query, long_poll=True)
            except TimeoutError:
                continue
            except LibpodError as err:  # conmon died, or removed meanwhile: look again
                _log.debug("task %s: wait: %s", handle.task_id, err)
                await asyncio.sleep(0.2)
            except RuntimeUnavailableError as err:
                if not await asyncio.to_thread(conmon_watching, ref, conmon):
                    raise RuntimeUnavailableError(
                        f"task {handle.task_id} ended while the podman API was unreachable "
                        f"({err}); its exit record is readable once the API answers again"
                    ) from err
                level = logging.DEBUG if outage else logging.WARNING
                _log.log(level, "task %s runs on; podman API unreachable: %s", handle.task_id, err)
                outage = True
                await asyncio.sleep(API_RETRY)

    async def stop(
        self, handle: TaskHandle, grace: float, signal: int = signal_module.SIGTERM
    ) -> None:
        """Send ``signal`` to the container, SIGKILL it after ``grace`` seconds.

        Returns once it has ended (at once if it had, or does not exist).

        Raises:
            WorkloadError: it did not end within 10 s after SIGKILL, or podman refused.
        """
        info, now = await self._current(handle)
        if info is None or now != "running":
            return
        await self._kill(info.id, signal)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(grace, 0.0)):
                await self.wait(handle)
                return
        _log.info(
            "task %s: running %.1fs after signal %d; killing it", handle.task_id, grace, signal
        )
        await self._kill(info.id, signal_module.SIGKILL)
        try:
            async with asyncio.timeout(KILL_TIMEOUT):
                await self.wait(handle)
        except TimeoutError:
            raise WorkloadError(
                f"task {handle.task_id} did not end {KILL_TIMEOUT}s after SIGKILL"
            ) from None

    async def _kill(self, container: str, signal: int) -> None:
        try:
            await self._service.call(
                "POST", f"/containers/{container}/kill", query={"signal": signal}
            )
        except LibpodError as err:
            if err.status not in (404, 409):  # 409: it is not running (any more)
                raise WorkloadError(f"cannot signal container {container}: {err}") from err

    async def destroy(self, handle: TaskHandle, force: bool = False) -> None:
        """Remove the container and, if it was the last of its pod, the pod (logs stay).

        Raises:
            WorkloadError: it still runs and ``force`` is False, or podman refused.
        """
        info, now = await self._current(handle)
        if info is not None and now == "running" and not force:
            raise WorkloadError(f"task {handle.task_id} is still running; stop it first")
        pod = info.pod if info is not None else str(handle.state.get("pod") or "")
        if info is not None:
            await self._pods.remove_container(info.id, pod)
            self._oom.pop(info.id, None)
        elif pod:
            await self._pods.remove_if_empty(pod)

    async def inspect(self, handle: TaskHandle) -> TaskStatus:
        """Running or not, host pid of its main process, start time and, once ended, its exit.

        Raises:
            WorkloadError: the container does not exist.
        """
        info, now = await self._current(handle)
        if info is None:
            raise WorkloadError(f"task {handle.task_id}: no container {self._ref(handle)}")
        if now == "running":
            return TaskStatus(
                running=True, pid=info.pid, started_at=info.started_at, ip=info.ip or None
            )
        result = await self._exit(handle, info, now)
        return TaskStatus(running=False, pid=None, started_at=info.started_at, exit=result)

    async def stats(self, handle: TaskHandle) -> TaskStats:
        """CPU seconds, memory (cgroup usage, bytes) and block I/O bytes from libpod's stats.

        Uses ``GET /libpod/containers/stats?containers=ID&stream=false`` (one sample).

        Raises:
            WorkloadError: the task is not running.
        """
        info, now = await self._current(handle)
        if info is None or now != "running":
            raise WorkloadError(f"task {handle.task_id} is not running")
        query = {"containers": info.id, "stream": False}
        try:
            data = await self._service.call("GET", "/containers/stats", query=query)
            sample = data["Stats"][0]
            return TaskStats(
                cpu_seconds=int(sample["CPUNano"]) / 1e9,
                rss_bytes=int(sample["MemUsage"]),
                read_bytes=int(sample.get("BlockInput") or 0),
                write_bytes=int(sample.get("BlockOutput") or 0),
            )
        except LibpodError as err:
            raise WorkloadError(f"task {handle.task_id} is not running: {err}") from err
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise WorkloadError(f"task {handle.task_id}: bad stats answer: {err!r}") from err

    async def logs(
        self,
        handle: TaskHandle,
        *,
        follow: bool = False,
        tail: int | None = None,
        since: float | None = None,
    ) -> AsyncIterator[LogRecord]:
        """Records of the CRI log conmon writes (see the module docstring), oldest first.

        Following ends once the container's conmon has exited (it writes the last line first).
        The log outlives the container; after :meth:`destroy` the handle's path is read.
        """
        info = await self._inspect(handle)
        path = (info.log_path if info else "") or str(handle.state.get("log_path") or "")
        if not path:
            return
        conmon = info.conmon_pid if info is not None and info.live else None
        async for record in read_logs(
            Path(path), lambda: not _conmon_alive(conmon), follow=follow, tail=tail, since=since
        ):
            yield record

    async def exec(self, handle: TaskHandle, argv: tuple[str, ...]) -> ExecResult:
        """Run ``argv`` in the running container (its environment and working dir).

        Uses libpod exec create, start (attached; a multiplexed stream, see ``frames``) and
        inspect for the exit code; a cancelled exec's process is killed.

        Returns:
            Exit code (126/127 when podman cannot run it) and stdout+stderr, cut at 10 KiB.

        Raises:
            WorkloadError: empty argv, or the task is not running.
        """
        container = await self._exec_container(handle, argv)
        return await run_exec(self._service, container, argv, EXEC_OUTPUT_LIMIT)

    async def exec_interactive(self, handle: TaskHandle, argv: tuple[str, ...], io: ExecIO) -> int:
        """Run ``argv`` in the running container attached to ``io``: a libpod exec session
        with ``AttachStdin`` and ``Tty`` as asked, its start hijacking the connection (see
        ``execs``); a cancelled exec's process is killed.

        Returns:
            Exit code (126/127 when podman cannot run it).

        Raises:
            WorkloadError: empty argv, or the task is not running.
        """
        container = await self._exec_container(handle, argv)
        return await run_attached(self._service, container, argv, io)

    async def _exec_container(self, handle: TaskHandle, argv: tuple[str, ...]) -> str:
        """The id of the running container to run ``argv`` in.

        Raises:
            WorkloadError: empty argv, or the task is not running.
        """
        if not argv:
            raise WorkloadError("exec needs a command (argv is empty)")
        info, now = await self._current(handle)
        if info is None or now != "running":
            raise WorkloadError(f"task {handle.task_id} is not running")
        return info.id

    async def recover(self, handle: TaskHandle) -> bool:
        """True when the container runs or ended with a recorded exit; nothing is restarted.

        False when it does not exist, or is lost (see :func:`phase`); a lost container stays
        until :meth:`destroy`.
        """
        try:
            info, now = await self._current(handle)
        except WorkloadError as err:
            _log.info("cannot recover task %s: %s", handle.task_id, err)
            return False
        if info is not None and now == "lost":
            self._lost(handle)
        return info is not None and now != "lost"

    async def close(self) -> None:
        """Stop the API service this runtime started, if any; containers keep running."""
        await self._service.close()
