"""Translate OpenWrt's UCI file /etc/config/florete into florete-agent's TOML configuration.

The init script (/etc/init.d/florete-agent) runs this before every start and reload::

    python3 /usr/lib/florete-agent/uci2toml.py --output /var/etc/florete-agent.toml \\
        /etc/config/florete

UCI sections and their options (docs/packaging.md has the whole table)::

    config agent 'agent'              one, named "agent": the agent's own keys
        option enabled '1'            read by the init script only
        option name 'rover-1'         node.name
        list label 'site=field-3'     node.labels (KEY=VALUE)
        option state_dir '/srv/florete-agent'
        list interface 'br-lan'       network.interfaces
        option udp_port '4737'        links.udp_port; also mdns, keepalive, dead_interval
        option listen ''              api.listen; also tls_client_ca, socket, socket_mode,
                                      socket_group
        option runtime ''             runtime.default
        option log_level 'info'       log.level; also log_format
    config serial_radio               one [[links.serial_radios]] table each
    config wifi                       one [[links.wifi]] table each

Every value is checked against its type (string, integer, number, boolean, list), and an
unknown section type or option is an error that names the file, line and option: the agent's
own rule that no key is silently ignored. Ranges and meanings are checked by the agent when it
starts, with the TOML key in its message. ``state_dir`` defaults to /srv/florete-agent, on
flash: OpenWrt's /var is a tmpfs, and the agent's state must survive a reboot.

Only the standard library is used (OpenWrt's python3-light has it all).
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

DEFAULT_STATE_DIR = "/srv/florete-agent"
_NAME = re.compile(r"[A-Za-z0-9_]+")
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class UciError(Exception):
    """The UCI file cannot be read, parsed or translated; the message names file and line."""


@dataclass
class Given:
    """The value(s) of one option in a section.

    Attributes:
        values: one value for ``option``, every value in order for ``list``.
        line: line number of the (last) line that gave it.
        listed: given with ``list`` lines.
    """

    values: list[str]
    line: int
    listed: bool


@dataclass
class Section:
    """One ``config TYPE ['NAME']`` section.

    Attributes:
        type: the section type (``agent``, ``serial_radio``, ``wifi``).
        name: its name, or None for an anonymous section.
        line: line number of the ``config`` line.
        options: option name -> what was given, in file order.
    """

    type: str
    name: str | None
    line: int
    options: dict[str, Given] = field(default_factory=dict)


def parse_uci(text: str, source: str = "<uci>") -> list[Section]:
    """Parse UCI file syntax: ``package``, ``config``, ``option`` and ``list`` lines.

    Values may be unquoted, 'single-quoted' (literal) or "double-quoted" (backslash escapes),
    and quoted parts join (``'a'"b"`` is ``ab``); ``#`` starts a comment, as in uci's own
    parser (libuci file.c).

    Args:
        text: the file's content.
        source: its name, for messages.

    Returns:
        The sections in file order.

    Raises:
        UciError: an unterminated quote, a line that is not one of the four forms, an option
            outside a section, a name with characters other than letters, digits and ``_``,
            or an ``option`` given twice, or given once as ``option`` and once as ``list``.
    """
    sections: list[Section] = []
    for number, line in enumerate(text.splitlines(), start=1):
        where = f"{source}:{number}"
        try:
            words = shlex.split(line, comments=True)
        except ValueError as err:
            raise UciError(f"{where}: {err}") from None
        if not words:
            continue
        keyword, args = words[0], words[1:]
        if keyword == "package" and len(args) == 1:
            continue
        if keyword == "config" and len(args) in (1, 2):
            for name in args:
                _check_name(name, where)
            sections.append(Section(args[0], args[1] if len(args) == 2 else None, number))
            continue
        if keyword not in ("option", "list") or len(args) != 2:
            raise UciError(
                f"{where}: expected 'config TYPE [NAME]', 'option NAME VALUE' or "
                f"'list NAME VALUE', got {line.strip()!r}"
            )
        if not sections:
            raise UciError(f"{where}: {keyword} {args[0]!r} outside a config section")
        name, value = args
        _check_name(name, where)
        listed = keyword == "list"
        given = sections[-1].options.get(name)
        if given is None:
            sections[-1].options[name] = Given([value], number, listed)
        elif listed and given.listed:
            given.values.append(value)
            given.line = number
        else:
            raise UciError(f"{where}: option {name!r} is given twice in this section")
    return sections


def _check_name(name: str, where: str) -> None:
    if not _NAME.fullmatch(name):
        raise UciError(f"{where}: {name!r}: names hold letters, digits and _ only")


# Converters: a UCI string -> a TOML value, or ValueError saying what was expected.

_TRUE = ("1", "yes", "on", "true", "enabled")
_FALSE = ("0", "no", "off", "false", "disabled")


def _text(raw: str) -> str:
    return raw


def _integer(raw: str) -> int:
    if not re.fullmatch(r"[+-]?[0-9]+", raw.strip()):
        raise ValueError(f"expected an integer, got {raw!r}")
    return int(raw)


def _number(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"expected a number, got {raw!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"expected a finite number, got {raw!r}")
    return value


def _boolean(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"expected a boolean ({'/'.join(_TRUE)} or {'/'.join(_FALSE)}), got {raw!r}")


@dataclass(frozen=True)
class _Option:
    key: str  # dotted TOML key inside its table; "" for options the init script reads
    convert: Callable[[str], object]
    many: bool = False  # a list: takes `list` lines (or one `option`)
    pairs: bool = False  # KEY=VALUE values that make a table (node.labels)


_AGENT: Mapping[str, _Option] = {
    "enabled": _Option("", _boolean),
    "name": _Option("node.name", _text),
    "label": _Option("node.labels", _text, many=True, pairs=True),
    "state_dir": _Option("state_dir", _text),
    "interface": _Option("network.interfaces", _text, many=True),
    "udp_port": _Option("links.udp_port", _integer),
    "mdns": _Option("links.mdns", _boolean),
    "keepalive": _Option("links.keepalive", _number),
    "dead_interval": _Option("links.dead_interval", _number),
    "listen": _Option("api.listen", _text),
    "tls_client_ca": _Option("api.tls_client_ca", _text),
    "socket": _Option("api.socket", _text),
    "socket_mode": _Option("api.socket_mode", _text),
    "socket_group": _Option("api.socket_group", _text),
    "runtime": _Option("runtime.default", _text),
    "log_level": _Option("log.level", _text),
    "log_format": _Option("log.format", _text),
}
# The keys of link_drivers.serial_radio.SerialConfig and its RadioProfile overrides.
_SERIAL_RADIO: Mapping[str, _Option] = {
    "enabled": _Option("", _boolean),
    "port": _Option("port", _text),
    "baudrate": _Option("baudrate", _integer),
    "bytesize": _Option("bytesize", _integer),
    "parity": _Option("parity", _text),
    "stopbits": _Option("stopbits", _number),
    "rtscts": _Option("rtscts", _boolean),
    "xonxoff": _Option("xonxoff", _boolean),
    "profile": _Option("profile", _text),
    "reopen_min": _Option("reopen_min", _number),
    "reopen_max": _Option("reopen_max", _number),
    "air_rate": _Option("air_rate", _number),
    "half_duplex": _Option("half_duplex", _boolean),
    "turnaround": _Option("turnaround", _number),
    "duty_cycle": _Option("duty_cycle", _number),
    "mtu": _Option("mtu", _integer),
    "cost": _Option("cost", _number),
}
# The keys of link_drivers.wifi.WifiConfig.
_WIFI: Mapping[str, _Option] = {
    "enabled": _Option("", _boolean),
    "interface": _Option("interface", _text),
    "port": _Option("port", _integer),
    "mtu": _Option("mtu", _integer),
    "ipv4": _Option("ipv4", _boolean),
    "ipv6": _Option("ipv6", _boolean),
    "queue": _Option("queue", _integer),
    "peer": _Option("peer", _text),
    "mode": _Option("mode", _text),
    "mesh_id": _Option("mesh_id", _text),
    "ssid": _Option("ssid", _text),
    "frequency": _Option("frequency", _integer),
    "poll_interval": _Option("poll_interval", _number),
}
#: Section type -> (its options, the TOML array of tables it feeds or "" for the agent's own).
SECTIONS: Mapping[str, tuple[Mapping[str, _Option], str]] = {
    "agent": (_AGENT, ""),
    "serial_radio": (_SERIAL_RADIO, "links.serial_radios"),
    "wifi": (_WIFI, "links.wifi"),
}


def _convert(section: Section, name: str, spec: _Option, source: str) -> object:
    given = section.options[name]
    where = f"{source}:{given.line}: {section.type} section: option {name}"
    if given.listed and not spec.many:
        raise UciError(f"{where}: takes one value ('option'), not a 'list'")
    try:
        values = [spec.convert(value) for value in given.values]
    except ValueError as err:
        raise UciError(f"{where}: {err}") from None
    if spec.pairs:
        table = {}
        for text in given.values:
            key, sep, value = text.partition("=")
            if not sep or not key:
                raise UciError(f"{where}: expected KEY=VALUE, got {text!r}")
            table[key] = value
        return table
    return values if spec.many else values[0]


def _put(table: dict[str, Any], dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        table = table.setdefault(part, {})
    table[last] = value


def translate(sections: Sequence[Section], source: str = "<uci>") -> dict[str, object]:
    """Map parsed UCI sections onto the agent's configuration keys.

    Sections with ``option enabled '0'`` are left out (the ``agent`` section's ``enabled`` is
    for the init script, which starts nothing then).

    Returns:
        The TOML document as nested dicts (tables) and lists (arrays of tables).

    Raises:
        UciError: no ``agent`` section, several, or one not named ``agent``; an unknown
            section type or option; a value of the wrong type.
    """
    doc: dict[str, Any] = {}
    agents = [s for s in sections if s.type == "agent"]
    if len(agents) != 1 or agents[0].name != "agent":
        raise UciError(
            f"{source}: want exactly one section \"config agent 'agent'\", found {len(agents)}"
            + (f" (named {agents[0].name!r})" if len(agents) == 1 else "")
        )
    for section in sections:
        if section.type not in SECTIONS:
            raise UciError(
                f"{source}:{section.line}: unknown section type {section.type!r} "
                f"(known: {', '.join(SECTIONS)})"
            )
        options, array = SECTIONS[section.type]
        values: dict[str, object] = {}
        for name in section.options:
            if name not in options:
                raise UciError(
                    f"{source}:{section.options[name].line}: {section.type} section: unknown "
                    f"option {name!r} (known: {', '.join(options)})"
                )
            values[name] = _convert(section, name, options[name], source)
        if array:
            if values.pop("enabled", True) is False:
                continue
            table: dict[str, object] = {}
            for name, value in values.items():
                _put(table, options[name].key, value)
            doc.setdefault("links", {}).setdefault(array.split(".")[1], []).append(table)
        else:
            for name, value in values.items():
                if options[name].key:
                    _put(doc, options[name].key, value)
    doc.setdefault("state_dir", DEFAULT_STATE_DIR)
    return doc


# A TOML writer for what translate() makes: strings, integers, finite floats, booleans, lists
# of strings, tables and arrays of tables (TOML 1.0.0).


def _key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    """A TOML basic string: ``"`` and ``\\`` escaped, control characters as escapes."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char in "\b\t\n\f\r":
            out.append({"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "[" + ", ".join(_string(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def _tables(value: object) -> TypeGuard[list[dict[str, object]]]:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _plain(value: object) -> bool:
    return not isinstance(value, dict) and not _tables(value)


def _lines(doc: Mapping[str, object], prefix: str) -> list[str]:
    out = [f"{_key(k)} = {_value(v)}" for k, v in doc.items() if _plain(v)]
    for k, v in doc.items():
        path = f"{prefix}.{_key(k)}" if prefix else _key(k)
        if isinstance(v, dict):
            if not v or any(_plain(x) for x in v.values()):
                out += ["", f"[{path}]"]
            out += _lines(v, path)
        elif _tables(v):
            for table in v:
                out += ["", f"[[{path}]]", *_lines(table, path)]
    return out


def dump_toml(doc: Mapping[str, object]) -> str:
    """Write a document of :func:`translate` as TOML: plain keys first, then tables.

    Raises:
        TypeError: a value has no TOML form here (not one :func:`translate` makes).
    """
    return "\n".join(_lines(doc, "")).strip("\n") + "\n"


def convert(text: str, source: str = "<uci>") -> str:
    """The whole translation: UCI text in, TOML text out (ends with a newline).

    Raises:
        UciError: see :func:`parse_uci` and :func:`translate`.
    """
    header = f"# Written by uci2toml.py from {source}: edit that file, not this one.\n"
    return header + dump_toml(translate(parse_uci(text, source), source))


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.chmod(tmp, 0o600)  # the file may name an MQTT password file or a CA
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: Sequence[str] | None = None) -> int:
    """``uci2toml.py [--output FILE] [UCI_FILE]``: 0 when written, 1 on an error (stderr)."""
    parser = argparse.ArgumentParser(prog="uci2toml.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("uci", nargs="?", default="/etc/config/florete", type=Path)
    parser.add_argument("--output", type=Path, help="write here (atomically), not to stdout")
    args = parser.parse_args(argv)
    try:
        text = convert(args.uci.read_text(encoding="utf-8"), str(args.uci))
    except OSError as err:
        sys.stderr.write(f"uci2toml.py: cannot read {args.uci}: {err.strerror}\n")
        return 1
    except (UciError, UnicodeDecodeError) as err:
        sys.stderr.write(f"uci2toml.py: {err}\n")
        return 1
    if args.output is None:
        sys.stdout.write(text)
    else:
        _write_atomically(args.output, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
