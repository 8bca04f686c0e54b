"""Agent configuration: one table of keys, four sources, typed and frozen result.

Every key has a default that serves, so no file is needed. Sources, in increasing precedence:

1. embedded defaults (``"default"`` in :attr:`Config.sources`);
2. a TOML file (its path): the ``config`` flag or ``FLORETE_CONFIG`` if given (the file must
   exist), else ``/etc/florete-agent/agent.toml`` as root or
   ``$XDG_CONFIG_HOME/florete-agent/agent.toml`` (``~/.config``) otherwise, where a missing file
   is fine;
3. ``FLORETE_*`` environment variables (``"environment (FLORETE_X)"``);
4. flags, a mapping from dotted key to value given by the CLI (``"flags"``); ``None`` values
   count as not given.

Every value given is checked, even one that a higher source overrides. Problems are collected
and raised together as one :class:`~agent.errors.ConfigError`, one line each, starting with the
source: ``/etc/florete-agent/agent.toml: unknown key "api.sockt" (did you mean "api.socket"?)``,
``environment: unknown variable FLORETE_FOO``, ``flags: log.level: must be one of ...``.

Adding a key is one line in ``_SPECS`` (key, parser, default, env variable, description) plus
the typed field in its section's dataclass.
"""

import contextlib
import difflib
import json
import math
import os
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import psutil

from agent.errors import ConfigError
from agent.mqtt.settings import (
    MqttConfig,
    parse_broker,
    parse_mappings,
    parse_patterns,
    parse_serial_sensors,
)

_UNIX_PATH_MAX = 107  # sun_path is 108 bytes on Linux, with a trailing NUL (unix(7))


@dataclass(frozen=True)
class NodeConfig:
    """``[node]``: ``name`` (default: the hostname) and ``labels`` (str -> str, file only)."""

    name: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class ApiConfig:
    """``[api]``: the local API.

    Attributes:
        socket: Unix socket path (default ``<state_dir>/agent.sock``).
        socket_mode: permission bits of the socket (default ``0o660``).
        socket_group: group given the socket, if that group exists (default ``"florete"``).
        listen: ``"host:port"`` of the mutual-TLS TCP listener, ``""`` (default) for none.
        tls_client_ca: PEM bundle of more client CAs the TCP listener accepts, or None.
            Certificates from the agent's own API CA (``florete-agent kubeconfig``, see
            :mod:`agent.api_pki`) are always accepted. Its existence is checked by the
            listener, which reads it.
    """

    socket: Path
    socket_mode: int
    socket_group: str
    listen: str
    tls_client_ca: Path | None


@dataclass(frozen=True)
class NetworkConfig:
    """``[network]``: ``interfaces``; empty means every non-loopback interface that is up."""

    interfaces: tuple[str, ...]


@dataclass(frozen=True)
class LinksConfig:
    """``[links]``: neighbour links and discovery.

    Attributes:
        udp_port: UDP port of the link driver on every chosen interface (0: any free port).
        mdns: announce and browse ``_florete._udp.local.`` on the chosen interfaces.
        keepalive: seconds without hearing a neighbour before a keepalive is sent.
        dead_interval: seconds without hearing a neighbour before its link is marked down
            (greater than ``keepalive``).
        serial_radios: one table per serial radio (``[[links.serial_radios]]``, the keys of
            :class:`link_drivers.serial_radio.SerialConfig`), checked by the driver (file only).
        wifi: one table per wireless interface (``[[links.wifi]]``), checked by the driver.
    """

    udp_port: int
    mdns: bool
    keepalive: float
    dead_interval: float
    serial_radios: tuple[Mapping[str, Any], ...]
    wifi: tuple[Mapping[str, Any], ...]


@dataclass(frozen=True)
class RuntimeConfig:
    """``[runtime]``: ``default`` runtime name; ``""`` chooses per pod (see ARCHITECTURE §3)."""

    default: str


@dataclass(frozen=True)
class ReconcilerConfig:
    """``[reconciler]``: CrashLoopBackOff and shutdown timing, all in seconds."""

    backoff_initial: float
    backoff_max: float
    backoff_reset: float
    shutdown_timeout: float


