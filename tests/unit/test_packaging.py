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
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.version import Version

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


#: pyproject's optional features that an installed package must carry (dev and bench are not
#: installed).
FEATURES = ("tui", "pairing", "mqtt", "supernode", "android")
#: What markers of a requirement are evaluated against: the Pythons of bookworm and OpenWrt.
MARKER_ENV = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}


def _requirements() -> list[Requirement]:
    """pyproject's dependencies and those of :data:`FEATURES`."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    texts = list(project["dependencies"])
    for feature in FEATURES:
        texts += [r for r in project["optional-dependencies"][feature] if "florete" not in r]
    return [Requirement(text) for text in texts]


def _requirement_names() -> list[str]:
    return sorted({r.name for r in _requirements()})


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
    """Each of pyproject's dependencies and optional features' is in each package one way:
    the system's, or carried (on OpenWrt, the TUI's in florete-agent-tui)."""
    table = _table()
    carried = {_norm(n): set(v["into"]) for n, v in table["vendor"].items()}
    debian = {_norm(n) for n in table["debian"]}
    openwrt = {_norm(n) for n in table["openwrt"]}
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    tui = {_norm(Requirement(r).name) for r in project["optional-dependencies"]["tui"]}
    for name in map(_norm, _requirement_names()):
        into = carried.get(name, set())
        assert (name in debian) != ("deb" in into), f"{name}: one of [debian] or carried"
        ipk = "ipk-tui" if name in tui else "ipk"
        assert (name in openwrt) != (ipk in into), f"{name}: one of [openwrt] or into {ipk}"


def _debian_minimum(spec: str) -> Version:
    match = re.fullmatch(r"[\w.+-]+ \(>= ([\w.~+-]+)\)", spec)
    assert match is not None, spec
    return Version(match.group(1))


def test_every_system_minimum_and_carried_version_meets_pyproject() -> None:
    table = _table()
    carried = {_norm(n): v for n, v in table["vendor"].items()}
    debian = {_norm(n): v for n, v in table["debian"].items()}
    for requirement in _requirements():
        name = _norm(requirement.name)
        if name in debian:
            assert requirement.specifier.contains(_debian_minimum(debian[name])), requirement
        if name in carried:
            assert requirement.specifier.contains(carried[name]["version"]), requirement


@pytest.fixture(scope="module")
def carried_wheels() -> dict[str, Path]:
    """Every carried wheel (fetched once from PyPI, then from the cache in build/vendor)."""
    return {i.name: vendor.fetch(i, REPO / "build" / "vendor") for i in vendor.load_vendored()}


def _wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as archive:
        meta = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(meta).decode()
    return [
        Requirement(line.split(":", 1)[1])
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def test_every_requirement_of_a_carried_wheel_is_met(carried_wheels: dict[str, Path]) -> None:
    """Each carried wheel's own requirements (with the extras asked for it) are a system
    package of at least the version asked, or carried into the same package at a version that
    fits; ``waive`` in dependencies.toml names the exceptions, each with its reason."""
    table = _table()
    entries = {_norm(n): v for n, v in table["vendor"].items()}
    systems = {
        "deb": {_norm(n): v for n, v in table["debian"].items()},
        "ipk": {_norm(n): v for n, v in table["openwrt"].items() if v},
    }
    extras: dict[str, set[str]] = {}  # carried name -> extras a carried wheel asks of it
    requirements = {n: _wheel_requirements(w) for n, w in carried_wheels.items()}
    for reqs in requirements.values():
        for req in reqs:
            extras.setdefault(_norm(req.name), set()).update(req.extras)
    checked = 0
    for name, reqs in requirements.items():
        entry = entries[_norm(name)]
        waived = {_norm(k) for k in entry.get("waive", {})}
        for req in reqs:
            wanted = {""} | extras.get(_norm(name), set())
            marker = req.marker or Marker("python_version >= '0'")
            if not any(marker.evaluate({**MARKER_ENV, "extra": e}) for e in wanted):
                continue
            dep = _norm(req.name)
            for target in entry["into"]:
                system = systems["deb" if target == "deb" else "ipk"]
                # florete-agent-tui adds to florete-agent: it may use what that one carries
                into = {target, "ipk"} if target == "ipk-tui" else {target}
                if dep in entries and into & set(entries[dep]["into"]):
                    version = entries[dep]["version"]
                    assert req.specifier.contains(version), f"{name}: {req} ({dep} {version})"
                elif dep in system:
                    if target == "deb" and dep not in waived:
                        minimum = _debian_minimum(system[dep])
                        assert req.specifier.contains(minimum), f"{name}: {req} ({system[dep]})"
                else:
                    pytest.fail(f"{name} (into {target}) needs {req}: neither system nor carried")
                checked += 1
        for dep in waived:
            assert dep in {_norm(r.name) for r in reqs}, f"{name}: waive {dep}, not required"
    assert checked > 20


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
    assert {i.name for i in items} >= {"spake2", "asyncssh", "paho-mqtt", "pysyncobj", "segno"}
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
    # every optional feature but the TUI is in the agent's package
    for package in ("spake2", "segno", "asyncssh", "paho/mqtt", "pysyncobj"):
        assert f"{lib}{package}/__init__.py" in core.data, package
    assert f"{lib}dbus_fast/__init__.py" not in core.data  # no systemd on OpenWrt
    for package in ("textual", "rich", "pygments", "markdown_it", "platformdirs", "mdurl"):
        assert f"{lib}{package}/__init__.py" in tui.data, package
        assert f"{lib}{package}/__init__.py" not in core.data, package
    for ipk in (core, tui):  # typing_extensions is the feed's
        assert f"{lib}typing_extensions.py" not in ipk.data
    assert not set(core.data_bytes) & set(tui.data_bytes)  # the TUI package adds, never replaces
    # what each carries is exactly what dependencies.toml says, at its version
    for ipk, target in ((core, "ipk"), (tui, "ipk-tui")):
        dist_infos = {
            name.split("/")[4].lower()
            for name in ipk.data
            if name.startswith(lib) and name.count("/") > 4 and ".dist-info" in name.split("/")[4]
        }
        dist_infos.discard(f"florete_agent-{build_ipk.project_version()}.dist-info")
        assert dist_infos == {
            f"{re.sub(r'[-_.]+', '_', i.name)}-{i.version}.dist-info".lower()
            for i in vendor.load_vendored()
            if target in i.into
        }


def test_ipk_keeps_the_state_across_sysupgrade(ipks: tuple[Ipk, Ipk]) -> None:
    core, _ = ipks
    keep = core.data_bytes["./lib/upgrade/keep.d/florete-agent"].decode().split()
    config = core.data_bytes["./etc/config/florete"].decode()
    state_dir = re.search(r"option state_dir '([^']+)'", config)
    assert state_dir is not None
    assert all(path.startswith(state_dir.group(1) + "/") for path in keep)


#: Modules of CPython's standard library that the OpenWrt feed splits out of python3-light into
#: packages of their own (lang/python/python3/files/python3-package-*.mk in openwrt/packages).
OPENWRT_SPLIT = {
    "asyncio": "python3-asyncio",
    "logging": "python3-logging",
    "sqlite3": "python3-sqlite3",
    "_sqlite3": "python3-sqlite3",
    "ssl": "python3-openssl",
    "_ssl": "python3-openssl",
    "_hashlib": "python3-openssl",
    "email": "python3-email",
    "urllib": "python3-urllib",
    "uuid": "python3-uuid",
    "_uuid": "python3-uuid",
    "ctypes": "python3-ctypes",
    "_ctypes": "python3-ctypes",
    "multiprocessing": "python3-multiprocessing",
    "_multiprocessing": "python3-multiprocessing",
    "decimal": "python3-decimal",
    "_decimal": "python3-decimal",
    "unicodedata": "python3-codecs",
    "xml": "python3-xml",
    "xmlrpc": "python3-xml",
    "pyexpat": "python3-xml",
    "_elementtree": "python3-xml",
    "lzma": "python3-lzma",
    "_lzma": "python3-lzma",
    "dbm": "python3-dbm",
    "curses": "python3-ncurses",
    "_curses": "python3-ncurses",
    "readline": "python3-readline",
    "unittest": "python3-unittest",
    "pydoc": "python3-pydoc",
    "webbrowser": "python3-webbrowser",
    "cgi": "python3-cgi",
    "cgitb": "python3-cgitb",
    "distutils": "python3-distutils",
    "lib2to3": "python3-lib2to3",
    "venv": "python3-venv",
}
#: The standard library imports these only inside ``try: ... except ImportError`` (zipfile,
#: shutil, tarfile): without them, .xz archives do not open, nothing else.
OPENWRT_OPTIONAL = {"python3-lzma"}
#: What runs on OpenWrt: the plugins (the systemd runtime needs systemd) and each feature's
#: modules with the libraries they import lazily; the TUI's in florete-agent-tui.
OPENWRT_CORE_MODULES = (
    "agent.cli",
    "agent.daemon",
    "agent.cli_pairing",
    "agent.pairing.crypto",
    "agent.pairing.ssh",
    "segno",
    "wri_plugins.process",
    "wri_plugins.podman",
    "wri_plugins.android.connection",
    "asyncssh",
    "link_drivers.udp",
    "link_drivers.serial_radio",
    "link_drivers.wifi",
    "agent.mqtt.client",
    "paho.mqtt.client",
    "supernode.raft",
    "supernode.member",
)
OPENWRT_TUI_MODULES = ("agent.tui.app", "agent.tui.command")


def _feed_packages_imported(modules: tuple[str, ...]) -> set[str]:
    """The feed's python3-* packages whose modules importing ``modules`` loads."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import importlib, sys\n"
            "for m in sys.argv[1:]: importlib.import_module(m)\n"
            "print('\\n'.join(sys.modules))",
            *modules,
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
    )
    packages = set()
    for name in result.stdout.split():
        top = name.split(".")[0]
        if top.startswith("_codecs_"):
            packages.add("python3-codecs")
        elif top in OPENWRT_SPLIT:
            packages.add(OPENWRT_SPLIT[top])
    return packages - OPENWRT_OPTIONAL


def test_ipk_depends_on_every_feed_python3_module_it_imports() -> None:
    core = set(build_ipk.feed_depends())
    assert _feed_packages_imported(OPENWRT_CORE_MODULES) <= core
    assert _feed_packages_imported(OPENWRT_TUI_MODULES) <= core  # the TUI package adds none
