"""Tests for agent.config: sources and precedence, errors naming key and source, helpers."""

from __future__ import annotations

import dataclasses
import re
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import psutil
import pytest

from agent.config import (
    Config,
    config_keys,
    describe_config,
    load_config,
    resolve_interfaces,
    validate_runtime_options,
)
from agent.errors import ConfigError


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    path.mkdir()
    return path


def load(
    env: dict[str, str] | None = None, flags: dict[str, Any] | None = None, *, home: Path
) -> Config:
    """Load as a non-root user whose environment holds only HOME plus ``env``."""
    return load_config(flags, {"HOME": str(home), **(env or {})}, is_root=False)


def write(home: Path, text: str) -> Path:
    path = home / ".config" / "florete-agent" / "agent.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_non_root(home: Path) -> None:
    cfg = load(home=home)
    state = home / ".local" / "state" / "florete-agent"
    assert cfg.state_dir == state
    assert cfg.file is None
    assert cfg.node.name == socket.gethostname()
    assert cfg.node.labels == {}
    assert cfg.api.socket == state / "agent.sock"
    assert cfg.api.socket_mode == 0o660
    assert cfg.api.socket_group == "florete"
    assert cfg.api.listen == ""
    assert cfg.api.tls_client_ca is None
    assert cfg.network.interfaces == ()
    assert cfg.runtime.default == ""
    assert cfg.runtimes == {}
    assert (cfg.reconciler.backoff_initial, cfg.reconciler.backoff_max) == (10.0, 300.0)
    assert (cfg.reconciler.backoff_reset, cfg.reconciler.shutdown_timeout) == (600.0, 10.0)
    assert (cfg.log.level, cfg.log.format) == ("info", "text")
    assert set(cfg.sources.values()) == {"default"}


def test_defaults_root() -> None:
    cfg = load_config({}, {}, is_root=True)
    assert cfg.state_dir == Path("/var/lib/florete-agent")
    assert cfg.api.socket == Path("/var/lib/florete-agent/agent.sock")