@dataclass(frozen=True)
class PairingConfig:
    """``[pairing]``: one-time codes of ``florete-agent pair``.

    Attributes:
        code_ttl: seconds a shown code stays valid (default 300).
        max_failures: failed attempts after which a code burns (default 3).
    """

    code_ttl: float
    max_failures: int


@dataclass(frozen=True)
class LogConfig:
    """``[log]``: ``level`` (debug, info, warning, error) and ``format`` (text, json)."""

    level: str
    format: str


@dataclass(frozen=True)
class Config:
    """The agent's whole configuration, as :func:`load_config` resolved it.

    Attributes:
        state_dir: state directory (identity, database, socket).
        runtimes: raw per-runtime option tables, ``[runtimes.<name>]``; each runtime checks
            its own with :func:`validate_runtime_options`.
        file: the TOML file read, or ``None``.
        sources: for every key (and ``"config"``), where its value came from.
    """

    state_dir: Path
    node: NodeConfig
    api: ApiConfig
    network: NetworkConfig
    links: LinksConfig
    runtime: RuntimeConfig
    runtimes: Mapping[str, Mapping[str, Any]]
    reconciler: ReconcilerConfig
    log: LogConfig
    pairing: PairingConfig
    mqtt: MqttConfig
    file: Path | None
    sources: Mapping[str, str] = field(repr=False)


_SECTIONS: dict[str, Any] = {f.name: f.type for f in fields(Config) if is_dataclass(f.type)}


# Parsers: a raw value (from TOML, an environment string or a flag) -> typed value, or _Invalid.


class _Invalid(ValueError):
    """A value does not fit its key; the message says why, the caller adds key and source."""


def _kind(raw: object) -> str:
    return "a table" if isinstance(raw, Mapping) else f"{type(raw).__name__} {raw!r}"


def _text(raw: object) -> str:
    if not isinstance(raw, str):
        raise _Invalid(f"expected a string, got {_kind(raw)}")
    return raw


def _nonempty(raw: object) -> str:
    if not _text(raw).strip():
        raise _Invalid("must not be empty")
    return _text(raw)


def _path(raw: object) -> Path:
    """A path; ``~`` expanded, relative paths taken from the working directory."""
    text = os.fspath(raw) if isinstance(raw, os.PathLike) else _nonempty(raw)
    return Path(text).expanduser().absolute()


def _optional_path(raw: object) -> Path | None:
    return None if raw == "" else _path(raw)


def _seconds(raw: object) -> float:
    value = math.nan
    if isinstance(raw, int | float | str) and not isinstance(raw, bool):
        with contextlib.suppress(ValueError):
            value = float(raw)
    if not (math.isfinite(value) and value > 0):
        raise _Invalid(f"expected a positive number of seconds, got {_kind(raw)}")
    return value


def _mode(raw: object) -> int:
    """Permission bits: an octal string (``"0660"``, ``"660"``) or a TOML integer (``0o660``)."""
    try:
        value = raw if type(raw) is int else int(_text(raw), 8)
    except ValueError:
        raise _Invalid(f'expected an octal mode such as "0660", got {_kind(raw)}') from None
    if not 0 <= value <= 0o777:
        raise _Invalid(f"mode {value:o} is outside 0000-0777")
    return value


def _names(raw: object) -> tuple[str, ...]:
    """Names: a list of strings, or one comma-separated string; duplicates dropped."""
    items = raw.split(",") if isinstance(raw, str) else raw
    if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
        raise _Invalid(f"expected a list of names, got {_kind(raw)}")
    return tuple(dict.fromkeys(i.strip() for i in items if i.strip()))


def _listen(raw: object) -> str:
    """``""`` or ``host:port`` (an IPv6 host in brackets: ``[::1]:8443``; port 0: any free)."""
    text = _text(raw)
    host, _, port = text.rpartition(":")
    if text and not (host.strip("[]") and port.isdigit() and 0 <= int(port) < 65536):
        raise _Invalid(f'expected "host:port" with a port 0-65535, got {text!r}')
    return text


