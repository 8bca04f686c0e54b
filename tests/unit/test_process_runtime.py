"""Process-runtime behaviour beyond the WRI conformance suite, against real processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from agent.errors import ConfigError, WorkloadError
from wri_plugins.api import ResourceLimits, RuntimeContext, TaskHandle, TaskSpec
from wri_plugins.process import ProcessRuntime, launch
from wri_plugins.process.cgroups import Cgroups
from wri_plugins.process.procs import wait_for_exit
from wri_plugins.process.runtime import _user_args
from wri_plugins.process.state import read_exit_record

PATH = "/usr/local/bin:/usr/bin:/bin"
OPTIONS = {"cgroup_parent": "florete-test"}


@pytest.fixture
async def cleanup(tmp_path: Path) -> AsyncIterator[None]:
    """Destroy (force) every task left in ``tmp_path/state``, also when the case failed."""
    yield
    runtime = ProcessRuntime(RuntimeContext(tmp_path / "state", "test", OPTIONS))
    for task in (tmp_path / "state" / "tasks").glob("*"):
        state = json.loads((task / "task.json").read_text())["state"]
        await runtime.destroy(TaskHandle("process", task.name, state), force=True)


@pytest.fixture
def rt(tmp_path: Path, cleanup: None) -> ProcessRuntime:
    return ProcessRuntime(RuntimeContext(tmp_path / "state", "test", OPTIONS))


def spec(tmp_path: Path, *argv: str, **changes: object) -> TaskSpec:
    task_id = f"t{uuid.uuid4().hex[:12]}"
    fields: dict[str, object] = {
        "task_id": task_id,
        "pod_namespace": "default",
        "pod_name": "p",
        "pod_uid": "u",
        "container": "c",
        "image": None,
        "argv": argv,
        "env": {"PATH": PATH},
        "working_dir": None,
        "limits": ResourceLimits(),
        "log_path": tmp_path / "logs" / f"{task_id}.log",
    }
    fields.update(changes)
    return TaskSpec(**fields)  # type: ignore[arg-type]


def gone(pid: int) -> bool:
    """The process has exited (orphans are reaped by init, which may take a moment here)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def texts(rt: ProcessRuntime, handle: TaskHandle) -> list[bytes]:
    return [r.text async for r in rt.logs(handle)]


async def test_environment_is_exactly_the_specs(rt: ProcessRuntime, tmp_path: Path) -> None:
    env = {"PATH": PATH, "A": "1", "EMPTY": "", "SPACED": "x y", "UNI": "\u00e9"}
    handle = await rt.start(spec(tmp_path, "env", env=env))
    await rt.wait(handle)
    assert sorted(await texts(rt, handle)) == sorted(f"{k}={v}".encode() for k, v in env.items())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"argv": ()}, "process runtime needs a command"),
        ({"working_dir": "/nonexistent/florete"}, "working directory /nonexistent/florete"),
        ({"image": "busybox"}, "not images"),
        ({"task_id": "../x"}, "is not a file name"),
        ({"env": {"PATH": PATH, "A=B": "1"}}, "invalid environment variable"),
    ],
)
async def test_bad_specs_are_refused(
    rt: ProcessRuntime, tmp_path: Path, changes: dict[str, object], message: str
) -> None:
    with pytest.raises(WorkloadError, match=message):
        await rt.start(spec(tmp_path, "true", **changes))
    assert not list((tmp_path / "state" / "tasks").glob("*"))


