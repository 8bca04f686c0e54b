"""Pure parts of the podman runtime: names, request bodies, inspect data, frames, OOM lines."""

from __future__ import annotations

import re
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import ConfigError, RemoteProtocolError
from wri_plugins.api import ExitResult, ResourceLimits, RuntimeContext, TaskSpec
from wri_plugins.podman import PodmanRuntime
from wri_plugins.podman.frames import Frame, FrameDecoder
from wri_plugins.podman.images import ImageError, _follow_pull
from wri_plugins.podman.oom import oom_kill_in
from wri_plugins.podman.spec import (
    MAX_NAME,
    ContainerInfo,
    PortMapping,
    container_body,
    container_name,
    pod_body,
    pod_name,
    pod_network,
    resource_limits,
    safe_name,
    task_port_mappings,
)

PODMAN_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]*$")
CID = "30c7d93b5e8c39c3523d8d9afb64ee77b826002a0e11d748fddabbe8531b4bc9"


def make_spec(**changes: Any) -> TaskSpec:
    fields: dict[str, Any] = {
        "task_id": "0f6a-web-2",
        "pod_namespace": "default",
        "pod_name": "web",
        "pod_uid": "0f6a",
        "container": "web",
        "image": "localhost/busybox:latest",
        "argv": ("sh", "-c", "echo hi"),
        "env": {"A": "1"},
        "working_dir": None,
        "limits": ResourceLimits(),
        "log_path": Path("/var/log/pods/web/2.log"),
    }
    return TaskSpec(**{**fields, **changes})


def test_names_of_pods_and_containers() -> None:
    assert pod_name("default", "web", "0f6a") == "default_web_0f6a"
    assert container_name("0f6a-web-2") == "florete-0f6a-web-2"


@given(st.text(min_size=1, max_size=300))
def test_safe_names_are_valid_and_distinct(text: str) -> None:
    name = safe_name(text)
    assert PODMAN_NAME.match(name), name
    assert len(name) <= MAX_NAME
    if name == text:
        assert PODMAN_NAME.match(text)
    else:  # changed names carry a hash of the original: two inputs never collide
        assert safe_name(text + "x") != name


def test_long_pod_names_are_cut_with_a_hash() -> None:
    long = "a" * 253
    first, second = pod_name("default", long, "u1"), pod_name("default", long, "u2")
    assert first != second
    assert len(first) == MAX_NAME


def test_container_body_maps_the_task_spec() -> None:
    spec = make_spec(
        working_dir="/srv",
        limits=ResourceLimits(cpu_millis=250, memory_bytes=64 << 20),
    )
    body = container_body(spec, "default_web_0f6a", log_max_bytes=1 << 20)
    assert body["name"] == "florete-0f6a-web-2"
    assert body["pod"] == "default_web_0f6a"
    assert body["image"] == "localhost/busybox:latest"
    assert body["entrypoint"] == ["sh", "-c", "echo hi"]
    assert "command" not in body  # the image's CMD is not appended to an explicit command
    assert body["env"] == {"A": "1"}
    assert (body["work_dir"], body["create_working_dir"]) == ("/srv", True)
    assert body["restart_policy"] == "no"
    assert body["labels"]["io.florete.task-id"] == "0f6a-web-2"
    assert body["log_configuration"] == {
        "driver": "k8s-file",
        "path": "/var/log/pods/web/2.log",
        "size": 1 << 20,
    }
    assert body["resource_limits"] == {
        "memory": {"limit": 64 << 20, "swap": 64 << 20},
        "cpu": {"quota": 25_000, "period": 100_000},
    }


def test_empty_argv_keeps_the_image_default() -> None:
    body = container_body(make_spec(argv=()), None, log_max_bytes=0)
    assert not {"entrypoint", "command", "pod", "resource_limits", "work_dir"} & body.keys()
    assert "size" not in body["log_configuration"]


@pytest.mark.parametrize(
    ("command", "args", "expected"),
    [
        (("sh", "-c"), ("echo hi",), {"entrypoint": ["sh", "-c"], "command": ["echo hi"]}),
        (("sh",), (), {"entrypoint": ["sh"]}),  # command alone: the image's CMD is dropped
        ((), ("-h",), {"command": ["-h"]}),  # args alone: the image's ENTRYPOINT stays
    ],
)
def test_command_and_args_map_to_entrypoint_and_command(
    command: tuple[str, ...], args: tuple[str, ...], expected: dict[str, Any]
) -> None:
    spec = make_spec(argv=(*command, *args), command=command, args=args)
    body = container_body(spec, None, log_max_bytes=0)
    assert {k: body[k] for k in ("entrypoint", "command") if k in body} == expected