def _port(raw: object) -> int:
    """A UDP/TCP port 0-65535 (0: any free port), as an integer or a decimal string."""
    text = str(raw) if type(raw) is int else _text(raw)
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise _Invalid(f"expected a port 0-65535, got {_kind(raw)}")
    return int(text)


def _bool(raw: object) -> bool:
    """A TOML boolean, or one of true/false/on/off/yes/no/1/0 (environment, flags)."""
    if isinstance(raw, bool):
        return raw
    words = {"true": True, "on": True, "yes": True, "1": True}
    words |= {"false": False, "off": False, "no": False, "0": False}
    value = words.get(_text(raw).strip().lower())
    if value is None:
        raise _Invalid(f"expected true or false, got {_kind(raw)}")
    return value


def _tables(raw: object) -> tuple[Mapping[str, Any], ...]:
    """A list of tables (``[[links.serial_radios]]``), each checked later by its driver."""
    if not isinstance(raw, list) or not all(isinstance(t, Mapping) for t in raw):
        raise _Invalid(f"expected a list of tables ([[...]]), got {_kind(raw)}")
    return tuple(MappingProxyType(dict(t)) for t in raw)


def _choice(*options: str) -> Callable[[object], str]:
    def parse(raw: object) -> str:
        value = _text(raw).lower()
        if value not in options:
            raise _Invalid(f"must be one of {', '.join(options)}, got {raw!r}")
        return value

    return parse


