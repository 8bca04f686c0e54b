"""Tests for agent.apiclient against a real agent.httpserver on a Unix socket (no mocks)."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.apiclient import ApiClient
from agent.errors import ApiError
from agent.httproute import Request, Response, Router, StreamingResponse
from agent.httpserver import HttpLimits, HttpServer


class App:
    """Handlers under test and what they observed."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.never = asyncio.Event()
        self.router = Router()
        self.router.add("GET", "/conn", self.conn)
        self.router.add("POST", "/conn", self.conn)
        self.router.add("PUT", "/raw", self.raw)
        self.router.add("GET", "/text", self.text)
        self.router.add("GET", "/empty", self.empty)
        self.router.add("GET", "/bad-gateway", self.bad_gateway)
        self.router.add("GET", "/bad-json", self.bad_json)
        self.router.add("GET", "/slow", self.slow)
        self.router.add("GET", "/lines", self.lines)
        self.router.add("GET", "/broken", self.broken)

    async def conn(self, request: Request) -> Response:
        self.tasks.append(asyncio.current_task())
        return Response.json({"query": dict(request.query.params)})

    async def raw(self, request: Request) -> Response:
        return Response.json({"type": request.header("Content-Type"), "body": request.body.hex()})

    async def text(self, request: Request) -> Response:
        return Response(200, b"plain text", "text/plain; charset=utf-8")

    async def empty(self, request: Request) -> Response:
        return Response(204, b"")

    async def bad_gateway(self, request: Request) -> Response:
        return Response(502, b"upstream exploded\n", "text/plain")

    async def bad_json(self, request: Request) -> Response:
        return Response(200, b"{not json")

    async def slow(self, request: Request) -> Response:
        await self.never.wait()
        return Response.json({})

    async def lines(self, request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            for chunk in (b"one\ntw", b"o\n", b"", b"three\nfour"):
                yield chunk

        return StreamingResponse(200, "text/plain", chunks())

    async def broken(self, request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"partial"
            raise RuntimeError("log file vanished")

        return StreamingResponse(200, "text/plain", chunks())


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "api.sock"


@pytest.fixture
async def server(app: App, sock_path: Path) -> AsyncIterator[HttpServer]:
    server = HttpServer(app.router, HttpLimits(request_timeout=0.3))
    await server.start_unix(sock_path)
    yield server
    await server.close(timeout=5.0)


@pytest.fixture
def client(sock_path: Path) -> Iterator[ApiClient]:
    with ApiClient(sock_path, timeout=5.0) as client:
        yield client


# --- unreachable agent ----------------------------------------------------------------------


def test_missing_socket_names_path_and_remedy(sock_path: Path) -> None:
    with ApiClient(sock_path) as client, pytest.raises(ApiError) as caught:
        client.request("GET", "/conn")
    assert (caught.value.status, caught.value.api_reason) == (0, "ServiceUnavailable")
    assert caught.value.message == (
        f"cannot reach the agent at {sock_path}: No such file or directory; "
        "is `florete-agent run` running?"
    )


def test_dead_socket_is_connection_refused(sock_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(os.fspath(sock_path))
    with ApiClient(sock_path) as client, pytest.raises(ApiError, match="Connection refused"):
        client.request("GET", "/conn")


def test_stream_from_missing_socket(sock_path: Path) -> None:
    with pytest.raises(ApiError, match="cannot reach the agent"):
        next(ApiClient(sock_path).stream("/lines"))


# --- answers --------------------------------------------------------------------------------


@pytest.mark.usefixtures("server")
async def test_query_and_raw_body(client: ApiClient) -> None:
    got = await asyncio.to_thread(
        client.request, "GET", "/conn", query={"labelSelector": "app=web", "x": ["1", "2"]}
    )
    assert got == {"query": {"labelSelector": ["app=web"], "x": ["1", "2"]}}
    got = await asyncio.to_thread(
        client.request, "PUT", "/raw", body=b"\x00kind: Pod", content_type="application/yaml"
    )
    assert got == {"type": "application/yaml", "body": b"\x00kind: Pod".hex()}


@pytest.mark.usefixtures("server")
async def test_text_and_empty_answers(client: ApiClient) -> None:
    assert await asyncio.to_thread(client.request, "GET", "/text") == b"plain text"
    assert await asyncio.to_thread(client.request, "GET", "/empty") is None


@pytest.mark.usefixtures("server")
async def test_status_answer_raises_api_error(client: ApiClient) -> None:
    with pytest.raises(ApiError) as caught:
        await asyncio.to_thread(client.request, "GET", "/nowhere")
    assert (caught.value.status, caught.value.api_reason) == (404, "NotFound")
    assert caught.value.message == "the server could not find the requested resource"


@pytest.mark.usefixtures("server")
async def test_non_status_error_keeps_body_text(client: ApiClient) -> None:
    with pytest.raises(ApiError) as caught:
        await asyncio.to_thread(client.request, "GET", "/bad-gateway")
    assert (caught.value.status, caught.value.api_reason) == (502, "")
    assert caught.value.message == "the agent answered 502 Bad Gateway: upstream exploded"


@pytest.mark.usefixtures("server")
async def test_invalid_json_answer(client: ApiClient) -> None:
    with pytest.raises(ApiError, match="invalid JSON"):
        await asyncio.to_thread(client.request, "GET", "/bad-json")


@pytest.mark.usefixtures("server")
async def test_read_timeout(app: App, sock_path: Path) -> None:
    with ApiClient(sock_path, timeout=0.2) as client, pytest.raises(ApiError) as caught:
        await asyncio.to_thread(client.request, "GET", "/slow")
    assert (caught.value.status, caught.value.api_reason) == (0, "Timeout")
    assert caught.value.message == f"the agent at {sock_path} did not answer within 0.2 s"


@pytest.mark.usefixtures("server")
async def test_early_413_is_read_despite_broken_pipe(client: ApiClient) -> None:
    # The server answers after the head and closes while the client still sends 9 MiB.
    with pytest.raises(ApiError) as caught:
        await asyncio.to_thread(client.request, "POST", "/conn", body=b"x" * (9 << 20))
    assert (caught.value.status, caught.value.api_reason) == (413, "RequestEntityTooLarge")


# --- connections ----------------------------------------------------------------------------


@pytest.mark.usefixtures("server")
async def test_keep_alive_for_idempotent_requests(app: App, client: ApiClient) -> None:
    for method in ("GET", "GET", "POST"):
        await asyncio.to_thread(client.request, method, "/conn")
    first, second, post = app.tasks
    assert first is second
    assert post is not first  # a non-idempotent request always gets a fresh connection


@pytest.mark.usefixtures("server")
async def test_retry_when_agent_closed_idle_connection(app: App, client: ApiClient) -> None:
    await asyncio.to_thread(client.request, "GET", "/conn")
    await asyncio.sleep(0.6)  # past the server's idle timeout of 0.3 s
    await asyncio.to_thread(client.request, "GET", "/conn")
    assert len(app.tasks) == 2
    assert app.tasks[0] is not app.tasks[1]


# --- streams --------------------------------------------------------------------------------


@pytest.mark.usefixtures("server")
async def test_stream_lines_joins_and_splits_chunks(client: ApiClient) -> None:
    lines = await asyncio.to_thread(list, client.stream_lines("/lines"))
    assert lines == [b"one", b"two", b"three", b"four"]


@pytest.mark.usefixtures("server")
async def test_stream_error_status(client: ApiClient) -> None:
    with pytest.raises(ApiError) as caught:
        await asyncio.to_thread(next, client.stream("/nowhere"))
    assert (caught.value.status, caught.value.api_reason) == (404, "NotFound")


@pytest.mark.usefixtures("server")
async def test_stream_broken_by_server(client: ApiClient, caplog: pytest.LogCaptureFixture) -> None:
    chunks = client.stream("/broken")
    assert await asyncio.to_thread(next, chunks) == b"partial"
    with pytest.raises(ApiError, match="broke off"):
        await asyncio.to_thread(next, chunks)
    assert "log file vanished" in caplog.text  # logged by the server, not shown to the client
