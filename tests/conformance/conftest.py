"""Fixtures of the WRI conformance suite: every case runs against every runtime in RUNTIMES.

To add a runtime, append a :class:`RuntimeUnderTest` to :data:`RUNTIMES`: its entry-point name,
the options for its ``RuntimeContext`` and a probe that returns why it cannot run here (the case
is then skipped with that reason), for example::

    RuntimeUnderTest("podman", {"socket": "/run/florete-test/podman.sock"}, podman_unavailable)
    RuntimeUnderTest("systemd", {"bus": "user"}, systemd_unavailable)

A runtime with a backend (a daemon it talks to) gives ``backend_outage``: a context manager that
kills that backend for its block and brings it back afterwards; one without says why in
``no_backend``.

Workloads are POSIX ``sh`` one-liners (``echo``, ``sleep``, ``trap``, ``exit``) so they run on the
host and in a busybox image alike. Every task a case starts through :meth:`RuntimeFactory.start`
is destroyed with force at teardown, also when the case fails; tasks started in another process
(the agent-kill case) are registered with :meth:`RuntimeFactory.track`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest

from agent.errors import WorkloadError
from tests import android_env, podman_env, systemd_env
from wri_plugins.api import (
    LogRecord,
    ResourceLimits,
    RuntimeContext,
    TaskHandle,
    TaskSpec,
    WorkloadRuntime,
    discover_runtimes,
)

_log = logging.getLogger(__name__)

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class RuntimeUnderTest:
    """One runtime the suite runs against.

    Attributes:
        name: entry-point name in the ``florete.wri`` group.
        options: the runtime's ``RuntimeContext.options``.
        unavailable: returns why the runtime cannot be tested on this host, or None.
        power_cut: kills a task and everything of the runtime that watches it at once, as a
            power cut would (SIGKILL, no exit record written).
        image: the image of the specs the cases start (None: host processes).
        backend_outage: kills the backend the runtime talks to (the daemon, or the bus to it)
            for the block and starts it again afterwards, returning once it answers; None for
            a runtime without one.
        no_backend: why ``backend_outage`` is None.
    """

    name: str
    power_cut: Callable[[TaskHandle], None]
    options: Mapping[str, Any] = field(default_factory=dict)
    unavailable: Callable[[], str | None] = lambda: None
    image: str | None = None
    backend_outage: Callable[[], contextlib.AbstractContextManager[None]] | None = None
    no_backend: str = ""


def _process_power_cut(handle: TaskHandle) -> None:
    """SIGKILL the shim and the workload's process group; wait until both are gone."""
    shim, pid = int(handle.state["shim_pid"]), int(handle.state["pid"])
    os.kill(shim, signal.SIGKILL)
    os.killpg(pid, signal.SIGKILL)
    psutil.wait_procs([p for p in map(_process, (shim, pid)) if p is not None], timeout=10)


def _process(pid: int) -> psutil.Process | None:
    try:
        return psutil.Process(pid)
    except psutil.NoSuchProcess:
        return None


RUNTIMES = [
    # a relative cgroup parent keeps the tasks under the test's own cgroups
    RuntimeUnderTest(
        "process",
        _process_power_cut,
        {"cgroup_parent": "florete-test", "log_max_bytes": 1 << 20},
        no_backend="the process runtime's backend is the host itself: nothing can die under it",
    ),
    RuntimeUnderTest(
        "podman",
        podman_env.power_cut,
        podman_env.Options(),
        podman_env.unavailable,
        image=podman_env.IMAGE,
        backend_outage=podman_env.outage,
    ),
    RuntimeUnderTest(
        "systemd",
        systemd_env.power_cut,
        {"bus": "user", "bus_address": systemd_env.bus_address(), "log_max_bytes": 1 << 20},
        systemd_env.unavailable,
        backend_outage=systemd_env.bus_outage,
    ),
    # a real OpenSSH sshd on 127.0.0.1 stands in for the phone's Termux sshd
    RuntimeUnderTest(
        "android",
        android_env.power_cut,
        android_env.Options(),
        android_env.unavailable,
        backend_outage=android_env.outage,
    ),
]