@pytest.mark.parametrize(
    ("uid", "gid", "user"), [(1000, None, "1000"), (1000, 50, "1000:50"), (None, 50, "0:50")]
)
def test_security_context_maps_to_user_and_read_only(
    uid: int | None, gid: int | None, user: str
) -> None:
    spec = make_spec(run_as_user=uid, run_as_group=gid, read_only_root_fs=True)
    body = container_body(spec, None, log_max_bytes=0)
    assert (body["user"], body["read_only_filesystem"]) == (user, True)
    plain = container_body(make_spec(), None, log_max_bytes=0)
    assert not {"user", "read_only_filesystem"} & plain.keys()


def test_host_ports_of_the_whole_pod_and_host_network() -> None:
    ports = ((80, "TCP", 8080, None), (81, "TCP", None, None))
    spec = make_spec(ports=ports, pod_ports=((80, "TCP", 8080, None), (53, "UDP", 53, "::1")))
    assert task_port_mappings(spec) == [
        PortMapping(80, 8080, "TCP", None),
        PortMapping(53, 53, "UDP", "::1"),
    ]
    assert task_port_mappings(make_spec(ports=ports)) == [PortMapping(80, 8080, "TCP", None)]
    assert pod_network(make_spec(host_network=True), "bridge") == "host"
    assert pod_network(make_spec(), "none") == "none"


def test_tiny_cpu_limits_get_the_kernel_minimum() -> None:
    assert resource_limits(ResourceLimits(cpu_millis=1))["cpu"]["quota"] == 1_000


def test_pod_body_publishes_host_ports_on_loopback_by_default() -> None:
    ports = [PortMapping(80, 8080), PortMapping(53, 5353, "UDP", host_ip="10.99.0.1")]
    body = pod_body(make_spec(), "bridge", ports, "127.0.0.1")
    assert body["name"] == "default_web_0f6a"
    assert body["hostname"] == "web"
    assert body["netns"] == {"nsmode": "bridge"}
    assert body["portmappings"] == [
        {"host_ip": "127.0.0.1", "host_port": 8080, "container_port": 80, "protocol": "tcp"},
        {"host_ip": "10.99.0.1", "host_port": 5353, "container_port": 53, "protocol": "udp"},
    ]
    assert "io.florete.task-id" not in body["labels"]
    assert body["labels"]["io.florete.pod-uid"] == "0f6a"
    host = pod_body(make_spec(), "host", ports, "127.0.0.1")
    assert "portmappings" not in host  # the host network needs no mapping
    with pytest.raises(ValueError, match="network"):
        pod_body(make_spec(), "slirp4netns", [], "127.0.0.1")


def inspect_data(**state: Any) -> dict[str, Any]:
    return {
        "Id": CID,
        "Name": "florete-0f6a-web-2",
        "Pod": "pod-id",
        "State": {
            "Status": "exited",
            "ExitCode": 0,
            "OOMKilled": False,
            "Pid": 0,
            "StartedAt": "2026-11-21T06:47:48.418493047Z",
            "FinishedAt": "2026-11-21T06:47:48.721119531Z",
            **state,
        },
        "Config": {"Labels": {"io.florete.task-id": "0f6a-web-2"}},
        "HostConfig": {"LogConfig": {"Type": "k8s-file", "Path": "/l.log"}, "Memory": 0},
    }


def test_inspect_data_of_an_exited_container() -> None:
    info = ContainerInfo.parse(inspect_data(ExitCode=3))
    assert (info.status, info.ended, info.live) == ("exited", True, False)
    assert info.task_id == "0f6a-web-2"
    assert (info.pod, info.log_path, info.pid, info.conmon_pid) == ("pod-id", "/l.log", None, None)
    assert info.started_at == pytest.approx(1795243668.418493)
    result = info.exit_result()
    assert result == ExitResult(3, None, False, result.finished_at)
    assert result.finished_at == pytest.approx(1795243668.721119)


@pytest.mark.parametrize(
    ("code", "oom", "expected"),
    [
        (137, False, (137, 9, False)),
        (143, False, (143, 15, False)),
        (255, False, (255, None, False)),
    ],
)
def test_exit_codes_above_128_are_signals(
    code: int, oom: bool, expected: tuple[int, int | None, bool]
) -> None:
    result = ContainerInfo.parse(inspect_data(ExitCode=code, OOMKilled=oom)).exit_result()
    assert (result.exit_code, result.signal, result.oom_killed) == expected


