"""Mesh benchmarks: neighbour discovery, death detection and session throughput.

Each figure is a median over several runs, printed beside its anchor and their ratio:

* discovery, in namespaces of a :class:`tests.netbed.NetBed`: three nodes run
  :class:`agent.discovery.Discovery` and a :class:`agent.neighbours.NeighbourTable` in processes
  of their own (``--discovery-node``), then newcomers with fresh IDs join one at a time. From
  the newcomer's ``Discovery.start()``: (a) until it sees all three (goal <= 250 ms: one QU
  query, RFC 6762 §5.4), (b) until all three see it (goal <= 1.5 s, probing included, RFC 6762
  §8.1; its own probing time, until ``start()`` returned, is the floor shown beside it).
* death without a goodbye: two ``florete-agent run`` in two namespaces, trusting each other
  (``peers export`` / ``peers add -``); once both show the other ``up``, one gets SIGKILL and
  the other's ``GET neighbours`` is polled every 20 ms until it shows it ``down``. Anchor: the
  configured ``links.dead_interval`` (goal: no more).
* throughput on loopback, one process and event loop: :class:`agent.rpc.Endpoint` over TLS
  sessions over :class:`ArqStream` over :class:`UdpDriver` on ``lo`` (the agent's ARQ settings):
  (a) one-way publications of a 64-byte body per second, counted at the subscriber; (b)
  sequential requests with a 64-byte body answered per second. Anchors, plain asyncio UDP: (a)
  64-byte datagrams delivered per second with at most one ARQ window in flight (credit counted
  in-process, so none is lost); (b) sequential echo round trips per second. Goal: encryption
  and ARQ cost at most 30 % (ratio >= 0.7).

Traffic stays on loopback or in the namespaces made here, which are deleted with every process
in them at the end, also on failure or Ctrl-C. ``python -m bench.mesh [--full]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

from cryptography.hazmat.primitives import serialization

from agent.apiclient import ApiClient
from agent.config import load_config
from agent.discovery import Discovery
from agent.errors import ApiError
from agent.identity import load_or_create_identity, node_id_from_public_key
from agent.neighbours import NeighbourChange, NeighbourTable
from agent.rpc import Endpoint
from agent.session import open_session
from agent.store import Store
from agent.trust import TrustStore
from link_drivers.arq import ArqConfig
from link_drivers.stream import ArqStream
from link_drivers.udp import UdpAddress, UdpDriver
from tests.netbed import NetBed, NetNode, netbed_available

REPO = Path(__file__).resolve().parents[1]
GROUP = "/apis/florete.io/v1alpha1"
LINK_PORT = 4737
PAYLOAD = 64  # bytes of application data per message, datagram or request
POLL = 0.02  # seconds between two API polls
TOPIC, END = "bench/oneway", "bench/end"

Row = tuple[str, str, str, str]
Event = dict[str, Any]


def _verdict(ratio: float, goal: float, at_most: bool) -> str:
    """``"0.45x (goal <= 1.00x: met)"``."""
    met = ratio <= goal if at_most else ratio >= goal
    sign, verdict = "<=" if at_most else ">=", "met" if met else "NOT met"
    return f"{ratio:.2f}x (goal {sign} {goal:.2f}x: {verdict})"


# --------------------------------------------------------------------------- discovery


def _emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "t": time.monotonic(), **fields}), flush=True)


async def _discovery_node(node_id: str, name: str, fingerprint: str) -> None:
    """One discovery node (run inside a namespace): JSON lines on stdout, any line on stdin
    (or its end) stops it with a goodbye."""
    table = NeighbourTable(node_id)

    def changed(_change: NeighbourChange) -> None:
        _emit("table", seen=[n.node_id for n in table.neighbours()])

    table.add_listener(changed)
    caps = {"rt": "process", "ln": "udp"}
    discovery = Discovery(node_id, name, fingerprint, LINK_PORT, caps, ["eth0"], table)
    _emit("starting")
    await discovery.start()
    _emit("registered")
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await discovery.aclose()


def _holds(*node_ids: str) -> Callable[[Event], bool]:
    """Predicate: a ``table`` event whose table holds every one of ``node_ids``."""
    return lambda e: set(node_ids) <= set(e.get("seen", ()))


class _Node:
    """A discovery node process in a bed namespace, and the events it reported."""

    def __init__(self, spot: NetNode, name: str, logs: Path) -> None:
        self.spot = spot
        self.name = name
        self.node_id = node_id_from_public_key(secrets.token_bytes(32))
        self.fingerprint = secrets.token_bytes(32).hex()
        self.log_path = logs / f"{name}.log"
        self.events: list[Event] = []
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Spawn the process; it starts browsing and announcing at once."""
        argv = ["-m", "bench.mesh", "--discovery-node", self.node_id, self.name, self.fingerprint]
        with self.log_path.open("ab") as log:
            self._proc = await asyncio.create_subprocess_exec(
                *self.spot.argv([sys.executable, *argv]),
                cwd=REPO,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        self._reader = asyncio.get_running_loop().create_task(self._read(self._proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for line in proc.stdout:
            self.events.append(json.loads(line))

    async def wait(self, what: str, predicate: Callable[[Event], bool]) -> Event:
        """The first event (in order) that satisfies ``predicate``; RuntimeError, with the end
        of the node's log, if none comes within 20 s."""
        deadline = time.monotonic() + 20.0
        while True:
            for event in list(self.events):
                if predicate(event):
                    return event
            if time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"discovery node {self.name}: no {what} in 20 s\n{tail}")
            await asyncio.sleep(0.01)

    async def close(self, goodbye: bool = False) -> None:
        """Stop the process, with an mDNS goodbye (10 s at most) or at once; idempotent."""
        if goodbye and self._proc is not None and self._proc.stdin is not None:
            self._proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 10)
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()
            await self._proc.wait()
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await self._reader


async def _discovery(
    spots: list[NetNode], newcomers: int, logs: Path
) -> tuple[list[float], list[float], list[float]]:
    """Three nodes in ``spots[:3]``, newcomers in ``spots[3]``; returns seconds per newcomer:
    (it sees all three, all three see it, it registered)."""
    existing = [_Node(spot, f"node{i}", logs) for i, spot in enumerate(spots[:3], 1)]
    started = list(existing)
    try:
        await asyncio.gather(*(n.start() for n in existing))
        for node in existing:
            others = [o.node_id for o in existing if o is not node]
            await node.wait("table with the other two", _holds(*others))
        sees, seen, registered = [], [], []
        for k in range(1, newcomers + 1):
            newcomer = _Node(spots[3], f"newcomer{k}", logs)
            started.append(newcomer)
            await newcomer.start()
            t0 = (await newcomer.wait("start", lambda e: e["event"] == "starting"))["t"]
            joined = await newcomer.wait(
                "table with all three", _holds(*(n.node_id for n in existing))
            )
            ready = await newcomer.wait("registration", lambda e: e["event"] == "registered")
            heard = [(await n.wait(newcomer.name, _holds(newcomer.node_id)))["t"] for n in existing]
            sees.append(joined["t"] - t0)
            seen.append(max(heard) - t0)
            registered.append(ready["t"] - t0)
            await newcomer.close(goodbye=True)
        return sees, seen, registered
    finally:
        for node in started:
            await node.close()


def discovery_rows(newcomers: int) -> list[Row]:
    """Discovery time of a new node among three (see the module docstring).

    Args:
        newcomers: how many nodes join, one after the other (the median is over them).

    Returns:
        Table rows ``(what, ours, anchor, ratio)``; times in milliseconds.
    """
    logs = Path(tempfile.mkdtemp(prefix="fl-disc-"))
    try:
        with NetBed() as bed:
            spots = [bed.add_node(f"n{i}") for i in range(1, 5)]
            for spot in spots:  # zeroconf sends from link-local addresses: wait for their DAD
                spot.link_local()
            times = asyncio.run(_discovery(spots, newcomers, logs))
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    sees_ms, seen_ms, reg_ms = (1e3 * statistics.median(t) for t in times)
    return [
        (
            f"newcomer sees 3 nodes (median of {newcomers})",
            f"{sees_ms:.0f} ms",
            "goal 250 ms",
            _verdict(sees_ms / 250, 1.0, at_most=True),
        ),
        (
            "3 nodes see the newcomer",
            f"{seen_ms:.0f} ms",
            "goal 1500 ms",
            _verdict(seen_ms / 1500, 1.0, at_most=True),
        ),
        (
            "  of which its probing (start() returned)",
            f"{reg_ms:.0f} ms",
            f"seen {seen_ms - reg_ms:.0f} ms after",
            "",
        ),
    ]


# --------------------------------------------------------------------------- death detection


class _Agent:
    """``florete-agent run`` in a bed namespace, with its own state dir under ``root``."""

    def __init__(self, spot: NetNode, root: Path) -> None:
        self.spot = spot
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLORETE_")},
            "FLORETE_STATE_DIR": str(root / spot.name),
            "FLORETE_INTERFACES": "eth0",
            "FLORETE_MDNS": "on",
            "FLORETE_LINK_PORT": str(LINK_PORT),
            "FLORETE_NODE_NAME": spot.name,
            "FLORETE_LOG_LEVEL": "info",
        }
        self.log_path = root / f"{spot.name}.log"
        self.api = ApiClient(root / spot.name / "agent.sock", timeout=5)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the daemon and wait until its API answers; RuntimeError if it exits or does
        not answer within 30 s."""
        with self.log_path.open("ab") as log:
            argv = [sys.executable, "-m", "agent.cli", "run"]
            self.proc = self.spot.popen(argv, env=self.env, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.api.request("GET", "/healthz")
            except ApiError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"agent {self.spot.name} did not start:\n{self.log()}"
                    ) from None
                time.sleep(0.05)
            else:
                return

    def log(self) -> str:
        """The end of the daemon's log."""
        return self.log_path.read_text(errors="replace")[-3000:]

    def cli(self, *args: str, stdin: str | None = None) -> str:
        """``florete-agent ARGS`` against this daemon; returns stdout (RuntimeError if it fails)."""
        result = subprocess.run(
            [sys.executable, "-m", "agent.cli", *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if result.returncode:
            raise RuntimeError(f"florete-agent {' '.join(args)}: {result.stderr}")
        return result.stdout

    def wait_state(self, name: str, state: str, timeout: float) -> float:
        """Poll ``GET neighbours`` every 20 ms until neighbour ``name`` is in ``state``; returns
        the monotonic time of that answer, seconds (RuntimeError after ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            items = self.api.request("GET", f"{GROUP}/neighbours")["items"]
            now = time.monotonic()
            if any(n["name"] == name and n["state"] == state for n in items):
                return now
            if now > deadline:
                raise RuntimeError(
                    f"{self.spot.name}: {name} not {state} in {timeout} s\n{self.log()}"
                )
            time.sleep(POLL)

    def kill(self) -> float:
        """SIGKILL the daemon (no goodbye); returns the monotonic time of the kill, seconds."""
        assert self.proc is not None
        killed = time.monotonic()
        self.proc.kill()
        self.proc.wait()
        return killed

    def close(self) -> None:
        """Kill the daemon if it runs; idempotent."""
        self.api.close()
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


def death_rows(cycles: int) -> list[Row]:
    """Death detection without a goodbye (see the module docstring).

    Args:
        cycles: kill/restart cycles (the median is over them).

    Returns:
        Table rows ``(what, ours, anchor, ratio)``; times in seconds.
    """
    root = Path(tempfile.mkdtemp(prefix="fl-mesh-"))
    detections: list[float] = []
    try:
        with NetBed() as bed:
            a, b = _Agent(bed.add_node("a"), root), _Agent(bed.add_node("b"), root)
            try:
                a.start()
                b.start()
                a.cli("peers", "add", "-", stdin=b.cli("peers", "export"))
                b.cli("peers", "add", "-", stdin=a.cli("peers", "export"))
                for cycle in range(cycles):
                    if cycle:
                        b.start()
                    a.wait_state("b", "up", 60)
                    b.wait_state("a", "up", 60)
                    # any phase of the 1 s keepalive rhythm: the detection time depends on it
                    time.sleep(random.uniform(1.0, 2.0))
                    killed = b.kill()
                    detections.append(a.wait_state("b", "down", 30) - killed)
                dead_interval = load_config(environ=a.env).links.dead_interval
            finally:
                a.close()
                b.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    ours = statistics.median(detections)
    return [
        (
            f"death w/o goodbye seen (median of {cycles})",
            f"{ours:.2f} s (max {max(detections):.2f})",
            f"dead_interval {dead_interval:.1f} s",
            _verdict(ours / dead_interval, 1.0, at_most=True),
        )
    ]


# --------------------------------------------------------------------------- throughput


class _Tally:
    """Subscriber callback: counts publications on :data:`TOPIC`; :data:`END` sets ``done``."""

    def __init__(self) -> None:
        self.count = 0
        self.last = 0.0
        self.done = asyncio.Event()

    def __call__(self, topic: str, _body: Any) -> None:
        if topic == END:
            self.done.set()
        else:
            self.count += 1
            self.last = time.perf_counter()


class _Udp(asyncio.DatagramProtocol):
    """One end of the plain-UDP anchors: counts what arrives (``count``, ``last`` in
    ``perf_counter`` seconds, ``arrived`` set), resolves ``reply``, and echoes when ``echo``."""

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.count = 0
        self.last = 0.0
        self.arrived = asyncio.Event()
        self.reply: asyncio.Future[bytes] | None = None
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.count += 1
        self.last = time.perf_counter()
        self.arrived.set()
        if self.echo and self.transport is not None:
            self.transport.sendto(data, addr)
        if self.reply is not None and not self.reply.done():
            self.reply.set_result(data)

    async def until(self, count: int) -> None:
        """Wait (1 s at most: a datagram was lost) until ``count`` datagrams arrived."""
        async with asyncio.timeout(1.0):
            while self.count < count:
                self.arrived.clear()
                await self.arrived.wait()


@contextlib.asynccontextmanager
async def _udp_pair(echo: bool) -> AsyncIterator[tuple[_Udp, _Udp, asyncio.DatagramTransport]]:
    """``(server, client, client transport)`` on 127.0.0.1; the client is connected."""
    loop = asyncio.get_running_loop()
    server, client = _Udp(echo), _Udp()
    transport, _ = await loop.create_datagram_endpoint(lambda: server, local_addr=("127.0.0.1", 0))
    sender, _ = await loop.create_datagram_endpoint(
        lambda: client, remote_addr=transport.get_extra_info("sockname")
    )
    try:
        yield server, client, sender
    finally:
        transport.close()
        sender.close()


async def _udp_one_way(seconds: float, window: int) -> float:
    """Plain UDP on loopback: 64-byte datagrams delivered per second, at most ``window`` of
    them in flight (the sender waits for the receiver's count to fall to half a window)."""
    async with _udp_pair(echo=False) as (server, _, sender):
        payload, sent = bytes(PAYLOAD), 0
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            for _ in range(window - (sent - server.count)):
                sender.sendto(payload)
                sent += 1
            await server.until(sent - window // 2)
        await server.until(sent)
        return server.count / (server.last - start)


async def _udp_echo(seconds: float) -> float:
    """Plain UDP on loopback: sequential 64-byte echo round trips per second."""
    async with _udp_pair(echo=True) as (_, client, sender):
        payload = bytes(PAYLOAD)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            client.reply = asyncio.get_running_loop().create_future()
            sender.sendto(payload)
            async with asyncio.timeout(1.0):
                await client.reply
        return client.count / (time.perf_counter() - start)


async def _session_one_way(sender: Endpoint, tally: _Tally, seconds: float) -> float:
    """Publications of a 64-byte body delivered per second (counted at the subscriber)."""
    tally.count, tally.done = 0, asyncio.Event()
    payload = bytes(PAYLOAD)
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        await sender.publish(TOPIC, payload)
    await sender.publish(END)
    async with asyncio.timeout(30):
        await tally.done.wait()
    return tally.count / (tally.last - start)


async def _session_rpc(client: Endpoint, seconds: float) -> float:
    """Sequential ``echo`` requests with a 64-byte body answered per second."""
    payload, count = bytes(PAYLOAD), 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        await client.request("echo", payload, timeout=5.0)
        count += 1
    return count / (time.perf_counter() - start)


async def _echo(body: Any) -> Any:
    return body


@contextlib.asynccontextmanager
async def endpoints(root: Path) -> AsyncIterator[tuple[Endpoint, Endpoint, ArqConfig]]:
    """Two RPC endpoints over a mutually trusted session on loopback UDP.

    Each side has its own identity and trust store under ``root``; the ARQ streams use the
    agent's configured keepalive and dead interval, as the mesh does. Both answer ``echo``.

    Yields:
        ``(alpha, bravo, arq config)``.
    """
    stores = [Store(root / name / "agent.db") for name in ("alpha", "bravo")]
    ids = [load_or_create_identity(root / name, name) for name in ("alpha", "bravo")]
    trusts = [TrustStore(store) for store in stores]
    for trust, other in ((trusts[0], ids[1]), (trusts[1], ids[0])):
        trust.add(other.certificate.public_bytes(serialization.Encoding.PEM), source="manual")
    links = load_config(environ={"FLORETE_STATE_DIR": str(root)}).links
    left = UdpDriver({"interfaces": ["lo"], "port": 0, "ipv6": False})
    right = UdpDriver({"interfaces": ["lo"], "port": 0, "ipv6": False})
    try:
        await left.start()
        await right.start()
        channel = left.channel(UdpAddress("127.0.0.1", right.bound[0].port, "lo"))
        config = ArqConfig.for_link(
            channel.info, keepalive_interval=links.keepalive, dead_interval=links.dead_interval
        )
        async with ArqStream(channel, config, name="alpha") as sa:
            async with asyncio.timeout(5):
                accepted = await right.accept()
            async with ArqStream(accepted, config, name="bravo") as sb:
                sessions = await asyncio.gather(
                    open_session(sa, ids[0], trusts[0]), open_session(sb, ids[1], trusts[1])
                )
                async with Endpoint(sessions[0]) as alpha, Endpoint(sessions[1]) as bravo:
                    alpha.on_request("echo", _echo)
                    bravo.on_request("echo", _echo)
                    yield alpha, bravo, config
    finally:
        await left.aclose()
        await right.aclose()
        for store in stores:
            store.close()


async def _throughput(runs: int, seconds: float) -> list[list[float]]:
    """Rates per second: [session one-way, UDP one-way, session RPC, UDP echo], ``runs`` each."""
    root = Path(tempfile.mkdtemp(prefix="fl-tput-"))
    rates: list[list[float]] = [[], [], [], []]
    try:
        async with endpoints(root) as (alpha, bravo, config):
            tally = _Tally()
            await bravo.subscribe("bench/#", tally)
            await bravo.request("echo")  # alpha has the subscription once this returns
            for _ in range(runs):
                rates[0].append(await _session_one_way(alpha, tally, seconds))
                rates[1].append(await _udp_one_way(seconds, config.window))
                rates[2].append(await _session_rpc(alpha, seconds))
                rates[3].append(await _udp_echo(seconds))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return rates


def throughput_rows(runs: int, seconds: float) -> list[Row]:
    """Session throughput beside plain UDP (see the module docstring).

    Args:
        runs: repetitions of each measurement (the median is over them).
        seconds: how long each measurement sends.

    Returns:
        Table rows ``(what, ours, anchor, ratio)``; rates per second.
    """
    one, udp_one, rpc, udp_echo = (
        statistics.median(r) for r in asyncio.run(_throughput(runs, seconds))
    )
    return [
        (
            f"session one-way, 64 B msgs/s (median of {runs})",
            f"{one:,.0f}",
            f"plain UDP {udp_one:,.0f}",
            _verdict(one / udp_one, 0.7, at_most=False),
        ),
        (
            "session RPC round trips/s",
            f"{rpc:,.0f}",
            f"plain UDP echo {udp_echo:,.0f}",
            _verdict(rpc / udp_echo, 0.7, at_most=False),
        ),
    ]


# --------------------------------------------------------------------------- report


def main(quick: bool = True) -> None:
    """Print the mesh benchmark table (see the module docstring).

    Args:
        quick: 3 newcomers, 2 kill cycles, 3 throughput runs of 0.5 s (about 1.5 minutes);
            else 5, 3 and 5 runs of 1 s.
    """
    rows: list[Row] = []
    reason = netbed_available()
    if reason is None:
        rows += discovery_rows(3 if quick else 5)
        rows += death_rows(2 if quick else 3)
    else:
        rows.append(("discovery, death detection", "skipped", reason, ""))
    rows += throughput_rows(3 if quick else 5, 0.5 if quick else 1.0)
    rows.insert(0, ("", "ours", "anchor", "ratio"))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    print("florete-agent mesh (medians)")
    for r in rows:
        print("  " + "   ".join(c.ljust(w) for c, w in zip(r, width, strict=True)).rstrip())


def _cli() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.mesh", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--full", action="store_true", help="more runs (see main)")
    parser.add_argument("--discovery-node", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.discovery_node:
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        asyncio.run(_discovery_node(*args.discovery_node))
        return
    try:
        main(quick=not args.full)
    except KeyboardInterrupt:  # namespaces and processes are gone already
        sys.exit(130)


if __name__ == "__main__":
    _cli()
