"""Joining an 802.11s mesh or an IBSS cell with ``iw`` (and ``ip`` to cycle the interface).

The commands are built by a pure function, so the exact argv is tested, and run with asyncio
subprocesses. The interface type can only change while the interface is down, hence
``ip link set ... down`` / ``up`` around ``iw ... set type`` (iw(8): ``dev <devname> set type``,
``mesh join <mesh ID> [freq <freq in MHz>]``, ``ibss join <SSID> <freq in MHz>``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil

from link_drivers._log import LinkLog
from link_drivers.wifi.config import WifiConfig

__all__ = ["COMMAND_TIMEOUT", "run_commands", "setup_commands"]

log = logging.getLogger(__name__)

COMMAND_TIMEOUT = 10.0  # seconds one command may take

_IW_TYPE = {"mesh": "mp", "ibss": "ibss"}


def setup_commands(config: WifiConfig) -> list[tuple[str, ...]]:
    """The argv of every command that puts the interface into the configured mode.

    Args:
        config: the link; ``managed`` needs nothing (wpa_supplicant associates).

    Returns:
        Commands in order, e.g. for mesh ``wlan0``, ``flt``, 2412 MHz::

            ("ip", "link", "set", "dev", "wlan0", "down")
            ("iw", "dev", "wlan0", "set", "type", "mp")
            ("ip", "link", "set", "dev", "wlan0", "up")
            ("iw", "dev", "wlan0", "mesh", "join", "flt", "freq", "2412")
    """
    if config.mode == "managed":
        return []
    dev = config.interface
    if config.mode == "mesh":
        assert config.mesh_id is not None
        join: tuple[str, ...] = ("iw", "dev", dev, "mesh", "join", config.mesh_id)
        if config.frequency is not None:
            join += ("freq", str(config.frequency))
    else:
        assert config.ssid is not None
        assert config.frequency is not None
        join = ("iw", "dev", dev, "ibss", "join", config.ssid, str(config.frequency))
    return [
        ("ip", "link", "set", "dev", dev, "down"),
        ("iw", "dev", dev, "set", "type", _IW_TYPE[config.mode]),
        ("ip", "link", "set", "dev", dev, "up"),
        join,
    ]


def missing_tools(commands: list[tuple[str, ...]], path: str | None = None) -> list[str]:
    """Programs the commands need that are not on ``path`` (default: ``$PATH``), sorted."""
    return sorted({argv[0] for argv in commands if shutil.which(argv[0], path=path) is None})


async def run_commands(commands: list[tuple[str, ...]], path: str | None = None) -> str | None:
    """Run commands in order, stopping at the first failure.

    Args:
        commands: argv tuples, from :func:`setup_commands`.
        path: the search path for the programs (default: ``$PATH``).

    Returns:
        None when all succeeded; else the reason, e.g. ``"iw not installed (needed for
        mesh/IBSS setup; install the iw package)"`` or ``"iw dev wlan0 set type mp failed
        (exit 240): command failed: Device or resource busy (-16)"``.
    """
    missing = missing_tools(commands, path)
    if missing:
        return (
            f"{' and '.join(missing)} not installed (needed for mesh/IBSS setup; install the "
            f"{' and '.join('iproute2' if m == 'ip' else m for m in missing)} package)"
        )
    env = dict(os.environ, PATH=path) if path is not None else None
    logger = LinkLog(log, link="wifi")
    for argv in commands:
        text = " ".join(argv)
        exe = shutil.which(argv[0], path=path)
        assert exe is not None
        proc = await asyncio.create_subprocess_exec(
            exe,
            *argv[1:],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        try:
            async with asyncio.timeout(COMMAND_TIMEOUT):
                out, _ = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            return f"{text} timed out after {COMMAND_TIMEOUT:.0f} s"
        if proc.returncode != 0:
            detail = out.decode(errors="replace").strip().splitlines()
            return f"{text} failed (exit {proc.returncode}): {' '.join(detail)[:200]}"
        logger.info("ran %s", text)
    return None