def test_oom_from_podman_or_from_elsewhere() -> None:
    assert ContainerInfo.parse(inspect_data(ExitCode=137, OOMKilled=True)).exit_result().oom_killed
    assert ContainerInfo.parse(inspect_data(ExitCode=137)).exit_result(True).oom_killed


def test_never_started_container_has_not_ended() -> None:
    info = ContainerInfo.parse(
        inspect_data(Status="created", StartedAt="0001-01-01T00:00:00Z", FinishedAt="")
    )
    assert (info.started_at, info.finished_at, info.ended, info.live) == (0.0, 0.0, False, False)


def test_running_container() -> None:
    info = ContainerInfo.parse(inspect_data(Status="running", Pid=14107, ConmonPid=14095))
    assert (info.live, info.ended, info.pid, info.conmon_pid) == (True, False, 14107, 14095)


def test_inspect_data_without_state_is_refused() -> None:
    with pytest.raises(ValueError, match="State"):
        ContainerInfo.parse({"Id": CID})


def frame(stream: int, payload: bytes) -> bytes:
    return struct.pack(">BxxxI", stream, len(payload)) + payload


def test_frames_in_any_pieces() -> None:
    data = frame(1, b"out\n") + frame(2, b"err\n") + frame(1, b"")
    decoder = FrameDecoder()
    frames = [f for i in range(len(data)) for f in decoder.feed(data[i : i + 1])]
    assert frames == [Frame("stdout", b"out\n"), Frame("stderr", b"err\n"), Frame("stdout", b"")]
    decoder.close()


def test_cut_frame_and_bad_header() -> None:
    decoder = FrameDecoder()
    assert decoder.feed(frame(1, b"abc")[:-1]) == []
    with pytest.raises(RemoteProtocolError, match="inside a frame"):
        decoder.close()
    with pytest.raises(RemoteProtocolError):
        FrameDecoder().feed(b"HTTP/1.1 200 OK\r\n")


@given(st.binary(max_size=200))
def test_frame_decoder_parses_or_raises_protocol_error(data: bytes) -> None:
    try:
        frames = FrameDecoder().feed(data)
    except RemoteProtocolError:
        return
    assert sum(8 + len(f.payload) for f in frames) <= len(data)


def test_oom_kill_lines_of_the_kernel_log() -> None:
    line = (
        b"6,2508,2869236359,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),"
        b"cpuset=libpod-"
        + CID.encode()
        + b",mems_allowed=0,oom_memcg=/libpod_parent/libpod-"
        + CID.encode()
        + b",task_memcg=/libpod_parent/libpod-"
        + CID.encode()
        + b",task=tail,pid=17796,uid=0"
    )
    other = line.replace(CID.encode(), b"f" * 64)
    assert oom_kill_in([b"4,1,1,-;unrelated", line], CID)
    assert not oom_kill_in([other], CID)
    assert not oom_kill_in([b"3,2509,1,-;Memory cgroup out of memory: Killed " + CID.encode()], CID)
    assert not oom_kill_in([line], CID[:12])  # a short id could match another container


def test_pull_stream_errors_start_with_err_image_pull() -> None:
    _follow_pull("x", b'{"stream": "Trying to pull x...\\n"}')
    _follow_pull("x", b"not json")
    with pytest.raises(ImageError, match=r"^ErrImagePull: pulling image x: dial tcp") as caught:
        _follow_pull("x", b'{"error": "dial tcp 127.0.0.1:9: connect: connection refused"}')
    assert caught.value.waiting_reason == "ErrImagePull"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sokcet": "/x"}, "unknown option 'sokcet'"),
        ({"start_service": "yes"}, "start_service: want bool"),
        ({"network": "slirp4netns"}, "network: one of bridge, host, none"),
        ({"pull_timeout": 0}, "pull_timeout must be > 0"),
        ({"log_max_bytes": True}, "log_max_bytes: want int"),
    ],
)
def test_bad_options_are_config_errors(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        PodmanRuntime(RuntimeContext(tmp_path, "node", options))


def test_options_accept_integer_seconds(tmp_path: Path) -> None:
    PodmanRuntime(RuntimeContext(tmp_path, "node", {"pull_timeout": 5, "network": "host"}))
