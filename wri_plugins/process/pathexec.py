"""``execvpe`` for the commands of ``kubectl exec``, shared by the process runtime's shim and the
systemd runtime's log pump (``execserver``).

Both import it as a top-level module (``-I -S`` leaves their directories on ``sys.path``; the
pump adds this one for ``crilog`` too), so it imports builtin C modules only.
"""

from __future__ import annotations

import errno
import os

_MISSING = (errno.ENOENT, errno.ENOTDIR)


def execvpe(argv: list[str], env: dict[bytes, bytes]) -> None:
    """``execve`` of ``argv[0]`` searched in the task's ``PATH`` (default ``/usr/bin:/bin``)
    as execvp(3) does: the first candidate that runs wins; when none does, the first error
    other than "not found" is raised (else "not found").

    Not ``os.execvpe``: it imports ``warnings``, which a command that switched to an
    unprivileged user may not be allowed to read (an interpreter under ``/root``); import this
    module before switching.

    Args:
        argv: the command; ``argv[0]`` is run as is when it holds a ``/``.
        env: the command's whole environment.

    Raises:
        OSError: nothing could be run (``ENOENT`` when nothing was found).
    """
    name = os.fsencode(argv[0])
    if b"/" in name:
        os.execve(name, argv, env)
    failure: OSError | None = None
    for directory in env.get(b"PATH", b"/usr/bin:/bin").split(b":"):
        try:
            os.execve(os.path.join(directory or b".", name), argv, env)
        except OSError as err:
            if failure is None or (failure.errno in _MISSING and err.errno not in _MISSING):
                failure = err
    raise failure or OSError(errno.ENOENT, os.strerror(errno.ENOENT))
