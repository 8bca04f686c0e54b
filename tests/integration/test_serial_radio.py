"""serial_radio + ARQ over the radio emulator on real ptys: transfers, unplug/replug, the CLI.

Each transfer test runs its three loss rates concurrently to keep CI time down (the machine has
two cores; a transfer is paced by the emulated line, not by the CPU).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile

import pytest

from agent import cli_links
from agent.errors import ConfigError, LocalError
from link_drivers.api import LinkDriver, load_driver
from link_drivers.linktest import TransferResult, emulated_transfer, payload
from link_drivers.radio_sim import RadioSim, SimConfig
from link_drivers.serial_radio import RadioProfile, SerialConfig, SerialRadioDriver
from link_drivers.stream import ArqStream

pytestmark = pytest.mark.integration

LOSSES = (0.0, 0.01, 0.10)
# Goodput is measured by `make bench` (bench/arq.py), not asserted here: timing on a shared
# machine is noise. These tests assert what must hold anywhere: every byte arrives intact.


async def _three(baud: int, nbytes: int) -> list[TransferResult]:
    return list(
        await asyncio.gather(
            *(emulated_transfer(baud=baud, nbytes=nbytes, frame_loss=p, seed=11) for p in LOSSES)
        )
    )


@pytest.mark.timeout(150)
async def test_256_kib_at_115200_baud_with_0_1_10_percent_loss() -> None:
    """256 KiB each at 0, 1 and 10 % frame loss, at once; ~23-27 s of air time per transfer."""
    results = await _three(115200, 256 * 1024)
    for r, loss in zip(results, LOSSES, strict=True):
        assert r.intact, loss
        assert r.nbytes == 256 * 1024
    assert results[0].retransmissions == 0


@pytest.mark.timeout(600)
async def test_256_kib_at_9600_baud_with_0_1_10_percent_loss() -> None:
    """256 KiB each at 0, 1 and 10 % frame loss, at once: ~275-310 s of air time at 960 B/s,
    the longest test of the suite, and the one closest to a real SiK or HC-12 radio."""
    results = await _three(9600, 256 * 1024)
    for r, loss in zip(results, LOSSES, strict=True):
        assert r.intact, loss
        assert r.nbytes == 256 * 1024


async def _pump(stream: ArqStream, data: bytes, chunk: int) -> None:
    for i in range(0, len(data), chunk):
        await stream.send(data[i : i + chunk])
    await stream.drain()


async def _collect(stream: ArqStream, n: int) -> bytes:
    out = bytearray()
    while len(out) < n:
        out += await stream.receive()
    return bytes(out)


@pytest.mark.timeout(60)
async def test_unplug_and_replug_mid_transfer_loses_nothing() -> None:
    """The adapter of endpoint a vanishes for 2 s mid-transfer (its pty is closed and its
    symlink removed, as udev does), then comes back under the same name: the port reports the
    link down, reopens with backoff, and ARQ delivers every byte once."""
    profile = RadioProfile("test", mtu=256)
    with tempfile.TemporaryDirectory() as tmp:
        async with RadioSim(SimConfig(baud=115200, seed=3), link_dir=tmp) as sim:
            cfg_a = SerialConfig(port=sim.a.path, baudrate=115200, profile=profile, reopen_min=0.1)
            cfg_b = SerialConfig(port=sim.b.path, baudrate=115200, profile=profile)
            chan_a = await SerialRadioDriver(cfg_a).open()
            chan_b = await SerialRadioDriver(cfg_b).open()
            data = payload(96 * 1024, seed=5)
            try:
                async with (
                    ArqStream(chan_a, rng=random.Random(1), name="a") as a,
                    ArqStream(chan_b, rng=random.Random(2), name="b") as b,
                ):
                    await a.wait_connected()
                    sender = asyncio.create_task(_pump(a, data, 4032))
                    receiver = asyncio.create_task(_collect(b, len(data)))
                    await asyncio.sleep(2.0)
                    sim.unplug("a")
                    assert await chan_a.wait_state_change() is False
                    assert not chan_a.metrics.up
                    await asyncio.sleep(2.0)
                    sim.replug("a")
                    async with asyncio.timeout(5):
                        assert await chan_a.wait_state_change() is True
                    async with asyncio.timeout(40):
                        got = await receiver
                        await sender
                    assert got == data
                    assert chan_a.port.opens == 2
                    assert a.session.stats.resets == 0
                    assert a.session.stats.retransmissions > 0
            finally:
                await chan_a.aclose()
                await chan_b.aclose()


@pytest.mark.timeout(30)
async def test_absent_device_is_retried_until_it_appears() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        async with RadioSim(SimConfig(baud=115200), link_dir=tmp) as sim:
            sim.unplug("a")
            cfg = SerialConfig(port=f"{tmp}/a", baudrate=115200, reopen_min=0.1, reopen_max=0.4)
            chan = await SerialRadioDriver(cfg).open()
            try:
                await asyncio.sleep(1.0)
                assert not chan.metrics.up
                assert chan.port.opens == 0
                chan.send_nowait(b"dropped while absent")  # no exception: a radio drops it
                sim.replug("a")
                async with asyncio.timeout(5):
                    assert await chan.wait_state_change() is True
            finally:
                await chan.aclose()


def _cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="florete-agent")
    cli_links.add_parsers(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    code: int = args.func(args)
    return code


@pytest.mark.timeout(60)
def test_cli_link_test_emulated_prints_goodput(capsys: pytest.CaptureFixture[str]) -> None:
    code = _cli("link", "test", "--emulate", "--baud", "115200", "--loss", "0.01",
                "--bytes", "32768", "--seed", "2")  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    assert "goodput " in out
    assert "% of line rate" in out
    assert "retransmissions " in out
    assert "rtt " in out


def test_cli_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli("link") == 2
    assert _cli("link", "test", "--emulate", "--bytes", "0") == 2
    with pytest.raises(SystemExit) as exc:
        _cli("link", "test")  # neither --emulate nor --port
    assert exc.value.code == 2
    capsys.readouterr()


@pytest.mark.timeout(30)
def test_cli_link_test_without_peer_fails_with_exit_1(capsys: pytest.CaptureFixture[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        code = _cli("link", "test", "--port", f"{tmp}/nothing", "--timeout", "2")
    assert code == 1
    assert "no result within" in capsys.readouterr().out


def test_driver_is_found_through_entry_points_and_derives_link_info() -> None:
    driver_cls = load_driver("serial_radio")
    assert driver_cls is SerialRadioDriver
    driver = driver_cls({"port": "/dev/ttyUSB9", "baudrate": 9600, "profile": "hc12"})
    assert isinstance(driver, LinkDriver)
    info = driver.info
    assert info.bitrate == 7680.0  # 9600 baud 8N1 carries 960 bytes/s, below HC-12's 15 kbit/s
    assert info.half_duplex
    assert info.mtu == 128
    assert info.frame_overhead == 6  # 4 CRC + 1 COBS + 1 delimiter for 128 bytes
    with pytest.raises(ConfigError, match="unknown keys"):
        driver_cls({"port": "x", "bogus": 1})
    with pytest.raises(ConfigError, match="unknown link driver"):
        load_driver("carrier_pigeon")


@pytest.mark.timeout(30)
async def test_stream_reports_a_peer_restart_once_and_goes_on() -> None:
    """The peer process restarts (a new ArqStream, hence a new session id, on the same port):
    the surviving stream raises LocalError once from receive() and then carries messages of the
    new session."""
    with tempfile.TemporaryDirectory() as tmp:
        async with RadioSim(SimConfig(baud=115200, seed=4), link_dir=tmp) as sim:
            chan_a = await SerialRadioDriver(SerialConfig(port=sim.a.path, baudrate=115200)).open()
            chan_b = await SerialRadioDriver(SerialConfig(port=sim.b.path, baudrate=115200)).open()
            try:
                async with ArqStream(chan_a, rng=random.Random(1), name="a") as a:
                    async with ArqStream(chan_b, rng=random.Random(2), name="b") as b:
                        await a.wait_connected()
                        await b.send(b"first life")
                        assert await a.receive() == b"first life"
                    async with ArqStream(chan_b, rng=random.Random(3), name="b2") as b2:
                        await b2.wait_connected()
                        with pytest.raises(LocalError, match="reset"):
                            await a.receive()
                        await b2.send(b"second life")
                        assert await a.receive() == b"second life"
                        await a.send(b"welcome back")
                        assert await b2.receive() == b"welcome back"
                    assert a.session.stats.resets == 1
            finally:
                await chan_a.aclose()
                await chan_b.aclose()
