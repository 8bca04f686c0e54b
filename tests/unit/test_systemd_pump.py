"""The systemd runtime's log pump and exec server, run as plain processes (no systemd)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.errors import WorkloadError
from wri_plugins.api import ExecStreams
from wri_plugins.process import crilog
from wri_plugins.process.state import encode_env
from wri_plugins.systemd import logpump
from wri_plugins.systemd.execclient import NotStartedError, run_attached, run_exec

RUN_PUMP = Path(logpump.__file__).with_name("run_pump.py")
ENV = {"PATH": "/usr/bin:/bin", "FOO": "bar baz"}
SYSTEM_PYTHON = Path("/usr/bin/python3")  # any user can run it


def _command(tmp_path: Path, *argv: str, exec_socket: str = "", unit: str = "") -> list[str]:
    env_file = tmp_path / "env"
    env_file.write_bytes(encode_env(ENV))
    options = ["--log", str(tmp_path / "cri.log"), "--log-max-bytes", "1000000"]
    options += ["--log-max-files", "1", "--env-file", str(env_file)]
    if exec_socket:
        options += ["--exec-socket", exec_socket]
    if unit:
        options += ["--unit", unit]
    return [sys.executable, "-I", "-S", str(RUN_PUMP), *options, "--", *argv]


def _run(tmp_path: Path, *argv: str, **kw: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(_command(tmp_path, *argv, **kw), capture_output=True, timeout=20)


def _records(tmp_path: Path) -> list[tuple[str, bool, bytes]]:
    lines = (tmp_path / "cri.log").read_bytes().splitlines()
    return [crilog.parse_record(line)[1:] for line in lines]


def test_output_becomes_cri_records(tmp_path: Path) -> None:
    done = _run(tmp_path, "/bin/sh", "sh", "-c", "echo out; echo err >&2; printf partial")
    assert done.returncode == 0, done.stderr
    assert _records(tmp_path) == [
        ("stdout", False, b"out"),
        ("stderr", False, b"err"),
        ("stdout", True, b"partial"),
    ]


def test_exit_code_and_signal_pass_through(tmp_path: Path) -> None:
    assert _run(tmp_path, "/bin/sh", "sh", "-c", "exit 3").returncode == 3
    killed = _run(tmp_path, "/bin/sh", "sh", "-c", "kill -USR1 $$")
    assert killed.returncode == -signal.SIGUSR1  # the pump died of the same signal


def test_environment_is_exactly_the_task_environment(tmp_path: Path) -> None:
    assert _run(tmp_path, "/usr/bin/env", "env").returncode == 0
    texts = sorted(text for _, _, text in _records(tmp_path))
    assert texts == [b"FOO=bar baz", b"PATH=/usr/bin:/bin"]


def test_exec_failure_is_reported_before_ready(tmp_path: Path) -> None:
    missing = _run(tmp_path, str(tmp_path / "nothing"), "nothing")
    assert missing.returncode == 127
    assert b"cannot execute" in missing.stderr
    assert b"No such file" in missing.stderr
    plain = tmp_path / "plain"
    plain.write_text("not a program")
    assert _run(tmp_path, str(plain), "plain").returncode == 126


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_workload_switches_to_uid_and_gid(tmp_path: Path) -> None:
    argv = ("/bin/sh", "sh", "-c", "id -u; id -g; id -G")
    command = _command(tmp_path, *argv)
    command[command.index("--") : command.index("--")] = ["--uid", "65534", "--gid", "65533"]
    done = subprocess.run(command, capture_output=True, timeout=20)
    assert done.returncode == 0, done.stderr
    assert [text for _, _, text in _records(tmp_path)] == [b"65534", b"65533", b"65533"]


@pytest.mark.skipif(
    os.geteuid() != 0 or not SYSTEM_PYTHON.exists(),
    reason="needs root (to start the pump as another user) and /usr/bin/python3",
)
def test_a_refused_user_switch_fails_before_ready() -> None:
    """An unprivileged pump cannot switch users: it says so and exits 126 before READY."""
    work = Path(tempfile.mkdtemp(prefix="florete-pump-"))  # tmp_path is root's 0700 tree
    try:
        os.chown(work, 65534, 65534)
        command = _command(work, "/bin/true", "true")
        command[command.index("--") : command.index("--")] = ["--uid", "0"]
        os.chown(work / "env", 65534, 65534)
        command[0] = str(SYSTEM_PYTHON)  # the test's interpreter may be under /root
        unprivileged = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
        done = subprocess.run([*unprivileged, *command], capture_output=True, timeout=20)
    finally:
        shutil.rmtree(work)
    assert done.returncode == 126
    assert done.stderr.decode().strip() == "pump: cannot switch to uid 0: Operation not permitted"


def test_unwritable_log_fails_the_start(tmp_path: Path) -> None:
    command = _command(tmp_path, "/bin/true", "true")
    command[command.index("--log") + 1] = str(tmp_path / "no" / "such" / "dir" / "x.log")
    assert subprocess.run(command, capture_output=True, timeout=20).returncode == 1


def test_ready_is_notified_with_the_workload_pid(tmp_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(10)
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")}
        command = _command(tmp_path, "/bin/sh", "sh", "-c", "echo $$; exit 0")
        proc = subprocess.Popen(command, env=env)
        try:
            message = notify.recv(256)
        finally:
            assert proc.wait(20) == 0
    lines = message.split(b"\n")
    assert lines[0] == b"READY=1"
    assert lines[1] == b"STATUS=" + logpump.STATUS_PID_PREFIX.encode() + _records(tmp_path)[0][2]


def test_forwarded_sigterm_reaches_the_workload(tmp_path: Path) -> None:
    script = 'trap "echo got; exit 0" TERM; echo ready; while :; do sleep 0.05; done'
    proc = subprocess.Popen(_command(tmp_path, "/bin/sh", "sh", "-c", script))
    try:
        deadline = time.monotonic() + 10
        log = tmp_path / "cri.log"
        while not log.exists() or b"ready" not in log.read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        proc.kill()
        proc.wait()
    texts = [text for _, _, text in _records(tmp_path)]
    assert texts[0] == b"ready"
    assert b"got" in texts  # the group got it: sh may also report its `sleep` as Terminated


def test_leftovers_of_the_process_group_are_killed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    done = _run(tmp_path, "/bin/sh", "sh", "-c", f"sleep 100 & echo $! > {pid_file}")
    assert done.returncode == 0
    _wait_gone(int(pid_file.read_text()), 5)


def _wait_for_text(path: Path, seconds: float) -> str:
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} not written"
        time.sleep(0.02)
    return path.read_text()


def _wait_gone(pid: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while Path(f"/proc/{pid}").exists() and _state(pid) != "Z":
        assert time.monotonic() < deadline, f"process {pid} is still there"
        time.sleep(0.02)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_cgroup_is_emptied_only_inside_its_own_unit(tmp_path: Path) -> None:
    """Outside a unit of that name the pump kills only its workload's process group: its cgroup
    may be shared with anything (the root cgroup holds every process of the host)."""
    assert logpump._unit_procs_file("florete-not-mine.service") is None
    bystander = subprocess.Popen(["sleep", "30"])
    try:
        done = _run(tmp_path, "/bin/true", "true", unit="florete-not-mine.service")
        assert done.returncode == 0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


@pytest.fixture
async def serving_pump(tmp_path: Path) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    """A pump running a long workload with an exec server; yields its socket name."""
    name = f"florete-test-exec-{os.getpid()}-{id(tmp_path)}"
    script = "echo ready; while :; do sleep 0.05; done"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.setblocking(False)
        proc = await asyncio.create_subprocess_exec(
            *_command(tmp_path, "/bin/sh", "sh", "-c", script, exec_socket=name),
            env={**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify")},
            cwd=tmp_path,
        )
        try:
            async with asyncio.timeout(10):
                await asyncio.get_running_loop().sock_recv(notify, 256)  # READY=1
            yield name, proc
        finally:
            # SIGTERM, not SIGKILL: the pump forwards it to the workload's process group, which
            # a killed pump would leave running
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def test_exec_runs_in_the_task_environment(
    serving_pump: tuple[str, asyncio.subprocess.Process], tmp_path: Path
) -> None:
    name, _ = serving_pump
    script = 'echo "out $FOO"; pwd; echo err >&2; exit 4'
    result = await asyncio.wait_for(run_exec(name, ("sh", "-c", script), 10240), 10)
    assert result.exit_code == 4
    assert result.output.splitlines() == [b"out bar baz", str(tmp_path).encode(), b"err"]
    missing = await asyncio.wait_for(run_exec(name, ("florete-no-such-42",), 10240), 10)
    assert missing.exit_code == 127
    assert b"florete-no-such-42" in missing.output
    chatty = "i=0; while [ $i -lt 3000 ]; do echo 0123456789; i=$((i+1)); done"
    big = await asyncio.wait_for(run_exec(name, ("sh", "-c", chatty), 100), 10)
    assert (big.exit_code, big.output) == (0, b"0123456789\n" * 9 + b"0")


async def test_cancelled_exec_kills_the_command(
    serving_pump: tuple[str, asyncio.subprocess.Process], tmp_path: Path
) -> None:
    name, _ = serving_pump
    pid_file = tmp_path / "exec.pid"
    command = ("sh", "-c", f"echo $$ > {pid_file}; exec sleep 100")
    task = asyncio.create_task(run_exec(name, command, 100))
    pid = int(await asyncio.to_thread(_wait_for_text, pid_file, 10))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(_wait_gone, pid, 5)


async def test_exec_after_the_task_ended_fails(
    serving_pump: tuple[str, asyncio.subprocess.Process],
) -> None:
    name, proc = serving_pump
    proc.terminate()  # forwarded to the workload, which dies of it; then the pump ends
    assert await asyncio.wait_for(proc.wait(), 10) == -signal.SIGTERM
    with pytest.raises(WorkloadError, match="no exec requests"):
        await run_exec(name, ("true",), 100)
    with pytest.raises(WorkloadError, match="non-empty argv"):
        await run_exec(name, (), 100)


async def test_attached_exec_gets_stdin_and_stderr_apart(
    serving_pump: tuple[str, asyncio.subprocess.Process],
) -> None:
    name, _ = serving_pump
    output: list[tuple[str, bytes]] = []

    async def write(stream: str, data: bytes) -> None:
        output.append((stream, data))

    streams = ExecStreams(write, tty=False, stdin=True)
    await streams.feed_stdin(b"in\n")
    await streams.feed_stdin(b"")
    script = 'read line; echo "got $line $FOO"; echo err >&2; exit 6'
    code = await asyncio.wait_for(run_attached(name, ("sh", "-c", script), streams), 10)
    assert code == 6
    assert b"".join(d for s, d in output if s == "stdout") == b"got in bar baz\n"
    assert b"".join(d for s, d in output if s == "stderr") == b"err\n"


async def test_attached_exec_against_a_pump_that_predates_it() -> None:
    """A pump of an older agent takes requests with one descriptor only: it closes the
    connection of one with three, having run nothing."""
    name = f"florete-test-old-pump-{os.getpid()}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind("\0" + name)
    listener.listen(1)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()

    async def old_pump() -> int:
        conn, _ = await loop.sock_accept(listener)
        conn.setblocking(True)
        with conn:
            _, fds, _, _ = await asyncio.to_thread(socket.recv_fds, conn, 65536, 3)
            for fd in fds:
                os.close(fd)
            return len(fds)

    async def write(stream: str, data: bytes) -> None:
        raise AssertionError("no output expected")

    with listener:
        serving = asyncio.create_task(old_pump())
        streams = ExecStreams(write, tty=True, stdin=True)
        with pytest.raises(NotStartedError, match="restart the pod"):
            await asyncio.wait_for(run_attached(name, ("true",), streams), 10)
        assert await serving == 3