async def test_not_executable_and_bad_format_leave_nothing(
    rt: ProcessRuntime, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    plain.write_text("echo hi\n")
    with pytest.raises(WorkloadError, match=r"plain: permission denied"):
        await rt.start(spec(tmp_path, str(plain)))
    garbage = tmp_path / "garbage"
    garbage.write_bytes(b"\x7fELF\x00not really")
    garbage.chmod(0o755)
    s = spec(tmp_path, "./garbage", working_dir=str(tmp_path))
    with pytest.raises(WorkloadError, match=r"\./garbage: Exec format error"):
        await rt.start(s)  # found and executable, but execve fails in the shim's child
    assert not list((tmp_path / "state" / "tasks").glob("*"))
    assert b"Exec format error" in s.log_path.read_bytes()


async def test_duplicate_task_id(rt: ProcessRuntime, tmp_path: Path) -> None:
    first = spec(tmp_path, "true")
    await rt.wait(await rt.start(first))
    with pytest.raises(WorkloadError, match="already exists"):
        await rt.start(first)


@pytest.mark.usefixtures("cleanup")
async def test_logs_rotate_and_keep_partial_lines(tmp_path: Path) -> None:
    options = {**OPTIONS, "log_max_bytes": 2000, "log_max_files": 2}
    rt = ProcessRuntime(RuntimeContext(tmp_path / "state", "test", options))
    script = (
        "i=0; while [ $i -lt 200 ]; do echo line$i; i=$((i+1)); done;"
        "head -c 20000 /dev/zero | tr '\\0' x; echo; printf tail"
    )
    s = spec(tmp_path, "sh", "-c", script)
    handle = await rt.start(s)
    assert (await rt.wait(handle)).exit_code == 0
    files = sorted(p.name for p in s.log_path.parent.iterdir())
    assert files == [s.log_path.name, f"{s.log_path.name}.1", f"{s.log_path.name}.2"]
    records = [r async for r in rt.logs(handle)]
    assert [(r.partial, len(r.text)) for r in records[-3:]] == [
        (True, 16384),
        (False, 3616),
        (True, 4),
    ]
    kept = [r.text for r in records[:-3]]
    assert kept == [b"line%d" % i for i in range(200 - len(kept), 200)]  # the newest, in order
    assert [r.text for r in [r async for r in rt.logs(handle, tail=2)]] == [b"x" * 3616, b"tail"]
    await rt.destroy(handle)


@pytest.mark.usefixtures("cleanup")
async def test_follow_continues_across_rotation(tmp_path: Path) -> None:
    options = {**OPTIONS, "log_max_bytes": 400, "log_max_files": 1}
    rt = ProcessRuntime(RuntimeContext(tmp_path / "state", "test", options))
    script = "i=0; while [ $i -lt 40 ]; do echo line$i; i=$((i+1)); sleep 0.03; done"
    handle = await rt.start(spec(tmp_path, "sh", "-c", script))
    async with asyncio.timeout(20):
        seen = [r.text async for r in rt.logs(handle, follow=True)]
    assert seen == [b"line%d" % i for i in range(40)]  # 5 rotations, one file kept
    assert len([r async for r in rt.logs(handle)]) < 40


async def test_unacknowledged_start_kills_the_workload(tmp_path: Path) -> None:
    task_dir = tmp_path / "task"
    task_dir.mkdir()
    (task_dir / "env").write_bytes(b"PATH=/bin:/usr/bin\0")
    args = ["--task-dir", str(task_dir), "--env-file", str(task_dir / "env"),
            "--log", str(tmp_path / "c.log"), "--log-max-bytes", "1000", "--log-max-files", "1",
            "--", "/bin/sleep", "sleep", "30"]  # fmt: skip
    started = await launch.spawn_shim(str(tmp_path), args, task_dir / "shim.log")
    try:
        assert started.report.failure is None
        started.abandon()  # as if the agent died before persisting the task
        report = started.report
        await asyncio.wait_for(wait_for_exit(report.shim_pid, report.shim_ctime), 10)
    finally:
        if not gone(started.report.pid):
            os.killpg(started.report.pid, signal.SIGKILL)
    result = read_exit_record(task_dir)
    assert result is not None
    assert (result.exit_code, result.signal) == (137, 9)
    assert gone(started.report.pid)


async def test_background_children_die_with_the_main_process(
    rt: ProcessRuntime, tmp_path: Path
) -> None:
    handle = await rt.start(spec(tmp_path, "sh", "-c", "sleep 30 & echo $!; exit 0"))
    assert (await asyncio.wait_for(rt.wait(handle), 10)).exit_code == 0
    (child,) = await texts(rt, handle)
    assert gone(int(child))


async def test_signals_to_the_shim_reach_the_workload(rt: ProcessRuntime, tmp_path: Path) -> None:
    handle = await rt.start(spec(tmp_path, "sleep", "30"))
    os.kill(handle.state["shim_pid"], signal.SIGTERM)
    result = await asyncio.wait_for(rt.wait(handle), 10)
    assert (result.exit_code, result.signal) == (143, 15)


async def test_killed_shim_leaves_a_stoppable_orphan(rt: ProcessRuntime, tmp_path: Path) -> None:
    handle = await rt.start(spec(tmp_path, "sleep", "30"))
    os.kill(handle.state["shim_pid"], signal.SIGKILL)
    await asyncio.wait_for(wait_for_exit(handle.state["shim_pid"], 0), 10)
    fresh = ProcessRuntime(RuntimeContext(tmp_path / "state", "test", OPTIONS))
    assert await fresh.recover(handle)
    assert (await fresh.inspect(handle)).running  # the workload still runs
    await asyncio.wait_for(fresh.stop(handle, grace=5), 10)
    result = await fresh.wait(handle)
    assert result.exit_code == 137  # the status is lost with the shim: as ContainerStatusUnknown
    assert gone(handle.state["pid"])


async def test_exec_and_stats_need_a_running_task(rt: ProcessRuntime, tmp_path: Path) -> None:
    handle = await rt.start(spec(tmp_path, "sleep", "30"))
    missing = await rt.exec(handle, ("florete-no-such-command",))
    assert missing.exit_code == 127
    assert b"florete-no-such-command" in missing.output
    with pytest.raises(WorkloadError, match="argv is empty"):
        await rt.exec(handle, ())
    await rt.stop(handle, grace=0)
    with pytest.raises(WorkloadError, match="not running"):
        await rt.exec(handle, ("true",))
    with pytest.raises(WorkloadError, match="not running"):
        await rt.stats(handle)


async def test_cancelled_exec_kills_the_command(rt: ProcessRuntime, tmp_path: Path) -> None:
    handle = await rt.start(spec(tmp_path, "sleep", "30"))
    marker = tmp_path / "exec.pid"
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1):
            await rt.exec(handle, ("sh", "-c", f"echo $$ > {marker}; exec sleep 30"))
    assert gone(int(marker.read_text()))


