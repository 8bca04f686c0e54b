"""Check an installed florete-agent .deb from the inside: dependencies and optional features.

``make test-packaging`` copies this file and ``dependencies.toml`` into the installed chroots
(amd64 and armhf) and runs it with the interpreter the launcher names, as the launcher runs::

    python3 -I check_installed.py [--launcher PATH] [--timeout SECONDS] [--agent]

1. **The launcher's path.** It runs the launcher's own lines up to its ``from agent.cli import
   main`` (``sys.path`` with /usr/lib/florete-agent first, the blocked ``_cbor2``), so what is
   imported here is what ``florete-agent`` imports.
2. **Where each dependency comes from.** Every distribution of dependencies.toml for the .deb
   resolves where the table says: a carried one in /usr/lib/florete-agent at the table's
   version, a Debian one in /usr/lib/python3/dist-packages at or above the table's minimum; and
   each of its top-level modules imports with warnings as errors.
3. **Each optional feature does one real thing through the agent's modules**: ``pairing``, a
   SPAKE2 exchange between two :class:`agent.pairing.crypto.Spake` (keys agree, confirmations
   verify, a wrong code fails); ``qr``, the TUI's QR code of a pairing URI (segno); ``ssh``, an
   asyncssh server and client on 127.0.0.1 (default algorithms, then RSA and classic ones) and
   the agent's SSH and Android modules imported; ``mqtt``, :class:`agent.mqtt.client.BrokerClient`
   (paho 2, ``CallbackAPIVersion.VERSION2``, MQTT 5) connects to a stand-in broker that answers
   CONNACK; ``supernode``, two :class:`supernode.raft.RaftNode` (pysyncobj) elect a leader and
   replicate a command. With ``--agent`` (an agent reachable through the usual socket, with the
   pods ``hello`` and ``web``): ``tui``, the TUI headless shows them; ``pair``,
   ``florete-agent pair`` prints a code and its QR code, and Ctrl-C withdraws it.

Prints one line per check. Exit status 0: every check passed; 1: one failed (its line says
why); 2: usage. Nothing is sent anywhere but to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
import warnings
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

LAUNCHER = Path("/usr/lib/florete-agent/bin/florete-agent")
LIB = Path("/usr/lib/florete-agent")
DEBIAN_SITE = Path("/usr/lib/python3/dist-packages")
TABLE = Path(__file__).resolve().with_name("dependencies.toml")


class CheckFailed(Exception):
    """A check failed; the message says what was expected and what was found."""


def say(text: str) -> None:
    """One line of the report, flushed (the caller tees it)."""
    sys.stdout.write(f"{text}\n")
    sys.stdout.flush()


def use_launcher_path(launcher: Path) -> None:
    """Set up ``sys.path`` and ``sys.modules`` as ``launcher`` does before it imports the agent.

    Raises:
        CheckFailed: this interpreter is not the launcher's (``#!INTERPRETER -I``), or the
            launcher has no ``from agent.cli import main`` line.
    """
    text = launcher.read_text(encoding="utf-8")
    shebang = text.splitlines()[0].removeprefix("#!").split()
    if os.path.realpath(shebang[0]) != os.path.realpath(sys.executable) or shebang[1:] != ["-I"]:
        raise CheckFailed(f"the launcher runs {' '.join(shebang)}, this is {sys.executable}")
    if not sys.flags.isolated:
        raise CheckFailed("run this with python3 -I, as the launcher runs")
    head, found, _ = text.partition("\nfrom agent.cli import main")
    if not found:
        raise CheckFailed(f"{launcher} has no 'from agent.cli import main' line")
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p != here]  # as if this were the launcher's directory
    exec(compile(head, str(launcher), "exec"), {"__name__": "__florete_launcher__"})


def _version_tuple(text: str) -> tuple[int, ...]:
    """``"38.0.4"`` -> ``(38, 0, 4)``; stops at the first part that is not a number."""
    parts = []
    for part in text.split("."):
        match = re.match(r"\d+", part)
        if match is None:
            break
        parts.append(int(match.group(0)))
        if match.group(0) != part:
            break
    return tuple(parts)


def check_origins(table: dict[str, Any]) -> None:
    """Each .deb dependency of ``table`` comes from where the table says, and imports.

    Raises:
        CheckFailed: a distribution is missing, in the wrong place, of the wrong version, or
            one of its modules does not import (warnings count as errors).
    """
    expected: dict[str, tuple[Path, str, str]] = {}  # name -> (directory, op, version)
    for name, spec in table["debian"].items():
        match = re.fullmatch(r"([\w.+-]+) \(>= ([\w.~+-]+)\)", spec)
        if match is None:
            raise CheckFailed(f"[debian] {name} = {spec!r}: expected 'PACKAGE (>= VERSION)'")
        expected[name] = (DEBIAN_SITE, ">=", match.group(2))
    for name, entry in table["vendor"].items():
        if "deb" in entry["into"]:
            expected[name] = (LIB, "==", str(entry["version"]))
    modules = importlib.metadata.packages_distributions()
    by_dist: dict[str, set[str]] = {}
    for module, dists in modules.items():
        for dist_name in dists:
            by_dist.setdefault(_norm(dist_name), set()).add(module)
    for name, (directory, op, version) in sorted(expected.items()):
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise CheckFailed(f"{name} is not installed") from None
        where = Path(str(dist.locate_file(""))).resolve()
        if where != directory:
            raise CheckFailed(f"{name} {dist.version} is in {where}, not in {directory}")
        found = _version_tuple(dist.version)
        wanted = _version_tuple(version)
        if (op == "==" and found != wanted) or (op == ">=" and found < wanted):
            raise CheckFailed(f"{name} is {dist.version}, expected {op} {version}")
        names = sorted(m for m in by_dist.get(_norm(name), ()) if not m.startswith("_"))
        if not names:
            raise CheckFailed(f"{name}: no module of it found on the launcher's path")
        for module in names:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                try:
                    importlib.import_module(module)
                except Exception as err:
                    raise CheckFailed(f"import {module} ({name}) failed: {err!r}") from err
        say(f"  {name:<18} {dist.version:<10} {where}  ({', '.join(names)})")


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


# --- the optional features -----------------------------------------------------------------------


def check_pairing() -> str:
    """A SPAKE2 exchange between two in-process sides, as two nodes run it."""
    from agent.pairing.crypto import Spake

    joiner, shower = "JOINER-NODE-ID", "SHOWER-NODE-ID"
    a = Spake("A", "1234-5678", joiner, shower)
    b = Spake("B", "1234-5678", joiner, shower)
    keys_a, keys_b = a.finish(b.message), b.finish(a.message)
    if not keys_b.confirms("A", keys_a.confirmation("A")):
        raise CheckFailed("SPAKE2: the joiner's confirmation does not verify")
    if not keys_a.confirms("B", keys_b.confirmation("B")):
        raise CheckFailed("SPAKE2: the shower's confirmation does not verify")
    if keys_b.open("A", keys_a.seal("A", b"certificate")) != b"certificate":
        raise CheckFailed("SPAKE2: a sealed identity does not open")
    wrong = Spake("A", "8765-4321", joiner, shower)
    other = Spake("B", "1234-5678", joiner, shower)
    keys_w, keys_o = wrong.finish(other.message), other.finish(wrong.message)
    if keys_o.confirms("A", keys_w.confirmation("A")):
        raise CheckFailed("SPAKE2: a wrong code was confirmed")
    return f"SPAKE2 keys agree, a wrong code is refused ({len(a.message)}-byte messages)"


def check_qr() -> str:
    """The QR code of a pairing URI, as the TUI's pairing view and ``pair`` draw it."""
    from agent.tui.pairing import qr_lines

    lines = qr_lines("florete://pair?code=1234-5678&node=JOINER-NODE-ID")
    if len(lines) < 10 or len({len(line) for line in lines}) != 1:
        raise CheckFailed(f"QR: {len(lines)} uneven lines: {lines!r}")
    if not set("".join(lines)) <= set(" █▀▄"):
        raise CheckFailed(f"QR: unexpected characters in {lines!r}")
    return f"QR code of {len(lines[0])}x{len(lines)} cells"


