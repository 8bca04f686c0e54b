"""Wheels of the running agent and its dependencies, made from what is installed here.

SSH pairing installs the agent on a host that has none (:mod:`agent.pairing.ssh_install`). The
host may have no network, and this node may have none either, so nothing is downloaded and
nothing is built: each wheel is packed again from an installed distribution, as ``pip`` laid
it out (the files its ``RECORD`` lists, its ``.dist-info`` and the tags of its ``WHEEL`` file,
PEP 427 / PEP 491). The project's own distribution is packed from its import packages, which
also covers an editable install (``pip install -e``) and a source tree. Its dependencies are
the requirements of its ``Requires-Dist`` (no extras), followed transitively.

The wheels fit this node's platform (its Python, CPU and C library); a host that differs gets
the pure-Python ones only, and the rest from the package index or from wheels the person
provides (``pair --wheelhouse DIR``). A dependency that cannot be packed (installed without a
``RECORD``, as Debian's ``python3-*`` packages are) is listed in :attr:`Wheelhouse.missing`.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import importlib.metadata
import importlib.util
import re
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from agent.errors import LocalError

__all__ = ["PROJECT", "Wheel", "Wheelhouse", "build_wheelhouse", "minimum_python", "wheel_name"]

PROJECT = "florete-agent"
_REQUIREMENT = re.compile(
    r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?\s*([^;]*?)\s*(?:;(.*))?$"
)
_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
_SKIP_INFO = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json", "RECORD.jws", "RECORD.p7s"}
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed, so the same files give the same wheel


class WheelhouseError(LocalError):
    """The running agent cannot be packed: it is not installed as a distribution."""

    code = "wheelhouse_failed"


@dataclasses.dataclass(frozen=True)
class Wheel:
    """One wheel file.

    Attributes:
        path: the ``.whl`` file.
        project: the distribution's name as its metadata spells it.
        version: its version.
        pure: its tags say ``none-any``: it runs on any platform.
        given: the person gave it (``--wheelhouse``); not packed here.
    """

    path: Path
    project: str
    version: str
    pure: bool
    given: bool = False


@dataclasses.dataclass(frozen=True)
class Wheelhouse:
    """The wheels :func:`build_wheelhouse` made or found.

    Attributes:
        project: ``florete-agent``; version: its version here.
        requires_python: its ``Requires-Python`` (``">=3.11"``), or None.
        wheels: the agent's wheel first, then its dependencies, then pip's, then the extras given.
        requirements: the dependencies' names (the agent's first), for messages.
        missing: dependencies that are not installed here or cannot be packed.
    """

    project: str
    version: str
    requires_python: str | None
    wheels: tuple[Wheel, ...]
    requirements: tuple[str, ...]
    missing: tuple[str, ...]

    @property
    def size(self) -> int:
        """Bytes of all wheels."""
        return sum(w.path.stat().st_size for w in self.wheels)


def canonical(name: str) -> str:
    """PEP 503 normalised name: ``PyYAML`` -> ``pyyaml``, ``dbus_fast`` -> ``dbus-fast``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name(name: str) -> str:
    """The name as a wheel file and its ``.dist-info`` spell it: ``dbus-fast`` -> ``dbus_fast``."""
    return re.sub(r"[-_.]+", "_", name).lower()


def minimum_python(requires_python: str | None) -> tuple[int, int]:
    """The lowest ``(major, minor)`` a ``Requires-Python`` of the form ``>=X.Y`` allows;
    ``(3, 0)`` when there is none or it has another form."""
    match = re.search(r">=\s*(\d+)\.(\d+)", requires_python or "")
    return (int(match.group(1)), int(match.group(2))) if match else (3, 0)


def build_wheelhouse(
    directory: Path, *, with_pip: bool = True, extra: Sequence[Path] = ()
) -> Wheelhouse:
    """Pack the running agent and its dependencies into ``directory`` (created if needed).

    Args:
        directory: where the ``.whl`` files go.
        with_pip: also pack pip (the remote runs it from its wheel and needs no pip of its own).
        extra: wheel files or directories of them to add as they are (``pair --wheelhouse``).

    Returns:
        The wheels, the agent's first.

    Raises:
        WheelhouseError: the agent is not installed as a distribution here, or an ``extra``
            path is neither a wheel nor a directory.
        OSError: a file could not be read or written.
    """
    given = _extra_wheels(extra)  # a wrong path is reported before anything is packed
    directory.mkdir(parents=True, exist_ok=True)
    own = _own_distribution()
    version = own.version
    wheels = [_pack(own, directory, _own_files(own), own_tag=True)]
    names, missing = [], []
    for dist, name in _dependencies(own):
        names.append(name)
        if dist is None:
            missing.append(name)
            continue
        files = _recorded_files(dist)
        if files is None:
            missing.append(name)
            continue
        wheels.append(_pack(dist, directory, files, own_tag=False))
    if with_pip:
        try:
            pip = importlib.metadata.distribution("pip")
        except importlib.metadata.PackageNotFoundError:
            pip = None
        files = _recorded_files(pip) if pip is not None else None
        if pip is not None and files is not None:
            wheels.append(_pack(pip, directory, files, own_tag=False))
    wheels.extend(_describe(path) for path in given)
    return Wheelhouse(
        PROJECT,
        version,
        own.metadata["Requires-Python"],
        tuple(wheels),
        tuple(names),
        tuple(missing),
    )


