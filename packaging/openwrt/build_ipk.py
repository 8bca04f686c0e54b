"""Assemble florete-agent's OpenWrt packages without the OpenWrt SDK.

    python3 packaging/openwrt/build_ipk.py [--out DIR] [--vendor-cache DIR] [--stage DIR]

writes ``DIR/florete-agent_VERSION-1_all.ipk`` (the agent) and
``DIR/florete-agent-tui_VERSION-1_all.ipk`` (the pure-Python tree ``florete-agent tui`` needs,
optional: the one optional part; pairing, the Android runtime, the MQTT bridge and supernodes
are in the agent's package), and prints their paths. An .ipk is a gzip'd tar of ``./debian-binary``,
``./data.tar.gz`` and ``./control.tar.gz``, as OpenWrt's ``ipkg-build`` makes it.

The files are those the feed Makefile (``florete-agent/Makefile``) installs: the project's
wheel and the carried copies of ``packaging/dependencies.toml`` unpacked in
/usr/lib/florete-agent, the launcher, the procd init script, the UCI config and its
translator. Dependencies on the feed's python3 packages are in the control file.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))

import vendor  # noqa: E402  (packaging/vendor.py, beside this directory)

FILES = HERE / "florete-agent" / "files"
LIB = "usr/lib/florete-agent"
RELEASE = 1
#: Modules of the feed's python3 the agent imports beyond python3-light (asyncio, logging,
#: sqlite3, ssl, email for importlib.metadata, urllib, uuid; ctypes and multiprocessing for
#: pyroute2, and unittest: its iprsocket module imports unittest.mock; decimal through fractions,
#: for quantities; codecs for unicodedata, which asyncssh and textual import; xml for segno).
#: Each is a package of lang/python/python3 in the OpenWrt packages feed;
#: tests/unit/test_packaging.py imports the agent's modules and checks the list.
PYTHON3_MODULES = (
    "python3-light",
    "python3-asyncio",
    "python3-logging",
    "python3-sqlite3",
    "python3-openssl",
    "python3-email",
    "python3-urllib",
    "python3-uuid",
    "python3-ctypes",
    "python3-multiprocessing",
    "python3-unittest",
    "python3-decimal",
    "python3-codecs",
    "python3-xml",
)
CONFFILES = ("/etc/config/florete",)
#: What sysupgrade keeps: the node's identity and database (the default state_dir).
KEEP = ("/srv/florete-agent/identity/", "/srv/florete-agent/agent.db")
MAINTAINER = "Florete developers <dev@florete.io>"
_EXCLUDE = {".git", ".venv", "build", "__pycache__", ".mypy_cache", ".pytest_cache"}
_EXCLUDE |= {".ruff_cache", ".hypothesis"}

POSTINST = """#!/bin/sh
[ "${IPKG_NO_SCRIPT}" = "1" ] && exit 0
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
# shellcheck source=/dev/null  # OpenWrt's, on the router
. "${IPKG_INSTROOT}/lib/functions.sh"
if [ -z "${IPKG_INSTROOT}" ]; then
\t# Bytecode once, for the python3 installed (the shims start from it).
\tpython3 -m compileall -q /usr/lib/florete-agent >/dev/null 2>&1 || true
fi
default_postinst "$0" "$@"
"""
PRERM = """#!/bin/sh
[ -s "${IPKG_INSTROOT}/lib/functions.sh" ] || exit 0
# shellcheck source=/dev/null  # OpenWrt's, on the router
. "${IPKG_INSTROOT}/lib/functions.sh"
default_prerm "$0" "$@"
find "${IPKG_INSTROOT}/usr/lib/florete-agent" -name __pycache__ -type d -exec rm -rf {} + \\
\t2>/dev/null || true
exit 0
"""
TUI_POSTINST = """#!/bin/sh
[ -z "${IPKG_INSTROOT}" ] || exit 0
python3 -m compileall -q /usr/lib/florete-agent >/dev/null 2>&1 || true
exit 0
"""


class BuildError(Exception):
    """The packages cannot be built; the message says why."""


@dataclass(frozen=True)
class Package:
    """One .ipk: its control fields, files (a staged root) and maintainer scripts.

    Attributes:
        name: package name.
        version: ``VERSION-RELEASE``.
        depends: package names, in order.
        description: one line.
        root: the directory whose tree becomes data.tar.gz.
        scripts: control-archive script name (``postinst``) -> its text.
        conffiles: absolute paths of configuration files.
    """

    name: str
    version: str
    depends: tuple[str, ...]
    description: str
    root: Path
    scripts: dict[str, str]
    conffiles: tuple[str, ...] = ()


def project_version() -> str:
    """The version in pyproject.toml."""
    with (REPO / "pyproject.toml").open("rb") as file:
        return str(tomllib.load(file)["project"]["version"])


def feed_depends() -> tuple[str, ...]:
    """The feed packages the agent depends on: python3 modules, then dependencies.toml's."""
    with vendor.TABLE.open("rb") as file:
        table = tomllib.load(file)["openwrt"]
    return (*PYTHON3_MODULES, *sorted(name for name in table.values() if name))


