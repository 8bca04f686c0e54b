"""Checking a task before its unit starts: which users a manager can run a workload as."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import WorkloadError
from wri_plugins.api import ResourceLimits, TaskSpec
from wri_plugins.systemd.tasks import user_args


def _spec(uid: int | None, gid: int | None) -> TaskSpec:
    return TaskSpec(
        task_id="t-c-0",
        pod_namespace="default",
        pod_name="p",
        pod_uid="t",
        container="c",
        image=None,
        argv=("true",),
        env={},
        working_dir=None,
        limits=ResourceLimits(),
        log_path=Path("/nonexistent/t.log"),
        run_as_user=uid,
        run_as_group=gid,
    )


@pytest.mark.parametrize(
    ("uid", "gid", "args"),
    [
        (None, None, ()),
        (0, None, ("--uid", "0")),
        (1000, None, ("--uid", "1000")),
        (None, 50, ("--gid", "50")),
        (65534, 65533, ("--uid", "65534", "--gid", "65533")),
    ],
)
def test_a_root_manager_switches_to_any_user(
    uid: int | None, gid: int | None, args: tuple[str, ...]
) -> None:
    assert user_args(_spec(uid, gid), 0, 0) == args


@pytest.mark.parametrize(("uid", "gid"), [(None, None), (1000, None), (None, 100), (1000, 100)])
def test_a_user_manager_accepts_its_own_user_without_a_switch(
    uid: int | None, gid: int | None
) -> None:
    assert user_args(_spec(uid, gid), 1000, 100) == ()


@pytest.mark.parametrize(
    ("uid", "gid", "manager_gid", "message"),
    [
        (0, None, 100, "runAsUser 0 / runAsGroup None: the systemd user manager runs units as "
         "uid 1000 gid 100 and cannot switch users"),
        (1000, 0, 100, "runAsUser 1000 / runAsGroup 0: .* uid 1000 gid 100 "),
        (None, 100, None, "runAsUser None / runAsGroup 100: .* as uid 1000 and cannot"),
    ],
)  # fmt: skip
def test_a_user_manager_refuses_other_users(
    uid: int | None, gid: int | None, manager_gid: int | None, message: str
) -> None:
    with pytest.raises(WorkloadError, match=message) as caught:
        user_args(_spec(uid, gid), 1000, manager_gid)
    assert 'runtimes.systemd.bus = "system"' in str(caught.value)
