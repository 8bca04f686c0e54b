"""Conformance cases of interactive exec (``Capabilities.exec_interactive``).

A runtime that declares the capability must pass every case; one that does not must refuse with
``CapabilityError``. The cases drive :class:`wri_plugins.api.ExecStreams`, the same caller side
that serves ``kubectl exec``.
"""

from __future__ import annotations

import asyncio
import os
import uuid

import pytest

from agent.errors import CapabilityError, WorkloadError
from tests.conformance.conftest import RuntimeFactory
from tests.conformance.test_wri import READY
from wri_plugins.api import ExecStreams, TaskHandle, TerminalSize, WorkloadRuntime


class Caller:
    """A caller of ``exec_interactive``: records output, feeds input and sizes."""

    def __init__(self, *, tty: bool, stdin: bool) -> None:
        self.output: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.grew = asyncio.Event()
        self.streams = ExecStreams(self._write, tty=tty, stdin=stdin)

    async def _write(self, stream: str, data: bytes) -> None:
        assert stream in self.output
        assert data
        self.output[stream] += data
        self.grew.set()

    async def until_output(self, text: bytes, stream: str = "stdout") -> None:
        """Wait (10 s at most) until ``stream`` holds ``text``."""
        async with asyncio.timeout(10):
            while text not in self.output[stream]:
                self.grew.clear()
                await self.grew.wait()


async def _started(runtime_factory: RuntimeFactory) -> tuple[WorkloadRuntime, TaskHandle]:
    rt = runtime_factory()
    if not rt.capabilities.exec_interactive:
        pytest.skip(f"{rt.name} has no exec_interactive capability")
    handle = await runtime_factory.start(rt, runtime_factory.spec(READY, env={"FOO": "bar"}))
    await runtime_factory.wait_for_line(rt, handle, b"ready")
    return rt, handle


async def test_interactive_exec_does_what_the_capability_declares(
    runtime_factory: RuntimeFactory,
) -> None:
    """Declared: an interactive exec runs; not declared: it is refused (never half-works)."""
    rt = runtime_factory()
    handle = await runtime_factory.start(rt, runtime_factory.spec(READY))
    await runtime_factory.wait_for_line(rt, handle, b"ready")
    caller = Caller(tty=False, stdin=True)
    if rt.capabilities.exec_interactive:
        run = rt.exec_interactive(handle, ("sh", "-c", "exit 5"), caller.streams)
        assert await asyncio.wait_for(run, 10) == 5
    else:
        with pytest.raises(CapabilityError):
            await rt.exec_interactive(handle, ("cat",), caller.streams)


async def test_stdin_reaches_the_command_and_streams_stay_apart(
    runtime_factory: RuntimeFactory,
) -> None:
    rt, handle = await _started(runtime_factory)
    caller = Caller(tty=False, stdin=True)
    script = 'cat; echo "err $FOO" >&2; exit 3'
    run = asyncio.ensure_future(rt.exec_interactive(handle, ("sh", "-c", script), caller.streams))
    await caller.streams.feed_stdin(b"hello\n")
    await caller.until_output(b"hello\n")  # streamed: the command has not ended yet
    assert not run.done()
    await caller.streams.feed_stdin(b"world\n")
    await caller.streams.feed_stdin(b"")  # end of input: cat ends
    assert await asyncio.wait_for(run, 10) == 3
    assert caller.output == {"stdout": b"hello\nworld\n", "stderr": b"err bar\n"}


async def test_output_is_not_cut_and_stdin_may_be_absent(runtime_factory: RuntimeFactory) -> None:
    rt, handle = await _started(runtime_factory)
    caller = Caller(tty=False, stdin=False)
    chatty = "i=0; while [ $i -lt 5000 ]; do echo 0123456789; i=$((i+1)); done; cat; echo end"
    code = await asyncio.wait_for(
        rt.exec_interactive(handle, ("sh", "-c", chatty), caller.streams), 20
    )
    assert code == 0
    assert caller.output["stdout"] == b"0123456789\n" * 5000 + b"end\n"