def _labels(raw: object) -> Mapping[str, str]:
    if not isinstance(raw, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise _Invalid(f"expected a table of strings, got {_kind(raw)}")
    return MappingProxyType(dict(raw))


def _runtimes(raw: object) -> Mapping[str, Mapping[str, Any]]:
    if not isinstance(raw, Mapping) or not all(isinstance(v, Mapping) for v in raw.values()):
        raise _Invalid("expected one table per runtime: [runtimes.<name>]")
    return MappingProxyType({name: MappingProxyType(dict(opts)) for name, opts in raw.items()})


def _count(raw: object) -> int:
    """A positive integer, as a TOML integer or a decimal string."""
    text = str(raw) if type(raw) is int else _text(raw).strip()
    if not text.isdigit() or int(text) < 1:
        raise _Invalid(f"expected a positive integer, got {_kind(raw)}")
    return int(text)


def _wrap(parse: Callable[[object], object]) -> Callable[[object], object]:
    """A parser of :mod:`agent.mqtt.settings` with its ValueError as :class:`_Invalid`."""

    def wrapped(raw: object) -> object:
        try:
            return parse(raw)
        except ValueError as err:
            raise _Invalid(str(err)) from None

    return wrapped


def _secret(value: str) -> str:
    return "(set)" if value else ""


def _attempts(raw: object) -> int:
    """A count of attempts, 1-10, as a TOML integer or a decimal string."""
    text = str(raw) if type(raw) is int else _text(raw).strip()
    if not text.isdigit() or not 1 <= int(text) <= 10:
        raise _Invalid(f"expected an integer 1-10, got {_kind(raw)}")
    return int(text)


# Defaults that depend on the environment or on other keys.


@dataclass
class _Context:
    is_root: bool
    environ: Mapping[str, str]
    values: dict[str, Any]


def _xdg_dir(environ: Mapping[str, str], var: str, fallback: str) -> Path:
    """An XDG base directory: ``$var`` if absolute (the spec ignores relative ones), else ~/…"""
    value = environ.get(var, "")
    if os.path.isabs(value):
        return Path(value)
    return Path(environ.get("HOME") or os.path.expanduser("~"), fallback)


def _default_state_dir(ctx: _Context) -> Path:
    if ctx.is_root:
        return Path("/var/lib/florete-agent")
    return _xdg_dir(ctx.environ, "XDG_STATE_HOME", ".local/state") / "florete-agent"


def _default_socket(ctx: _Context) -> Path:
    state_dir: Path = ctx.values["state_dir"]
    return state_dir / "agent.sock"


def _json_default(value: object) -> object:
    return dict(value) if isinstance(value, Mapping) else str(value)


def _show(value: object) -> str:
    """Text for :func:`describe_config`: tables as JSON, lists comma-separated, None as ""."""
    if isinstance(value, Mapping):
        return json.dumps(value, sort_keys=True, default=_json_default)
    if isinstance(value, tuple) and all(isinstance(item, str) for item in value):
        return ",".join(value)
    if isinstance(value, tuple):
        return json.dumps(list(value), sort_keys=True, default=_json_default)
    return "" if value is None else str(value)


@dataclass(frozen=True)
class _Spec:
    key: str
    parse: Callable[[object], object]
    default: object  # a value, or a callable taking the _Context
    env: str | None
    description: str
    show: Callable[[Any], str] = _show


_EMPTY: Mapping[str, Any] = MappingProxyType({})
_LOG_LEVELS = _choice("debug", "info", "warning", "error")

_SPECS: tuple[_Spec, ...] = (  # in resolution order: a derived default follows what it reads
    _Spec("state_dir", _path, _default_state_dir, "FLORETE_STATE_DIR", "state directory"),
    _Spec("node.name", _nonempty, lambda _: socket.gethostname(), "FLORETE_NODE_NAME", "node name"),
    _Spec("node.labels", _labels, _EMPTY, None, "labels of this node (file only)"),
    _Spec("api.socket", _path, _default_socket, "FLORETE_API_SOCKET", "API Unix socket"),
    _Spec("api.socket_mode", _mode, 0o660, None, "socket permissions", lambda v: f"{v:04o}"),
    _Spec("api.socket_group", _nonempty, "florete", None, "socket group, if it exists"),
    _Spec("api.listen", _listen, "", "FLORETE_API_LISTEN", "mTLS TCP listener host:port"),
    _Spec("api.tls_client_ca", _optional_path, None, "FLORETE_API_TLS_CLIENT_CA", "client CAs"),
    _Spec("network.interfaces", _names, (), "FLORETE_INTERFACES", "interfaces; empty: all up"),
    _Spec("links.udp_port", _port, 4737, "FLORETE_LINK_PORT", "UDP link port; 0: any"),
    _Spec("links.mdns", _bool, True, "FLORETE_MDNS", "mDNS announce and browse"),
    _Spec("links.keepalive", _seconds, 1.0, None, "keepalive after this many idle seconds"),
    _Spec("links.dead_interval", _seconds, 3.0, None, "link down after this many silent s"),
    _Spec("links.serial_radios", _tables, (), None, "serial radio links (file only)"),
    _Spec("links.wifi", _tables, (), None, "Wi-Fi links (file only)"),
    _Spec("runtime.default", _text, "", None, "default runtime; empty: automatic"),
    _Spec("runtimes", _runtimes, _EMPTY, None, "per-runtime option tables (file only)"),
    _Spec("reconciler.backoff_initial", _seconds, 10.0, "FLORETE_BACKOFF_INITIAL", "first delay"),
    _Spec("reconciler.backoff_max", _seconds, 300.0, "FLORETE_BACKOFF_MAX", "longest delay"),
    _Spec("reconciler.backoff_reset", _seconds, 600.0, "FLORETE_BACKOFF_RESET", "reset after"),
    _Spec("reconciler.shutdown_timeout", _seconds, 10.0, None, "bound on agent shutdown"),
    _Spec("log.level", _LOG_LEVELS, "info", "FLORETE_LOG_LEVEL", "log level"),
    _Spec("log.format", _choice("text", "json"), "text", None, "log format"),
    _Spec("pairing.code_ttl", _seconds, 300.0, "FLORETE_PAIRING_CODE_TTL", "pairing code life, s"),
    _Spec("pairing.max_failures", _attempts, 3, None, "failed tries that burn a pairing code"),
    _Spec(
        "mqtt.broker",
        _wrap(parse_broker),
        None,
        "FLORETE_MQTT_BROKER",
        "MQTT broker URL; empty: bridge off",
        lambda v: "" if v is None else v.url,
    ),
    _Spec("mqtt.username", _text, "", "FLORETE_MQTT_USERNAME", "MQTT user name"),
    _Spec("mqtt.password", _text, "", None, "MQTT password (file only)", _secret),
    _Spec(
        "mqtt.password_file",
        _optional_path,
        None,
        "FLORETE_MQTT_PASSWORD_FILE",
        "file holding the MQTT password",
    ),
    _Spec("mqtt.tls_ca", _optional_path, None, "FLORETE_MQTT_TLS_CA", "CA bundle for mqtts://"),
    _Spec("mqtt.client_id", _text, "", None, "MQTT client id; empty: florete-<short ID>"),
    _Spec("mqtt.protocol", _choice("3.1.1", "5"), "5", "FLORETE_MQTT_PROTOCOL", "3.1.1 or 5"),
    _Spec("mqtt.keepalive", _seconds, 30.0, None, "MQTT keepalive, seconds"),
    _Spec("mqtt.max_inflight", _count, 64, None, "QoS 1 messages in flight to the broker"),
    _Spec("mqtt.outbox_max_messages", _count, 100_000, None, "outbox bound, messages"),
    _Spec("mqtt.outbox_max_bytes", _count, 64 * 2**20, None, "outbox bound, bytes"),
    _Spec("mqtt.telemetry", _bool, True, None, "publish telemetry and HA discovery"),
    _Spec("mqtt.telemetry_interval", _seconds, 30.0, None, "seconds between telemetry"),
    _Spec("mqtt.base_topic", _text, "", None, "telemetry topic prefix; empty: florete/<node>"),
    _Spec("mqtt.discovery_prefix", _text, "homeassistant", None, "HA discovery; empty: off"),
    _Spec("mqtt.peer_read", _wrap(parse_patterns), ("#",), None, "filters peers may read"),
    _Spec("mqtt.peer_write", _wrap(parse_patterns), ("#",), None, "filters peers may write"),
    _Spec("mqtt.mappings", _wrap(parse_mappings), (), None, "topic mappings (file only)"),
    _Spec(
        "mqtt.serial_sensors", _wrap(parse_serial_sensors), (), None, "serial sensors (file only)"
    ),
)
_BY_KEY = {spec.key: spec for spec in _SPECS}
_BY_ENV = {spec.env: spec for spec in _SPECS if spec.env}
_TABLES = {key.rpartition(".")[0] for key in _BY_KEY} - {""}
_ENV_CONFIG = "FLORETE_CONFIG"


def _unknown(what: str, name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.8)
    return f"unknown {what} {name}" + (f" (did you mean {close[0]}?)" if close else "")


def _find_file(flag: object, ctx: _Context) -> tuple[Path | None, str]:
    """Return the config file to read (``None``: none) and the source that named it."""
    if flag is None and not ctx.environ.get(_ENV_CONFIG):
        base = Path("/etc") if ctx.is_root else _xdg_dir(ctx.environ, "XDG_CONFIG_HOME", ".config")
        path = base / "florete-agent" / "agent.toml"
        return (path if path.exists() else None), "default"
    source = "flags" if flag is not None else f"environment ({_ENV_CONFIG})"
    try:
        path = _path(ctx.environ[_ENV_CONFIG] if flag is None else flag)
    except _Invalid as err:
        raise ConfigError(f"{source}: config: {err}") from None
    if not path.is_file():
        raise ConfigError(f"{source}: config: no such file {path}")
    return path, source


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except tomllib.TOMLDecodeError as err:  # its message ends "(at line L, column C)"
        raise ConfigError(f"{path}: invalid TOML: {err}") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot read: {err}") from err


def _flatten(
    table: Mapping[str, Any], prefix: str, source: str, given: dict[str, list[tuple[str, object]]]
) -> list[str]:
    """Add the file's values to ``given`` under their dotted keys; return the errors found."""
    errors = []
    for name, raw in table.items():
        key = prefix + name
        if key in _BY_KEY:
            given[key].append((source, raw))
        elif key in _TABLES and isinstance(raw, Mapping):
            errors += _flatten(raw, key + ".", source, given)
        elif key in _TABLES:
            errors.append(f'{source}: "{key}" must be a table: [{key}]')
        else:
            errors.append(f"{source}: " + _unknown("key", f'"{key}"', (f'"{k}"' for k in _BY_KEY)))
    return errors


def _cross_check(values: Mapping[str, Any], sources: Mapping[str, str]) -> list[str]:
    errors = []
    if values["links.keepalive"] >= values["links.dead_interval"]:
        errors.append(
            f"{sources['links.keepalive']}: links.keepalive: {values['links.keepalive']} s must "
            f"be below links.dead_interval ({values['links.dead_interval']} s)"
        )
    if values["reconciler.backoff_initial"] > values["reconciler.backoff_max"]:
        errors.append(
            f"{sources['reconciler.backoff_initial']}: reconciler.backoff_initial: "
            f"{values['reconciler.backoff_initial']} s exceeds reconciler.backoff_max "
            f"({values['reconciler.backoff_max']} s, {sources['reconciler.backoff_max']})"
        )
    if values["mqtt.password"] and values["mqtt.password_file"] is not None:
        errors.append(
            f"{sources['mqtt.password_file']}: mqtt.password_file: set, and so is mqtt.password "
            f"({sources['mqtt.password']}): give one"
        )
    size = len(os.fsencode(values["api.socket"]))
    if size > _UNIX_PATH_MAX:  # blame state_dir when the socket path is derived from it
        key = "state_dir" if sources["api.socket"] == "default" else "api.socket"
        errors.append(
            f"{sources[key]}: {key}: socket path {values['api.socket']} is {size} bytes; "
            f"a Unix socket path may have at most {_UNIX_PATH_MAX} (unix(7))"
        )
    return errors


def load_config(
    flags: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    is_root: bool | None = None,
) -> Config:
    """Resolve the configuration from defaults, the TOML file, the environment and flags.

    Args:
        flags: dotted key -> value from the command line (``{"log.level": "debug"}``), plus
            ``"config"``: the TOML file to read. ``None`` values are ignored.
        environ: the environment (default ``os.environ``); only ``FLORETE_*``, ``HOME``,
            ``XDG_CONFIG_HOME`` and ``XDG_STATE_HOME`` are read.
        is_root: choose the system-wide paths (default: whether the effective UID is 0).

    Returns:
        The frozen configuration, with :attr:`Config.sources` filled for every key.

    Raises:
        ConfigError: unknown keys or variables, values of the wrong type or range, an unreadable
            or malformed file, or a named file that does not exist. The message has one line
            per problem, each naming the source and the key.
    """
    flag_values = {k: v for k, v in (flags or {}).items() if v is not None}
    ctx = _Context(
        os.geteuid() == 0 if is_root is None else is_root,
        os.environ if environ is None else environ,
        {},
    )
    path, file_source = _find_file(flag_values.pop("config", None), ctx)
    given: dict[str, list[tuple[str, object]]] = {key: [] for key in _BY_KEY}  # low to high
    errors = [] if path is None else _flatten(_read_file(path), "", str(path), given)
    for name, text in sorted(ctx.environ.items()):
        if name in _BY_ENV:
            given[_BY_ENV[name].key].append((f"environment ({name})", text))
        elif name.startswith("FLORETE_") and name != _ENV_CONFIG:
            errors.append("environment: " + _unknown("variable", name, [*_BY_ENV, _ENV_CONFIG]))
    for key, flag in flag_values.items():
        if key in _BY_KEY:
            given[key].append(("flags", flag))
        else:
            errors.append("flags: " + _unknown("key", f'"{key}"', (f'"{k}"' for k in _BY_KEY)))

    sources = {"config": file_source}
    for spec in _SPECS:
        chosen: tuple[str, object] | None = None
        for source, value in given[spec.key]:
            try:
                chosen = (source, spec.parse(value))
            except _Invalid as err:
                errors.append(f"{source}: {spec.key}: {err}")
        if chosen is None:
            default = spec.default(ctx) if callable(spec.default) else spec.default
            chosen = ("default", default)
        sources[spec.key], ctx.values[spec.key] = chosen
    errors += _cross_check(ctx.values, sources)
    if errors:
        raise ConfigError("\n".join(errors))

    sections: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}
    top: dict[str, Any] = {}
    for key, value in ctx.values.items():
        section, _, name = key.rpartition(".")
        (sections[section] if section else top)[name] = value
    return Config(
        **top,
        **{name: cls(**sections[name]) for name, cls in _SECTIONS.items()},
        file=path,
        sources=MappingProxyType(sources),
    )