async def test_shim_memory_stays_small(rt: ProcessRuntime, tmp_path: Path) -> None:
    handle = await rt.start(spec(tmp_path, "sleep", "30"))
    status = await asyncio.to_thread(Path(f"/proc/{handle.state['shim_pid']}/status").read_text)
    fields = dict(line.split(":", 1) for line in status.splitlines())
    rss_anon_kib = int(fields["RssAnon"].split()[0])
    assert rss_anon_kib < 6 * 1024, f"shim RssAnon {rss_anon_kib} KiB"  # 2.9 MiB measured


def test_options_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown option 'colour'"):
        ProcessRuntime(RuntimeContext(tmp_path, "t", {"colour": "red"}))
    with pytest.raises(ConfigError, match="log_max_files"):
        ProcessRuntime(RuntimeContext(tmp_path, "t", {"log_max_files": -1}))


async def test_foreign_or_broken_handles_are_not_recovered(rt: ProcessRuntime) -> None:
    assert not await rt.recover(TaskHandle("podman", "x", {}))
    assert not await rt.recover(TaskHandle("process", "x", {"version": 1, "pid": "nope"}))
    with pytest.raises(WorkloadError, match="not 'process'"):
        await rt.wait(TaskHandle("podman", "x", {}))


async def test_start_works_where_limits_cannot_be_enforced(
    tmp_path: Path, cleanup: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    reason = "limits are not enforced: cannot create /sys/fs/cgroup/memory/florete (Read-only)"
    monkeypatch.setattr(Cgroups, "probe", classmethod(lambda cls, *args, **kwargs: reason))
    rt = ProcessRuntime(RuntimeContext(tmp_path / "state", "test", OPTIONS))
    fp = await rt.fingerprint()
    assert fp.healthy
    assert fp.attributes["limits"] == reason
    limits = ResourceLimits(cpu_millis=100, memory_bytes=1 << 20)
    handle = await rt.start(spec(tmp_path, "sh", "-c", "exit 2", limits=limits))
    assert handle.state["cgroups"] == []
    assert (await rt.wait(handle)).exit_code == 2


async def test_fingerprint_reports_the_host(rt: ProcessRuntime) -> None:
    fp = await rt.fingerprint()
    assert fp.healthy
    assert fp.attributes["version"] == os.uname().release
    assert fp.attributes["python"] == ".".join(map(str, sys.version_info[:3]))
    assert fp.attributes["limits"] in fp.description


async def test_shims_come_from_one_fork_server_that_restarts_when_killed(
    rt: ProcessRuntime, tmp_path: Path
) -> None:
    first = await rt.start(spec(tmp_path, "sleep", "30"))
    servers = [p for p in psutil.Process().children() if "serve" in p.cmdline()]
    assert len(servers) == 1
    shim = psutil.Process(first.state["shim_pid"])
    assert shim.ppid() != os.getpid()  # detached: nobody's child but init's (or a subreaper's)
    servers[0].kill()
    servers[0].wait(5)
    second = await rt.start(spec(tmp_path, "sleep", "30"))
    assert (await rt.inspect(second)).running
    assert (await rt.inspect(first)).running
    await rt.close()
    assert not [p for p in psutil.Process().children() if "serve" in p.cmdline()]
    assert (await rt.inspect(first)).running  # the server's end is not the tasks' end


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_run_as_user_and_group_as_root(rt: ProcessRuntime, tmp_path: Path) -> None:
    argv = ("sh", "-c", "id -u; id -g; id -G")
    handle = await rt.start(spec(tmp_path, *argv, run_as_user=65534, run_as_group=65533))
    assert (await rt.wait(handle)).exit_code == 0
    assert await texts(rt, handle) == [b"65534", b"65533", b"65533"]


def test_run_as_another_user_needs_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getegid", lambda: 1000)
    assert _user_args(spec(tmp_path, "true", run_as_user=1000, run_as_group=1000)) == ()
    with pytest.raises(WorkloadError, match="runAsUser 0 / runAsGroup None: the agent runs as"):
        _user_args(spec(tmp_path, "true", run_as_user=0))
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert _user_args(spec(tmp_path, "true", run_as_user=5, run_as_group=6)) == (
        "--uid",
        "5",
        "--gid",
        "6",
    )