async def test_terminal_echoes_resizes_and_passes_the_exit_code(
    runtime_factory: RuntimeFactory,
) -> None:
    rt, handle = await _started(runtime_factory)
    caller = Caller(tty=True, stdin=True)
    script = 'echo ready; read line; stty size; [ -t 0 ] && echo tty; echo "got $line"; exit 5'
    run = asyncio.ensure_future(rt.exec_interactive(handle, ("sh", "-c", script), caller.streams))
    await caller.until_output(b"ready")
    caller.streams.resize(TerminalSize(columns=100, rows=40))
    await asyncio.sleep(0.2)  # the size is set on the terminal before the line is typed
    await caller.streams.feed_stdin(b"hi\n")
    assert await asyncio.wait_for(run, 10) == 5
    out = bytes(caller.output["stdout"])
    assert b"hi\r\n" in out  # the terminal's echo
    assert b"40 100\r\n" in out
    assert b"tty\r\n" in out
    assert b"got hi\r\n" in out
    assert caller.output["stderr"] == b""


async def test_terminal_interrupt_reaches_the_foreground_command(
    runtime_factory: RuntimeFactory,
) -> None:
    rt, handle = await _started(runtime_factory)
    caller = Caller(tty=True, stdin=True)
    script = "trap 'echo interrupted; exit 9' INT; echo waiting; while :; do sleep 0.1; done"
    run = asyncio.ensure_future(rt.exec_interactive(handle, ("sh", "-c", script), caller.streams))
    await caller.until_output(b"waiting")
    await caller.streams.feed_stdin(b"\x03")  # ^C: SIGINT from the terminal's line discipline
    assert await asyncio.wait_for(run, 10) == 9
    assert b"interrupted" in caller.output["stdout"]


async def test_missing_command_is_127(runtime_factory: RuntimeFactory) -> None:
    rt, handle = await _started(runtime_factory)
    caller = Caller(tty=False, stdin=False)
    code = await asyncio.wait_for(
        rt.exec_interactive(handle, ("florete-no-such-command-42",), caller.streams), 10
    )
    assert code == 127
    with pytest.raises(WorkloadError):
        await rt.exec_interactive(handle, (), caller.streams)


@pytest.mark.parametrize("tty", [False, True], ids=["pipes", "tty"])
async def test_cancelled_exec_is_killed(runtime_factory: RuntimeFactory, tty: bool) -> None:
    rt, handle = await _started(runtime_factory)
    marker = str(1000 + uuid.uuid4().int % 9000)
    caller = Caller(tty=tty, stdin=True)
    script = f"echo started; exec sleep {marker}"
    run = asyncio.ensure_future(rt.exec_interactive(handle, ("sh", "-c", script), caller.streams))
    await caller.until_output(b"started")
    run.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(run, 10)
    # /proc as the task sees it: the host's, or the container's ("slee[p]" misses this sh)
    find = (
        "for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' <$f; echo; done 2>/dev/null"
        f" | grep -c 'slee[p] {marker}'"
    )
    result = await asyncio.wait_for(rt.exec(handle, ("sh", "-c", find)), 10)
    assert result.output.strip() == b"0", result


async def test_exec_runs_as_the_workload_user(runtime_factory: RuntimeFactory) -> None:
    rt = runtime_factory()
    if rt.capabilities.remote:
        pytest.skip(f"{runtime_factory.name} runs workloads as the remote login's user")
    if not rt.capabilities.fs_isolation and os.geteuid() != 0:
        pytest.skip(f"{runtime_factory.name} switches host processes to a user only as root")
    spec = runtime_factory.spec(READY, run_as_user=65534, run_as_group=65533)
    handle = await runtime_factory.start(rt, spec)
    await runtime_factory.wait_for_line(rt, handle, b"ready")
    ids = ("sh", "-c", "id -u; id -g")
    result = await asyncio.wait_for(rt.exec(handle, ids), 10)
    assert (result.exit_code, result.output) == (0, b"65534\n65533\n")
    if rt.capabilities.exec_interactive:
        caller = Caller(tty=True, stdin=True)
        assert await asyncio.wait_for(rt.exec_interactive(handle, ids, caller.streams), 10) == 0
        assert caller.output["stdout"] == b"65534\r\n65533\r\n"
