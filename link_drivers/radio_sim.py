"""Radio channel emulator: two pty endpoints joined by a paced, lossy, optionally half-duplex line.

ptys ignore the baud rate, so two programs on a pty pair talk at memory speed. The emulator
relays between two pty pairs instead: each byte written on one endpoint takes
``bits_per_byte / baud`` seconds of air time (10 bits per byte for 8N1) before it appears on the
other, and goes through a :class:`~link_drivers.radio_model.ChannelModel` (frame loss, bursts,
byte loss, bit flips) on the way. In half-duplex mode both directions share one medium: it serves
one side until that side's queue is empty (or ``max_hold`` seconds passed while the other side
waits), then pays ``turnaround`` seconds before serving the other side.

Each direction buffers at most ``buffer`` bytes, like a radio's FIFO; beyond that the emulator
stops reading the pty, so the writer's pty fills and its writes block (back-pressure) instead of
the bytes vanishing. Bytes the receiving program does not read in time are dropped and counted.

Endpoints can be unplugged and plugged back (:meth:`RadioSim.unplug`, :meth:`RadioSim.replug`):
the pty is closed, its stable symlink removed, and a new pty appears under the same symlink, as a
USB serial adapter does under ``/dev/serial/by-id``.

Pacing uses a virtual line clock per direction (the end time of the bytes already on air), so
late wake-ups of the event loop do not lower the average rate while data is queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import random
import tty

from agent.errors import ConfigError
from link_drivers.radio_model import ChannelModel, ChannelStats, Impairments

__all__ = ["Endpoint", "RadioSim", "SimConfig"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """Emulator settings.

    Attributes:
        baud: line speed in baud.
        bits_per_byte: bits on the line per byte (8N1: 10).
        half_duplex: one shared medium instead of two independent directions.
        turnaround: seconds lost each time the half-duplex medium changes direction.
        max_hold: half-duplex: longest time one side keeps the medium while the other waits, s.
        impairments: the same :class:`Impairments` for both directions.
        seed: seed of the random source (None: unpredictable).
        buffer: bytes each direction holds before back-pressure, like a radio FIFO.
        chunk_time: pacing granularity in seconds (bytes are released in chunks of this air time).
    """

    baud: int = 115200
    bits_per_byte: float = 10.0
    half_duplex: bool = False
    turnaround: float = 0.0
    max_hold: float = 1.0
    impairments: Impairments = dataclasses.field(default_factory=Impairments)
    seed: int | None = None
    buffer: int = 4096
    chunk_time: float = 0.004

    def __post_init__(self) -> None:
        if self.baud <= 0 or self.bits_per_byte <= 0:
            raise ConfigError("radio-sim: baud and bits_per_byte must be > 0")
        if self.turnaround < 0 or self.buffer <= 0 or self.chunk_time <= 0:
            raise ConfigError("radio-sim: turnaround >= 0, buffer > 0 and chunk_time > 0 needed")

    @property
    def byte_time(self) -> float:
        """Seconds of air time per byte."""
        return self.bits_per_byte / self.baud


class Endpoint:
    """One side of the emulator: a pty whose slave end a program opens as a serial port.

    Attributes:
        name: ``"a"`` or ``"b"``.
        path: what to open: the stable symlink when a link directory was given, else the pty.
        pty_path: the current pty slave device.
        plugged: False while unplugged.
    """

    def __init__(self, name: str, link: str | None) -> None:
        self.name = name
        self.link = link
        self.master = -1
        self._slave = -1
        self.pty_path = ""
        self.plugged = False
        self.reading = False

    @property
    def path(self) -> str:
        """The path a program should open."""
        return self.link or self.pty_path

    def plug(self) -> None:
        """Create a new pty (raw mode, non-blocking master) and point the symlink at it."""
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self.master, False)
        self.pty_path = os.ttyname(self._slave)
        if self.link:
            tmp = f"{self.link}.tmp"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            os.symlink(self.pty_path, tmp)
            os.replace(tmp, self.link)
        self.plugged = True

    def unplug(self) -> None:
        """Close the pty (readers of the slave see end of file) and remove the symlink."""
        if not self.plugged:
            return
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master = self._slave = -1
        self.plugged = False
        self.reading = False


class RadioSim:
    """The running emulator.

    Args:
        config: settings.
        link_dir: directory for stable symlinks ``<link_dir>/a`` and ``<link_dir>/b``; without
            it programs open the pty paths, which change on replug.
    """

    def __init__(self, config: SimConfig, link_dir: str | None = None) -> None:
        self.config = config
        rng = random.Random(config.seed)
        self.a = Endpoint("a", os.path.join(link_dir, "a") if link_dir else None)
        self.b = Endpoint("b", os.path.join(link_dir, "b") if link_dir else None)
        self._peer = {"a": self.b, "b": self.a}
        self._ends = {"a": self.a, "b": self.b}
        self.models = {
            "a": ChannelModel(config.impairments, random.Random(rng.random())),
            "b": ChannelModel(config.impairments, random.Random(rng.random())),
        }
        self._queue = {"a": bytearray(), "b": bytearray()}
        self._clock = {"a": 0.0, "b": 0.0}
        self._data = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.overruns = {"a": 0, "b": 0}

    def stats(self, src: str) -> ChannelStats:
        """Channel counters of the direction from endpoint ``src`` to the other."""
        return self.models[src].stats

    async def start(self) -> None:
        """Create both ptys and start relaying (returns once both paths exist)."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        for end in (self.a, self.b):
            end.plug()
            self._resume(end.name)
        if self.config.half_duplex:
            self._tasks.append(asyncio.create_task(self._medium(), name="radio-sim-medium"))
        else:
            for src in ("a", "b"):
                self._tasks.append(asyncio.create_task(self._line(src), name=f"radio-sim-{src}"))
        log.info(
            "radio-sim up: %s <-> %s at %d baud%s",
            self.a.path,
            self.b.path,
            self.config.baud,
            " half-duplex" if self.config.half_duplex else "",
        )

    async def aclose(self) -> None:
        """Stop relaying and remove both ptys; idempotent."""
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        for end in (self.a, self.b):
            self._pause(end.name)
            end.unplug()

    async def __aenter__(self) -> RadioSim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def unplug(self, name: str) -> None:
        """Simulate pulling the USB adapter of endpoint ``name`` (``"a"`` or ``"b"``)."""
        self._pause(name)
        self._ends[name].unplug()
        self._queue[name].clear()
        log.info("radio-sim: endpoint %s unplugged", name)

    def replug(self, name: str) -> None:
        """Plug endpoint ``name`` back: a new pty appears under the same symlink."""
        end = self._ends[name]
        if end.plugged:
            return
        end.plug()
        self._resume(name)
        log.info("radio-sim: endpoint %s plugged in at %s", name, end.pty_path)

    # ----------------------------------------------------------------- relay

    def _resume(self, name: str) -> None:
        end = self._ends[name]
        if end.plugged and not end.reading:
            self._loop.add_reader(end.master, self._on_readable, name)
            end.reading = True

    def _pause(self, name: str) -> None:
        end = self._ends[name]
        if end.reading:
            self._loop.remove_reader(end.master)
            end.reading = False

    def _on_readable(self, name: str) -> None:
        end = self._ends[name]
        try:
            data = os.read(end.master, 4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # slave side hung up: nothing to read until someone writes again
            return
        q = self._queue[name]
        q += data
        if len(q) >= self.config.buffer:
            self._pause(name)
        self._data.set()

    def _take(self, src: str) -> bytes:
        """Remove the next chunk (``chunk_time`` worth of bytes) from ``src``'s queue."""
        q = self._queue[src]
        n = max(1, int(self.config.chunk_time / self.config.byte_time))
        chunk = bytes(q[:n])
        del q[:n]
        if len(q) < self.config.buffer:
            self._resume(src)
        return chunk

    def _deliver(self, src: str, chunk: bytes) -> None:
        out = self.models[src].process(chunk)
        dst = self._peer[src]
        if not out or not dst.plugged:
            return
        try:
            n = os.write(dst.master, out)
        except (BlockingIOError, OSError):
            n = 0
        if n < len(out):
            self.overruns[dst.name] += len(out) - n

    async def _wait_data(self) -> None:
        self._data.clear()
        await self._data.wait()

    async def _line(self, src: str) -> None:
        """Full duplex: one independent paced line from ``src`` to its peer."""
        loop = self._loop
        busy = False
        while True:
            if not self._queue[src]:
                busy = False
                await self._wait_data()
                continue
            chunk = self._take(src)
            # While data is queued the line runs back to back on its own clock, so a late
            # wake-up shortens the next sleep instead of lowering the rate.
            start = self._clock[src] if busy else max(loop.time(), self._clock[src])
            end = start + len(chunk) * self.config.byte_time
            self._clock[src] = end
            busy = True
            await asyncio.sleep(end - loop.time())
            self._deliver(src, chunk)

    async def _medium(self) -> None:
        """Half duplex: one medium shared by both sides, with turnaround between them."""
        loop = self._loop
        cfg = self.config
        current = "a"
        clock = 0.0
        held_since = 0.0
        busy = False
        while True:
            other = "b" if current == "a" else "a"
            mine, theirs = bool(self._queue[current]), bool(self._queue[other])
            if not mine and not theirs:
                busy = False
                await self._wait_data()
                continue
            now = loop.time()
            if not mine or (theirs and clock - held_since > cfg.max_hold):
                current = other
                clock = (clock if busy else max(now, clock)) + cfg.turnaround
                held_since = clock
                continue
            if not busy:  # the medium was idle: this side starts afresh
                held_since = clock = max(now, clock)
            chunk = self._take(current)
            start = clock
            clock = start + len(chunk) * cfg.byte_time
            busy = True
            await asyncio.sleep(clock - loop.time())
            self._deliver(current, chunk)
