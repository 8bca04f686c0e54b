"""Probe handlers against real servers on loopback, and the threshold logic."""

import asyncio
from collections.abc import AsyncIterator

import pytest

from agent.podspec import ExecAction, HTTPGetAction, Probe, TCPSocketAction
from agent.probes import ProbeTracker, run_probe


async def no_exec(argv: tuple[str, ...]) -> tuple[int, bytes]:
    raise AssertionError("exec not expected")


@pytest.fixture
async def http_server() -> AsyncIterator[int]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # a tcpSocket probe connects and hangs up
            path = request.split(b" ")[1]
            if path == b"/slow":
                await reader.read()  # answers never; returns when the prober hangs up
                return
            code = {b"/ok": b"200 OK", b"/redirect": b"302 Found"}.get(path, b"500 Oops")
            writer.write(b"HTTP/1.1 " + code + b"\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port
    server.close()
    await server.wait_closed()


@pytest.mark.parametrize(
    ("path", "success", "message"),
    [
        ("/ok", True, ""),
        ("/redirect", True, ""),
        ("/fail", False, "HTTP probe failed with statuscode: 500"),
        ("/slow", False, "timeout after 1 s"),
    ],
)
async def test_http_get(http_server: int, path: str, success: bool, message: str) -> None:
    probe = Probe(HTTPGetAction(port=http_server, path=path), timeout_seconds=1)
    result = await run_probe(probe, no_exec)
    assert (result.success, result.message) == (success, message)


async def test_http_get_connection_refused() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    result = await run_probe(Probe(HTTPGetAction(port=port)), no_exec)
    assert not result.success
    assert f"Get http://127.0.0.1:{port}/:" in result.message


async def test_tcp_socket(http_server: int) -> None:
    assert (await run_probe(Probe(TCPSocketAction(port=http_server)), no_exec)).success


async def test_exec_uses_the_runtime_and_reports_output() -> None:
    seen = []

    async def fake_exec(argv: tuple[str, ...]) -> tuple[int, bytes]:
        seen.append(argv)
        return 1, b"not healthy\n"

    result = await run_probe(Probe(ExecAction(("check",))), fake_exec)
    assert seen == [("check",)]
    assert result.message == "command exited with 1: not healthy"


def test_tracker_thresholds() -> None:
    liveness = ProbeTracker(success_threshold=1, failure_threshold=3, healthy=True)
    assert [liveness.record(False) for _ in range(3)] == [False, False, True]
    assert not liveness.healthy
    assert liveness.record(True)
    readiness = ProbeTracker(success_threshold=2, failure_threshold=1, healthy=False)
    assert [readiness.record(True), readiness.record(True)] == [False, True]
    assert readiness.record(False)
    assert not readiness.healthy
