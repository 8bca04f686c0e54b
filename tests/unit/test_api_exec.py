"""The exec subresource without a daemon: the checks before the upgrade and the WebSocket
session over an in-memory stream, against real host-process tasks.

``ExecOnly`` is the process runtime without ``exec_interactive``, as a third-party runtime that
can only run a command to completion would be.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import BytesMessage, CloseConnection

from agent.api_exec import ExecApi, _terminal_size
from agent.errors import BadRequestError
from agent.httproute import Query, Request, Upgrade
from agent.runtimes import RuntimeRegistry
from agent.store import Store
from wri_plugins.api import Capabilities, ResourceLimits, TaskSpec, TerminalSize
from wri_plugins.process import ProcessRuntime

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class ExecOnly(ProcessRuntime):
    """The process runtime that declares ``exec`` only."""

    name: ClassVar[str] = "execonly"
    capabilities: ClassVar[Capabilities] = Capabilities(send_signals=True, exec=True)


@dataclass
class Bed:
    api: ExecApi
    store: Store
    runtimes: RuntimeRegistry


@pytest.fixture
async def bed(tmp_path: Path) -> AsyncIterator[Bed]:
    """A store with one running pod per runtime: ``full`` (process) and ``basic`` (execonly)."""
    store = Store(tmp_path / "state.db")
    options = {"cgroup_parent": "florete-test"}
    runtimes = RuntimeRegistry(
        tmp_path,
        "node",
        {"process": options, "execonly": options},
        classes={"process": ProcessRuntime, "execonly": ExecOnly},
    )
    handles = []
    for pod, runtime in (("full", "process"), ("basic", "execonly")):
        uid = uuid.uuid4().hex
        store.create_pod("default", pod, uid, {"spec": {"containers": [{"name": "main"}]}})
        task_id = f"{uid}-main-0"
        spec = TaskSpec(
            task_id=task_id,
            pod_namespace="default",
            pod_name=pod,
            pod_uid=uid,
            container="main",
            image=None,
            argv=("sleep", "600"),
            env={"PATH": PATH, "WHO": pod},
            working_dir=None,
            limits=ResourceLimits(),
            log_path=tmp_path / f"{pod}.log",
        )
        store.record_task_intent(uid, "main", 0, task_id, runtime)
        handle = await runtimes.get(runtime).start(spec)
        handles.append((runtime, handle))
        store.record_task_handle(uid, "main", 0, handle.to_json())
    try:
        yield Bed(ExecApi(store, runtimes), store, runtimes)
    finally:
        for runtime, handle in handles:
            await runtimes.get(runtime).destroy(handle, force=True)
        for runtime in ("process", "execonly"):
            await runtimes.get(runtime).close()


def _request(pod: str, *command: str, **flags: bool) -> Request:
    query = {"command": list(command), **{k: ["true" if v else "false"] for k, v in flags.items()}}
    headers = (
        ("upgrade", "websocket"),
        ("connection", "Upgrade"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ("sec-websocket-protocol", "v5.channel.k8s.io"),
    )
    return Request(
        "GET",
        f"/api/v1/namespaces/default/pods/{pod}/exec",
        query=Query(query),
        headers=headers,
        params={"namespace": "default", "name": pod},
    )


class _Wire:
    """The server's end of an upgraded connection, in memory; the test plays kubectl."""

    def __init__(self) -> None:
        self.client = Connection(ConnectionType.CLIENT)
        self._incoming: asyncio.Queue[bytes] = asyncio.Queue()
        self.channels: dict[int, bytearray] = {}
        self.closed = False

    async def read(self, n: int = -1) -> bytes:
        return await self._incoming.get()

    def write(self, data: bytes) -> None:
        self.client.receive_data(data)
        for event in self.client.events():
            if isinstance(event, BytesMessage):
                channel = event.data[0]
                self.channels.setdefault(channel, bytearray()).extend(event.data[1:])
            elif isinstance(event, CloseConnection):
                self.closed = True
                self._incoming.put_nowait(self.client.send(event.response()))

    async def drain(self) -> None:
        pass

    def send(self, channel: int, data: bytes) -> None:
        self._incoming.put_nowait(self.client.send(BytesMessage(data=bytes([channel]) + data)))

    def status(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads(self.channels[3])
        return result


async def _session(upgrade: Upgrade, wire: _Wire) -> None:
    await asyncio.wait_for(upgrade.run(b"", wire), 20)
    assert wire.closed


async def test_runtime_without_exec_interactive_refuses_stdin_and_tty(bed: Bed) -> None:
    for flags in ({"stdin": True}, {"tty": True}):
        request = _request("basic", "cat", stdout=True, **flags)
        with pytest.raises(BadRequestError, match="not supported by runtime execonly"):
            await bed.api.exec_pod(request)
    with pytest.raises(BadRequestError, match="at least 1 of stdin, stdout, stderr"):
        await bed.api.exec_pod(_request("full", "true"))


async def test_run_to_completion_combines_output(bed: Bed) -> None:
    script = 'echo "out $WHO"; echo err >&2; exit 3'
    upgrade = await bed.api.exec_pod(_request("basic", "sh", "-c", script, stdout=True))
    assert isinstance(upgrade, Upgrade)
    wire = _Wire()
    await _session(upgrade, wire)
    assert wire.channels[1] == b"out basic\nerr\n"
    assert 2 not in wire.channels
    assert wire.status()["details"]["causes"] == [{"reason": "ExitCode", "message": "3"}]


async def test_attached_exec_takes_stdin_and_keeps_stderr_apart(bed: Bed) -> None:
    script = 'cat; echo "err $WHO" >&2'
    request = _request("full", "sh", "-c", script, stdin=True, stdout=True, stderr=True)
    upgrade = await bed.api.exec_pod(request)
    assert isinstance(upgrade, Upgrade)
    wire = _Wire()
    wire.send(0, b"hello ")
    wire.send(0, b"world")
    wire.send(255, b"\x00")  # v5: stdin closed
    await _session(upgrade, wire)
    assert wire.channels[1] == b"hello world"
    assert wire.channels[2] == b"err full\n"
    assert wire.status() == {"metadata": {}, "status": "Success"}


async def test_terminal_gets_its_size(bed: Bed) -> None:
    request = _request("full", "sh", "-c", "read x; stty size", stdin=True, stdout=True, tty=True)
    upgrade = await bed.api.exec_pod(request)
    assert isinstance(upgrade, Upgrade)
    wire = _Wire()
    wire.send(4, b'{"Width": 77, "Height": 11}')
    wire.send(4, b"not json")  # ignored
    await asyncio.sleep(0.2)
    wire.send(0, b"go\r")
    await _session(upgrade, wire)
    assert b"11 77\r\n" in wire.channels[1]


def test_terminal_sizes_are_parsed_strictly() -> None:
    assert _terminal_size(b'{"Width": 80, "Height": 24}') == TerminalSize(80, 24)
    for bad in (b"", b"[]", b'{"Width": 0, "Height": 24}', b'{"Width": "80", "Height": 24}'):
        assert _terminal_size(bad) is None
