"""Tests for agent.httpserver and agent.httproute over real Unix and TCP sockets (no mocks)."""

from __future__ import annotations

import asyncio
import grp
import hashlib
import json
import logging
import os
import socket
import ssl
import stat
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import h11
import pytest
from cryptography.hazmat.primitives import serialization

from agent.apiclient import ApiClient
from agent.errors import ApiError, BadRequestError, ConfigError, ManifestError, NotFoundError
from agent.httproute import (
    PeerCredentials,
    Query,
    Request,
    Response,
    Router,
    StreamingResponse,
    TlsPeer,
)
from agent.httpserver import HttpLimits, HttpServer, make_server_ssl_context
from tests.pki import Pki

WAIT = 5.0  # seconds: upper bound for anything that should happen at once


class App:
    """Handlers under test and what they observed."""

    def __init__(self) -> None:
        self.tasks: list[asyncio.Task[Any] | None] = []
        self.peers: list[object] = []
        self.release = asyncio.Event()
        self.produced: list[bytes] = []
        self.stream_closed = asyncio.Event()
        self.router = Router()
        self.router.add("GET", "/echo/{name}", self.echo)
        self.router.add("POST", "/echo/{name}", self.echo)
        self.router.add("GET", "/echo/special", self.special)
        self.router.add("GET", "/conn", self.conn)
        self.router.add("GET", "/whoami", self.whoami)
        self.router.add("GET", "/fail/{kind}", self.fail)
        self.router.add("GET", "/stream", self.stream)

    async def echo(self, request: Request) -> Response:
        body = request.json() if request.body else None
        return Response.json(
            {
                "method": request.method,
                "name": request.params["name"],
                "x": request.query.get_all("x"),
                "body": body,
            }
        )

    async def special(self, request: Request) -> Response:
        return Response(200, b"literal route", "text/plain")

    async def conn(self, request: Request) -> Response:
        self.tasks.append(asyncio.current_task())
        return Response.json({"n": len(self.tasks)})

    async def whoami(self, request: Request) -> Response:
        self.peers.append(request.peer)
        return Response.json({})

    async def fail(self, request: Request) -> Response:
        kind = request.params["kind"]
        if kind == "notfound":
            raise NotFoundError('pods "web" not found')
        if kind == "manifest":
            raise ManifestError(
                ["spec.volumes[0].nfs: not supported by florete-agent", "line 3, column 5: bad"]
            )
        raise RuntimeError("secret detail /etc/shadow")

    async def stream(self, request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            try:
                for chunk in (b"first\n", b"second\n"):
                    self.produced.append(chunk)
                    yield chunk
                    await self.release.wait()
            finally:
                self.stream_closed.set()

        return StreamingResponse(200, "text/plain", chunks())


class RawClient:
    """A test-side HTTP/1.1 client on h11, to see status lines, headers and framing."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, path: Path) -> RawClient:
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    async def request(
        self, method: str, target: str, headers: list[tuple[str, str]] | None = None
    ) -> tuple[h11.Response, bytes]:
        if self.h11.our_state is h11.DONE:
            self.h11.start_next_cycle()
        all_headers = [("host", "localhost"), *(headers or [])]
        request = h11.Request(method=method, target=target, headers=all_headers)
        self.writer.write(self.h11.send(request) or b"")
        self.writer.write(self.h11.send(h11.EndOfMessage()) or b"")
        return await self.response()

    async def response(self) -> tuple[h11.Response, bytes]:
        head: h11.Response | None = None
        body = b""
        async with asyncio.timeout(WAIT):
            while True:
                event = self.h11.next_event()
                if event is h11.NEED_DATA:
                    self.h11.receive_data(await self.reader.read(65536))
                elif isinstance(event, h11.Response):
                    head = event
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert head is not None
                    return head, body

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def read_all(path: Path, data: bytes) -> bytes:
    """Send raw bytes and read until the server closes the connection."""
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        async with asyncio.timeout(WAIT):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def header(response: h11.Response, name: bytes) -> bytes | None:
    return next((v for k, v in response.headers if k == name), None)


@pytest.fixture
def app() -> App:
    return App()


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    path = tmp_path / "api.sock"
    assert len(os.fsencode(path)) < 100  # sun_path holds 108 bytes
    return path


@pytest.fixture
async def server(app: App, sock_path: Path) -> AsyncIterator[HttpServer]:
    server = HttpServer(app.router)
    await server.start_unix(sock_path)
    yield server
    await server.close(timeout=WAIT)


# --- request and response -------------------------------------------------------------------


@pytest.mark.usefixtures("server")
async def test_json_round_trip(sock_path: Path) -> None:
    with ApiClient(sock_path) as client:
        got = await asyncio.to_thread(
            client.request, "POST", "/echo/a%20b", query={"x": ["1", "2"]}, body={"k": [1, 2]}
        )
    assert got == {"method": "POST", "name": "a b", "x": ["1", "2"], "body": {"k": [1, 2]}}


@pytest.mark.usefixtures("server")
async def test_literal_route_beats_parameter(sock_path: Path) -> None:
    client = await RawClient.open(sock_path)
    head, body = await client.request("GET", "/echo/special")
    await client.close()
    assert (head.status_code, body) == (200, b"literal route")


@pytest.mark.usefixtures("server")
async def test_unknown_path_is_404_status(sock_path: Path) -> None:
    client = await RawClient.open(sock_path)
    head, body = await client.request("GET", "/nope")
    await client.close()
    assert head.status_code == 404
    assert json.loads(body) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "the server could not find the requested resource",
        "reason": "NotFound",
        "code": 404,
    }


@pytest.mark.usefixtures("server")
async def test_wrong_method_is_405_with_allow(sock_path: Path) -> None:
    client = await RawClient.open(sock_path)
    head, body = await client.request("DELETE", "/echo/x")
    await client.close()
    assert head.status_code == 405
    assert header(head, b"allow") == b"GET, POST"
    assert json.loads(body)["reason"] == "MethodNotAllowed"


@pytest.mark.usefixtures("server")
async def test_florete_error_maps_to_status(sock_path: Path) -> None:
    with ApiClient(sock_path) as client:
        with pytest.raises(ApiError) as caught:
            await asyncio.to_thread(client.request, "GET", "/fail/notfound")
    assert (caught.value.status, caught.value.api_reason) == (404, "NotFound")
    assert caught.value.message == 'pods "web" not found'


@pytest.mark.usefixtures("server")
async def test_manifest_error_lists_causes(sock_path: Path) -> None:
    client = await RawClient.open(sock_path)
    head, body = await client.request("GET", "/fail/manifest")
    await client.close()
    status = json.loads(body)
    assert (head.status_code, status["code"], status["reason"]) == (422, 422, "Invalid")
    assert status["details"]["causes"] == [
        {
            "message": "spec.volumes[0].nfs: not supported by florete-agent",
            "field": "spec.volumes[0].nfs",
        },
        {"message": "line 3, column 5: bad"},
    ]


@pytest.mark.usefixtures("server")
async def test_unexpected_exception_is_500_without_leak(
    sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = await RawClient.open(sock_path)
    with caplog.at_level(logging.DEBUG, logger="agent.httproute"):
        head, body = await client.request("GET", "/fail/crash")
        await client.request("GET", "/fail/crash")
    await client.close()
    assert head.status_code == 500
    assert json.loads(body)["message"] == "internal error"
    assert b"secret" not in body
    assert b"Traceback" not in body
    records = [r for r in caplog.records if r.name == "agent.httproute"]
    assert [r.levelno for r in records] == [logging.ERROR, logging.DEBUG]  # no flood
    assert records[0].exc_info is not None
    assert "secret" in str(records[0].exc_info[1])


async def test_body_too_large_is_413(app: App, sock_path: Path) -> None:
    server = HttpServer(app.router, HttpLimits(max_body_bytes=1024))
    await server.start_unix(sock_path)
    try:
        with ApiClient(sock_path) as client:
            with pytest.raises(ApiError) as caught:
                await asyncio.to_thread(client.request, "POST", "/echo/x", body=b"[" + b" " * 2048)
        assert (caught.value.status, caught.value.api_reason) == (413, "RequestEntityTooLarge")
        # A chunked body has no Content-Length: the limit applies while it arrives.
        chunked = (
            b"POST /echo/x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"400\r\n"
            + b"1" * 1024
            + b"\r\n"
            + b"400\r\n"
            + b"1" * 1024
            + b"\r\n0\r\n\r\n"
        )
        answer = await read_all(sock_path, chunked)
        assert answer.startswith(b"HTTP/1.1 413 ")
        assert b"connection: close\r\n" in answer
    finally:
        await server.close()


@pytest.mark.usefixtures("server")
async def test_chunked_request_body_is_read(sock_path: Path) -> None:
    raw = (
        b"POST /echo/x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\nconnection: close\r\n"
        b"\r\n3\r\n[1,\r\n2\r\n2]\r\n0\r\n\r\n"
    )
    answer = await read_all(sock_path, raw)
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer.endswith(b'"body":[1,2]}')


@pytest.mark.usefixtures("server")
async def test_expect_100_continue(sock_path: Path) -> None:
    reader, writer = await asyncio.open_unix_connection(sock_path)
    writer.write(
        b"POST /echo/x HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n"
    )
    async with asyncio.timeout(WAIT):
        assert await reader.readuntil(b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        writer.write(b"{}")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200 OK")
    writer.close()
    await writer.wait_closed()


@pytest.mark.usefixtures("server")
async def test_malformed_request_is_400_status(sock_path: Path) -> None:
    answer = await read_all(sock_path, b"NOT HTTP AT ALL\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b'"reason":"BadRequest"' in answer


# --- connections ----------------------------------------------------------------------------


@pytest.mark.usefixtures("server")
async def test_keep_alive_two_requests_one_connection(app: App, sock_path: Path) -> None:
    client = await RawClient.open(sock_path)
    first, _ = await client.request("GET", "/conn")
    second, _ = await client.request("GET", "/conn")
    await client.close()
    assert first.status_code == second.status_code == 200
    assert header(first, b"connection") is None
    assert len(app.tasks) == 2
    assert app.tasks[0] is app.tasks[1]


@pytest.mark.usefixtures("server")
async def test_pipelined_requests_answered_in_order(sock_path: Path) -> None:
    raw = (
        b"GET /echo/one HTTP/1.1\r\nhost: x\r\n\r\n"
        b"GET /echo/two HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"
    )
    answer = await read_all(sock_path, raw)
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert answer.index(b'"name":"one"') < answer.index(b'"name":"two"')


@pytest.mark.usefixtures("server")
async def test_connection_close_is_honoured(sock_path: Path) -> None:
    client = await RawClient.open(sock_path)
    head, _ = await client.request("GET", "/conn", headers=[("connection", "close")])
    assert header(head, b"connection") == b"close"
    async with asyncio.timeout(WAIT):
        assert await client.reader.read() == b""
    await client.close()


async def test_slow_request_gets_408_and_idle_connection_closes(app: App, sock_path: Path) -> None:
    server = HttpServer(app.router, HttpLimits(request_timeout=0.2))
    await server.start_unix(sock_path)
    try:
        # Slowloris: a head that never ends.
        answer = await read_all(sock_path, b"GET /conn HTTP/1.1\r\nhost: x\r\n")
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert b'"reason":"Timeout"' in answer
        # An idle keep-alive connection is closed without a word.
        assert await read_all(sock_path, b"") == b""
    finally:
        await server.close()


@pytest.mark.usefixtures("server")
async def test_unix_peer_credentials(app: App, sock_path: Path) -> None:
    client = await RawClient.open(sock_path)
    await client.request("GET", "/whoami")
    await client.close()
    assert app.peers == [PeerCredentials(pid=os.getpid(), uid=os.getuid(), gid=os.getgid())]


# --- streaming ------------------------------------------------------------------------------


@pytest.mark.usefixtures("server")
async def test_stream_chunks_arrive_as_produced(app: App, sock_path: Path) -> None:
    client = ApiClient(sock_path)
    chunks = client.stream("/stream")
    assert await asyncio.to_thread(next, chunks) == b"first\n"
    assert app.produced == [b"first\n"]  # received before the next chunk was produced
    app.release.set()
    assert await asyncio.to_thread(next, chunks) == b"second\n"
    assert await asyncio.to_thread(next, chunks, None) is None  # the stream ended cleanly
    assert app.stream_closed.is_set()


@pytest.mark.usefixtures("server")
async def test_client_disconnect_cancels_stream(app: App, sock_path: Path) -> None:
    chunks = ApiClient(sock_path).stream("/stream")
    assert await asyncio.to_thread(next, chunks) == b"first\n"
    await asyncio.to_thread(chunks.close)
    async with asyncio.timeout(WAIT):
        await app.stream_closed.wait()  # the generator's finally ran; no chunk was pending
    assert app.produced == [b"first\n"]


async def test_close_is_bounded_while_stream_open(app: App, sock_path: Path) -> None:
    server = HttpServer(app.router)
    await server.start_unix(sock_path)
    chunks = ApiClient(sock_path).stream("/stream")
    assert await asyncio.to_thread(next, chunks) == b"first\n"
    started = time.monotonic()
    await server.close(timeout=WAIT)
    assert time.monotonic() - started < 1.0
    assert app.stream_closed.is_set()
    with pytest.raises(ApiError, match="broke off"):  # no terminating chunk was sent
        await asyncio.to_thread(next, chunks)
    assert not await asyncio.to_thread(sock_path.exists)


async def test_close_gives_up_on_stubborn_stream(
    sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gave_up = asyncio.Event()

    async def stubborn(request: Request) -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            yield b"x"
            try:
                await asyncio.sleep(3600)
            finally:
                gave_up.set()
                await asyncio.sleep(3600)  # cleanup that ignores the first cancellation

        return StreamingResponse(200, "text/plain", chunks())

    router = Router()
    router.add("GET", "/stubborn", stubborn)
    server = HttpServer(router)
    await server.start_unix(sock_path)
    chunks = ApiClient(sock_path).stream("/stubborn")
    assert await asyncio.to_thread(next, chunks) == b"x"
    started = time.monotonic()
    await server.close(timeout=0.2)
    assert 0.2 <= time.monotonic() - started < 1.0
    assert gave_up.is_set()
    assert "still open after 0.2 s" in caplog.text
    await server.close(timeout=WAIT)  # a second close cancels the straggler again
    await asyncio.to_thread(chunks.close)


# --- Unix socket life cycle -----------------------------------------------------------------


async def test_socket_mode_and_group(app: App, sock_path: Path) -> None:
    group = grp.getgrgid(os.getgid()).gr_name
    server = HttpServer(app.router)
    await server.start_unix(sock_path, mode=0o660, group=group)
    try:
        st = os.stat(sock_path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == os.getgid()
    finally:
        await server.close()


async def test_missing_group_is_skipped(
    app: App, sock_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = HttpServer(app.router)
    await server.start_unix(sock_path, group="no-such-group-florete")
    await server.close()
    assert "group 'no-such-group-florete' does not exist" in caplog.text


@pytest.mark.usefixtures("server")
async def test_second_server_on_live_socket_is_refused(app: App, sock_path: Path) -> None:
    with pytest.raises(ConfigError, match="another server is already listening"):
        await HttpServer(app.router).start_unix(sock_path)
    client = await RawClient.open(sock_path)  # the first server still answers
    head, _ = await client.request("GET", "/conn")
    await client.close()
    assert head.status_code == 200


async def test_stale_socket_is_replaced(app: App, sock_path: Path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(os.fspath(sock_path))  # left behind by a crashed agent
    server = HttpServer(app.router)
    await server.start_unix(sock_path)
    try:
        client = await RawClient.open(sock_path)
        head, _ = await client.request("GET", "/conn")
        await client.close()
        assert head.status_code == 200
    finally:
        await server.close()


async def test_regular_file_is_not_replaced(app: App, sock_path: Path) -> None:
    await asyncio.to_thread(sock_path.write_text, "precious")
    with pytest.raises(ConfigError, match="is not a socket"):
        await HttpServer(app.router).start_unix(sock_path)
    assert await asyncio.to_thread(sock_path.read_text) == "precious"


# --- TCP with mutual TLS ----------------------------------------------------------------------


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


async def test_mtls_client_with_cert_is_served(app: App, pki: Pki) -> None:
    server = HttpServer(app.router)
    context = make_server_ssl_context(pki.server_cert, pki.server_key, pki.client_ca)
    host, port = await server.start_tcp("127.0.0.1", 0, context)
    try:
        assert port > 0
        with ApiClient.tcp(host, port, pki.client_context(with_cert=True)) as client:
            assert await asyncio.to_thread(client.request, "GET", "/whoami") == {}
    finally:
        await server.close()
    [peer] = app.peers
    assert isinstance(peer, TlsPeer)
    assert (peer.subject, peer.common_name, peer.address[0]) == ("CN=ops", "ops", "127.0.0.1")
    der = pki.client.public_bytes(serialization.Encoding.DER)
    assert peer.fingerprint_sha256 == hashlib.sha256(der).hexdigest()


async def test_mtls_client_without_cert_is_rejected(app: App, pki: Pki) -> None:
    server = HttpServer(app.router)
    context = make_server_ssl_context(pki.server_cert, pki.server_key, pki.client_ca)
    host, port = await server.start_tcp("127.0.0.1", 0, context)
    try:
        with ApiClient.tcp(host, port, pki.client_context(with_cert=False)) as client:
            with pytest.raises(ApiError) as caught:
                await asyncio.to_thread(client.request, "GET", "/whoami")
    finally:
        await server.close()
    assert caught.value.status == 0
    assert "trust this client's certificate" in caught.value.message
    assert app.peers == []  # no handler ran


@pytest.mark.parametrize("verify", [None, ssl.CERT_NONE, ssl.CERT_OPTIONAL])
async def test_tcp_without_client_verification_is_refused(
    app: App, pki: Pki, verify: ssl.VerifyMode | None
) -> None:
    context = None
    if verify is not None:
        context = make_server_ssl_context(pki.server_cert, pki.server_key, pki.client_ca)
        context.verify_mode = verify
    with pytest.raises(ConfigError, match="requires mutual TLS"):
        await HttpServer(app.router).start_tcp("127.0.0.1", 0, context)


def test_bad_tls_material_is_config_error(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="client CA"):
        make_server_ssl_context(pki.server_cert, pki.server_key, tmp_path / "missing.pem")
    with pytest.raises(ConfigError, match="certificate"):
        make_server_ssl_context(pki.server_key, pki.server_key, pki.client_ca)


# --- routing and query helpers, without sockets -----------------------------------------------


async def _ok(request: Request) -> Response:
    return Response.json(dict(request.params))


@pytest.mark.parametrize("template", ["no-slash", "/a/{b", "/a/{1x}", "/a/{x}/{x}", "/a/x{y}"])
def test_bad_templates_are_rejected(template: str) -> None:
    with pytest.raises(ValueError, match="template"):
        Router().add("GET", template, _ok)


def test_duplicate_route_is_rejected() -> None:
    router = Router()
    router.add("GET", "/a/{x}", _ok)
    with pytest.raises(ValueError, match="already registered"):
        router.add("GET", "/a/{x}", _ok)
    with pytest.raises(ValueError, match="upper-case"):
        router.add("get", "/b", _ok)


async def test_router_binds_params_and_rejects_empty_segments() -> None:
    router = Router()
    router.add("GET", "/api/v1/namespaces/{namespace}/pods/{name}/log", _ok)
    found = await router.dispatch(Request("GET", "/api/v1/namespaces/default/pods/web/log"))
    assert isinstance(found, Response)
    assert json.loads(found.body) == {"namespace": "default", "name": "web"}
    for path in ("/api/v1/namespaces//pods/web/log", "*", "/api/v1/namespaces/d/pods/web"):
        missing = await router.dispatch(Request("GET", path))
        assert isinstance(missing, Response)
        assert missing.status == 404


def test_query_helpers() -> None:
    query = Query.parse("follow=true&tailLines=10&x=1&x=2&blank&bad=maybe&n=ten")
    assert (query.get("x"), query.get_all("x"), query.get("blank")) == ("1", ["1", "2"], "")
    assert query.get("absent") is None
    assert "blank" in query
    assert "absent" not in query
    assert (query.get_bool("follow"), query.get_bool("absent", default=True)) == (True, True)
    assert (query.get_int("tailLines"), query.get_int("absent")) == (10, None)
    with pytest.raises(BadRequestError, match="not a boolean"):
        query.get_bool("bad")
    with pytest.raises(BadRequestError, match="not an integer"):
        query.get_int("n")


def test_request_json_rejects_garbage() -> None:
    with pytest.raises(BadRequestError, match="not valid JSON"):
        Request("POST", "/", body=b"{nope").json()


def test_tls_subject_is_rfc4514() -> None:
    subject = (
        (("countryName", "NZ"),),
        (("organizationName", "Acme, Inc"),),
        (("commonName", " #ops+1 "),),
    )
    peer = TlsPeer.of_certificate(b"der", subject, ("::1", 443, 0, 0))
    assert peer.subject == r"CN=\ #ops\+1\ ,O=Acme\, Inc,C=NZ"
    assert (peer.common_name, peer.address) == (" #ops+1 ", ("::1", 443))
    assert peer.fingerprint_sha256 == hashlib.sha256(b"der").hexdigest()
