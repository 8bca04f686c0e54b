"""Unit names, object paths, transient properties and exit statuses of the systemd runtime."""

from __future__ import annotations

import signal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from wri_plugins.api import ExitResult, ResourceLimits
from wri_plugins.systemd import units
from wri_plugins.systemd.units import (
    UINT64_MAX,
    UnitState,
    cpu_quota_per_sec_usec,
    exit_result,
    is_valid_unit_name,
    unit_name,
    unit_path,
    unit_properties,
)

task_ids = st.text(min_size=1, max_size=400)


@given(task_ids)
def test_unit_name_is_always_valid_and_short_enough(task_id: str) -> None:
    name = unit_name(task_id)
    assert is_valid_unit_name(name), name
    assert len(name.encode()) <= 255
    assert name.startswith("florete-")


@given(task_ids, task_ids)
def test_distinct_task_ids_get_distinct_units(a: str, b: str) -> None:
    if a != b:
        assert unit_name(a) != unit_name(b)


@given(st.lists(task_ids, min_size=2, max_size=30, unique=True))
def test_unit_names_of_many_ids_are_unique(ids: list[str]) -> None:
    assert len({unit_name(i) for i in ids}) == len(ids)


@given(st.text(alphabet="ab_", min_size=200, max_size=300))
def test_shortened_names_never_equal_escaped_ones(text: str) -> None:
    """Ids near the length limit: the hashed form is marked with ``_h`` (never escaped output)."""
    long_name, short_name = unit_name(text), unit_name(text[:50])
    assert long_name != short_name
    assert ("_h" in long_name) == (len(long_name) == 255)


def test_typical_task_ids_stay_readable() -> None:
    assert unit_name("3f2a9c1e-web-0") == "florete-3f2a9c1e-web-0.service"
    assert unit_name("a b/ü_") == "florete-a_20b_2f_c3_bc_5f.service"


def test_overlong_task_id_is_hashed_to_the_limit() -> None:
    name = unit_name("x" * 1000)
    assert len(name) == 255
    assert name.startswith("florete-" + "x" * 200)
    assert unit_name("x" * 1000) == name  # stable


def test_empty_task_id_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        unit_name("")


@pytest.mark.parametrize(
    ("name", "valid"),
    [
        ("florete-a.service", True),
        ("florete-a\\x2db.service", True),
        ("florete-a b.service", False),
        ("florete-a@b.service", False),
        (".service", False),
        ("florete-a.socket", False),
        ("f" * 247 + ".service", True),
        ("f" * 248 + ".service", False),
    ],
)
def test_unit_name_validity_rules(name: str, valid: bool) -> None:
    assert is_valid_unit_name(name) is valid


def test_unit_path_encodes_like_sd_bus() -> None:
    assert unit_path("florete-x.service") == (
        "/org/freedesktop/systemd1/unit/florete_2dx_2eservice"
    )
    assert unit_path("a_b:c") == "/org/freedesktop/systemd1/unit/a_5fb_3ac"


@given(task_ids)
def test_unit_paths_are_valid_object_paths(task_id: str) -> None:
    path = unit_path(unit_name(task_id))
    label = path.rsplit("/", 1)[1]
    assert label
    assert all(c.isascii() and (c.isalnum() or c == "_") for c in label)


def _props(limits: ResourceLimits, slice_name: str | None = None) -> dict[str, tuple[str, Any]]:
    props = unit_properties(
        description="d",
        exec_start=("/usr/bin/python3", "-I", "pump.py", "--", "/bin/true", "true"),
        working_dir="/srv",
        pump_log="/state/pump.log",
        limits=limits,
        stop_timeout=30,
        slice_name=slice_name,
    )
    as_dict = {name: (sig, value) for name, sig, value in props}
    assert len(as_dict) == len(props), "a property is set twice"
    return as_dict


