"""OpenWrt's UCI /etc/config/florete onto the agent's configuration keys, and the procd init
script that runs the translation (packaging/openwrt/florete-agent/files)."""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import config_keys, load_config
from link_drivers.serial_radio.config import RadioProfile, SerialConfig
from link_drivers.wifi.config import WifiConfig

FILES = Path(__file__).resolve().parents[2] / "packaging" / "openwrt" / "florete-agent" / "files"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("florete_uci2toml", FILES / "uci2toml.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


uci2toml = _load()

FULL = """
package florete

config agent 'agent'
	option enabled '1'
	option name 'rover 1'   # a comment
	list label 'site=field-3'
	list label "role=relay"
	option state_dir '/srv/fl'
	list interface 'br-lan'
	list interface wlan0
	option udp_port '4800'
	option mdns 'no'
	option keepalive '0.5'
	option dead_interval '2'
	option listen '192.168.1.1:8443'
	option tls_client_ca '/etc/florete-agent/ca.pem'
	option socket_mode '0600'
	option runtime 'process'
	option log_level 'debug'
	option log_format 'json'

config serial_radio 'sik'
	option port '/dev/ttyUSB0'
	option baudrate '57600'
	option profile 'sik'
	option stopbits '1.5'
	option rtscts '1'

config serial_radio
	option enabled '0'
	option port '/dev/ttyS1'

config wifi
	option interface 'mesh0'
	option mode 'mesh'
	option mesh_id 'florete'
	option frequency '2412'
"""


def _toml(text: str) -> dict[str, object]:
    return tomllib.loads(uci2toml.convert(text, "/etc/config/florete"))


def test_every_option_maps_to_a_key_the_agent_and_drivers_know() -> None:
    known = {key for key, _env, _doc in config_keys()}
    agent_options, _ = uci2toml.SECTIONS["agent"]
    assert {o.key for o in agent_options.values() if o.key} <= known
    serial, _ = uci2toml.SECTIONS["serial_radio"]
    serial_fields = {f.name for f in dataclasses.fields(SerialConfig)} - {"profile"}
    profile_fields = {f.name for f in dataclasses.fields(RadioProfile)} - {"name"}
    assert set(serial) == serial_fields | profile_fields | {"profile", "enabled"}
    wifi, _ = uci2toml.SECTIONS["wifi"]
    assert set(wifi) == {f.name for f in dataclasses.fields(WifiConfig)} | {"enabled"}


def test_full_config_translates_to_what_the_agent_and_drivers_accept(tmp_path: Path) -> None:
    doc = _toml(FULL)
    assert doc == {
        "state_dir": "/srv/fl",
        "node": {"name": "rover 1", "labels": {"site": "field-3", "role": "relay"}},
        "network": {"interfaces": ["br-lan", "wlan0"]},
        "links": {
            "udp_port": 4800,
            "mdns": False,
            "keepalive": 0.5,
            "dead_interval": 2.0,
            "serial_radios": [
                {
                    "port": "/dev/ttyUSB0",
                    "baudrate": 57600,
                    "profile": "sik",
                    "stopbits": 1.5,
                    "rtscts": True,
                }
            ],
            "wifi": [
                {"interface": "mesh0", "mode": "mesh", "mesh_id": "florete", "frequency": 2412}
            ],
        },
        "api": {
            "listen": "192.168.1.1:8443",
            "tls_client_ca": "/etc/florete-agent/ca.pem",
            "socket_mode": "0600",
        },
        "runtime": {"default": "process"},
        "log": {"level": "debug", "format": "json"},
    }
    path = tmp_path / "agent.toml"
    path.write_text(uci2toml.convert(FULL))
    cfg = load_config({"config": str(path)}, environ={}, is_root=True)
    assert cfg.node.labels == {"site": "field-3", "role": "relay"}
    assert cfg.api.socket_mode == 0o600
    assert cfg.sources["links.udp_port"] == str(path)
    radio = SerialConfig.from_mapping(cfg.links.serial_radios[0])
    assert (radio.profile.name, radio.stopbits, radio.rtscts) == ("sik", 1.5, True)
    assert WifiConfig(**cfg.links.wifi[0]).frequency == 2412


def test_shipped_config_translates_and_loads(tmp_path: Path) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(uci2toml.convert((FILES / "florete.config").read_text()))
    cfg = load_config({"config": str(path)}, environ={}, is_root=True)
    assert cfg.state_dir == Path("/srv/florete-agent")  # on flash: /var is a tmpfs on OpenWrt
    assert cfg.network.interfaces == ("br-lan",)


def test_state_dir_defaults_to_flash() -> None:
    assert _toml("config agent 'agent'\n") == {"state_dir": "/srv/florete-agent"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "want exactly one section \"config agent 'agent'\", found 0"),
        ("config agent\n", "found 1 (named None)"),
        ("config agent 'agent'\nconfig agent 'agent'\n", "found 2"),
        ("config agent 'agent'\nconfig radio\n", ":2: unknown section type 'radio'"),
        (
            "config agent 'agent'\n\toption udp_prot '1'\n",
            ":2: agent section: unknown option 'udp_prot'",
        ),
        ("config agent 'agent'\n\toption udp_port 'x'\n", "option udp_port: expected an integer"),
        ("config agent 'agent'\n\toption mdns 'maybe'\n", "option mdns: expected a boolean"),
        ("config agent 'agent'\n\toption keepalive 'inf'\n", "expected a finite number"),
        ("config agent 'agent'\n\tlist name 'a'\n", "option name: takes one value"),
        ("config agent 'agent'\n\tlist label 'novalue'\n", "expected KEY=VALUE"),
        ("config agent 'agent'\n\toption name 'a\n", ":2: No closing quotation"),
        ("option name 'a'\n", ":1: option 'name' outside a config section"),
        (
            "config agent 'agent'\n\toption name a\n\toption name b\n",
            ":3: option 'name' is given twice",
        ),
        ("config agent 'agent'\n\toption name\n", "expected 'config TYPE [NAME]'"),
        ("config agent 'my-agent'\n", "'my-agent': names hold letters"),
    ],
)
def test_bad_input_is_a_precise_error(text: str, message: str) -> None:
    with pytest.raises(uci2toml.UciError) as err:
        uci2toml.convert(text, "/etc/config/florete")
    assert message in str(err.value)
    assert str(err.value).startswith("/etc/config/florete")


