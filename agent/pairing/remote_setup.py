"""Installs and starts florete-agent on the remote host of SSH pairing.

This file runs **on the remote host**, under its ``python3``: SSH pairing sends its source on
the standard input of ``python3 - ACTION JSON`` (:mod:`agent.pairing.ssh_install`). So it uses
the standard library only, imports nothing of the project, and prints one JSON object as the
last line of its output. Actions:

``install {"prefix", "wheels", "requirement", "launcher", "index"}``
    Create a virtual environment in ``prefix`` (``--without-pip``: Debian's python3 has no
    ensurepip without python3-venv) unless one is there, install ``requirement`` into it with
    pip run from the pip wheel among ``wheels`` (pip's documented way to run a wheel), first
    from ``wheels`` alone (``--no-index``), then, when ``index`` is true and that failed, with
    the package index too. Write the launcher, a ``sh`` script that runs the environment's
    ``florete-agent``. Answers ``{"ok", "stage", "offline", "output"}``.
``start {"prefix", "launcher", "restart", "timeout"}``
    Start ``florete-agent run`` in a session of its own (it outlives the SSH login), its output
    appended to ``prefix/agent.log``, its pid in ``prefix/agent.pid``, and wait until
    ``florete-agent version`` answers. With ``restart``, first stop (SIGTERM) the agent that an
    earlier start left running. Answers ``{"ok", "pid", "output"}``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

LAUNCHER_MARK = "# florete-agent launcher, written by `florete-agent pair ssh://...`"
_TAIL = 4000  # characters of output sent back


def _run(argv: list[str], timeout: float) -> tuple[int, str]:
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return 1, f"{argv[0]}: {err}"
    return done.returncode, done.stdout


def install(args: dict[str, Any]) -> dict[str, Any]:
    """The ``install`` action (see the module docstring)."""
    prefix, wheels = Path(args["prefix"]).expanduser(), Path(args["wheels"]).expanduser()
    python = prefix / "bin" / "python"
    if not python.exists():
        code, output = _run([sys.executable, "-m", "venv", "--without-pip", str(prefix)], 300)
        if code != 0:
            return {"ok": False, "stage": "venv", "offline": True, "output": output[-_TAIL:]}
    pip_wheels = sorted(wheels.glob("pip-*.whl"))
    if pip_wheels:
        pip = [str(python), f"{pip_wheels[-1]}/pip"]
        targets = [args["requirement"], str(pip_wheels[-1])]
    else:
        code, output = _run([str(python), "-m", "ensurepip", "--default-pip"], 300)
        if code != 0:
            return {"ok": False, "stage": "pip", "offline": True, "output": output[-_TAIL:]}
        pip, targets = [str(python), "-m", "pip"], [args["requirement"]]
    base = [
        *pip,
        "install",
        "--disable-pip-version-check",
        "--no-input",
        "--no-cache-dir",
        "--upgrade",
        "--find-links",
        str(wheels),
    ]
    code, output = _run([*base, "--no-index", *targets], 1800)
    offline = code == 0
    if code != 0 and args.get("index"):
        code, more = _run([*base, "--retries", "1", "--timeout", "20", *targets], 1800)
        output = f"{output}\n--- with the package index ---\n{more}"
    if code != 0:
        return {"ok": False, "stage": "pip", "offline": offline, "output": output[-_TAIL:]}
    launcher = Path(args["launcher"]).expanduser()
    launcher.parent.mkdir(parents=True, exist_ok=True)
    temporary = launcher.with_name(f".{launcher.name}.new")
    temporary.write_text(f'#!/bin/sh\n{LAUNCHER_MARK}\nexec "{prefix}/bin/florete-agent" "$@"\n')
    temporary.chmod(0o755)
    temporary.replace(launcher)
    return {"ok": True, "stage": "done", "offline": offline, "output": output[-_TAIL:]}


def _alive(pid: int, prefix: Path) -> bool:
    """``pid`` runs and is an agent of ``prefix`` (a reused pid is not taken for it)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return str(prefix).encode() in cmdline and b"run" in cmdline


def _stop(prefix: Path, pid_file: Path, timeout: float) -> str:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return ""
    if not _alive(pid, prefix):
        return ""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid, prefix):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
        time.sleep(0.1)
    return f"stopped the agent that ran as pid {pid}\n"


def start(args: dict[str, Any]) -> dict[str, Any]:
    """The ``start`` action (see the module docstring)."""
    prefix = Path(args["prefix"]).expanduser()
    launcher = str(Path(args["launcher"]).expanduser())
    pid_file, log_file = prefix / "agent.pid", prefix / "agent.log"
    note = _stop(prefix, pid_file, 30.0) if args.get("restart") else ""
    with log_file.open("ab") as log:
        process = subprocess.Popen(
            [str(prefix / "bin" / "florete-agent"), "run"],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=Path.home(),
            start_new_session=True,
        )
    pid_file.write_text(f"{process.pid}\n")
    deadline = time.monotonic() + float(args.get("timeout", 60.0))
    output = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        code, output = _run([launcher, "version"], 30)
        if code == 0:
            return {"ok": True, "pid": process.pid, "output": note + output}
        time.sleep(0.2)
    try:
        log_tail = log_file.read_text(errors="replace")[-_TAIL:]
    except OSError:
        log_tail = ""
    status = process.poll()
    state = f"exited with {status}" if status is not None else "does not answer"
    return {"ok": False, "pid": process.pid, "output": f"{state}\n{output}\n{log_tail}"}


def main(argv: list[str]) -> int:
    """``ACTION JSON``: run the action and print its answer as the last line."""
    actions = {"install": install, "start": start}
    if len(argv) != 2 or argv[0] not in actions:
        sys.stderr.write("usage: remote_setup.py install|start JSON\n")
        return 2
    answer = actions[argv[0]](json.loads(argv[1]))
    sys.stdout.write("\n" + json.dumps(answer) + "\n")
    return 0 if answer["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
