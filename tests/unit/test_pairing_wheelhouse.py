"""Wheels packed from the installed agent for SSH pairing's remote install, the version rules
it follows, and what it says when pip fails there."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path

import pytest

from agent import __version__
from agent.pairing.ssh_remote import RemotePython, compatible, install_failure, version_of
from agent.pairing.wheelhouse import (
    Wheelhouse,
    WheelhouseError,
    _requirement,
    build_wheelhouse,
    canonical,
    minimum_python,
    wheel_name,
)


def test_names_and_the_minimum_python() -> None:
    assert canonical("PyYAML") == "pyyaml"
    assert canonical("dbus_fast") == canonical("dbus.fast") == "dbus-fast"
    assert wheel_name("dbus-fast") == "dbus_fast"
    assert minimum_python(">=3.11") == (3, 11)
    assert minimum_python(">= 3.9, <4") == (3, 9)
    assert minimum_python(None) == (3, 0)


def test_requirements_of_extras_not_asked_for_are_left_out() -> None:
    assert _requirement("cryptography>=38", frozenset()) == ("cryptography", frozenset(), True)
    assert _requirement('textual>=0.80; extra == "tui"', frozenset()) is None
    assert _requirement('textual>=0.80; extra == "tui"', frozenset({"tui"})) == (
        "textual",
        frozenset(),
        False,
    )
    assert _requirement("uvicorn[standard] (>=0.2)", frozenset()) == (
        "uvicorn",
        frozenset({"standard"}),
        True,
    )
    name, _, unconditional = _requirement(
        "typing-extensions>=4 ; python_version < '3.11'", frozenset()
    ) or ("", None, None)
    assert (name, unconditional) == ("typing-extensions", False)


@pytest.mark.parametrize(
    ("local", "remote", "works"),
    [
        ("0.1.0", "0.1.7", True),
        ("0.1.0", "0.2.0", False),
        ("1.2.0", "1.5.3", True),
        ("1.2.0", "2.0.0", False),
    ],
)
def test_versions_that_work_together(local: str, remote: str, works: bool) -> None:
    assert compatible(local, remote) is works


def test_the_version_is_read_from_version_output() -> None:
    output = "Client Version: v0.1.0\nServer Version: v1.32.0-florete.0.1.0\n"
    assert version_of(output) == "0.1.0"
    assert version_of("florete-agent: command not found") is None


def _check_record(archive: zipfile.ZipFile) -> list[str]:
    """Every file the RECORD lists has its digest and size; returns the names."""
    record = next(n for n in archive.namelist() if n.endswith(".dist-info/RECORD"))
    names = []
    for line in archive.read(record).decode().splitlines():
        path, digest, size = line.rsplit(",", 2)
        names.append(path)
        if path == record:
            continue
        data = archive.read(path)
        expected = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        assert digest == f"sha256={expected}", path
        assert int(size) == len(data), path
    assert sorted(names) == sorted(archive.namelist())
    return names


def test_the_installed_agent_and_its_dependencies_are_packed(tmp_path: Path) -> None:
    given = tmp_path / "given"
    given.mkdir()
    (given / "psutil-7.0.0-cp36-abi3-manylinux_2_17_aarch64.whl").write_bytes(b"PK")
    house = build_wheelhouse(tmp_path / "wheels", extra=[given])
    own = house.wheels[0]
    assert own.path.name == f"florete_agent-{__version__}-py3-none-any.whl"
    assert own.pure
    assert house.requires_python == ">=3.11"
    assert {"cryptography", "pyyaml", "zeroconf", "cbor2"} <= {
        canonical(n) for n in house.requirements
    }
    assert house.missing == ()
    *packed, last = house.wheels
    assert (last.project, last.version, last.pure, last.given) == ("psutil", "7.0.0", False, True)
    expected = {canonical(n) for n in house.requirements} | {"florete-agent", "pip"}
    assert {canonical(w.project) for w in packed} == expected

    with zipfile.ZipFile(own.path) as archive:
        names = _check_record(archive)
        info = f"florete_agent-{__version__}.dist-info"
        assert "agent/pairing/remote_setup.py" in names
        assert "wri_plugins/android/helper.sh" in names  # package data too
        assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
        assert "florete-agent = agent.cli:main" in archive.read(f"{info}/entry_points.txt").decode()
        assert "Tag: py3-none-any" in archive.read(f"{info}/WHEEL").decode()
        assert f"Version: {__version__}" in archive.read(f"{info}/METADATA").decode()
    for wheel in packed[1:]:
        with zipfile.ZipFile(wheel.path) as archive:
            names = _check_record(archive)
            info = f"{wheel_name(wheel.project)}-{wheel.version}.dist-info"
            assert f"{info}/METADATA" in names, wheel.path.name
            assert not [n for n in names if n.startswith("..")]


def test_a_given_path_that_is_no_wheel_is_refused_before_packing(tmp_path: Path) -> None:
    with pytest.raises(WheelhouseError, match="not a wheel"):
        build_wheelhouse(tmp_path / "wheels", extra=[tmp_path / "nothing.tar.gz"])
    assert not (tmp_path / "wheels").exists()


# What pip 26.3 printed on a host that lacked cryptography's wheel and reached no index.
_PIP_OUTPUT = """\
Processing ./wheels/pycparser-3.12-py3-none-any.whl (from cffi>=2.0.0)
WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError()': /simple/x/
ERROR: Could not find a version that satisfies the requirement cryptography>=38 (from \
florete-agent) (from versions: none)
ERROR: No matching distribution found for cryptography>=38 (from florete-agent)
"""


def _house() -> Wheelhouse:
    return Wheelhouse("florete-agent", "0.1.0", ">=3.11", (), ("cryptography", "psutil"), ())


def test_a_missing_wheel_is_named_with_what_to_do() -> None:
    arm = RemotePython((3, 12, 3), "aarch64", "glibc", "/home/pi")
    message = install_failure("robot", _house(), arm, _PIP_OUTPUT)
    assert "no wheel for cryptography among those copied" in message
    assert "(those packed here do not fit its Python 3.12.3 on aarch64 (glibc))" in message
    assert "--python-version 3.12 --platform <its platform tag> -d DIR cryptography psutil" in (
        message
    )
    assert "pass --wheelhouse DIR" in message
    assert message.endswith(
        "pip said: ERROR: Could not find a version that satisfies the requirement "
        "cryptography>=38 (from florete-agent) (from versions: none) | ERROR: No matching "
        "distribution found for cryptography>=38 (from florete-agent)"
    )


def test_another_pip_failure_is_passed_on() -> None:
    arm = RemotePython((3, 12, 3), "aarch64", "glibc", "/home/pi")
    output = "Processing ...\nERROR: Could not install packages: [Errno 28] No space left\n"
    message = install_failure("robot", _house(), arm, output)
    assert message == (
        "installing florete-agent on robot failed: ERROR: Could not install packages: "
        "[Errno 28] No space left"
    )