def build_project_wheel(dest: Path, python: str = sys.executable) -> Path:
    """Build florete-agent's wheel from a copy of the working tree (no build files left in it).

    Raises:
        BuildError: pip failed.
    """
    with tempfile.TemporaryDirectory(prefix="florete-ipk-src-") as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(REPO, source, ignore=lambda _d, names: _EXCLUDE.intersection(names))
        result = subprocess.run(
            [python, "-m", "pip", "wheel", "--no-deps", "-w", str(dest), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise BuildError(f"pip wheel failed ({result.returncode}):\n{result.stderr}")
    wheels = sorted(dest.glob("florete_agent-*.whl"))
    if not wheels:
        raise BuildError(f"pip wheel made no florete_agent wheel in {dest}")
    return wheels[-1]


def _copy(src: Path, dest: Path, mode: int) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)
    dest.chmod(mode)


def stage_core(root: Path, project_wheel: Path, carried: Sequence[Path]) -> None:
    """Lay out the agent's files under ``root`` as the feed Makefile installs them."""
    vendor.install([project_wheel, *carried], root / LIB)
    _copy(REPO / "packaging" / "florete-agent", root / LIB / "bin" / "florete-agent", 0o755)
    _copy(FILES / "uci2toml.py", root / LIB / "uci2toml.py", 0o644)
    _copy(FILES / "florete-agent.init", root / "etc/init.d/florete-agent", 0o755)
    _copy(FILES / "florete.config", root / "etc/config/florete", 0o644)
    keep = root / "lib/upgrade/keep.d/florete-agent"
    keep.parent.mkdir(parents=True, exist_ok=True)
    keep.write_text("".join(f"{path}\n" for path in KEEP), encoding="utf-8")
    (root / "usr/bin").mkdir(parents=True, exist_ok=True)
    (root / "usr/bin/florete-agent").symlink_to("../lib/florete-agent/bin/florete-agent")


def _installed_size(root: Path) -> int:
    return sum(p.lstat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def _tar_gz(members: Iterable[tuple[str, bytes | None, int, str | None]], mtime: int) -> bytes:
    """A gzip'd ustar archive of ``(name, data or None for a directory, mode, symlink target)``."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode, target in members:
            info = tarfile.TarInfo(name)
            info.mode, info.mtime, info.uid, info.gid = mode, mtime, 0, 0
            info.uname = info.gname = "root"
            if target is not None:
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
            elif data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=mtime)


def _tree(root: Path) -> list[tuple[str, bytes | None, int, str | None]]:
    members: list[tuple[str, bytes | None, int, str | None]] = [("./", None, 0o755, None)]
    for path in sorted(root.rglob("*")):
        name = "./" + path.relative_to(root).as_posix()
        if path.is_symlink():
            members.append((name, None, 0o777, os.readlink(path)))
        elif path.is_dir():
            members.append((name + "/", None, 0o755, None))
        else:
            members.append((name, path.read_bytes(), path.stat().st_mode & 0o777, None))
    return members


def control_text(package: Package) -> str:
    """The ``control`` file of an .ipk, in the fields and order OpenWrt writes."""
    fields = {
        "Package": package.name,
        "Version": package.version,
        "Depends": ", ".join(package.depends),
        "Source": "feeds/florete/florete-agent",
        "SourceName": "florete-agent",
        "License": "Apache-2.0",
        "Section": "net",
        "Maintainer": MAINTAINER,
        "Architecture": "all",
        "Installed-Size": str(_installed_size(package.root)),
        "Description": package.description,
    }
    return "".join(f"{key}: {value}\n" for key, value in fields.items())


def write_ipk(package: Package, out: Path, mtime: int) -> Path:
    """Write ``out/NAME_VERSION_all.ipk``; returns its path."""
    control: list[tuple[str, bytes | None, int, str | None]] = [
        ("./", None, 0o755, None),
        ("./control", control_text(package).encode(), 0o644, None),
    ]
    if package.conffiles:
        conffiles = "".join(f"{path}\n" for path in package.conffiles).encode()
        control.append(("./conffiles", conffiles, 0o644, None))
    for name, text in sorted(package.scripts.items()):
        control.append((f"./{name}", text.encode(), 0o755, None))
    parts = [
        ("./debian-binary", b"2.0\n", 0o644, None),
        ("./data.tar.gz", _tar_gz(_tree(package.root), mtime), 0o644, None),
        ("./control.tar.gz", _tar_gz(control, mtime), 0o644, None),
    ]
    path = out / f"{package.name}_{package.version}_all.ipk"
    path.write_bytes(_tar_gz(parts, mtime))
    return path


def stage(dest: Path, cache: Path, python: str = sys.executable) -> tuple[Path, Path]:
    """Lay out both packages' files: ``dest/core`` (florete-agent) and ``dest/tui``.

    The feed Makefile calls this (``--stage``) and copies the two trees.

    Raises:
        BuildError: the project wheel cannot be built.
        vendor.VendorError: a carried wheel cannot be fetched or fails its checks.
    """
    items = vendor.load_vendored()
    core, tui = dest / "core", dest / "tui"
    for tree in (core, tui):
        shutil.rmtree(tree, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="florete-ipk-") as tmp:
        wheel = build_project_wheel(Path(tmp), python)
        carried = [vendor.fetch(i, cache, python) for i in items if "ipk" in i.into]
        stage_core(core, wheel, carried)
    tui_wheels = [vendor.fetch(i, cache, python) for i in items if "ipk-tui" in i.into]
    vendor.install(tui_wheels, tui / LIB)
    return core, tui


def build(out: Path, cache: Path, python: str = sys.executable) -> list[Path]:
    """Build both packages into ``out``.

    Args:
        out: output directory (created).
        cache: where :mod:`vendor` keeps the carried wheels.
        python: the interpreter whose pip builds and fetches.

    Returns:
        The paths of florete-agent's and florete-agent-tui's .ipk.

    Raises:
        BuildError: the project wheel cannot be built.
        vendor.VendorError: a carried wheel cannot be fetched or fails its checks.
    """
    out.mkdir(parents=True, exist_ok=True)
    version = f"{project_version()}-{RELEASE}"
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    mtime = int(epoch) if epoch.isdigit() else int((REPO / "pyproject.toml").stat().st_mtime)
    with tempfile.TemporaryDirectory(prefix="florete-ipk-") as tmp:
        core, tui = stage(Path(tmp), cache, python)
        packages = [
            Package(
                "florete-agent",
                version,
                feed_depends(),
                "Node agent of a Florete edge cluster: runs Kubernetes Pods on this device",
                core,
                {"postinst": POSTINST, "prerm": PRERM},
                CONFFILES,
            ),
            Package(
                "florete-agent-tui",
                version,
                ("florete-agent",),
                "Terminal UI of florete-agent (florete-agent tui): Textual and its modules",
                tui,
                {"postinst": TUI_POSTINST},
            ),
        ]
        return [write_ipk(package, out, mtime) for package in packages]


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; 0 on success, 1 on an error (its message on stderr)."""
    parser = argparse.ArgumentParser(prog="build_ipk.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "build")
    parser.add_argument("--vendor-cache", type=Path, default=REPO / "build" / "vendor")
    parser.add_argument("--stage", type=Path, help="only lay out DIR/core and DIR/tui")
    args = parser.parse_args(argv)
    try:
        if args.stage is not None:
            paths = list(stage(args.stage.resolve(), args.vendor_cache.resolve()))
        else:
            paths = build(args.out.resolve(), args.vendor_cache.resolve())
        for path in paths:
            sys.stdout.write(f"{path}\n")
    except (BuildError, vendor.VendorError) as err:
        sys.stderr.write(f"build_ipk.py: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