async def check_ssh() -> str:
    """An SSH login and a command between asyncssh's server and client on 127.0.0.1."""
    import asyncssh

    importlib.import_module("agent.pairing.ssh")  # the agent's users of asyncssh import
    importlib.import_module("wri_plugins.android.connection")

    async def serve(process: asyncssh.SSHServerProcess[str]) -> None:
        process.stdout.write(f"ran {process.command}\n")
        process.exit(0)

    client_key = asyncssh.generate_private_key("ssh-ed25519")
    authorized = asyncssh.import_authorized_keys(client_key.export_public_key().decode())
    done = []
    for host_alg, options in (
        ("ssh-ed25519", {}),
        (
            "ssh-rsa",
            {
                "kex_algs": ["diffie-hellman-group14-sha256", "ecdh-sha2-nistp256"],
                "encryption_algs": ["aes256-ctr"],
                "mac_algs": ["hmac-sha2-256-etm@openssh.com"],
            },
        ),
    ):
        host_key = asyncssh.generate_private_key(host_alg)
        server = await asyncssh.listen(
            "127.0.0.1",
            0,
            server_host_keys=[host_key],
            authorized_client_keys=authorized,
            process_factory=serve,
        )
        port = server.sockets[0].getsockname()[1]
        known = asyncssh.import_known_hosts(
            f"[127.0.0.1]:{port} {host_key.export_public_key().decode()}"
        )
        try:
            async with asyncssh.connect(
                "127.0.0.1",
                port,
                known_hosts=known,
                client_keys=[client_key],
                username="florete",
                **options,
            ) as conn:
                result = await conn.run("florete-agent version", check=True)
                cipher = conn.get_extra_info("send_cipher")
        finally:
            server.close()
            await server.wait_closed()
        if result.stdout != "ran florete-agent version\n":
            raise CheckFailed(f"SSH: the command's output was {result.stdout!r}")
        done.append(f"{host_alg} host key, {_text(cipher)}")
    return "logged in and ran a command: " + ", ".join(done)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def check_mqtt(within: float) -> str:
    """The MQTT bridge's client (paho 2) connects to a stand-in broker that answers CONNACK."""
    from agent.mqtt.client import BrokerClient, ClientOptions
    from agent.mqtt.settings import BrokerAddress

    connects: list[bytes] = []

    async def broker(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        kind = await reader.readexactly(1)
        length, shift = 0, 0
        while True:  # the remaining length, a variable byte integer (MQTT 5 §1.5.5)
            byte = (await reader.readexactly(1))[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        connects.append(kind + await reader.readexactly(length))
        writer.write(b"\x20\x03\x00\x00\x00")  # CONNACK: no session, Success, no properties
        await writer.drain()
        with contextlib.suppress(OSError):
            while await reader.read(1024):  # until the client's DISCONNECT and close
                pass
        writer.close()

    server = await asyncio.start_server(broker, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    connected = asyncio.Event()
    address = BrokerAddress(f"mqtt://127.0.0.1:{port}", "127.0.0.1", port, False)
    client = BrokerClient(
        ClientOptions(address, client_id="florete-check"), lambda _m: None, connected.set
    )
    try:
        await client.start()
        await asyncio.wait_for(connected.wait(), within)
        if not client.connected:
            raise CheckFailed(f"MQTT: not connected after CONNACK ({client.last_error})")
    finally:
        await client.stop()
        server.close()
        await server.wait_closed()
    packet = connects[0]
    # CONNECT (type 1), protocol name "MQTT", protocol level 5 (MQTT 5 §3.1.2.1-2)
    if packet[0] >> 4 != 1 or packet[1:7] != b"\x00\x04MQTT" or packet[7] != 5:
        raise CheckFailed(f"MQTT: not an MQTT 5 CONNECT: {packet[:8]!r}")
    import paho.mqtt

    return f"paho-mqtt {paho.mqtt.__version__} connected (MQTT 5, CONNACK Success), then stopped"


async def check_supernode(within: float) -> str:
    """Two Raft members (pysyncobj) on an in-memory wire elect a leader and commit a command."""
    from supernode.raft import RaftNode, decode_message
    from supernode.state import SupernodeState
    from supernode.timing import derive

    loop = asyncio.get_running_loop()
    nodes: dict[str, RaftNode] = {}
    states = {n: SupernodeState() for n in ("a", "b")}

    def sender(src: str) -> Callable[[str, bytes], bool]:
        def send(dst: str, data: bytes) -> bool:
            loop.call_soon(lambda: nodes[dst].deliver(src, decode_message(data)))
            return True

        return send

    for node_id in states:
        nodes[node_id] = RaftNode(
            node_id, list(states), states[node_id], derive(None), sender(node_id)
        )

    async def ticker() -> None:
        while True:
            for node_id, node in nodes.items():
                node.tick(set(nodes) - {node_id})
            await asyncio.sleep(0.01)

    async def until(condition: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + within
        while not condition():
            if time.monotonic() > deadline:
                raise CheckFailed(f"supernode: no {what} after {within:g} s")
            await asyncio.sleep(0.02)

    task = asyncio.create_task(ticker())
    try:
        await until(lambda: sum(n.is_leader for n in nodes.values()) == 1, "leader")
        follower = next(n for n in nodes.values() if not n.is_leader)
        command = {"op": "member_add", "node_id": "N1", "name": "n1", "at": 1.0}
        result = await asyncio.wait_for(follower.propose(json.dumps(command)), within)
        if result != {"ok": True, "added": True}:
            raise CheckFailed(f"supernode: the command gave {result!r}")
        await until(lambda: all("N1" in s.members for s in states.values()), "replication")
        leader = next(n for n in nodes.values() if n.is_leader)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        for node in nodes.values():
            node.destroy()
    version = importlib.metadata.version("pysyncobj")
    return f"pysyncobj {version}: {leader.me} leads term {leader.term}, a command reached both"


async def check_tui(within: float) -> str:
    """The TUI, headless, on the running agent's socket, shows the pods hello and web."""
    from agent.config import load_config
    from agent.tui.adapter import AgentApi
    from agent.tui.app import FloreteTui

    config = load_config({}, dict(os.environ), is_root=os.geteuid() == 0)
    api = AgentApi(config.api.socket, timeout=10.0)
    app = FloreteTui(api, refresh=0.5, view="pods")
    shown = ""
    try:
        async with app.run_test(size=(100, 30)) as pilot:
            deadline = time.monotonic() + within
            while not re.search(r"^.*\bhello\b.*$", shown, re.M) or "web" not in shown:
                if time.monotonic() > deadline:
                    raise CheckFailed(f"TUI: no pods hello and web after {within:g} s:\n{shown}")
                await pilot.pause(0.1)
                strips = app.screen._compositor.render_strips()
                shown = "\n".join(strip.text for strip in strips)
    finally:
        api.close()
    rows = [line.strip() for line in shown.splitlines() if re.search(r"\b(hello|web)\b", line)]
    return f"textual drew the pods view: {' | '.join(rows[:2])}"


def check_pair_command(timeout: float) -> str:
    """``florete-agent pair`` shows a code and its QR code; Ctrl-C withdraws the code.

    Ctrl-C comes a second after "Waiting for it...": the command handles it from then on.
    """
    proc = subprocess.Popen(
        ["florete-agent", "pair"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        # SIGINT to its default: started in the background by a shell without job control
        # (CI, nohup ... &) this process ignores SIGINT, and so would the command.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + timeout
    try:
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("Waiting for it") or time.monotonic() > deadline:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    code = re.search(r"Pairing code: (\S+)", "\n".join(lines))
    qr = [line for line in lines if line and set(line) <= set(" █▀▄")]
    withdrawn = "the code no longer works" in err
    if code is None or len(qr) < 10 or proc.returncode != 130 or not withdrawn:
        raise CheckFailed(f"pair: exit status {proc.returncode}, output {lines!r}, {err!r}")
    return f"code {code.group(1)} with a {len(qr)}-line QR code; Ctrl-C: {err.strip()}"


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring); returns the exit status."""
    parser = argparse.ArgumentParser(prog="check_installed.py", description=__doc__.split("\n")[0])
    parser.add_argument("--launcher", type=Path, default=LAUNCHER)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for each wait")
    parser.add_argument("--agent", action="store_true", help="also the TUI and `pair`")
    args = parser.parse_args(argv)
    checks: list[tuple[str, Callable[[], str | Awaitable[str]]]] = [
        ("pairing", check_pairing),
        ("qr", check_qr),
        ("ssh", check_ssh),
        ("mqtt", lambda: check_mqtt(args.timeout)),
        ("supernode", lambda: check_supernode(args.timeout)),
    ]
    if args.agent:
        checks += [
            ("tui", lambda: check_tui(args.timeout)),
            ("pair", lambda: check_pair_command(args.timeout)),
        ]
    try:
        use_launcher_path(args.launcher)
        table = tomllib.loads(TABLE.read_text(encoding="utf-8"))
        say(f"dependencies ({TABLE.name}, as {args.launcher} imports them):")
        check_origins(table)
        for name, check in checks:
            start = time.monotonic()
            outcome = check()
            if not isinstance(outcome, str):
                outcome = asyncio.run(_awaited(outcome))
            say(f"extra {name:<9} ok {time.monotonic() - start:6.1f}s  {outcome}")
    except CheckFailed as err:
        say(f"FAILED: {err}")
        return 1
    say("every optional feature works")
    return 0


async def _awaited(awaitable: Awaitable[str]) -> str:
    return await awaitable


if __name__ == "__main__":
    sys.exit(main())