def test_xdg_dirs(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "xdgconf" / "florete-agent" / "agent.toml"
    path.parent.mkdir(parents=True)
    path.write_text('[log]\nlevel = "debug"\n')
    env = {"XDG_STATE_HOME": str(tmp_path / "xdgstate"), "XDG_CONFIG_HOME": str(path.parents[1])}
    cfg = load(env, home=home)
    assert cfg.state_dir == tmp_path / "xdgstate" / "florete-agent"
    assert cfg.file == path
    assert cfg.log.level == "debug"
    # The XDG spec says relative values are ignored.
    cfg = load({"XDG_STATE_HOME": "relative"}, home=home)
    assert cfg.state_dir == home / ".local" / "state" / "florete-agent"


def test_file_overrides_defaults(home: Path) -> None:
    path = write(
        home,
        """
        state_dir = "/srv/florete"
        [node]
        name = "rover"
        labels = { zone = "north", "florete.io/arch" = "armv7" }
        [api]
        socket_mode = 0o600
        [network]
        interfaces = ["lo", "wlan0", "lo"]
        [runtimes.podman]
        socket = "/run/podman/podman.sock"
        [reconciler]
        backoff_initial = 1
        [log]
        format = "json"
        """,
    )
    cfg = load(home=home)
    assert cfg.file == path
    assert cfg.state_dir == Path("/srv/florete")
    assert cfg.api.socket == Path("/srv/florete/agent.sock")  # follows the state dir
    assert cfg.node.name == "rover"
    assert cfg.node.labels == {"zone": "north", "florete.io/arch": "armv7"}
    assert cfg.api.socket_mode == 0o600
    assert cfg.network.interfaces == ("lo", "wlan0")
    assert cfg.runtimes == {"podman": {"socket": "/run/podman/podman.sock"}}
    assert cfg.reconciler.backoff_initial == 1.0
    assert cfg.log.format == "json"
    assert cfg.sources["state_dir"] == str(path)
    assert cfg.sources["api.socket"] == "default"
    assert cfg.sources["log.level"] == "default"


def test_env_overrides_file_and_flags_override_env(home: Path) -> None:
    write(home, '[log]\nlevel = "warning"\n[node]\nname = "from-file"\n')
    env = {"FLORETE_LOG_LEVEL": "ERROR", "FLORETE_NODE_NAME": "from-env"}
    cfg = load(env, home=home)
    assert (cfg.log.level, cfg.node.name) == ("error", "from-env")
    assert cfg.sources["log.level"] == "environment (FLORETE_LOG_LEVEL)"

    cfg = load(env, {"log.level": "debug", "node.name": None}, home=home)
    assert (cfg.log.level, cfg.node.name) == ("debug", "from-env")
    assert cfg.sources["log.level"] == "flags"


def test_env_values_parse(home: Path, tmp_path: Path) -> None:
    env = {
        "FLORETE_STATE_DIR": str(tmp_path / "s"),
        "FLORETE_INTERFACES": "lo, eth0,,",
        "FLORETE_BACKOFF_INITIAL": "0.5",
        "FLORETE_BACKOFF_MAX": "60",
        "FLORETE_BACKOFF_RESET": "1e3",
        "FLORETE_API_LISTEN": "[::1]:8443",
        "FLORETE_API_TLS_CLIENT_CA": str(tmp_path / "ca.pem"),
    }
    cfg = load(env, home=home)
    assert cfg.state_dir == tmp_path / "s"
    assert cfg.api.socket == tmp_path / "s" / "agent.sock"
    assert cfg.network.interfaces == ("lo", "eth0")
    assert cfg.reconciler.backoff_initial == 0.5
    assert cfg.reconciler.backoff_max == 60.0
    assert cfg.reconciler.backoff_reset == 1000.0
    assert cfg.api.listen == "[::1]:8443"
    assert cfg.api.tls_client_ca == tmp_path / "ca.pem"


def test_explicit_socket_wins_over_state_dir(home: Path, tmp_path: Path) -> None:
    flags = {"state_dir": tmp_path / "a", "api.socket": str(tmp_path / "b.sock")}
    cfg = load(flags=flags, home=home)
    assert cfg.state_dir == tmp_path / "a"
    assert cfg.api.socket == tmp_path / "b.sock"


def test_config_flag_and_env(home: Path, tmp_path: Path) -> None:
    one = tmp_path / "one.toml"
    one.write_text('[log]\nlevel = "debug"\n')
    two = tmp_path / "two.toml"
    two.write_text('[log]\nlevel = "error"\n')
    cfg = load({"FLORETE_CONFIG": str(one)}, home=home)
    assert (cfg.log.level, cfg.file) == ("debug", one)
    assert cfg.sources["config"] == "environment (FLORETE_CONFIG)"
    cfg = load({"FLORETE_CONFIG": str(one)}, {"config": two}, home=home)
    assert (cfg.log.level, cfg.file) == ("error", two)
    assert cfg.sources["config"] == "flags"


def test_named_config_file_must_exist(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match=r"environment \(FLORETE_CONFIG\): config: no such file"):
        load({"FLORETE_CONFIG": str(missing)}, home=home)
    with pytest.raises(ConfigError, match="flags: config: no such file"):
        load(flags={"config": str(missing)}, home=home)


def test_unknown_file_key_names_key_and_file(home: Path) -> None:
    path = write(home, '[api]\nsockt = "/x"\n[fleet]\nbroker = "b"\n')
    with pytest.raises(ConfigError) as info:
        load(home=home)
    lines = str(info.value).splitlines()
    assert lines == [
        f'{path}: unknown key "api.sockt" (did you mean "api.socket"?)',
        f'{path}: unknown key "fleet"',
    ]


def test_scalar_where_table_expected(home: Path) -> None:
    path = write(home, 'api = "x"\n')
    with pytest.raises(ConfigError, match=re.escape(f'{path}: "api" must be a table')):
        load(home=home)


def test_unknown_env_and_flag(home: Path) -> None:
    env = {"FLORETE_FOO": "1", "FLORETE_LOG_LEVL": "x", "OTHER": "ignored"}
    with pytest.raises(ConfigError) as info:
        load(env, {"log.levl": "debug"}, home=home)
    assert str(info.value).splitlines() == [
        "environment: unknown variable FLORETE_FOO",
        "environment: unknown variable FLORETE_LOG_LEVL (did you mean FLORETE_LOG_LEVEL?)",
        'flags: unknown key "log.levl" (did you mean "log.level"?)',
    ]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[log]\nlevel = "loud"', r"log\.level: must be one of debug, info, warning, error"),
        ("[log]\nlevel = 3", r"log\.level: expected a string, got int 3"),
        ('[reconciler]\nbackoff_max = "soon"', r"backoff_max: expected a positive number"),
        ("[reconciler]\nbackoff_max = -1", r"backoff_max: expected a positive number"),
        ("[reconciler]\nbackoff_max = true", r"backoff_max: expected a positive number"),
        ("[reconciler]\nbackoff_initial = 400.0", r"backoff_initial: 400\.0 s exceeds"),
        ('[api]\nsocket_mode = "rw-rw----"', r"socket_mode: expected an octal mode"),
        ("[api]\nsocket_mode = 0o1777", r"socket_mode: mode 1777 is outside"),
        ('[api]\nlisten = "8443"', r'api\.listen: expected "host:port"'),
        ('[api]\nlisten = "0.0.0.0:70000"', r"api\.listen: expected .* a port 0-65535"),
        ("[network]\ninterfaces = [1]", r"interfaces: expected a list of names"),
        ("[node]\nlabels = { zone = 1 }", r"node\.labels: expected a table of strings"),
        ('[node]\nname = ""', r"node\.name: must not be empty"),
        ("[runtimes]\npodman = 1", r"runtimes: expected one table per runtime"),
        ("[links]\nudp_port = 70000", r"links\.udp_port: expected a port 0-65535"),
        ('[links]\nmdns = "maybe"', r"links\.mdns: expected true or false"),
        ("[links]\nkeepalive = 5.0", r"links\.keepalive: 5\.0 s must be below"),
        ('[links]\nserial_radios = "ttyUSB0"', r"serial_radios: expected a list of tables"),
        (
            'state_dir = "/' + "d" * 100 + '"',
            r"state_dir: socket path /d+/agent\.sock is 112 bytes",
        ),
    ],
)
def test_wrong_values_name_key_and_source(home: Path, toml: str, message: str) -> None:
    path = write(home, toml)
    with pytest.raises(ConfigError, match=re.escape(str(path)) + ": .*" + message):
        load(home=home)