# ----------------------------------------------------------------------- finding distributions


def _own_distribution() -> importlib.metadata.Distribution:
    """The installed ``florete-agent`` that the running code belongs to: a ``.dist-info``
    (a wheel or an editable install) before an ``.egg-info`` of a source tree."""
    found = list(importlib.metadata.distributions(name=PROJECT))
    found.sort(key=lambda d: d.read_text("METADATA") is None)  # .dist-info first
    if not found:
        raise WheelhouseError(
            f"{PROJECT} is not installed as a package here (only its source is on the path), "
            "so it cannot be copied to another host: install it (pip install .)"
        )
    return found[0]


def _dependencies(
    own: importlib.metadata.Distribution,
) -> Iterator[tuple[importlib.metadata.Distribution | None, str]]:
    """Every distribution ``own`` needs (no extras), transitively, each once: the installed
    one, or None when it is not installed here although its requirement has no marker."""
    seen = {canonical(own.metadata["Name"])}
    queue: list[tuple[importlib.metadata.Distribution, frozenset[str]]] = [(own, frozenset())]
    while queue:
        dist, extras = queue.pop(0)
        for line in dist.requires or []:
            wanted = _requirement(line, extras)
            if wanted is None:
                continue
            name, sub_extras, unconditional = wanted
            key = canonical(name)
            try:
                found = importlib.metadata.distribution(name)
            except importlib.metadata.PackageNotFoundError:
                if unconditional and key not in seen:
                    seen.add(key)
                    yield None, name
                continue  # a marker false here (another Python or OS): not needed here
            if key in seen:
                if sub_extras:
                    queue.append((found, sub_extras))
                continue
            seen.add(key)
            yield found, found.metadata["Name"]
            queue.append((found, sub_extras))


def _requirement(line: str, extras: frozenset[str]) -> tuple[str, frozenset[str], bool] | None:
    """``(name, its extras, has no marker)`` of one ``Requires-Dist`` line, or None when it
    belongs to an extra that was not asked for (or cannot be read)."""
    match = _REQUIREMENT.match(line)
    if match is None:
        return None
    name, wanted, _, marker = match.groups()
    marker = (marker or "").strip()
    named = {canonical(e) for e in _EXTRA.findall(marker)}
    if named and not named & {canonical(e) for e in extras}:
        return None
    sub = frozenset(e.strip() for e in (wanted or "").split(",") if e.strip())
    return name, sub, not marker


# ----------------------------------------------------------------------- files of a distribution


def _info_dir(dist: importlib.metadata.Distribution) -> str | None:
    for file in dist.files or []:
        if len(file.parts) == 2 and file.parts[0].endswith((".dist-info", ".egg-info")):
            return file.parts[0]
    return None


def _recorded_files(dist: importlib.metadata.Distribution) -> list[tuple[str, Path]] | None:
    """``(path in the wheel, file here)`` of what the ``RECORD`` lists under site-packages,
    without byte code, scripts and the install's own bookkeeping; None without a ``RECORD``."""
    info = _info_dir(dist)
    if info is None or not info.endswith(".dist-info") or dist.read_text("WHEEL") is None:
        return None
    files = []
    for file in dist.files or []:
        parts = file.parts
        if parts[0] == ".." or "__pycache__" in parts or file.suffix == ".pyc":
            continue
        if parts[0] == info:
            continue  # the .dist-info is written by _pack
        files.append(("/".join(parts), Path(str(dist.locate_file(file)))))
    return files