def describe_config(cfg: Config) -> list[tuple[str, str, str]]:
    """List every key for display: ``(dotted key, value as text, source)``.

    The first row is ``("config", file or "", source)``; modes show in octal, lists
    comma-separated, tables as JSON.
    """
    rows = [("config", _show(cfg.file), cfg.sources["config"])]
    for spec in _SPECS:
        value: Any = cfg
        for part in spec.key.split("."):
            value = getattr(value, part)
        rows.append((spec.key, spec.show(value), cfg.sources[spec.key]))
    return rows


def config_keys() -> list[tuple[str, str, str]]:
    """List the known keys for help output: ``(dotted key, env variable or "", description)``."""
    return [(spec.key, spec.env or "", spec.description) for spec in _SPECS]


def _like(default: object, raw: object) -> object:
    """Check ``raw`` against the type of ``default``; return it converted (int -> float)."""
    if default is None:
        return raw
    if isinstance(default, Path):
        return _path(raw)
    if isinstance(default, tuple):
        return _names(raw)
    if isinstance(default, float) and type(raw) is int:
        return float(raw)
    if type(raw) is not type(default):
        raise _Invalid(f"expected {type(default).__name__}, got {_kind(raw)}")
    return raw


def validate_runtime_options(
    name: str, options: Mapping[str, Any], allowed: Mapping[str, Any], source: str
) -> dict[str, Any]:
    """Check one ``[runtimes.<name>]`` table against a runtime's option defaults.

    Each option's type follows its default's: ``bool``, ``int``, ``str`` exactly; ``float``
    accepts integers too; ``Path`` accepts strings; a ``tuple`` default takes a list of names
    (or a comma-separated string); a ``None`` default accepts any value.

    Args:
        name: the runtime's name, e.g. ``"podman"``.
        options: the raw table, ``cfg.runtimes.get(name, {})``.
        allowed: option name -> default value (the runtime's ``OPTIONS`` table).
        source: where the table came from, ``cfg.sources["runtimes"]``.

    Returns:
        ``allowed`` updated with the converted options given.

    Raises:
        ConfigError: unknown options or wrong types, one line each naming
            ``runtimes.<name>.<option>`` and ``source``.
    """
    result = dict(allowed)
    errors = []
    for option, raw in options.items():
        key = f"runtimes.{name}.{option}"
        if option not in allowed:
            known = (f'"runtimes.{name}.{o}"' for o in allowed)
            errors.append(f"{source}: " + _unknown("key", f'"{key}"', known))
            continue
        try:
            result[option] = _like(allowed[option], raw)
        except _Invalid as err:
            errors.append(f"{source}: {key}: {err}")
    if errors:
        raise ConfigError("\n".join(errors))
    return result


def resolve_interfaces(cfg: Config) -> tuple[str, ...]:
    """Return the network interfaces the agent may use, from ``network.interfaces``.

    Empty means every interface that is up and is not a loopback (per ``psutil.net_if_stats``
    flags, psutil >= 5.9.3), sorted by name; this may be empty on an isolated node. Named
    interfaces (``lo`` included) need only exist: one that is down may come up later.

    Raises:
        ConfigError: a named interface does not exist (the message names it and the source).
    """
    stats = psutil.net_if_stats()
    if not cfg.network.interfaces:
        return tuple(
            sorted(n for n, s in stats.items() if s.isup and "loopback" not in s.flags.split(","))
        )
    missing = [name for name in cfg.network.interfaces if name not in stats]
    if missing:
        raise ConfigError(
            f"{cfg.sources['network.interfaces']}: network.interfaces: no such interface "
            f"{', '.join(missing)} (present: {', '.join(sorted(stats))})"
        )
    return cfg.network.interfaces