class RuntimeFactory:
    """Creates runtimes of one kind for a state dir and cleans up the tasks they start.

    Calling it returns a new runtime instance, as a restarted agent would create one.
    """

    def __init__(self, entry: RuntimeUnderTest, tmp_path: Path) -> None:
        self.entry = entry
        self.name = entry.name
        self.tmp_path = tmp_path
        self.state_dir = tmp_path / "state"
        self.state_dir.mkdir(mode=0o700)
        self._cls = discover_runtimes()[entry.name]
        self._started: list[tuple[Path, TaskHandle]] = []
        self._created: list[WorkloadRuntime] = []

    def __call__(self, state_dir: Path | None = None) -> WorkloadRuntime:
        """A new runtime instance on ``state_dir`` (default: this case's state dir), closed at
        teardown as the agent closes its runtimes at shutdown."""
        runtime = self._cls(
            RuntimeContext(state_dir or self.state_dir, "test-node", self.entry.options)
        )
        self._created.append(runtime)
        return runtime

    def spec(
        self,
        argv: tuple[str, ...],
        *,
        env: Mapping[str, str] | None = None,
        working_dir: str | None = None,
        limits: ResourceLimits | None = None,
        run_as_user: int | None = None,
        run_as_group: int | None = None,
    ) -> TaskSpec:
        """A TaskSpec with a fresh task id, PATH set, and its log under the case's tmp dir."""
        task_id = f"pod{uuid.uuid4().hex[:12]}-c-0"
        return TaskSpec(
            task_id=task_id,
            pod_namespace="default",
            pod_name="conformance",
            pod_uid=task_id[3:15],
            container="c",
            image=self.entry.image,
            argv=argv,
            env={"PATH": PATH, **(env or {})},
            working_dir=working_dir,
            limits=limits or ResourceLimits(),
            log_path=self.tmp_path / "logs" / f"{task_id}.log",
            run_as_user=run_as_user,
            run_as_group=run_as_group,
        )

    def track(self, handle: TaskHandle, state_dir: Path | None = None) -> None:
        """Destroy ``handle`` at teardown."""
        self._started.append((state_dir or self.state_dir, handle))

    async def start(self, runtime: WorkloadRuntime, spec: TaskSpec) -> TaskHandle:
        """``runtime.start(spec)``, remembering the handle for teardown."""
        handle = await runtime.start(spec)
        self.track(handle, runtime.context.state_dir)
        return handle

    @staticmethod
    async def collect(records: AsyncIterator[LogRecord]) -> list[LogRecord]:
        """All records of a finite log iterator."""
        return [record async for record in records]

    @staticmethod
    async def wait_for_line(runtime: WorkloadRuntime, handle: TaskHandle, text: bytes) -> None:
        """Return once the task wrote a line ``text`` (follows its logs for at most 10 s).

        Raises:
            AssertionError: the task ended without writing it.
            TimeoutError: not written within 10 seconds.
        """
        async with asyncio.timeout(10):
            records = runtime.logs(handle, follow=True)
            try:
                async for record in records:
                    if record.text == text:
                        return
            finally:
                if isinstance(records, AsyncGenerator):
                    await records.aclose()
        raise AssertionError(f"task {handle.task_id} ended without writing {text!r}")

    @contextlib.asynccontextmanager
    async def backend_down(self) -> AsyncIterator[None]:
        """The runtime's backend killed for the block (:attr:`RuntimeUnderTest.backend_outage`).

        Killing and reviving run in a thread: the event loop goes on meanwhile, as an agent's
        would, and sees the backend's sockets close when they do.

        Raises:
            AssertionError: the runtime has no backend hook.
        """
        assert self.entry.backend_outage is not None, self.entry.no_backend
        outage = self.entry.backend_outage()
        await asyncio.to_thread(outage.__enter__)
        try:
            yield
        finally:
            await asyncio.to_thread(outage.__exit__, None, None, None)

    async def kill_everything(self, runtime: WorkloadRuntime, handle: TaskHandle) -> None:
        """Cut the power under one task (see :attr:`RuntimeUnderTest.power_cut`)."""
        await runtime.close()
        await asyncio.to_thread(self.entry.power_cut, handle)

    async def cleanup(self) -> None:
        """Destroy (force) every task started in this case, each with a fresh runtime; close
        every runtime created."""
        for state_dir, handle in reversed(self._started):
            runtime = self(state_dir)
            try:
                await runtime.destroy(handle, force=True)
            except WorkloadError:
                _log.exception("teardown: cannot destroy task %s", handle.task_id)
        for runtime in self._created:
            await runtime.close()


@pytest.fixture(params=RUNTIMES, ids=lambda entry: entry.name)
async def runtime_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[RuntimeFactory]:
    """A :class:`RuntimeFactory` for each runtime in :data:`RUNTIMES` (skipped if unavailable)."""
    entry: RuntimeUnderTest = request.param
    reason = entry.unavailable()
    if reason:
        pytest.skip(f"{entry.name}: {reason}")
    factory = RuntimeFactory(entry, tmp_path)
    try:
        yield factory
    finally:
        await factory.cleanup()
