"""Emulation-only shim for the armhf check (packaging/armhf/check.sh); never part of the agent.

qemu-user (7.2, Debian bookworm) does not emulate the ``SIOCETHTOOL`` ioctl, so
``psutil.net_if_stats()`` fails with ENOSYS for every interface, where a real ARMv7 kernel answers
or says EOPNOTSUPP (which psutil maps to "duplex unknown, speed 0"). check.sh installs this module
and a ``.pth`` line importing it into the chroot's venv only. It acts only when
``ARMHF_CHECK_ETHTOOL_SHIM=1`` (the agent refuses unknown ``FLORETE_*`` variables), and then maps
ENOSYS the way psutil maps EOPNOTSUPP.

The ``.pth`` runs before Debian's dist-packages (where psutil is) join ``sys.path``, so the patch
is applied by an import hook when ``psutil._psutil_linux`` loads.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable, Sequence
from importlib.abc import MetaPathFinder
from importlib.machinery import ModuleSpec, PathFinder
from types import ModuleType

_TARGET = "psutil._psutil_linux"


def _patch(cext: ModuleType) -> None:
    real: Callable[[str], tuple[int, int]] = cext.net_if_duplex_speed

    def net_if_duplex_speed(name: str) -> tuple[int, int]:
        """psutil's ``net_if_duplex_speed(name)``: (duplex constant, speed in Mbit/s)."""
        try:
            return real(name)
        except OSError as err:
            if err.errno != errno.ENOSYS:
                raise
            return (int(cext.DUPLEX_UNKNOWN), 0)

    cext.__dict__["net_if_duplex_speed"] = net_if_duplex_speed


class _Finder(MetaPathFinder):
    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname != _TARGET:
            return None
        spec = PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        real_exec = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            real_exec(module)
            _patch(module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if os.environ.get("ARMHF_CHECK_ETHTOOL_SHIM") == "1":
    sys.meta_path.insert(0, _Finder())
