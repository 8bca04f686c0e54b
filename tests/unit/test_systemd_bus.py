"""Choosing the bus, connection failures and options of the systemd runtime (no systemd)."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent.errors import ConfigError, RuntimeUnavailableError
from wri_plugins.api import RuntimeContext, TaskHandle
from wri_plugins.systemd import SystemdRuntime
from wri_plugins.systemd.bus import SYSTEM_BUS, SystemdBus, resolve_address


@pytest.mark.parametrize(
    ("bus", "address", "env", "booted", "uid", "expected"),
    [
        ("auto", None, {}, True, 0, (SYSTEM_BUS, "system")),
        ("auto", None, {"XDG_RUNTIME_DIR": "/run/user/0"}, False, 0,
         ("unix:path=/run/user/0/bus", "user")),
        ("auto", None, {}, True, 1000, ("unix:path=/run/user/1000/bus", "user")),
        ("system", None, {"DBUS_SYSTEM_BUS_ADDRESS": "unix:path=/x"}, False, 5,
         ("unix:path=/x", "system")),
        ("user", None, {"XDG_RUNTIME_DIR": "/tmp/rt"}, True, 0, ("unix:path=/tmp/rt/bus", "user")),
        ("user", "unix:path=/custom", {}, True, 0, ("unix:path=/custom", "user")),
        ("auto", "unix:path=/custom", {}, True, 0, ("unix:path=/custom", "system")),
    ],
)  # fmt: skip
def test_resolve_address(
    bus: str,
    address: str | None,
    env: dict[str, str],
    booted: bool,
    uid: int,
    expected: tuple[str, str],
) -> None:
    assert resolve_address(bus, address, env, booted=booted, uid=uid) == expected


def test_resolve_address_rejects_unknown_bus() -> None:
    with pytest.raises(ValueError, match="system, user or auto"):
        resolve_address("session", None, {}, booted=False, uid=0)


async def test_missing_socket_is_unavailable_with_its_path(tmp_path: Path) -> None:
    bus = SystemdBus(f"unix:path={tmp_path}/bus")
    with pytest.raises(RuntimeUnavailableError, match=f"no D-Bus socket at {tmp_path}/bus"):
        async with bus.session():
            pass


async def test_a_socket_that_hangs_up_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "bus"
    server = await asyncio.start_unix_server(lambda _r, w: w.close(), path=str(path))
    async with server:
        bus = SystemdBus(f"unix:path={path}")
        with pytest.raises(RuntimeUnavailableError, match="bus"):
            async with bus.session():
                pass


async def test_a_socket_nobody_listens_on_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "bus"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))  # bound, never listening: connections are refused
        bus = SystemdBus(f"unix:path={path}")
        with pytest.raises(RuntimeUnavailableError, match="nothing listens"):
            async with bus.session():
                pass


def _runtime(tmp_path: Path, **options: Any) -> SystemdRuntime:
    return SystemdRuntime(RuntimeContext(tmp_path, "node", options))


async def test_fingerprint_without_a_bus_is_unhealthy_not_an_error(tmp_path: Path) -> None:
    rt = _runtime(tmp_path, bus="user", bus_address=f"unix:path={tmp_path}/none")
    fp = await rt.fingerprint()
    assert not fp.healthy
    assert "no systemd user manager" in fp.description
    assert f"{tmp_path}/none" in fp.description
    assert fp.attributes["limits_enforced"] == "false"
    assert fp.attributes["arch"]
    await rt.close()


async def test_fingerprint_with_a_malformed_address_is_unhealthy(tmp_path: Path) -> None:
    fp = await _runtime(tmp_path, bus_address="tcp-but-not-really").fingerprint()
    assert not fp.healthy


async def test_a_bus_without_systemd_makes_the_runtime_unhealthy(tmp_path: Path) -> None:
    """A real dbus-daemon on which no systemd answers (systemd died, or never ran)."""
    if shutil.which("dbus-daemon") is None:
        pytest.skip("dbus-daemon is not installed")
    address = f"unix:path={tmp_path}/bus"
    daemon = await asyncio.create_subprocess_exec(
        "dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address={address}",
        "--print-address", stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        assert daemon.stdout is not None
        await asyncio.wait_for(daemon.stdout.readline(), 10)  # listening
        rt = _runtime(tmp_path, bus="user", bus_address=address)
        fp = await rt.fingerprint()
        assert not fp.healthy
        assert "systemd is not on the bus" in fp.description
        with pytest.raises(RuntimeUnavailableError):
            await rt.recover(TaskHandle("systemd", "t-0", {}))
    finally:
        daemon.kill()
        await daemon.wait()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"nope": 1}, "unknown option 'nope'"),
        ({"bus": "session"}, "bus: want system, user or auto"),
        ({"log_max_bytes": -1}, "log_max_bytes"),
        ({"log_max_files": True}, "log_max_files"),
        ({"stop_timeout": 0}, "stop_timeout"),
        ({"slice": 3}, "slice"),
        ({"slice": "florete"}, "slice unit name"),
    ],
)
def test_bad_options_are_config_errors(
    tmp_path: Path, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        _runtime(tmp_path, **options)


def test_dbus_fast_is_imported_only_when_used() -> None:
    code = "import sys, wri_plugins.systemd; print('dbus_fast' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, cwd=Path(__file__).parents[2]
    )
    assert out.stdout.strip() == b"False"
