"""WRI conformance cases: real workloads, real processes, no mocks (see conftest.py)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.errors import RuntimeUnavailableError, WorkloadError
from tests.conformance.conftest import RuntimeFactory
from wri_plugins.api import TaskHandle

READY = ("sh", "-c", "echo ready; while :; do sleep 0.1; done")


async def test_fingerprint_is_healthy(runtime_factory: RuntimeFactory) -> None:
    fp = await runtime_factory().fingerprint()
    assert fp.healthy, fp.description
    assert fp.attributes.get("version")
    assert fp.attributes.get("arch")
    assert fp.attributes.get("limits")


@pytest.mark.parametrize("code", [0, 3])
async def test_wait_returns_exit_code(runtime_factory: RuntimeFactory, code: int) -> None:
    rt = runtime_factory()
    handle = await runtime_factory.start(rt, runtime_factory.spec(("sh", "-c", f"exit {code}")))
    result = await asyncio.wait_for(rt.wait(handle), 10)
    assert (result.exit_code, result.signal, result.oom_killed) == (code, None, False)
    assert result.finished_at > 0
    status = await rt.inspect(handle)
    assert not status.running
    assert status.exit == result


async def test_env_and_working_dir_reach_the_workload(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    if rt.capabilities.fs_isolation:
        workdir = "/tmp"
    else:
        workdir = str(runtime_factory.tmp_path / "work dir")
        os.mkdir(workdir)
    spec = runtime_factory.spec(
        ("sh", "-c", 'echo "FOO=$FOO"; pwd'), env={"FOO": "bar baz"}, working_dir=workdir
    )
    handle = await runtime_factory.start(rt, spec)
    assert (await asyncio.wait_for(rt.wait(handle), 10)).exit_code == 0
    texts = [r.text for r in await runtime_factory.collect(rt.logs(handle))]
    assert texts == [b"FOO=bar baz", workdir.encode()]


async def test_logs_have_streams_tail_and_since(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    script = "echo out1; echo err1 >&2; sleep 0.3; echo out2; echo err2 >&2"
    handle = await runtime_factory.start(rt, runtime_factory.spec(("sh", "-c", script)))
    await asyncio.wait_for(rt.wait(handle), 10)
    records = await runtime_factory.collect(rt.logs(handle))
    assert sorted((r.stream, r.text) for r in records) == [
        ("stderr", b"err1"),
        ("stderr", b"err2"),
        ("stdout", b"out1"),
        ("stdout", b"out2"),
    ]
    assert not any(r.partial for r in records)
    assert [r.time for r in records] == sorted(r.time for r in records)
    # the 0.3 s pause separates the two pairs in time: since keeps only the second
    later = min(r.time for r in records if r.text.endswith(b"2"))
    since = await runtime_factory.collect(rt.logs(handle, since=later))
    assert sorted(r.text for r in since) == [b"err2", b"out2"]
    tail = await runtime_factory.collect(rt.logs(handle, tail=2))
    assert tail == records[-2:]
    assert await runtime_factory.collect(rt.logs(handle, tail=0)) == []
    assert await runtime_factory.collect(rt.logs(handle, tail=10)) == records
    assert await runtime_factory.collect(rt.logs(handle, since=records[-1].time + 1)) == []


async def test_logs_follow_yields_lines_as_they_come(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    script = "echo first; sleep 0.5; echo second; sleep 0.5; echo third"
    handle = await runtime_factory.start(rt, runtime_factory.spec(("sh", "-c", script)))
    seen: list[tuple[bytes, bool]] = []
    async with asyncio.timeout(10):
        async for record in rt.logs(handle, follow=True):
            seen.append((record.text, (await rt.inspect(handle)).running))
    assert [text for text, _ in seen] == [b"first", b"second", b"third"]
    assert seen[0][1], "the first line must arrive while the task still runs"
    assert not (await rt.inspect(handle)).running  # follow ended because the task ended


async def test_stop_with_trapped_sigterm_exits_cleanly(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    script = 'trap "exit 0" TERM; echo ready; while :; do sleep 0.1; done'
    handle = await runtime_factory.start(rt, runtime_factory.spec(("sh", "-c", script)))
    await runtime_factory.wait_for_line(rt, handle, b"ready")
    await asyncio.wait_for(rt.stop(handle, grace=5), 10)
    result = await rt.wait(handle)
    assert (result.exit_code, result.signal) == (0, None)


async def test_stop_kills_after_grace(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    script = 'trap "" TERM; echo ready; while :; do sleep 0.1; done'
    handle = await runtime_factory.start(rt, runtime_factory.spec(("sh", "-c", script)))
    await runtime_factory.wait_for_line(rt, handle, b"ready")
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(rt.stop(handle, grace=0.5, signal=signal.SIGTERM), 10)
    assert loop.time() - began >= 0.5
    result = await rt.wait(handle)
    assert (result.exit_code, result.signal) == (137, 9)
    await rt.stop(handle, grace=1)  # stopping an ended task is fine


async def test_start_of_missing_executable_fails_clearly(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    with pytest.raises(WorkloadError, match=r"florete-no-such-command-42.*not found"):
        await runtime_factory.start(rt, runtime_factory.spec(("florete-no-such-command-42",)))


async def test_exec_returns_output_and_exit_code(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    spec = runtime_factory.spec(READY, env={"FOO": "bar"})
    handle = await runtime_factory.start(rt, spec)
    result = await asyncio.wait_for(
        rt.exec(handle, ("sh", "-c", 'echo "out $FOO"; echo err >&2; exit 4')), 10
    )
    assert result.exit_code == 4
    assert b"out bar\n" in result.output
    assert b"err\n" in result.output
    chatty = "i=0; while [ $i -lt 3000 ]; do echo 0123456789; i=$((i+1)); done"
    big = await asyncio.wait_for(rt.exec(handle, ("sh", "-c", chatty)), 10)
    assert (big.exit_code, len(big.output)) == (0, 10 * 1024)


async def test_stats_of_running_task(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    handle = await runtime_factory.start(rt, runtime_factory.spec(READY))
    await runtime_factory.wait_for_line(rt, handle, b"ready")
    stats = await rt.stats(handle)
    assert stats.rss_bytes > 0
    assert stats.cpu_seconds >= 0


async def test_recover_running_task_in_new_runtime(runtime_factory: RuntimeFactory) -> None:
    first = runtime_factory()
    spec = runtime_factory.spec(("sh", "-c", "echo ready; sleep 1; exit 7"))
    stored = (await runtime_factory.start(first, spec)).to_json()
    await first.close()
    del first
    again = runtime_factory()
    handle = TaskHandle.from_json(stored)
    assert await again.recover(handle)
    assert (await again.inspect(handle)).running
    assert (await asyncio.wait_for(again.wait(handle), 10)).exit_code == 7


async def test_recover_task_that_ended_without_agent(runtime_factory: RuntimeFactory) -> None:
    first = runtime_factory()
    spec = runtime_factory.spec(("sh", "-c", "sleep 0.3; exit 5"))
    stored = (await runtime_factory.start(first, spec)).to_json()
    await first.close()
    del first
    await asyncio.sleep(1.0)  # the task ends while no runtime exists
    again = runtime_factory()
    handle = TaskHandle.from_json(stored)
    assert await again.recover(handle)
    status = await again.inspect(handle)
    assert not status.running
    assert (await asyncio.wait_for(again.wait(handle), 10)).exit_code == 5


async def test_recover_destroyed_task_is_false(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    handle = await runtime_factory.start(rt, runtime_factory.spec(("true",)))
    await asyncio.wait_for(rt.wait(handle), 10)
    await rt.destroy(handle)
    assert not await runtime_factory().recover(TaskHandle.from_json(handle.to_json()))


async def test_recover_from_the_task_id_alone(runtime_factory: RuntimeFactory) -> None:
    """The agent stopped between recording a task id and storing the handle start returned."""
    first = runtime_factory()
    handle = await runtime_factory.start(first, runtime_factory.spec(("sh", "-c", "exit 4")))
    await first.close()
    bare = TaskHandle(handle.runtime, handle.task_id, {})
    again = runtime_factory()
    assert await again.recover(bare)
    assert (await asyncio.wait_for(again.wait(bare), 10)).exit_code == 4
    await again.destroy(bare)
    assert not await again.recover(bare)


async def test_lost_task_is_not_recovered_but_can_be_destroyed(
    runtime_factory: RuntimeFactory,
) -> None:
    """A power cut: the task and everything watching it died without recording an end."""
    rt = runtime_factory()
    handle = await runtime_factory.start(rt, runtime_factory.spec(READY))
    await runtime_factory.wait_for_line(rt, handle, b"ready")
    await runtime_factory.kill_everything(rt, handle)
    again = runtime_factory()
    assert not await again.recover(handle)
    await again.destroy(handle, force=True)
    assert not await again.recover(TaskHandle(handle.runtime, handle.task_id, {}))


async def test_destroy_running_task(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    handle = await runtime_factory.start(rt, runtime_factory.spec(READY))
    await runtime_factory.wait_for_line(rt, handle, b"ready")
    with pytest.raises(WorkloadError, match="running"):
        await rt.destroy(handle)
    await asyncio.wait_for(rt.destroy(handle, force=True), 10)
    assert not await rt.recover(handle)


AGENT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    from wri_plugins.api import ResourceLimits, RuntimeContext, TaskSpec, discover_runtimes

    async def main():
        name, state_dir, options, spec = json.loads(sys.argv[1])
        runtime = discover_runtimes()[name](RuntimeContext(Path(state_dir), "agent", options))
        spec.update(argv=tuple(spec["argv"]), log_path=Path(spec["log_path"]),
                    limits=ResourceLimits())
        handle = await runtime.start(TaskSpec(**spec))
        print(handle.to_json(), flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_task_survives_kill_9_of_the_agent(runtime_factory: RuntimeFactory) -> None:
    spec = runtime_factory.spec(("sh", "-c", "echo ready; sleep 1; echo done; exit 9"))
    fields = {
        "task_id": spec.task_id,
        "pod_namespace": spec.pod_namespace,
        "pod_name": spec.pod_name,
        "pod_uid": spec.pod_uid,
        "container": spec.container,
        "image": spec.image,
        "argv": list(spec.argv),
        "env": dict(spec.env),
        "working_dir": spec.working_dir,
        "log_path": str(spec.log_path),
    }
    payload = [
        runtime_factory.name,
        str(runtime_factory.state_dir),
        dict(runtime_factory.entry.options),
        fields,
    ]
    agent = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        AGENT,
        json.dumps(payload),
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert agent.stdout is not None
        line = await asyncio.wait_for(agent.stdout.readline(), 20)
    finally:
        agent.kill()  # SIGKILL: no shutdown code runs
        await agent.wait()
    handle = TaskHandle.from_json(line.decode())
    runtime_factory.track(handle)
    rt = runtime_factory()
    assert await rt.recover(handle)
    assert (await rt.inspect(handle)).running
    assert (await asyncio.wait_for(rt.wait(handle), 10)).exit_code == 9
    texts = [r.text for r in await runtime_factory.collect(rt.logs(handle))]
    assert texts == [b"ready", b"done"]


async def test_stats_of_a_busy_task_are_not_zero(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    spec = runtime_factory.spec(("sh", "-c", "echo ready; while :; do :; done"))
    handle = await runtime_factory.start(rt, spec)
    await runtime_factory.wait_for_line(rt, handle, b"ready")
    await asyncio.sleep(0.5)
    stats = await rt.stats(handle)
    assert stats.cpu_seconds >= 0.05, stats
    assert stats.rss_bytes > 0, stats


async def test_memory_limit_is_enforced(runtime_factory: RuntimeFactory) -> None:
    """A workload that grows past its memory limit is OOM-killed and reported as such."""
    from wri_plugins.api import ResourceLimits  # new cases go at the end of this file

    rt = runtime_factory()
    fp = await rt.fingerprint()
    if not rt.capabilities.resource_limits or fp.attributes.get("limits_enforced") != "true":
        pytest.skip(f"{runtime_factory.name} does not enforce limits here: {fp.attributes}")
    # the shell keeps the whole output of the substitution in memory: 200 MB against 64 MiB
    hog = 'x=$(head -c 200000000 /dev/zero | tr "\\0" a); echo survived'
    spec = runtime_factory.spec(("sh", "-c", hog), limits=ResourceLimits(memory_bytes=64 << 20))
    handle = await runtime_factory.start(rt, spec)
    result = await asyncio.wait_for(rt.wait(handle), 30)
    assert (result.exit_code, result.oom_killed) == (137, True), result
    texts = [r.text for r in await runtime_factory.collect(rt.logs(handle))]
    assert b"survived" not in texts


async def test_twenty_tasks_start_concurrently(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    specs = [runtime_factory.spec(("sh", "-c", f"echo task {i}; exit {i % 4}")) for i in range(20)]
    handles = await asyncio.wait_for(
        asyncio.gather(*(runtime_factory.start(rt, spec) for spec in specs)), 60
    )
    assert len({h.task_id for h in handles}) == 20
    results = await asyncio.wait_for(asyncio.gather(*(rt.wait(h) for h in handles)), 30)
    assert [r.exit_code for r in results] == [i % 4 for i in range(20)]
    for i, handle in enumerate(handles):
        texts = [r.text for r in await runtime_factory.collect(rt.logs(handle))]
        assert texts == [f"task {i}".encode()]


async def test_workload_runs_as_run_as_user_and_group(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    if rt.capabilities.remote:
        pytest.skip(f"{runtime_factory.name} runs workloads as the remote login's user")
    if not rt.capabilities.fs_isolation and os.geteuid() != 0:
        pytest.skip(f"{runtime_factory.name} switches host processes to a user only as root")
    argv = ("sh", "-c", "id -u; id -g; id -G")
    spec = runtime_factory.spec(argv, run_as_user=65534, run_as_group=65533)
    handle = await runtime_factory.start(rt, spec)
    assert (await asyncio.wait_for(rt.wait(handle), 10)).exit_code == 0
    texts = [r.text for r in await runtime_factory.collect(rt.logs(handle))]
    assert texts == [b"65534", b"65533", b"65533"]


async def test_backend_that_dies_mid_run(runtime_factory: RuntimeFactory) -> None:
    """The backend dies under a running task: the runtime turns unhealthy, calls fail with
    RuntimeUnavailableError (no hang, no foreign exception), wait rides it out while the task
    runs; once the backend is back, all is well and the task's exit is known.

    A remote runtime (the backend is the device the task runs on) cannot see the task end
    while the device is unreachable: its waits go on through the outage and return the exit
    once the device answers again."""
    if runtime_factory.entry.backend_outage is None:
        pytest.skip(f"{runtime_factory.name}: {runtime_factory.entry.no_backend}")
    rt = runtime_factory()
    script = 'trap "exit 3" TERM; echo ready; while :; do sleep 0.1; done'
    handle = await runtime_factory.start(rt, runtime_factory.spec(("sh", "-c", script)))
    await runtime_factory.wait_for_line(rt, handle, b"ready")
    pid = (await rt.inspect(handle)).pid
    assert pid is not None
    waiting = asyncio.create_task(rt.wait(handle))
    await asyncio.sleep(0.2)  # the wait is under way when the backend dies
    async with runtime_factory.backend_down():
        fp = await asyncio.wait_for(rt.fingerprint(), 15)
        assert not fp.healthy
        assert fp.description
        with pytest.raises(RuntimeUnavailableError):
            await asyncio.wait_for(rt.inspect(handle), 15)
        with pytest.raises(RuntimeUnavailableError):
            await asyncio.wait_for(runtime_factory.start(rt, runtime_factory.spec(READY)), 15)
        late = asyncio.create_task(rt.wait(handle))  # and one that starts during the outage
        await asyncio.sleep(1.5)  # the workload does not need its backend to run
        assert not waiting.done()
        assert not late.done()
        os.kill(pid, signal.SIGTERM)
        if rt.capabilities.remote:
            await asyncio.sleep(1.5)
            assert not waiting.done()
            assert not late.done()
        else:
            for wait in (waiting, late):
                with pytest.raises(RuntimeUnavailableError, match="ended while"):
                    await asyncio.wait_for(wait, 15)
    fp = await asyncio.wait_for(rt.fingerprint(), 15)
    assert fp.healthy, fp.description
    result = await asyncio.wait_for(rt.wait(handle), 10)
    assert (result.exit_code, result.signal) == (3, None)
    if rt.capabilities.remote:
        for wait in (waiting, late):
            assert await asyncio.wait_for(wait, 10) == result