def test_wrong_env_value_names_variable(home: Path) -> None:
    with pytest.raises(ConfigError, match=r"environment \(FLORETE_BACKOFF_MAX\): .*backoff_max"):
        load({"FLORETE_BACKOFF_MAX": "5 min"}, home=home)


def test_bad_value_is_reported_even_when_overridden(home: Path) -> None:
    path = write(home, '[log]\nlevel = "loud"\n')
    with pytest.raises(ConfigError, match=re.escape(f"{path}: log.level")):
        load({"FLORETE_LOG_LEVEL": "info"}, home=home)


def test_malformed_toml_gives_position(home: Path) -> None:
    path = write(home, "[api]\nsocket = \n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: invalid TOML") + r".*line 2"):
        load(home=home)


def test_links_section(home: Path) -> None:
    write(home, '[[links.serial_radios]]\ndevice = "/dev/ttyUSB0"\nbaud = 57600\n')
    cfg = load({"FLORETE_LINK_PORT": "0", "FLORETE_MDNS": "off"}, home=home)
    assert (cfg.links.udp_port, cfg.links.mdns) == (0, False)
    assert (cfg.links.keepalive, cfg.links.dead_interval) == (1.0, 3.0)
    assert [dict(t) for t in cfg.links.serial_radios] == [{"device": "/dev/ttyUSB0", "baud": 57600}]
    rows = {key: value for key, value, _ in describe_config(cfg)}
    assert rows["links.serial_radios"] == '[{"baud": 57600, "device": "/dev/ttyUSB0"}]'
    assert rows["links.mdns"] == "False"