def test_uci_quoting_as_libuci_reads_it() -> None:
    text = """config agent 'agent'\n\toption name 'it'"'"'s # not a comment'\n"""
    assert _toml(text)["node"] == {"name": "it's # not a comment"}


@given(st.text(st.characters(exclude_categories=["Cs"])))
def test_any_string_survives_the_toml_writer(value: str) -> None:
    doc = {"node": {"name": value, "labels": {value or "k": value}}}
    assert tomllib.loads(uci2toml.dump_toml(doc)) == doc


def test_command_line_writes_atomically_and_reports_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uci = tmp_path / "florete"
    uci.write_text("config agent 'agent'\n\tlist interface 'lo'\n")
    out = tmp_path / "var" / "florete-agent.toml"
    assert uci2toml.main(["--output", str(out), str(uci)]) == 0
    assert tomllib.loads(out.read_text())["network"] == {"interfaces": ["lo"]}
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    uci.write_text("config agent 'agent'\n\toption mdns 'perhaps'\n")
    assert uci2toml.main(["--output", str(out), str(uci)]) == 1
    assert "option mdns: expected a boolean" in capsys.readouterr().err
    assert tomllib.loads(out.read_text())["network"] == {"interfaces": ["lo"]}  # kept
    assert uci2toml.main([str(tmp_path / "missing")]) == 1
    assert "cannot read" in capsys.readouterr().err


# --- the procd init script, run by busybox ash with procd's functions recorded ------------------

STUBS = r"""
config_load() { :; }
config_get_bool() { eval "$1=\${ENABLED:-1}"; }
procd_open_instance() { echo "open" >>"$LOG"; }
procd_set_param() { echo "param $*" >>"$LOG"; }
procd_close_instance() { echo "close" >>"$LOG"; }
procd_add_reload_trigger() { echo "reload-trigger $*" >>"$LOG"; }
logger() { echo "logger $*" >>"$LOG"; }
"""


def _run_init(tmp_path: Path, uci_text: str, enabled: str = "1") -> tuple[int, list[str], str]:
    shell = shutil.which("busybox") or pytest.fail("busybox is not installed (.ci/run installs it)")
    script = (FILES / "florete-agent.init").read_text()
    script = script.replace("/usr/lib/florete-agent/uci2toml.py", str(FILES / "uci2toml.py"))
    script = script.replace("/var/etc/florete-agent.toml", str(tmp_path / "agent.toml"))
    script = script.replace("/etc/config/florete", str(tmp_path / "florete"))
    (tmp_path / "florete").write_text(uci_text)
    (tmp_path / "init.sh").write_text(
        STUBS + script + "\nstart_service\nrc=$?\nservice_triggers\nexit $rc\n"
    )
    python_dir = Path(sys.executable).parent
    env = {
        "PATH": f"{python_dir}:{os.environ['PATH']}",
        "LOG": str(tmp_path / "log"),
        "ENABLED": enabled,
    }
    result = subprocess.run(
        [shell, "ash", str(tmp_path / "init.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    log = (tmp_path / "log").read_text().splitlines() if (tmp_path / "log").exists() else []
    return result.returncode, log, result.stderr


def test_init_script_translates_then_starts_a_respawning_instance(tmp_path: Path) -> None:
    rc, log, _ = _run_init(tmp_path, "config agent 'agent'\n\tlist interface 'lo'\n")
    conf = tmp_path / "agent.toml"
    assert rc == 0
    assert log == [
        "open",
        f"param command /usr/bin/florete-agent run --config {conf}",
        "param respawn 3600 5 0",
        f"param file {conf}",  # a changed translation restarts the agent on reload
        "param term_timeout 20",
        "param stdout 1",
        "param stderr 1",
        "close",
        "reload-trigger florete",
    ]
    assert tomllib.loads(conf.read_text())["network"] == {"interfaces": ["lo"]}


def test_init_script_starts_nothing_when_disabled(tmp_path: Path) -> None:
    rc, log, _ = _run_init(tmp_path, "config agent 'agent'\n", enabled="0")
    assert (rc, log) == (0, ["reload-trigger florete"])


def test_init_script_logs_a_bad_config_and_fails(tmp_path: Path) -> None:
    rc, log, stderr = _run_init(tmp_path, "config agent 'agent'\n\toption udp_port 'many'\n")
    assert rc == 1
    assert log[0].startswith("logger -t florete-agent -p daemon.err uci2toml.py: ")
    assert "option udp_port: expected an integer" in log[0]
    assert "expected an integer" in stderr
    assert "open" not in log
