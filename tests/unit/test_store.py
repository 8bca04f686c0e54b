"""The SQLite store: pods, task records, events; durable across reopen."""

import stat
from pathlib import Path

import pytest

from agent.errors import AlreadyExistsError, NotFoundError
from agent.store import MAX_EVENTS_PER_POD, Store

MANIFEST = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a"}, "spec": {}}


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "state" / "agent.db")


def test_database_file_is_private(store: Store) -> None:
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_create_get_list_remove(store: Store) -> None:
    created = store.create_pod("default", "a", "uid-a", MANIFEST)
    assert created.uid == "uid-a"
    assert store.get_pod("default", "a").manifest == MANIFEST
    store.create_pod("other", "b", "uid-b", MANIFEST)
    assert [p.name for p in store.list_pods()] == ["a", "b"]
    assert [p.name for p in store.list_pods("other")] == ["b"]
    with pytest.raises(AlreadyExistsError, match='pods "a" already exists'):
        store.create_pod("default", "a", "uid-c", MANIFEST)
    store.remove_pod("uid-a")
    with pytest.raises(NotFoundError, match='pods "a" not found'):
        store.get_pod("default", "a")


def test_resource_version_grows_with_every_change(store: Store) -> None:
    first = store.create_pod("default", "a", "uid-a", MANIFEST).resource_version
    store.save_status("uid-a", {"phase": "Running"})
    second = store.get_pod("default", "a")
    assert second.resource_version > first
    assert second.status == {"phase": "Running"}


def test_deletion_keeps_the_earliest_request_and_shortest_grace(store: Store) -> None:
    store.create_pod("default", "a", "uid-a", MANIFEST)
    first = store.mark_deleted("default", "a", 30.0)
    second = store.mark_deleted("default", "a", 5.0)
    assert second.deletion_at == first.deletion_at
    assert second.deletion_grace == 5.0
    assert store.mark_deleted("default", "a", 60.0).deletion_grace == 5.0


def test_task_records_and_pruning(store: Store) -> None:
    for attempt in range(4):
        store.record_task_intent("u", "c", attempt, f"t{attempt}", "process")
    store.record_task_handle("u", "c", 3, '{"x": 1}')
    store.forget_tasks_before("u", "c", 3)
    tasks = store.tasks("u", "c")
    assert [(t.attempt, t.handle) for t in tasks] == [(2, None), (3, '{"x": 1}')]


def test_repeated_events_are_folded_and_bounded(store: Store) -> None:
    for _ in range(3):
        store.record_event("default", "a", "u", "Warning", "BackOff", "back-off")
    events = store.events(pod="a")
    assert len(events) == 1
    assert events[0].count == 3
    for i in range(MAX_EVENTS_PER_POD + 10):
        store.record_event("default", "a", "u", "Normal", "Started", f"n{i}")
    events = store.events("default", "a")
    assert len(events) == MAX_EVENTS_PER_POD
    assert events[-1].message == f"n{MAX_EVENTS_PER_POD + 9}"


def test_everything_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    first = Store(path)
    first.create_pod("default", "a", "uid-a", MANIFEST)
    first.record_task_intent("uid-a", "c", 0, "t0", "process")
    first.close()
    second = Store(path)
    assert second.get_pod("default", "a").uid == "uid-a"
    assert second.tasks("uid-a")[0].task_id == "t0"
