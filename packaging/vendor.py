"""Fetch, check and install the pure-Python distributions that the packages carry.

``packaging/dependencies.toml`` lists them (``[vendor.NAME]``: version, source, sha256, into)::

    python3 packaging/vendor.py fetch --into deb CACHE_DIR     # prints one wheel path a line
    python3 packaging/vendor.py install --target DIR WHEEL...

``fetch`` downloads each file from PyPI with pip, checks its SHA-256 against the table, builds
a wheel from an sdist with ``SKIP_CYTHON=1`` (zeroconf's and dbus-fast's switch for their
optional Cython modules) and refuses any wheel that holds compiled code. Results are cached in
CACHE_DIR by name and version, so a second run needs no network.

``install`` unpacks wheels into DIR as ``pip install --target`` lays out a pure wheel (the
purelib tree), without console scripts and without byte-compiling: the Debian package compiles
in its postinst (dh_python3), the OpenWrt package in its own.

Only the standard library is used: this runs inside ``dpkg-buildpackage`` with Debian's python3.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

TABLE = Path(__file__).resolve().parent / "dependencies.toml"
TARGETS = ("deb", "ipk", "ipk-tui")
_BINARY_SUFFIXES = (".so", ".pyd", ".dll", ".dylib", ".a", ".o")
_ELF_MAGIC = b"\x7fELF"


class VendorError(Exception):
    """A carried distribution cannot be fetched, checked or installed; the message says why."""


@dataclass(frozen=True)
class Vendored:
    """One ``[vendor.NAME]`` entry of dependencies.toml.

    Attributes:
        name: the PyPI name (``"dbus-fast"``).
        version: the exact version carried.
        source: ``"wheel"`` (a py3-none-any wheel from PyPI) or ``"sdist"`` (built here).
        sha256: hex digest of the PyPI file.
        license: SPDX expression, copied into debian/copyright.
        into: the packages that carry it, a subset of :data:`TARGETS`.
        why: why the system package does not do.
    """

    name: str
    version: str
    source: str
    sha256: str
    license: str
    into: tuple[str, ...]
    why: str


def load_vendored(path: Path = TABLE) -> list[Vendored]:
    """Read the ``[vendor.*]`` entries of dependencies.toml.

    Raises:
        VendorError: the file is unreadable or an entry lacks a key or has a bad value.
    """
    try:
        table = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise VendorError(f"{path}: {err}") from err
    items = []
    for name, entry in table.get("vendor", {}).items():
        try:
            item = Vendored(
                name=name,
                version=str(entry["version"]),
                source=str(entry["source"]),
                sha256=str(entry["sha256"]).lower(),
                license=str(entry["license"]),
                into=tuple(entry["into"]),
                why=str(entry["why"]),
            )
        except (KeyError, TypeError) as err:
            raise VendorError(f"{path}: [vendor.{name}]: missing or bad key {err}") from err
        if item.source not in ("wheel", "sdist"):
            raise VendorError(f'{path}: [vendor.{name}]: source must be "wheel" or "sdist"')
        if not set(item.into) <= set(TARGETS):
            raise VendorError(f"{path}: [vendor.{name}]: into must be among {TARGETS}")
        if len(item.sha256) != 64 or not all(c in "0123456789abcdef" for c in item.sha256):
            raise VendorError(f"{path}: [vendor.{name}]: sha256 must be 64 hex digits")
        items.append(item)
    return items


def sha256_of(path: Path) -> str:
    """Hex SHA-256 digest of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def check_pure(wheel: Path) -> None:
    """Refuse a wheel that holds compiled code (an extension module, a library, any ELF file).

    Raises:
        VendorError: the wheel is not a zip file, or names the compiled members it holds.
    """
    try:
        with zipfile.ZipFile(wheel) as archive:
            compiled = [
                info.filename
                for info in archive.infolist()
                if info.filename.endswith(_BINARY_SUFFIXES)
                or archive.open(info).read(len(_ELF_MAGIC)) == _ELF_MAGIC
            ]
    except zipfile.BadZipFile as err:
        raise VendorError(f"{wheel.name}: not a wheel: {err}") from err
    if compiled:
        raise VendorError(f"{wheel.name}: holds compiled code: {', '.join(compiled)}")


def _run(argv: list[str], env: dict[str, str] | None = None) -> None:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise VendorError(f"{' '.join(argv)} failed ({result.returncode}):\n{result.stderr}")


