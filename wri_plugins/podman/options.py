"""Options of the podman runtime (``runtimes.podman`` in the agent's config) and their checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agent.errors import ConfigError
from wri_plugins.podman.spec import NETWORKS

MiB = 1024 * 1024

#: Option -> default; see :class:`wri_plugins.podman.runtime.PodmanRuntime` for their meaning.
OPTIONS: dict[str, Any] = {
    "socket": "",
    "start_service": True,
    "podman": "podman",
    "containers_conf": "",
    "network": "bridge",
    "host_ip": "127.0.0.1",
    "pull": True,
    "pull_timeout": 300.0,
    "log_max_bytes": 10 * MiB,
}


def validate(options: Mapping[str, Any]) -> dict[str, Any]:
    """Options merged over defaults, each of its default's type.

    Raises:
        ConfigError: unknown option, wrong type, or bad value.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ConfigError(f"runtimes.podman: unknown option {unknown[0]!r}")
    merged = {**OPTIONS, **options}
    for key, default in OPTIONS.items():
        value = merged[key]
        kind = (int, float) if isinstance(default, float) else type(default)
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(
                f"runtimes.podman.{key}: want {type(default).__name__}, got {value!r}"
            )
    if merged["network"] not in NETWORKS:
        raise ConfigError(f"runtimes.podman.network: one of {', '.join(NETWORKS)}")
    if merged["pull_timeout"] <= 0 or merged["log_max_bytes"] < 0:
        raise ConfigError("runtimes.podman: pull_timeout must be > 0, log_max_bytes >= 0")
    return merged
