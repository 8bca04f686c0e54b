"""Events that runtimes report reach the task's pod through the registry and the store."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import ClassVar

from agent.runtimes import RuntimeRegistry
from agent.store import Store
from wri_plugins.api import Capabilities
from wri_plugins.process import ProcessRuntime


class _Quiet(ProcessRuntime):
    name: ClassVar[str] = "quiet"
    capabilities: ClassVar[Capabilities] = Capabilities()


def test_runtime_events_are_recorded_on_the_tasks_pod(tmp_path: Path) -> None:
    store = Store(tmp_path / "agent.db")
    uid = str(uuid.uuid4())
    store.create_pod("edge", "web", uid, {"apiVersion": "v1", "kind": "Pod"})
    registry = RuntimeRegistry(tmp_path, "node", {}, {"quiet": _Quiet}, store=store)
    assert store.pod_by_uid(uid) is not None
    assert store.pod_by_uid("nope") is None
    events = registry.runtimes["quiet"].context.events
    assert events is not None
    events(f"{uid}-app-0", "Normal", "Pulling", 'Pulling image "busybox"')
    events(f"{uuid.uuid4()}-app-0", "Normal", "Pulling", "of a pod that is gone: dropped")
    recorded = store.events("edge", "web")
    assert [(e.type, e.reason, e.message) for e in recorded] == [
        ("Normal", "Pulling", 'Pulling image "busybox"')
    ]
    quiet = RuntimeRegistry(tmp_path / "other", "node", {}, {"quiet": _Quiet})
    events = quiet.runtimes["quiet"].context.events
    assert events is not None
    events(f"{uid}-app-0", "Normal", "Pulled", "no store: dropped")
    store.close()
