"""The libpod HTTP client against a scripted server on a Unix socket (no podman needed)."""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.errors import RemoteProtocolError, RuntimeUnavailableError
from wri_plugins.podman.libpod import (
    API_PREFIX,
    LibpodClient,
    LibpodError,
    build_target,
    quote_name,
)


class Server:
    """Answers each connection with the next scripted bytes; records what each request sent."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.answers: list[bytes] = []
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        self.requests.append(head + await reader.readexactly(length))
        writer.write(self.answers.pop(0))
        await writer.drain()
        writer.close()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    with tempfile.TemporaryDirectory() as tmp:  # short: a socket path has at most 107 bytes
        fake = Server(Path(tmp) / "api.sock")
        listener = await asyncio.start_unix_server(fake.handle, str(fake.path))
        async with listener:
            yield fake


def answer(status: str, body: bytes, *headers: str) -> bytes:
    head = [f"HTTP/1.1 {status}", *headers]
    if not any(h.lower().startswith("transfer-encoding") for h in headers):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def test_targets_quote_names_and_repeat_keys() -> None:
    assert build_target("/_ping") == f"{API_PREFIX}/_ping"
    query = [("condition", "exited"), ("condition", "stopped"), ("force", True)]
    target = build_target("/containers/x/wait", query)
    assert target.endswith("?condition=exited&condition=stopped&force=true")
    assert quote_name("localhost/busybox:latest") == "localhost%2Fbusybox%3Alatest"


async def test_json_request_sends_body_and_parses_answer(server: Server) -> None:
    server.answers.append(answer("201 Created", b'{"Id": "abc"}'))
    client = LibpodClient(server.path)
    created = await client.json("POST", "/containers/create", body={"name": "c", "env": {}})
    assert created == {"Id": "abc"}
    request = server.requests[0]
    assert request.startswith(f"POST {API_PREFIX}/containers/create HTTP/1.1\r\n".encode())
    assert b"content-type: application/json" in request.lower()
    assert json.loads(request.split(b"\r\n\r\n", 1)[1]) == {"name": "c", "env": {}}


async def test_error_answer_becomes_libpod_error(server: Server) -> None:
    body = b'{"cause":"no such container","message":"no container with name x","response":404}'
    server.answers.append(answer("404 Not Found", body))
    with pytest.raises(LibpodError, match="no container with name x") as caught:
        await LibpodClient(server.path).json("GET", "/containers/x/json")
    assert (caught.value.status, caught.value.cause) == (404, "no such container")


async def test_error_answer_that_is_not_json(server: Server) -> None:
    server.answers.append(answer("500 Internal Server Error", b"boom\n"))
    with pytest.raises(LibpodError, match="boom") as caught:
        await LibpodClient(server.path).request("GET", "/info")
    assert caught.value.status == 500


async def test_stream_reads_chunks_and_lines(server: Server) -> None:
    chunked = b'7\r\n{"a":1}\r\n8\r\n\n{"b":2}\r\n1\r\n\n\r\n0\r\n\r\n'
    server.answers.append(answer("200 OK", chunked, "Transfer-Encoding: chunked"))
    async with LibpodClient(server.path).stream("POST", "/images/pull") as response:
        lines = [line async for line in response.lines()]
    assert lines == [b'{"a":1}', b'{"b":2}']


async def test_body_until_close_as_exec_start_answers(server: Server) -> None:
    raw = b"HTTP/1.1 200 OK\r\nContent-Type: application/vnd.docker.raw-stream\r\n\r\n\x01\0\0\0"
    server.answers.append(raw + b"\0\0\0\x02hi")
    async with LibpodClient(server.path).stream("POST", "/exec/x/start", body={}) as response:
        assert response.headers["content-type"] == "application/vnd.docker.raw-stream"
        assert await response.read() == b"\x01\0\0\0\0\0\0\x02hi"


async def test_missing_socket_is_unavailable(tmp_path: Path) -> None:
    client = LibpodClient(tmp_path / "none.sock")
    with pytest.raises(RuntimeUnavailableError, match="does not answer"):
        await client.request("GET", "/_ping")
    assert not await client.ping()


async def test_server_that_closes_without_answering(server: Server) -> None:
    server.answers.append(b"")
    with pytest.raises(RuntimeUnavailableError, match="closed the connection"):
        await LibpodClient(server.path).request("GET", "/_ping")


async def test_garbage_answer_is_a_protocol_error(server: Server) -> None:
    server.answers.append(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    with pytest.raises(RemoteProtocolError):
        await LibpodClient(server.path).request("GET", "/_ping")


async def test_answer_that_is_not_json(server: Server) -> None:
    server.answers.append(answer("200 OK", b"<html>"))
    with pytest.raises(RemoteProtocolError, match="no JSON"):
        await LibpodClient(server.path).json("GET", "/version")
