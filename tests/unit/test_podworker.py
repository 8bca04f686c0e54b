"""The pod worker with a real store and the real process runtime, no daemon around it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from agent.errors import RuntimeUnavailableError, WorkloadError
from agent.manifest import parse_pod, pod_to_manifest
from agent.podworker import BackoffSettings, PodWorker
from agent.store import Store
from agent.taskspec import PodContext, build_task_spec
from wri_plugins.api import RuntimeContext, TaskHandle, TaskSpec
from wri_plugins.process import ProcessRuntime

MANIFEST = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "w"},
    "spec": {"containers": [{"name": "main", "command": ["sleep", "300"]}]},
}


class Rig:
    def __init__(self, root: Path) -> None:
        self.store = Store(root / "agent.db")
        (root / "rt").mkdir()
        self.runtime = ProcessRuntime(
            RuntimeContext(root / "rt", "node", {"cgroup_parent": "florete-test"})
        )
        self.pod = parse_pod(MANIFEST)
        self.stored = self.store.create_pod("default", "w", "uid-w", pod_to_manifest(self.pod))
        self.ctx = PodContext("uid-w", "node", "127.0.0.1", root / "logs", root / "work")

    def worker(self) -> PodWorker:
        stored = self.store.get_pod("default", "w")
        return PodWorker(stored, self.pod, self.runtime, self.store, self.ctx, BackoffSettings())


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    rig = Rig(tmp_path)
    yield rig
    await rig.worker().kill(grace=0)


async def wait_running(worker: PodWorker) -> None:
    async with asyncio.timeout(10):
        while worker.statuses["main"].state.kind != "running":  # noqa: ASYNC110 - no event to wait on
            await asyncio.sleep(0.02)


async def test_crash_between_start_and_handle_does_not_duplicate(rig: Rig) -> None:
    """The agent recorded the intent, the runtime started the task, the agent died."""
    container = rig.pod.spec.containers[0]
    spec = build_task_spec(rig.pod, container, rig.ctx, attempt=0)
    spec.log_path.parent.mkdir(parents=True)
    rig.ctx.work_dir.mkdir()
    rig.store.record_task_intent("uid-w", "main", 0, spec.task_id, "process")
    started = await rig.runtime.start(spec)

    worker = rig.worker()
    task = asyncio.create_task(worker.run())
    try:
        await wait_running(worker)
        assert worker.statuses["main"].restart_count == 0
        bare = TaskHandle("process", spec.task_id, {})
        assert (await rig.runtime.inspect(bare)).pid == started.state["pid"]
        sleeps = [
            p
            for p in psutil.process_iter(["cmdline"])
            if p.info["cmdline"] == ["sleep", "300"] and p.pid == started.state["pid"]
        ]
        assert len(sleeps) == 1
        assert [t.attempt for t in rig.store.tasks("uid-w")] == [0]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_detached_worker_leaves_the_workload_running(rig: Rig) -> None:
    worker = rig.worker()
    task = asyncio.create_task(worker.run())
    await wait_running(worker)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    [record] = rig.store.tasks("uid-w")
    assert record.handle is not None
    handle = TaskHandle.from_json(record.handle)
    assert (await rig.runtime.inspect(handle)).running
    saved = rig.store.get_pod("default", "w").status
    assert saved["phase"] == "Running"
    again = rig.worker()
    task = asyncio.create_task(again.run())
    try:
        await wait_running(again)
        assert again.statuses["main"].restart_count == 0
        assert [t.attempt for t in rig.store.tasks("uid-w")] == [0]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


class _NoImage(ProcessRuntime):
    """A runtime whose every start fails as a missing image does."""

    def __init__(self, context: RuntimeContext, message: str) -> None:
        super().__init__(context)
        self.message = message
        self.starts = 0

    async def start(self, spec: TaskSpec) -> TaskHandle:
        self.starts += 1
        raise WorkloadError(self.message)


@pytest.mark.parametrize(
    ("message", "first", "backing_off"),
    [
        ("ErrImagePull: pulling image x: connection refused", "ErrImagePull", "ImagePullBackOff"),
        ("ErrImageNeverPull: not present", "ErrImageNeverPull", "ErrImageNeverPull"),
    ],
)
async def test_image_errors_wait_with_the_kubelets_reasons(
    rig: Rig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    message: str,
    first: str,
    backing_off: str,
) -> None:
    runtime = _NoImage(RuntimeContext(tmp_path / "rt", "node", {}), message)
    stored = rig.store.get_pod("default", "w")
    main = {"name": "main", "command": ["x"]}
    never = parse_pod({**MANIFEST, "spec": {"restartPolicy": "Never", "containers": [main]}})
    worker = PodWorker(stored, never, runtime, rig.store, rig.ctx, BackoffSettings(0.2, 0.2, 60.0))
    seen: list[str] = []
    publish = worker._publish

    def record() -> None:
        reason = worker.statuses["main"].state.reason
        if not seen or seen[-1] != reason:
            seen.append(reason)
        publish()

    monkeypatch.setattr(worker, "_publish", record)
    async with asyncio.TaskGroup() as group:
        task = group.create_task(worker.run())
        async with asyncio.timeout(5):
            while runtime.starts < 3:  # noqa: ASYNC110 - restartPolicy Never still retries
                await asyncio.sleep(0.01)
        task.cancel()
    expected = list(dict.fromkeys([first, backing_off]))
    assert seen[seen.index(first) :][: len(expected)] == expected
    reasons = [e.reason for e in rig.store.events("default", "w")]
    assert "Failed" in reasons
    assert ("BackOff" in reasons) == (first == "ErrImagePull")


class _BackendDown(ProcessRuntime):
    """A runtime whose backend is unreachable for its first two starts."""

    def __init__(self, context: RuntimeContext) -> None:
        super().__init__(context)
        self.starts = 0

    async def start(self, spec: TaskSpec) -> TaskHandle:
        self.starts += 1
        if self.starts <= 2:
            raise RuntimeUnavailableError("process: backend unreachable (test)")
        return await super().start(spec)


async def test_backend_down_at_start_backs_off_and_recovers(rig: Rig, tmp_path: Path) -> None:
    runtime = _BackendDown(RuntimeContext(tmp_path / "rt", "node", {}))
    stored = rig.store.get_pod("default", "w")
    worker = PodWorker(
        stored, rig.pod, runtime, rig.store, rig.ctx, BackoffSettings(0.1, 0.2, 60.0)
    )
    rig.runtime = runtime
    task = asyncio.create_task(worker.run())
    try:
        await wait_running(worker)
        assert runtime.starts == 3
        failed = [e for e in rig.store.events("default", "w") if e.reason == "Failed"]
        assert [(e.message, e.count) for e in failed] == [
            ("Error: process: backend unreachable (test)", 2)
        ]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