def test_properties_without_limits() -> None:
    props = _props(ResourceLimits())
    assert "MemoryMax" not in props
    assert "CPUQuotaPerSecUSec" not in props
    assert "Slice" not in props
    assert props["ExecStart"] == (
        "a(sasb)",
        [["/usr/bin/python3", ["/usr/bin/python3", "-I", "pump.py", "--", "/bin/true", "true"],
          False]],
    )  # fmt: skip
    assert props["Type"] == ("s", "notify")
    assert props["RemainAfterExit"] == ("b", True)
    assert props["KillMode"] == ("s", "mixed")
    assert props["KillSignal"] == ("i", signal.SIGTERM)
    assert props["TimeoutStopUSec"] == ("t", 30_000_000)
    assert props["WorkingDirectory"] == ("s", "/srv")
    assert props["StandardErrorFileToAppend"] == ("s", "/state/pump.log")
    assert "Environment" not in props  # the environment goes through a 0600 file


def test_limits_become_memory_max_and_cpu_quota() -> None:
    props = _props(ResourceLimits(cpu_millis=500, memory_bytes=64 << 20), "florete.slice")
    assert props["MemoryMax"] == ("t", 64 << 20)
    assert props["MemorySwapMax"] == ("t", 0)
    assert props["CPUQuotaPerSecUSec"] == ("t", 500_000)  # half a core: 0.5 s per second
    assert props["Slice"] == ("s", "florete.slice")


@pytest.mark.parametrize(
    ("millis", "usec"),
    [(None, None), (0, None), (-5, None), (1, 10_000), (10, 10_000), (1000, 1_000_000),
     (2500, 2_500_000)],
)  # fmt: skip
def test_cpu_quota_follows_the_kubelet(millis: int | None, usec: int | None) -> None:
    assert cpu_quota_per_sec_usec(millis) == usec


@given(st.integers(min_value=1, max_value=1 << 40))
def test_cpu_quota_is_proportional_above_the_minimum(millis: int) -> None:
    assert cpu_quota_per_sec_usec(millis) == max(millis, 10) * 1000


@pytest.mark.parametrize(
    ("code", "status", "result", "expected"),
    [
        (0, 0, "success", None),
        (units.CLD_EXITED, 0, "success", ExitResult(0, None, False, 1.5)),
        (units.CLD_EXITED, 3, "exit-code", ExitResult(3, None, False, 1.5)),
        (units.CLD_KILLED, 9, "signal", ExitResult(137, 9, False, 1.5)),
        (units.CLD_KILLED, 15, "success", ExitResult(143, 15, False, 1.5)),
        (units.CLD_DUMPED, 11, "core-dump", ExitResult(139, 11, False, 1.5)),
        (units.CLD_KILLED, 9, "oom-kill", ExitResult(137, 9, True, 1.5)),
    ],
)
def test_exit_status_mapping(
    code: int, status: int, result: str, expected: ExitResult | None
) -> None:
    assert exit_result(code, status, result, 1_500_000) == expected


def test_unit_state_from_properties() -> None:
    state = UnitState.from_properties(
        {
            "LoadState": "loaded",
            "Job": (0, "/"),
            "ActiveState": "active",
            "ActiveEnterTimestamp": 5,
            "MainPID": 42,
            "ExecMainCode": 0,
            "StatusText": "workload pid 43",
            "ExecMainStartTimestamp": 2_000_000,
            "MemoryCurrent": UINT64_MAX,
            "CPUUsageNSec": 7,
        }
    )
    assert state.running
    assert state.settled
    assert not state.gone
    assert state.exit is None
    assert state.workload_pid == 43
    assert state.started_at == 2.0
    assert (state.memory_bytes, state.cpu_nsec, state.io_read_bytes) == (None, 7, None)


def test_unit_state_of_an_ended_and_a_missing_unit() -> None:
    ended = UnitState.from_properties(
        {"LoadState": "loaded", "ActiveState": "failed", "ExecMainCode": 2, "ExecMainStatus": 9}
    )
    assert not ended.running
    assert ended.exit == ExitResult(137, 9)
    assert not ended.never_ran
    gone = UnitState.from_properties({"LoadState": "not-found"})
    assert gone.gone
    assert not gone.running
    assert gone.exit is None
    pending = UnitState.from_properties({"LoadState": "loaded", "Job": (7, "/job/7")})
    assert not pending.settled
    assert UnitState.from_properties({"StatusText": "starting"}).workload_pid is None
