"""``make demo``: start an agent on embedded defaults, run the example pods, show them, stop.

Runs everything as a user would type it, echoing each command: ``florete-agent run`` in a
temporary state dir (``FLORETE_INTERFACES=lo`` unless set: nothing is sent on this machine's
network), ``apply -f examples/``, ``get pods -o wide`` once every pod is Running and ready, their
``logs``, then ``delete`` and a clean stop. Exits non-zero when any step fails.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CLI = [sys.executable, "-m", "agent.cli"]


def _say(text: str) -> None:
    print(f"\n\033[1m{text}\033[0m", flush=True)  # noqa: T201 - the demo talks to its user


def _cli(*args: str, env: dict[str, str], capture: bool = False) -> str:
    if not capture:
        print(f"$ florete-agent {' '.join(args)}", flush=True)  # noqa: T201
    result = subprocess.run([*CLI, *args], env=env, check=True, text=True, capture_output=capture)
    return result.stdout if capture else ""


def _wait_ready(env: dict[str, str], names: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = json.loads(_cli("get", "pods", "-o", "json", env=env, capture=True))["items"]
        ready = {
            p["metadata"]["name"]
            for p in pods
            if p["status"].get("phase") == "Running"
            and all(c.get("ready") for c in p["status"].get("containerStatuses", []))
        }
        if set(names) <= ready:
            return
        time.sleep(0.2)
    raise TimeoutError(f"pods {names} not ready after {timeout:g} s")


def main() -> int:
    """Run the demo; returns the exit code."""
    state = Path(tempfile.mkdtemp(prefix="florete-demo-"))
    env = {
        **os.environ,
        "FLORETE_STATE_DIR": str(state),
        "FLORETE_INTERFACES": os.environ.get("FLORETE_INTERFACES", "lo"),
    }
    env.pop("FLORETE_CONFIG", None)
    _say(f"Starting the agent (state dir {state}, interfaces {env['FLORETE_INTERFACES']})")
    print("$ florete-agent run &", flush=True)  # noqa: T201
    agent = subprocess.Popen([*CLI, "run"], env=env)
    try:
        deadline = time.monotonic() + 30
        while subprocess.run([*CLI, "version"], env=env, capture_output=True).returncode:
            if agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the agent did not start")
            time.sleep(0.1)
        _cli("status", env=env)
        _say("Applying the example manifests")
        _cli("apply", "-f", str(EXAMPLES), env=env)
        names = [p.stem for p in sorted(EXAMPLES.glob("*.yaml"))]
        _wait_ready(env, names, timeout=60)
        time.sleep(2)  # let the pods write a few lines
        _say("Pods, Running")
        _cli("get", "pods", "-o", "wide", env=env)
        for name in names:
            _say(f"Logs of {name}")
            _cli("logs", name, "--tail", "5", env=env)
        _say("Details of one pod")
        _cli("describe", "pod", "web", env=env)
        _say("Cleaning up")
        _cli("delete", "pod", *names, env=env)
    finally:
        agent.send_signal(signal.SIGTERM)
        code = agent.wait(timeout=30)
        shutil.rmtree(state, ignore_errors=True)
    _say(f"The agent stopped cleanly (exit code {code}).")
    return code


if __name__ == "__main__":
    sys.exit(main())
