"""The radio channel emulator on real ptys: pacing, loss, half-duplex, unplug and replug."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import statistics
import tempfile
import time

import pytest

from link_drivers.framing import FrameDecoder, encode_frame
from link_drivers.radio_model import ChannelModel, Impairments
from link_drivers.radio_sim import RadioSim, SimConfig

pytestmark = pytest.mark.integration


async def _read_exactly(
    fd: int, n: int, limit: float = 10.0, buf: bytearray | None = None
) -> tuple[bytes, float]:
    """Read ``n`` bytes from a non-blocking fd into ``buf``; returns them and the time of the last.

    Raises:
        TimeoutError: fewer than ``n`` bytes arrived within ``limit`` seconds (``buf`` keeps
            what did).
    """
    loop = asyncio.get_running_loop()
    buf = bytearray() if buf is None else buf
    got = asyncio.Event()

    def readable() -> None:
        buf.extend(os.read(fd, 65536))
        if len(buf) >= n:
            got.set()

    loop.add_reader(fd, readable)
    try:
        async with asyncio.timeout(limit):
            await got.wait()
    finally:
        loop.remove_reader(fd)
    return bytes(buf), time.monotonic()


def _open(path: str) -> int:
    return os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)


async def _write_all(fd: int, data: bytes) -> None:
    """Write everything to a non-blocking pty, waiting while its buffer is full."""
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except BlockingIOError:
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("baud", [9600, 115200])
async def test_bytes_arrive_at_the_line_rate(baud: int) -> None:
    n = baud // 10  # one second of air time at 8N1
    async with RadioSim(SimConfig(baud=baud, seed=1)) as sim:
        fa, fb = _open(sim.a.path), _open(sim.b.path)
        try:
            data = bytes(range(256)) * (n // 256) + bytes(n % 256)
            t0 = time.monotonic()
            got_t = asyncio.create_task(_read_exactly(fb, n))
            await _write_all(fa, data)
            got, t1 = await got_t
        finally:
            os.close(fa)
            os.close(fb)
    assert got == data
    assert 0.97 < t1 - t0 < 1.1


async def test_frame_loss_is_seeded_and_counts_whole_frames() -> None:
    frames = [encode_frame(bytes([i]) * 40) for i in range(200)]

    async def run() -> tuple[list[bytes], int]:
        imp = Impairments(frame_loss=0.1)
        async with RadioSim(SimConfig(baud=460800, seed=7, impairments=imp)) as sim:
            fa, fb = _open(sim.a.path), _open(sim.b.path)
            wire = b"".join(frames)
            try:
                received = bytearray()
                reader = asyncio.create_task(_read_exactly(fb, len(wire), 1.5, received))
                await _write_all(fa, wire)
                with contextlib.suppress(TimeoutError):  # lost frames never arrive
                    await reader
            finally:
                os.close(fa)
                os.close(fb)
            return FrameDecoder(64).feed(bytes(received)), sim.stats("a").frames_lost

    got1, lost1 = await run()
    got2, lost2 = await run()
    assert got1 == got2  # the seed fixes which frames are lost
    assert lost1 == lost2 == 200 - len(got1)
    assert 8 <= lost1 <= 35  # 10 % of 200, loosely


async def test_half_duplex_serialises_both_directions_with_turnaround() -> None:
    cfg = SimConfig(baud=9600, half_duplex=True, turnaround=0.05, seed=1)
    async with RadioSim(cfg) as sim:
        fa, fb = _open(sim.a.path), _open(sim.b.path)
        try:
            t0 = time.monotonic()
            os.write(fa, b"a" * 480)
            os.write(fb, b"b" * 480)
            (_, ta), (_, tb) = await asyncio.gather(_read_exactly(fb, 480), _read_exactly(fa, 480))
        finally:
            os.close(fa)
            os.close(fb)
    # 0.5 s of air each way, one after the other, plus at least one turnaround.
    assert max(ta, tb) - t0 > 1.05
    assert abs(ta - tb) > 0.45


async def test_unplug_removes_the_link_and_replug_brings_a_new_pty() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with RadioSim(SimConfig(baud=115200), link_dir=tmp) as sim:
            link = os.path.join(tmp, "a")
            fa = _open(link)
            sim.unplug("a")
            assert not os.path.lexists(link)  # noqa: ASYNC240 (a local tmpfs lookup)
            assert os.read(fa, 10) == b""  # end of file: the device is gone
            os.close(fa)
            sim.replug("a")
            assert os.readlink(link) == sim.a.pty_path  # the pty number may be reused
            fa, fb = _open(link), _open(sim.b.path)
            try:
                os.write(fb, b"back again")
                got, _ = await _read_exactly(fa, 10)
            finally:
                os.close(fa)
                os.close(fb)
            assert got == b"back again"


def test_model_drops_hdlc_frames_with_their_opening_flag() -> None:
    """Reticulum frames as FLAG data FLAG: a lost frame must take both flags with it, or the
    receiver's parser would fall out of step with the flags and lose every later frame."""
    flag = b"\x7e"
    frames = [
        flag + bytes([0x41 + i % 60]) * 20 + bytes([0x80 + i // 128, 0x80 + i % 128]) + flag
        for i in range(300)
    ]
    model = ChannelModel(Impairments(frame_loss=0.2, delimiter=0x7E), random.Random(4))
    out = b"".join(model.process(f) for f in frames)
    kept = [f for f in frames if f in out]
    assert out == b"".join(kept)  # whole frames, flags included, nothing else
    assert model.stats.frames == 300
    assert model.stats.frames_lost == 300 - len(kept)
    assert 30 < model.stats.frames_lost < 90


def test_model_gilbert_elliott_bursts_have_the_configured_mean_length() -> None:
    imp = Impairments(burst_enter=0.02, burst_exit=0.25, burst_loss=1.0)
    model = ChannelModel(imp, random.Random(9))
    lost = []
    for i in range(20000):
        frame = bytes([1 + i % 200]) * 10 + b"\x00"
        lost.append(not model.process(frame))
    bursts = [len(run) for run in "".join("x" if x else "." for x in lost).split(".") if run]
    # Stationary loss p / (p + r) = 0.02 / 0.27 = 7.4 %; mean burst 1 / r = 4 frames.
    assert 0.05 < sum(lost) / len(lost) < 0.10
    assert 3.0 < statistics.mean(bursts) < 5.0


def test_model_bit_errors_and_byte_loss_hit_the_configured_rates() -> None:
    model = ChannelModel(
        Impairments(bit_error_rate=1e-3, byte_loss=0.01, delimiter=None), random.Random(2)
    )
    data = bytes(100_000)
    out = model.process(data)
    assert model.stats.bytes_lost == len(data) - len(out)
    assert 800 < model.stats.bytes_lost < 1200
    assert 640 < model.stats.bits_flipped < 960  # 8e5 bits at 1e-3
