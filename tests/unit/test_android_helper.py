"""The phone's helper script run directly with the local POSIX sh (no SSH): the watcher, its pid
files, the CRI log files and their rotation, and the pid-reuse guard."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from wri_plugins.android import commands
from wri_plugins.android.logs import LogCursor

HELPER = Path(commands.__file__).with_name("helper.sh")


class Phone:
    """The helper on a base dir of a test."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.tasks = base / "tasks"

    def run(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            ["sh", str(HELPER), str(self.base), *args], input=stdin, capture_output=True,
            timeout=20,
        )  # fmt: skip

    def start(
        self, task: str, *argv: str, env: dict[str, str] | None = None, wd: str = "",
        max_bytes: int = 1 << 20, files: int = 2,
    ) -> commands.Started:  # fmt: skip
        done = self.run(
            "start", task, wd, str(max_bytes), str(files), *argv,
            stdin=commands.env_file(env or {}),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        return commands.parse_started(done.stdout)

    def state(self, task: str) -> commands.RemoteState:
        done = self.run("status", task)
        assert done.returncode == 0, done.stderr
        return commands.parse_states(done.stdout, [task])[task]

    def wait(self, task: str, timeout: float = 10.0) -> commands.RemoteState:
        deadline = time.monotonic() + timeout
        while not (state := self.state(task)).ended:
            assert time.monotonic() < deadline, f"task {task} still runs"
            time.sleep(0.05)
        return state

    def logs(self, task: str) -> list[tuple[str, bytes]]:
        done = self.run("fetch", *LogCursor().fetch_args(task, None))
        assert done.returncode == 0, done.stderr
        return [(r.stream, r.text) for r in LogCursor().feed(done.stdout).records]


def _gone(pid: int, timeout: float = 5.0) -> bool:
    """True once ``pid`` has ended (a zombie counts: init reaps it when it gets to it)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.02)
    return False


@pytest.fixture
def phone(tmp_path: Path) -> Iterator[Phone]:
    phone = Phone(tmp_path / "base")
    yield phone
    for task in phone.tasks.glob("*"):
        phone.run("destroy", task.name)


def test_task_runs_detached_and_records_its_exit(phone: Phone, tmp_path: Path) -> None:
    started = phone.start(
        "t1", "sh", "-c", 'echo "out $FOO"; echo err >&2; pwd; sleep 0.5; exit 3',
        env={"FOO": "a b"}, wd=str(tmp_path),
    )  # fmt: skip
    watcher = psutil.Process(started.pid)
    assert os.getsid(started.pid) == started.pid  # a session of its own
    assert watcher.ppid() != os.getpid()
    state = phone.wait("t1")
    assert state.state == "exited"
    assert state.exit is not None
    assert (state.exit.exit_code, state.exit.signal) == (3, None)
    assert state.pid == started.wpid
    assert sorted(phone.logs("t1")) == [
        ("stderr", b"err"),
        ("stdout", str(tmp_path).encode()),
        ("stdout", b"out a b"),
    ]
    for name in ("env", "stdout.0", "exit"):  # the helper's files are private
        assert (phone.tasks / "t1" / name).stat().st_mode & 0o077 == 0
    assert (phone.tasks / "t1").stat().st_mode & 0o077 == 0


def test_the_workload_keeps_the_login_umask(phone: Phone, tmp_path: Path) -> None:
    phone.start("t", "sh", "-c", "umask; touch made", wd=str(tmp_path))
    phone.wait("t")
    mine = os.umask(0o22)
    os.umask(mine)
    assert phone.logs("t") == [("stdout", f"{mine:04o}".encode())]
    assert (tmp_path / "made").stat().st_mode & 0o777 == 0o666 & ~mine


def test_start_refusals(phone: Phone, tmp_path: Path) -> None:
    done = phone.run("start", "t", "", "100", "1", "florete-no-such-command", stdin=b"")
    assert (done.returncode, done.stderr) == (
        commands.NOT_FOUND,
        b"executable florete-no-such-command not found on the phone\n",
    )
    done = phone.run("start", "t", str(tmp_path / "nope"), "100", "1", "true", stdin=b"")
    assert done.returncode == commands.BAD_WORKDIR
    assert b"nope does not exist" in done.stderr
    assert not (phone.tasks / "t").exists()  # nothing left behind
    phone.start("t", "true")
    done = phone.run("start", "t", "", "100", "1", "true", stdin=b"")
    assert done.returncode == commands.EXISTS
    # builtins are not executables; a PATH from the environment counts
    done = phone.run("start", "u", "", "100", "1", "cd", stdin=b"")
    assert done.returncode == commands.NOT_FOUND
    (tmp_path / "bin").mkdir()
    tool = tmp_path / "bin" / "mytool"
    tool.write_text("#!/bin/sh\necho mine\n")
    tool.chmod(0o755)
    phone.start("v", "mytool", env={"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin"})
    phone.wait("v")
    assert phone.logs("v") == [("stdout", b"mine")]


def test_logs_rotate_per_stream(phone: Phone) -> None:
    script = 'i=0; while [ $i -lt 30 ]; do echo "line $i"; i=$((i+1)); done'
    phone.start("t", "sh", "-c", script, max_bytes=300, files=1)
    phone.wait("t")
    files = sorted((phone.tasks / "t").glob("stdout.*"), key=lambda p: int(p.suffix[1:]))
    assert 1 <= len(files) <= 2  # the live file (once written to) and one rotated
    assert int(files[0].suffix[1:]) > 0  # the oldest were removed
    texts = [text for _, text in phone.logs("t")]
    assert texts == [f"line {i}".encode() for i in range(30 - len(texts), 30)]
    # a reader that was at the start of file 0 (now removed) goes on with the oldest left
    cursor = LogCursor()
    done = phone.run("fetch", *cursor.fetch_args("t", 2))
    assert [r.text for r in cursor.feed(done.stdout).records] == [b"line 28", b"line 29"]
    end = cursor.positions["stdout"]
    assert end == (int(files[-1].suffix[1:]), files[-1].stat().st_size)
    again = phone.run("fetch", *cursor.fetch_args("t", None))
    assert cursor.feed(again.stdout).records == []


def test_last_line_without_newline_is_partial(phone: Phone) -> None:
    phone.start("t", "printf", "one\\ntwo")
    phone.wait("t")
    done = phone.run("fetch", *LogCursor().fetch_args("t", None))
    records = LogCursor().feed(done.stdout).records
    assert [(r.text, r.partial) for r in records] == [(b"one", False), (b"two", True)]


def test_the_workload_group_dies_with_its_main_process(phone: Phone, tmp_path: Path) -> None:
    script = "sleep 100 & echo $! > child; exit 0"
    started = phone.start("t", "sh", "-c", script, wd=str(tmp_path))
    state = phone.wait("t")
    assert state.exit is not None
    assert state.exit.exit_code == 0
    child = int((tmp_path / "child").read_text())
    assert _gone(child)  # SIGKILLed by the watcher: it would have kept the log open
    assert _gone(started.wpid)


def test_signal_stats_and_destroy(phone: Phone) -> None:
    started = phone.start("t", "sh", "-c", 'trap "exit 7" TERM; while :; do sleep 0.05; done')
    assert phone.state("t").state == "running"
    stats = phone.run("stats", "t")
    assert stats.returncode == 0, stats.stderr
    assert commands.parse_stats(stats.stdout).rss_bytes > 0
    done = phone.run("signal", "t", "TERM")
    assert done.returncode == 0
    state = phone.wait("t")
    assert state.exit is not None
    assert state.exit.exit_code == 7
    assert phone.run("stats", "t").returncode == commands.NOT_RUNNING
    assert _gone(started.pid)
    assert phone.run("destroy", "t").returncode == 0
    assert phone.state("t").state == "gone"
    assert phone.run("signal", "t", "TERM").returncode == commands.NO_TASK


def test_destroy_kills_a_running_task(phone: Phone) -> None:
    started = phone.start("t", "sleep", "100")
    assert phone.run("destroy", "t").returncode == 0
    assert _gone(started.wpid)
    assert _gone(started.pid)
    assert not (phone.tasks / "t").exists()


def test_a_reused_pid_or_another_boot_is_not_the_task(phone: Phone) -> None:
    """The pid files name a live process, but with another start time or boot: lost."""
    phone.start("t", "true")
    phone.wait("t")
    task = phone.tasks / "t"
    (task / "exit").unlink()  # as if the watcher had been killed before it wrote the exit
    assert phone.state("t").state == "lost"
    me = psutil.Process(os.getpid())
    ticks = (Path(f"/proc/{me.pid}/stat").read_text().rsplit(") ", 1)[1]).split()[19]
    boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    (task / "pid").write_text(f"{me.pid} {int(ticks) + 1} {boot}\n")
    assert phone.state("t").state == "lost"  # the pid lives on, but it is another process
    (task / "pid").write_text(f"{me.pid} {ticks} {boot}\n")
    assert phone.state("t").state == "running"  # that very process: the task's watcher
    (task / "pid").write_text(f"{me.pid} {ticks} another-boot\n")
    assert phone.state("t").state == "lost"
    (task / "pid").unlink()


def test_exec_prints_its_pid_and_runs_in_the_task(phone: Phone, tmp_path: Path) -> None:
    phone.start("t", "sleep", "100", env={"FOO": "bar"}, wd=str(tmp_path))
    done = phone.run("exec", "t", "sh", "-c", 'echo "$FOO $(pwd)"; echo e >&2; exit 5')
    assert done.returncode == 5
    first, rest = done.stdout.split(b"\n", 1)
    assert first.startswith(b"pid ")
    assert rest == f"bar {tmp_path}\ne\n".encode()
    phone.run("signal", "t", "KILL")
    phone.wait("t")
    assert phone.run("exec", "t", "true").returncode == commands.NOT_RUNNING


def test_kill_ends_an_exec_group(phone: Phone) -> None:
    for bad in ("0", "-1", "x", ""):
        assert phone.run("kill", bad).returncode == 2
    sleeper = subprocess.Popen(["setsid", "sleep", "100"])
    try:
        time.sleep(0.1)
        assert phone.run("kill", str(sleeper.pid)).returncode == 0
        assert sleeper.wait(10) == -signal.SIGKILL
    finally:
        sleeper.kill()
        sleeper.wait()


def test_probe_reports_the_tools(phone: Phone) -> None:
    facts = commands.parse_probe(phone.run("probe").stdout)
    assert facts["missing"] == ""
    assert facts["nanoseconds"] == "yes"
    assert facts["uid"] == str(os.getuid())
    assert facts["am"] == ("yes" if shutil.which("am") else "no")
    assert int(facts["cpus"]) >= 1


def test_the_helper_is_plain_posix_sh() -> None:
    assert subprocess.run(["sh", "-n", str(HELPER)], check=False).returncode == 0
    if shutil.which("shellcheck") is None:
        pytest.skip("shellcheck is not installed")
    lint = subprocess.run(
        ["shellcheck", "-s", "sh", "-S", "warning", str(HELPER)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout
