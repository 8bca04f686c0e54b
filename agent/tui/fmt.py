"""Short text forms of sizes, rates, durations and ratios for the TUI's narrow columns."""

from __future__ import annotations

from typing import Any

import yaml

from agent.render import human_duration

__all__ = ["ago", "dump", "mib", "percent", "rate", "seconds_ms", "size"]


def size(n: float | None) -> str:
    """Bytes in binary units: ``512B``, ``1.5KiB``, ``20.0MiB``, ``3.2GiB``; ``-`` for None."""
    if n is None:
        return "-"
    unit = "B"
    for bigger in ("KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            break
        n, unit = n / 1024, bigger
    return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"


def rate(bytes_per_second: float | None) -> str:
    """A byte rate: ``size(n) + "/s"``; ``-`` before there are two samples."""
    return "-" if bytes_per_second is None else size(bytes_per_second) + "/s"


def mib(n: float) -> str:
    """Bytes as MiB with one decimal: ``41.0 MiB``."""
    return f"{n / 2**20:.1f} MiB"


def seconds_ms(value: float | None) -> str:
    """Seconds as milliseconds: ``4.6ms``; ``-`` when unknown."""
    return "-" if value is None else f"{value * 1000:.1f}ms"


def percent(ratio: float | None) -> str:
    """A 0-1 ratio as a percentage with one decimal: ``2.5%``; ``-`` when unknown."""
    return "-" if ratio is None else f"{ratio * 100:.1f}%"


def ago(seconds: float | None) -> str:
    """An age as kubectl prints it, ``3m20s``; ``-`` when unknown."""
    return "-" if seconds is None else human_duration(seconds)


def dump(obj: Any) -> str:
    """An API object as YAML, keys in the API's order (for details and generic views)."""
    return yaml.safe_dump(obj, sort_keys=False, default_flow_style=False, allow_unicode=True)