def test_describe_config(home: Path) -> None:
    write(home, '[runtimes.podman]\nsocket = "/run/p.sock"\n')
    cfg = load({"FLORETE_INTERFACES": "lo,eth0"}, home=home)
    rows = {key: (value, source) for key, value, source in describe_config(cfg)}
    assert rows["config"] == (str(cfg.file), "default")
    assert rows["api.socket_mode"] == ("0660", "default")
    assert rows["network.interfaces"] == ("lo,eth0", "environment (FLORETE_INTERFACES)")
    assert rows["api.tls_client_ca"] == ("", "default")
    assert rows["runtimes"] == ('{"podman": {"socket": "/run/p.sock"}}', str(cfg.file))
    assert set(rows) == {"config", *(key for key, _, _ in config_keys())}


def test_every_key_has_a_typed_field() -> None:
    """The key table and the dataclass tree agree (a key added to one must be in the other)."""
    fields: set[str] = set()
    for top in dataclasses.fields(Config):
        if dataclasses.is_dataclass(top.type):
            fields |= {f"{top.name}.{f.name}" for f in dataclasses.fields(top.type)}
        elif top.name not in ("file", "sources"):
            fields.add(top.name)
    assert {key for key, _, _ in config_keys()} == fields


ALLOWED: dict[str, Any] = {
    "socket": Path("/run/podman/podman.sock"),
    "pull": True,
    "retries": 3,
    "timeout": 5.0,
    "network": "bridge",
    "devices": (),
    "extra": None,
}


def test_validate_runtime_options_converts_and_fills_defaults() -> None:
    options = {"socket": "/tmp/p.sock", "timeout": 2, "devices": ["/dev/ttyUSB0"], "extra": [1]}
    result = validate_runtime_options("podman", options, ALLOWED, "/etc/a.toml")
    assert result == {
        **ALLOWED,
        "socket": Path("/tmp/p.sock"),
        "timeout": 2.0,
        "devices": ("/dev/ttyUSB0",),
        "extra": [1],
    }


def test_validate_runtime_options_errors() -> None:
    options = {"sockett": "/x", "pull": 1, "retries": True, "network": 5, "timeout": "1"}
    with pytest.raises(ConfigError) as info:
        validate_runtime_options("podman", options, ALLOWED, "/etc/a.toml")
    assert str(info.value).splitlines() == [
        '/etc/a.toml: unknown key "runtimes.podman.sockett" '
        '(did you mean "runtimes.podman.socket"?)',
        "/etc/a.toml: runtimes.podman.pull: expected bool, got int 1",
        "/etc/a.toml: runtimes.podman.retries: expected int, got bool True",
        "/etc/a.toml: runtimes.podman.network: expected str, got int 5",
        "/etc/a.toml: runtimes.podman.timeout: expected float, got str '1'",
    ]


def fake_stats(monkeypatch: pytest.MonkeyPatch) -> None:
    stats = {
        "lo": SimpleNamespace(isup=True, flags="up,loopback,running"),
        "wlan0": SimpleNamespace(isup=True, flags="up,broadcast,running,multicast"),
        "eth0": SimpleNamespace(isup=True, flags="up,broadcast,running,multicast"),
        "eth1": SimpleNamespace(isup=False, flags="broadcast,multicast"),
    }
    monkeypatch.setattr(psutil, "net_if_stats", lambda: stats)


def test_resolve_interfaces_default_is_up_non_loopback(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_stats(monkeypatch)
    assert resolve_interfaces(load(home=home)) == ("eth0", "wlan0")


def test_resolve_interfaces_explicit(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_stats(monkeypatch)
    cfg = load({"FLORETE_INTERFACES": "lo,eth1"}, home=home)
    assert resolve_interfaces(cfg) == ("lo", "eth1")
    cfg = load({"FLORETE_INTERFACES": "lo,wlan9"}, home=home)
    with pytest.raises(
        ConfigError,
        match=r"environment \(FLORETE_INTERFACES\): network\.interfaces: no such interface wlan9",
    ):
        resolve_interfaces(cfg)


def test_resolve_interfaces_real_loopback(home: Path) -> None:
    """Against the real psutil: ``lo`` exists on the Linux machines these tests run on."""
    assert "lo" in psutil.net_if_stats()
    assert resolve_interfaces(load({"FLORETE_INTERFACES": "lo"}, home=home)) == ("lo",)
