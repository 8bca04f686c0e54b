"""The packages' static parts: the systemd unit, the Debian files, the OpenWrt .ipk and the
dependency table that ties them to pyproject.toml (docs/packaging.md).

The long checks (the .deb built, lintian, piuparts, chroots, systemd as PID 1) are in
packaging/test-packaging.sh (``make test-packaging``). Building the .ipk here fetches the
carried wheels once (PyPI; cached in build/vendor) and builds the project's wheel.
"""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from agent.config import config_keys, load_config

REPO = Path(__file__).resolve().parents[2]
PACKAGING = REPO / "packaging"
DEBIAN = PACKAGING / "debian"
FEED = PACKAGING / "openwrt" / "florete-agent"
UNIT = PACKAGING / "systemd" / "florete-agent.service"
LAUNCHER_PATH = "usr/lib/florete-agent/bin/florete-agent"


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


vendor = _load("florete_packaging_vendor", PACKAGING / "vendor.py")
build_ipk = _load("florete_packaging_build_ipk", PACKAGING / "openwrt" / "build_ipk.py")


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (.ci/run installs it)")
    return path


def _table() -> dict[str, Any]:
    return tomllib.loads((PACKAGING / "dependencies.toml").read_text(encoding="utf-8"))


def _requirement_names() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = []
    for requirement in project["dependencies"]:
        match = re.match(r"[A-Za-z0-9._-]+", requirement)
        assert match is not None, requirement
        names.append(match.group(0))
    return names


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the systemd unit ----------------------------------------------------------------------------


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verified as installed: the launcher in place and the host's own units beside it."""
    launcher = tmp_path / LAUNCHER_PATH
    launcher.parent.mkdir(parents=True)
    shutil.copy(PACKAGING / "florete-agent", launcher)
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, tmp_path / "etc/systemd/system")
    (tmp_path / "usr/lib/systemd").mkdir(parents=True)
    (tmp_path / "usr/lib/systemd/system").symlink_to("/lib/systemd/system")
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", "--man=no", f"--root={tmp_path}", UNIT.name],
        capture_output=True,
        text=True,
        check=False,
    )
    # a bad value is only a warning (exit status 0): any output fails
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_unit_verify_catches_a_missing_launcher(tmp_path: Path) -> None:
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(UNIT, tmp_path / "etc/systemd/system")
    (tmp_path / "usr/lib/systemd").mkdir(parents=True)
    (tmp_path / "usr/lib/systemd/system").symlink_to("/lib/systemd/system")
    result = subprocess.run(
        [_tool("systemd-analyze"), "verify", "--man=no", f"--root={tmp_path}", UNIT.name],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0
    assert LAUNCHER_PATH in result.stderr


def test_unit_runs_the_packaged_launcher_as_a_notify_service() -> None:
    settings = dict(
        line.split("=", 1) for line in UNIT.read_text().splitlines() if re.match(r"^\w+=", line)
    )
    assert settings["Type"] == "notify"
    assert settings["Restart"] == "always"
    assert settings["KillMode"] == "process"  # workloads outlive the agent
    assert settings["ExecStart"] == f"/{LAUNCHER_PATH} run"
    links = (DEBIAN / "florete-agent.links").read_text().split()
    assert links == [LAUNCHER_PATH, "usr/bin/florete-agent"]


# --- Debian ------------------------------------------------------------------------------------


def _control_depends() -> list[str]:
    control = (DEBIAN / "control").read_text()
    match = re.search(r"^Depends:(.*?)^\S", control.split("Package: florete-agent")[1], re.M | re.S)
    assert match is not None
    return [d.strip() for d in match.group(1).split(",") if d.strip() and "${" not in d]


def test_every_dependency_is_a_system_package_or_carried() -> None:
    table = _table()
    carried = {_norm(n): v for n, v in table["vendor"].items()}
    for name in _requirement_names():
        for target, system in (("deb", table["debian"]), ("ipk", table["openwrt"])):
            into = carried.get(_norm(name), {}).get("into", [])
            assert (name in system) != (target in into), f"{name}: one of [{target}] or vendor"


def test_debian_control_depends_on_the_table_exactly() -> None:
    debian = sorted(str(v) for v in _table()["debian"].values())
    assert sorted(d for d in _control_depends() if d.startswith("python3-")) == debian


def test_debian_copyright_covers_every_carried_distribution() -> None:
    copyright_text = (DEBIAN / "copyright").read_text()
    for name, entry in _table()["vendor"].items():
        if "deb" in entry["into"]:
            assert f"Files: vendor/{name.replace('-', '_')}-*" in copyright_text, name


def test_versions_agree() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    changelog = (DEBIAN / "changelog").read_text().splitlines()[0]
    assert changelog.startswith(f"florete-agent ({version}) ")
    assert f"PKG_VERSION:={version}\n" in (FEED / "Makefile").read_text()


def _conffile_uncommented(text: str) -> str:
    """The conffile with every commented key and table header made live."""
    lines = []
    for line in text.splitlines():
        match = re.match(r"^# (\[[a-z_.]+\]|[a-z_]+ = .*?)(\s+#.*)?$", line)
        lines.append(match.group(1) if match else line)
    return "\n".join(lines)


def test_debian_conffile_changes_nothing_and_names_only_real_keys(tmp_path: Path) -> None:
    text = (DEBIAN / "agent.toml").read_text()
    assert tomllib.loads(text) == {}
    live = tmp_path / "agent.toml"
    live.write_text(_conffile_uncommented(text))
    doc = tomllib.loads(live.read_text())
    keys = []
    for name, value in doc.items():
        keys += [f"{name}.{key}" for key in value] if isinstance(value, dict) else [name]
    assert set(keys) <= {key for key, _env, _doc in config_keys()}
    assert {"state_dir", "node.name", "network.interfaces", "log.level"} <= set(keys)
    cfg = load_config({"config": str(live)}, environ={}, is_root=True)
    assert cfg.api.socket_group == "florete"


def test_debian_is_architecture_all_and_private() -> None:
    control = (DEBIAN / "control").read_text()
    assert "Architecture: all" in control
    rules = (DEBIAN / "rules").read_text()
    assert "usr/lib/florete-agent" in rules
    assert "dist-packages" not in rules
    assert "site-packages" not in rules


@pytest.mark.parametrize(
    ("script", "shell"),
    [
        (DEBIAN / "florete-agent.postinst", "sh"),
        (DEBIAN / "florete-agent.postrm", "sh"),
        (DEBIAN / "build-deb.sh", "sh"),
        (FEED / "files" / "florete-agent.init", "sh"),
        (PACKAGING / "test-packaging.sh", "bash"),
        (PACKAGING / "chroot.sh", "bash"),
        (PACKAGING / "armhf" / "check.sh", "bash"),
        (PACKAGING / "armhf" / "in-chroot.sh", "bash"),
    ],
    ids=lambda v: v.name if isinstance(v, Path) else v,
)
def test_shell_scripts_parse_and_pass_shellcheck(script: Path, shell: str) -> None:
    subprocess.run([shell, "-n", str(script)], check=True)
    result = subprocess.run(
        [_tool("shellcheck"), "-x", "--shell", shell, str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout


# --- vendor.py -----------------------------------------------------------------------------------


def _wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


def test_vendor_table_entries_are_well_formed() -> None:
    items = vendor.load_vendored()
    assert {i.name for i in items} >= {"cbor2", "zeroconf", "pyroute2", "dbus-fast", "textual"}
    for item in items:
        assert item.why
        assert item.license


def test_vendor_refuses_compiled_code(tmp_path: Path) -> None:
    pure = _wheel(tmp_path / "pure-1-py3-none-any.whl", {"pure/__init__.py": b"x = 1\n"})
    vendor.check_pure(pure)
    for name, data in [("m/_speed.so", b"\0"), ("m/helper", b"\x7fELF\x01\x01")]:
        wheel = _wheel(tmp_path / f"bad{len(name)}-1-py3-none-any.whl", {name: data})
        with pytest.raises(vendor.VendorError, match="holds compiled code"):
            vendor.check_pure(wheel)


def test_vendor_install_lays_out_purelib_only_and_refuses_unsafe_paths(tmp_path: Path) -> None:
    wheel = _wheel(
        tmp_path / "a-1-py3-none-any.whl",
        {
            "a/__init__.py": b"",
            "a-1.data/purelib/b.py": b"",
            "a-1.data/scripts/tool": b"#!/bin/sh\n",
            "a-1.dist-info/METADATA": b"Name: a\n",
        },
    )
    written = vendor.install([wheel], tmp_path / "lib")
    assert sorted(p.relative_to(tmp_path / "lib").as_posix() for p in written) == [
        "a-1.dist-info/METADATA",
        "a/__init__.py",
        "b.py",
    ]
    with pytest.raises(vendor.VendorError, match="is in both"):
        vendor.install([wheel, wheel], tmp_path / "again")
    evil = _wheel(tmp_path / "e-1-py3-none-any.whl", {"../escape.py": b""})
    with pytest.raises(vendor.VendorError, match="unsafe path"):
        vendor.install([evil], tmp_path / "lib2")


# --- OpenWrt: the .ipk ---------------------------------------------------------------------------


@dataclass
class Ipk:
    """An .ipk taken apart: the outer members, and control and data archives by name."""

    outer: list[str]
    debian_binary: bytes
    control: dict[str, tarfile.TarInfo]
    control_data: dict[str, bytes]
    data: dict[str, tarfile.TarInfo]
    data_bytes: dict[str, bytes]


def _open_ipk(path: Path) -> Ipk:
    def members(blob: bytes) -> tuple[dict[str, tarfile.TarInfo], dict[str, bytes]]:
        infos, contents = {}, {}
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tar:
            for info in tar.getmembers():
                infos[info.name] = info
                if info.isfile():
                    handle = tar.extractfile(info)
                    assert handle is not None
                    contents[info.name] = handle.read()
        return infos, contents

    _, outer = members(path.read_bytes())
    with tarfile.open(path, mode="r:gz") as tar:
        names = tar.getnames()
    control, control_data = members(outer["./control.tar.gz"])
    data, data_bytes = members(outer["./data.tar.gz"])
    return Ipk(names, outer["./debian-binary"], control, control_data, data, data_bytes)


@pytest.fixture(scope="module")
def ipks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Ipk, Ipk]:
    out = tmp_path_factory.mktemp("ipk")
    core, tui = build_ipk.build(out, REPO / "build" / "vendor")
    assert core.name == f"florete-agent_{build_ipk.project_version()}-1_all.ipk"
    return _open_ipk(core), _open_ipk(tui)


def _control(ipk: Ipk) -> dict[str, str]:
    text = ipk.control_data["./control"].decode()
    return dict(line.split(": ", 1) for line in text.splitlines())


def test_ipk_is_a_gzipped_tar_of_the_three_members(ipks: tuple[Ipk, Ipk]) -> None:
    for ipk in ipks:
        assert ipk.outer == ["./debian-binary", "./data.tar.gz", "./control.tar.gz"]
        assert ipk.debian_binary == b"2.0\n"
        for info in [*ipk.control.values(), *ipk.data.values()]:
            assert (info.uid, info.gid) == (0, 0), info.name


def test_ipk_control_fields(ipks: tuple[Ipk, Ipk]) -> None:
    core, tui = ipks
    fields = _control(core)
    assert fields["Package"] == "florete-agent"
    assert fields["Version"] == f"{build_ipk.project_version()}-1"
    assert fields["Architecture"] == "all"
    size = sum(len(b) for b in core.data_bytes.values())
    assert int(fields["Installed-Size"]) == size
    depends = fields["Depends"].split(", ")
    assert {v for v in _table()["openwrt"].values() if v} <= set(depends)
    makefile = (FEED / "Makefile").read_text()
    block = makefile.split("define Package/florete-agent\n")[1].split("endef")[0]
    assert re.findall(r"\+([\w-]+)", block) == depends  # the feed Makefile says the same
    assert _control(tui)["Depends"] == "florete-agent"


def test_ipk_conffiles_and_maintainer_scripts(ipks: tuple[Ipk, Ipk], tmp_path: Path) -> None:
    core, _ = ipks
    assert core.control_data["./conffiles"] == b"/etc/config/florete\n"
    assert "./etc/config/florete" in core.data
    for name in ("./postinst", "./prerm"):
        assert core.control[name].mode == 0o755
        script = tmp_path / name[2:]
        script.write_bytes(core.control_data[name])
        subprocess.run(["sh", "-n", str(script)], check=True)
        lint = subprocess.run([_tool("shellcheck"), "--shell=sh", str(script)], check=False)
        assert lint.returncode == 0


def test_ipk_init_script_is_executable_and_lint_clean(
    ipks: tuple[Ipk, Ipk], tmp_path: Path
) -> None:
    core, _ = ipks
    info = core.data["./etc/init.d/florete-agent"]
    assert info.mode == 0o755
    script = tmp_path / "florete-agent.init"
    script.write_bytes(core.data_bytes["./etc/init.d/florete-agent"])
    subprocess.run(["sh", "-n", str(script)], check=True)
    lint = subprocess.run([_tool("shellcheck"), str(script)], capture_output=True, check=False)
    assert lint.returncode == 0, lint.stdout


def test_ipk_data_is_a_private_pure_python_install(ipks: tuple[Ipk, Ipk]) -> None:
    core, tui = ipks
    lib = "./usr/lib/florete-agent/"
    link = core.data["./usr/bin/florete-agent"]
    assert link.issym()
    assert link.linkname == "../lib/florete-agent/bin/florete-agent"
    assert core.data[f"./{LAUNCHER_PATH}"].mode == 0o755
    for ipk in (core, tui):
        for name, data in ipk.data_bytes.items():
            assert not name.endswith((".so", ".pyc")), name
            assert not data.startswith(b"\x7fELF"), name
            assert "site-packages" not in name
            assert "dist-packages" not in name
    entry_points = next(
        data
        for name, data in core.data_bytes.items()
        if name.endswith("dist-info/entry_points.txt") and "florete_agent" in name
    )
    assert b"[florete.wri]" in entry_points
    assert b"[florete.links]" in entry_points
    for package in ("agent", "wri_plugins", "link_drivers", "cbor2", "zeroconf", "pyroute2"):
        assert f"{lib}{package}/__init__.py" in core.data, package
    assert f"{lib}dbus_fast/__init__.py" not in core.data  # no systemd on OpenWrt
    assert f"{lib}textual/__init__.py" in tui.data
    assert f"{lib}textual/__init__.py" not in core.data
    assert not set(core.data_bytes) & set(tui.data_bytes)  # the TUI package adds, never replaces


def test_ipk_keeps_the_state_across_sysupgrade(ipks: tuple[Ipk, Ipk]) -> None:
    core, _ = ipks
    keep = core.data_bytes["./lib/upgrade/keep.d/florete-agent"].decode().split()
    config = core.data_bytes["./etc/config/florete"].decode()
    state_dir = re.search(r"option state_dir '([^']+)'", config)
    assert state_dir is not None
    assert all(path.startswith(state_dir.group(1) + "/") for path in keep)
