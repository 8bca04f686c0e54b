"""Command lines for the phone's helper and the parsers of its answers; quoting is checked by
running the command lines through a real POSIX sh."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from agent.errors import WorkloadError
from wri_plugins.android import commands
from wri_plugins.api import ResourceLimits, TaskSpec

NASTY = ["plain", "with space", "it's", '"double"', "$HOME", "`id`", "a\nb", "*", "-n", ""]


def _spec(**changes: object) -> TaskSpec:
    fields: dict[str, object] = {
        "task_id": "uid-c-0",
        "pod_namespace": "default",
        "pod_name": "p",
        "pod_uid": "uid",
        "container": "c",
        "image": None,
        "argv": ("sh", "-c", "true"),
        "env": {},
        "working_dir": None,
        "limits": ResourceLimits(),
        "log_path": Path("/tmp/x.log"),
    }
    fields.update(changes)
    return TaskSpec(**fields)  # type: ignore[arg-type]


def _sh(command: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["sh", "-c", command], input=stdin, capture_output=True, timeout=10)


def test_helper_command_passes_every_argument_through_the_shell(tmp_path: Path) -> None:
    helper = tmp_path / "bin" / commands.HELPER_NAME
    helper.parent.mkdir()
    helper.write_text('shift 2; for a in "$@"; do printf \'%s\\0\' "$a"; done\n')
    line = commands.helper_command(commands.base_expr(str(tmp_path)), "status", *NASTY)
    assert line.startswith("exec sh ")
    out = _sh(line)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(b"\0")[:-1] == [a.encode() for a in NASTY]


def test_default_base_is_expanded_by_the_phone_shell() -> None:
    assert commands.base_expr("") == '"$HOME"/.florete-agent'
    assert commands.base_expr("/data/x y") == "'/data/x y'"


def test_install_command_writes_the_helper_atomically(tmp_path: Path) -> None:
    base = commands.base_expr(str(tmp_path / "dir with space"))
    for _ in range(2):  # installing again over an existing helper is fine
        out = _sh(commands.install_command(base), commands.HELPER_TEXT)
        assert out.returncode == 0, out.stderr
    installed = tmp_path / "dir with space" / "bin" / commands.HELPER_NAME
    assert installed.read_bytes() == commands.HELPER_TEXT
    assert installed.stat().st_mode & 0o077 == 0
    assert (tmp_path / "dir with space" / "tasks").is_dir()
    assert sorted(p.name for p in installed.parent.iterdir()) == [commands.HELPER_NAME]


def test_helper_name_follows_its_text() -> None:
    assert commands.HELPER_NAME.startswith("helper-")
    assert commands.HELPER_NAME.endswith(".sh")
    assert len(commands.HELPER_NAME) == len("helper-.sh") + 16


def test_env_file_round_trips_through_sh(tmp_path: Path) -> None:
    env = {f"V{i}": value for i, value in enumerate(NASTY)}
    path = tmp_path / "env"
    path.write_bytes(commands.env_file(env))
    script = f". {path}; " + "; ".join(f"printf '%s\\0' \"$V{i}\"" for i in range(len(NASTY)))
    out = _sh(script)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(b"\0")[:-1] == [v.encode() for v in NASTY]


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A.B", "", "A B", "A=B"])
def test_env_names_a_shell_cannot_set_are_refused(name: str) -> None:
    with pytest.raises(WorkloadError, match="POSIX shell"):
        commands.env_file({name: "x"})


def test_env_value_with_nul_is_refused() -> None:
    with pytest.raises(WorkloadError, match="NUL"):
        commands.env_file({"A": "x\0y"})


def test_start_args() -> None:
    args = commands.start_args(_spec(argv=("echo", "a b")), "/w", 1024, 3)
    assert args == ["uid-c-0", "/w", "1024", "3", "echo", "a b"]


@pytest.mark.parametrize(
    ("changes", "working_dir", "message"),
    [
        ({"argv": ()}, "", "argv is empty"),
        ({"image": "busybox"}, "", "not images"),
        ({"argv": ("a\0b",)}, "", "NUL"),
        ({}, "/a\nb", "newline"),
        ({"task_id": "../x"}, "", "cannot name a task"),
        ({"task_id": "a/b"}, "", "cannot name a task"),
        ({"task_id": ""}, "", "cannot name a task"),
        ({"task_id": "a b"}, "", "cannot name a task"),
    ],
)
def test_start_args_refuse_what_the_phone_cannot_take(
    changes: dict[str, object], working_dir: str, message: str
) -> None:
    with pytest.raises(WorkloadError, match=message):
        commands.start_args(_spec(**changes), working_dir, 1, 1)


def test_signal_names() -> None:
    assert commands.signal_name(signal.SIGTERM) == "TERM"
    assert commands.signal_name(signal.SIGKILL) == "KILL"
    assert commands.signal_number("TERM") == signal.SIGTERM
    assert commands.signal_number("NOPE") == 0
    with pytest.raises(WorkloadError, match="not a signal"):
        commands.signal_name(9999)


@pytest.mark.parametrize(
    ("code", "signal_"), [(0, None), (3, None), (128, None), (137, 9), (143, 15), (255, None)]
)
def test_exit_result_reads_a_shell_status(code: int, signal_: int | None) -> None:
    result = commands.exit_result(code, 12.5)
    assert (result.exit_code, result.signal, result.finished_at) == (code, signal_, 12.5)


def test_parse_state_lines() -> None:
    assert commands.parse_state("t gone") == commands.RemoteState("t", "gone")
    running = commands.parse_state("t running 42 1700000000.5")
    assert (running.state, running.pid, running.started_at, running.ended) == (
        "running",
        42,
        1700000000.5,
        False,
    )
    lost = commands.parse_state("t lost 0 0")
    assert (lost.state, lost.pid, lost.ended) == ("lost", None, True)
    exited = commands.parse_state("t exited 143 1700000001.25 42 1700000000.5")
    assert exited.exit == commands.exit_result(143, 1700000001.25)
    assert (exited.pid, exited.started_at) == (42, 1700000000.5)


@pytest.mark.parametrize(
    "line", ["", "t", "t running", "t exited 1 2", "t dancing 1 2", "t running x 1", "t gone 1"]
)
def test_parse_state_refuses_garbage(line: str) -> None:
    with pytest.raises(ValueError, match=r"task state|invalid"):
        commands.parse_state(line)


def test_parse_states_wants_every_task() -> None:
    states = commands.parse_states(b"a gone\nb running 1 2\n", ["a", "b"])
    assert set(states) == {"a", "b"}
    with pytest.raises(ValueError, match="no state for task c"):
        commands.parse_states(b"a gone\n", ["a", "c"])


def test_parse_started() -> None:
    started = commands.parse_started(b"10 500 boot-id 11 501 1700000000.125\n")
    assert started == commands.Started(10, 500, "boot-id", 11, 501, 1700000000.125)
    with pytest.raises(ValueError, match="start"):
        commands.parse_started(b"10 500\n")


def test_parse_probe_keeps_values_whole() -> None:
    facts = commands.parse_probe(b"model=Pixel 7 Pro\nmissing=\nno equals sign\nx=a=b\n")
    assert facts == {"model": "Pixel 7 Pro", "missing": "", "x": "a=b"}


def test_parse_stats_sums_the_process_group() -> None:
    stats = commands.parse_stats(b"100 4096\n1 150 50 10 7 8\n2 50 50 5 1 2\n")
    assert (stats.cpu_seconds, stats.rss_bytes) == (3.0, 15 * 4096)
    assert (stats.read_bytes, stats.write_bytes) == (8, 10)
    with pytest.raises(ValueError, match="stats"):
        commands.parse_stats(b"100\n")
    with pytest.raises(ValueError, match="stats"):
        commands.parse_stats(b"100 4096\n1 2 3\n")


def test_go_arch() -> None:
    assert [commands.go_arch(m) for m in ("aarch64", "armv7l", "armv8l", "x86_64", "riscv64")] == [
        "arm64",
        "arm",
        "arm",
        "amd64",
        "riscv64",
    ]