def _own_files(dist: importlib.metadata.Distribution) -> list[tuple[str, Path]]:
    """The agent's import packages as they are on disk (works for every kind of install)."""
    top = (dist.read_text("top_level.txt") or "").split()
    if not top:
        top = sorted({f.parts[0] for f in dist.files or [] if len(f.parts) > 1} - {".."})
        top = [t for t in top if not t.endswith((".dist-info", ".egg-info"))]
    files = []
    for name in top:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        root = Path(next(iter(spec.submodule_search_locations)))
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if path.is_dir() or "__pycache__" in relative.parts or path.suffix == ".pyc":
                continue
            files.append((f"{name}/{relative.as_posix()}", path))
    if not files:
        raise WheelhouseError(f"the import packages of {PROJECT} ({', '.join(top)}) are not found")
    return files


# ----------------------------------------------------------------------- writing a wheel


def _tags(dist: importlib.metadata.Distribution, own: bool) -> str:
    """The compressed tag set (PEP 425) of the ``WHEEL`` file: ``py2.py3-none-any``."""
    if own:
        return "py3-none-any"
    lines = (dist.read_text("WHEEL") or "").splitlines()
    tags = [line.split(":", 1)[1].strip() for line in lines if line.startswith("Tag:")]
    parts: list[list[str]] = [[], [], []]
    for tag in tags or ["py3-none-any"]:
        for index, part in enumerate(tag.split("-")):
            if part not in parts[index]:
                parts[index].append(part)
    return "-".join(".".join(p) for p in parts)


def _wheel_file(tag: str, purelib: bool) -> str:
    lines = ["Wheel-Version: 1.0", f"Generator: {PROJECT} (repacked)"]
    lines.append(f"Root-Is-Purelib: {'true' if purelib else 'false'}")
    py, abi, plat = (t.split(".") for t in tag.split("-"))
    lines += [f"Tag: {p}-{a}-{m}" for p in py for a in abi for m in plat]
    return "\n".join(lines) + "\n"


def _pack(
    dist: importlib.metadata.Distribution,
    directory: Path,
    files: Iterable[tuple[str, Path]],
    *,
    own_tag: bool,
) -> Wheel:
    """Write ``{name}-{version}-{tag}.whl`` with ``files`` and a fresh ``.dist-info``."""
    name, version = dist.metadata["Name"], dist.version
    tag = _tags(dist, own_tag)
    info = f"{wheel_name(name)}-{version}.dist-info"
    metadata = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    wheel_text = dist.read_text("WHEEL") if not own_tag else None
    purelib = wheel_text is None or "Root-Is-Purelib: true" in wheel_text
    generated = {
        "METADATA": metadata,
        "WHEEL": _wheel_file(tag, purelib),
        "entry_points.txt": dist.read_text("entry_points.txt"),
        "top_level.txt": dist.read_text("top_level.txt"),
    }
    origin = _info_dir(dist)
    copied = [  # licence files and the like, as they are
        ("/".join(f.parts[1:]), Path(str(dist.locate_file(f))))
        for f in dist.files or []
        if origin is not None and origin.endswith(".dist-info") and len(f.parts) >= 2
        if f.parts[0] == origin and f.parts[1] not in _SKIP_INFO and f.parts[1] not in generated
    ]
    path = directory / f"{wheel_name(name)}-{version}-{tag}.whl"
    record: list[str] = []
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:

        def add(arcname: str, data: bytes) -> None:
            info_ = zipfile.ZipInfo(arcname, _ZIP_TIME)
            info_.external_attr = 0o644 << 16
            info_.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info_, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{arcname},sha256={digest.decode()},{len(data)}")

        for arcname, source in files:
            add(arcname, source.read_bytes())
        for relative, source in copied:
            if source.is_file():
                add(f"{info}/{relative}", source.read_bytes())
        for key, text in generated.items():
            if text is not None:
                add(f"{info}/{key}", text.encode())
        record.append(f"{info}/RECORD,,")
        archive.writestr(zipfile.ZipInfo(f"{info}/RECORD", _ZIP_TIME), "\n".join(record) + "\n")
    return Wheel(path, name, version, tag.endswith("-none-any"))


def _extra_wheels(extra: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for item in extra:
        if item.is_dir():
            found.extend(sorted(item.glob("*.whl")))
        elif item.suffix == ".whl" and item.is_file():
            found.append(item)
        else:
            raise WheelhouseError(f"{item}: not a wheel file nor a directory of wheels")
    return found


def _describe(path: Path) -> Wheel:
    """A wheel given as it is: name, version and tags read from its file name (PEP 427)."""
    parts = path.name[: -len(".whl")].split("-")
    if len(parts) < 5:
        raise WheelhouseError(f"{path}: not a wheel file name (name-version-py-abi-platform.whl)")
    return Wheel(path, parts[0], parts[1], parts[-2] == "none" and parts[-1] == "any", given=True)