def fetch(item: Vendored, cache: Path, python: str = sys.executable) -> Path:
    """Return the checked pure wheel of ``item``, downloading and building it if not cached.

    Args:
        item: what to fetch.
        cache: cache directory; ``cache/NAME-VERSION/`` holds the download and the wheel.
        python: the interpreter whose pip downloads and builds.

    Raises:
        VendorError: pip failed, the download's SHA-256 differs from the table's, or the
            wheel holds compiled code.
    """
    home = cache / f"{item.name}-{item.version}"
    marker = home / "checked"
    if marker.is_file():
        wheel = home / marker.read_text(encoding="utf-8").strip()
        if wheel.is_file():
            return wheel
    shutil.rmtree(home, ignore_errors=True)
    download, built = home / "download", home / "wheel"
    download.mkdir(parents=True)
    kind = ["--no-binary=:all:"]
    if item.source == "wheel":  # the py3-none-any wheel, not a compiled one for this machine
        kind = ["--only-binary=:all:", "--platform=any", "--implementation=py", "--abi=none"]
    spec = f"{item.name}=={item.version}"
    _run([python, "-m", "pip", "download", "--no-deps", "--dest", str(download), *kind, spec])
    files = list(download.iterdir())
    if len(files) != 1:
        raise VendorError(f"{item.name}: pip downloaded {len(files)} files, expected 1")
    digest = sha256_of(files[0])
    if digest != item.sha256:
        raise VendorError(
            f"{files[0].name}: sha256 {digest} differs from dependencies.toml's {item.sha256}"
        )
    if item.source == "sdist":
        env = {**os.environ, "SKIP_CYTHON": "1"}
        _run([python, "-m", "pip", "wheel", "--no-deps", "-w", str(built), str(files[0])], env)
        wheels = list(built.glob("*.whl"))
        if len(wheels) != 1:
            raise VendorError(f"{item.name}: building the sdist gave {len(wheels)} wheels")
        wheel = wheels[0]
    else:
        wheel = files[0]
    check_pure(wheel)
    marker.write_text(f"{wheel.relative_to(home)}\n", encoding="utf-8")
    return wheel


def _destination(member: str) -> PurePosixPath | None:
    """Where a wheel member goes under the target, or None for what is not installed."""
    path = PurePosixPath(member)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise VendorError(f"unsafe path in wheel: {member!r}")
    if path.parts[0].endswith(".data"):
        if len(path.parts) > 2 and path.parts[1] in ("purelib", "platlib"):
            return PurePosixPath(*path.parts[2:])
        return None  # scripts, headers, data: a private install has no use for them
    return path


def install(wheels: Sequence[Path], target: Path) -> list[Path]:
    """Unpack pure wheels into ``target`` (files 0644, directories 0755).

    Returns:
        The files written, in order.

    Raises:
        VendorError: a wheel holds compiled code or an unsafe path, or two wheels hold the
            same file.
    """
    written: list[Path] = []
    owners: dict[Path, str] = {}
    for wheel in wheels:
        check_pure(wheel)
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                relative = _destination(info.filename)
                if relative is None or info.is_dir():
                    continue
                dest = target / relative
                if dest in owners:
                    raise VendorError(f"{relative} is in both {owners[dest]} and {wheel.name}")
                owners[dest] = wheel.name
                dest.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                dest.write_bytes(archive.read(info))
                dest.chmod(0o644)
                written.append(dest)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``fetch --into TARGET CACHE`` or ``install --target DIR WHEEL...``.

    Returns:
        0 on success, 1 on a :class:`VendorError` (its message on stderr).
    """
    parser = argparse.ArgumentParser(prog="vendor.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_fetch = sub.add_parser("fetch", help="download, build and check; print the wheel paths")
    p_fetch.add_argument("--into", choices=TARGETS, required=True)
    p_fetch.add_argument("cache", type=Path)
    p_install = sub.add_parser("install", help="unpack wheels into a directory")
    p_install.add_argument("--target", type=Path, required=True)
    p_install.add_argument("wheels", type=Path, nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.command == "fetch":
            for item in load_vendored():
                if args.into in item.into:
                    sys.stdout.write(f"{fetch(item, args.cache.resolve())}\n")
        else:
            install(args.wheels, args.target)
    except VendorError as err:
        sys.stderr.write(f"vendor.py: {err}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
