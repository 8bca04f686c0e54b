"""CLI commands for links: ``radio-sim`` and ``link test``.

``agent/cli.py`` calls :func:`add_parsers` with its subparsers object; every command sets
``func(args) -> int`` (0 ok, 1 failure, 2 usage).

Examples::

    florete-agent radio-sim --baud 9600 --loss 0.05 --link-dir /tmp/radio
    florete-agent link test --emulate --baud 115200 --loss 0.01 --bytes 262144
    florete-agent link test --port /dev/ttyUSB0 --baud 57600 --serve        # on the peer
    florete-agent link test --port /dev/ttyUSB0 --baud 57600 --bytes 65536  # here
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import signal
import tempfile
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from agent.errors import ConfigError, FloreteError

if TYPE_CHECKING:  # imported where used: `florete-agent run` builds this parser too (~11 MiB)
    from link_drivers.linktest import TransferResult
    from link_drivers.radio_model import Impairments
    from link_drivers.radio_sim import SimConfig

__all__ = ["add_parsers"]

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``radio-sim`` and ``link`` (with ``link test``) on ``subparsers``."""
    sim = subparsers.add_parser(
        "radio-sim",
        help="run a radio channel emulator between two ptys",
        description="Relay between two pty endpoints at a given baud rate with loss, bit "
        "errors, bursts and half-duplex turnaround. Open the printed paths as serial ports.",
    )
    _add_channel_args(sim)
    sim.add_argument(
        "--link-dir", help="make stable symlinks DIR/a and DIR/b (default: a temp dir)"
    )
    sim.add_argument(
        "--duration", type=float, default=0.0, help="stop after SECONDS (default: run until ^C)"
    )
    sim.set_defaults(func=_cmd_radio_sim)

    link = subparsers.add_parser("link", help="link tools")
    link_sub = link.add_subparsers(dest="link_command", metavar="COMMAND")
    link.set_defaults(func=lambda _args: _usage(link))
    test = link_sub.add_parser(
        "test",
        help="move N bytes over a link with ARQ and report goodput",
        description="Measure goodput, retransmissions and RTT over the ARQ link: over the "
        "built-in emulator (--emulate), or over a serial port against a peer running "
        "'link test --serve' on the same settings.",
    )
    where = test.add_mutually_exclusive_group(required=True)
    where.add_argument("--emulate", action="store_true", help="use the built-in radio emulator")
    where.add_argument("--port", help="serial device, e.g. /dev/ttyUSB0")
    test.add_argument("--serve", action="store_true", help="answer link tests on --port")
    test.add_argument("--count", type=int, default=0, help="--serve: stop after N transfers")
    test.add_argument("--bytes", type=int, default=65536, help="payload bytes (default 65536)")
    test.add_argument("--parity", default="N", choices=list("NEOMS"), help="UART parity")
    test.add_argument("--rtscts", action="store_true", help="hardware flow control")
    test.add_argument(
        "--profile", default="wire", help="radio profile: wire, sik, hc12, lora-eu868, ..."
    )
    test.add_argument("--mtu", type=int, default=256, help="ARQ packet size in bytes")
    test.add_argument("--timeout", type=float, default=600.0, help="give up after SECONDS")
    _add_channel_args(test)
    test.set_defaults(func=_cmd_link_test)


def _add_channel_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--baud", type=int, default=115200, help="line speed (default 115200, 8N1)")
    p.add_argument("--loss", type=float, default=0.0, help="frame loss probability 0..1")
    p.add_argument("--byte-loss", type=float, default=0.0, help="byte loss probability")
    p.add_argument("--ber", type=float, default=0.0, help="bit error rate")
    p.add_argument("--burst-enter", type=float, default=0.0, help="Gilbert-Elliott good->bad")
    p.add_argument("--burst-exit", type=float, default=0.25, help="Gilbert-Elliott bad->good")
    p.add_argument("--burst-loss", type=float, default=1.0, help="frame loss in the bad state")
    p.add_argument("--half-duplex", action="store_true", help="one shared medium")
    p.add_argument("--turnaround", type=float, default=0.0, help="half-duplex turnaround, s")
    p.add_argument("--seed", type=int, default=None, help="random seed (reproducible runs)")
    p.add_argument(
        "--delimiter",
        type=lambda s: int(s, 0),
        default=0,
        help="frame delimiter byte for frame loss (0x00 COBS, 0x7e HDLC, 0xc0 KISS)",
    )


def _usage(p: argparse.ArgumentParser) -> int:
    p.print_help()
    return EXIT_USAGE


def _impairments(args: argparse.Namespace) -> Impairments:
    from link_drivers.radio_model import Impairments

    return Impairments(
        frame_loss=args.loss,
        byte_loss=args.byte_loss,
        bit_error_rate=args.ber,
        burst_enter=args.burst_enter,
        burst_exit=args.burst_exit,
        burst_loss=args.burst_loss,
        delimiter=args.delimiter,
    )


def _cmd_radio_sim(args: argparse.Namespace) -> int:
    from link_drivers.radio_sim import SimConfig

    try:
        cfg = SimConfig(
            baud=args.baud,
            half_duplex=args.half_duplex,
            turnaround=args.turnaround,
            impairments=_impairments(args),
            seed=args.seed,
        )
    except ConfigError as err:
        print(f"radio-sim: {err.message}")
        return EXIT_USAGE
    with contextlib.ExitStack() as stack:
        link_dir = args.link_dir or stack.enter_context(tempfile.TemporaryDirectory())
        return asyncio.run(_radio_sim(cfg, link_dir, args.duration))


async def _radio_sim(cfg: SimConfig, link_dir: str, duration: float) -> int:
    from link_drivers.radio_sim import RadioSim

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with RadioSim(cfg, link_dir=link_dir) as sim:
        print(f"endpoint a: {sim.a.path} -> {sim.a.pty_path}")
        print(f"endpoint b: {sim.b.path} -> {sim.b.pty_path}")
        print(f"{cfg.baud} baud, {cfg.byte_time * 1e3:.3f} ms per byte; ^C stops", flush=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(duration or None):
                await stop.wait()
        for src in ("a", "b"):
            st = sim.stats(src)
            print(
                f"{src}->: {st.bytes_in} bytes on air, {st.frames} frames, "
                f"{st.frames_lost} lost, {st.bytes_lost} bytes lost, {st.bits_flipped} bits flipped"
            )
    return EXIT_OK


def _cmd_link_test(args: argparse.Namespace) -> int:
    if args.bytes <= 0 or (args.serve and args.emulate):
        print("link test: --bytes must be > 0 and --serve needs --port")
        return EXIT_USAGE
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from link_drivers.linktest import run_client, serve
    from link_drivers.serial_radio import PROFILES, SerialConfig

    if not args.emulate and args.profile not in PROFILES:
        print(
            f"link test: unknown --profile {args.profile!r}; one of: {', '.join(sorted(PROFILES))}"
        )
        return EXIT_USAGE
    try:
        if args.emulate:
            result = asyncio.run(_bounded(args.timeout, _emulated(args)))
        else:
            profile = dataclasses.replace(PROFILES[args.profile], mtu=args.mtu)
            cfg = SerialConfig(
                port=args.port,
                baudrate=args.baud,
                parity=args.parity,
                rtscts=args.rtscts,
                profile=profile,
            )
            if args.serve:
                good = asyncio.run(serve(cfg, args.count or None))
                print(f"served, {good} transfers intact")
                return EXIT_OK
            result = asyncio.run(_bounded(args.timeout, run_client(cfg, args.bytes)))
    except ConfigError as err:
        print(f"link test: {err.message}")
        return EXIT_USAGE
    except TimeoutError:
        print(f"link test: no result within {args.timeout:.0f} s (is the peer serving?)")
        return EXIT_FAIL
    except FloreteError as err:
        print(f"link test failed: {err.message}")
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL
    _print_result(result)
    return EXIT_OK if result.intact else EXIT_FAIL


async def _bounded(seconds: float, coro: Coroutine[Any, Any, TransferResult]) -> TransferResult:
    async with asyncio.timeout(seconds):
        return await coro


async def _emulated(args: argparse.Namespace) -> TransferResult:
    from link_drivers.linktest import emulated_transfer

    return await emulated_transfer(
        baud=args.baud,
        nbytes=args.bytes,
        impairments=_impairments(args),
        half_duplex=args.half_duplex,
        turnaround=args.turnaround,
        mtu=args.mtu,
        seed=1 if args.seed is None else args.seed,
    )


def _print_result(r: TransferResult) -> None:
    rtt = f"{r.rtt * 1e3:.1f} ms" if r.rtt is not None else "n/a"
    print(
        f"{r.nbytes} bytes in {r.seconds:.2f} s: {r.goodput:.0f} B/s, "
        f"line {r.line_byte_rate:.0f} B/s, {'intact' if r.intact else 'CORRUPTED'}"
    )
    print(f"goodput {100 * r.share:.1f} % of line rate")
    print(
        f"retransmissions {r.retransmissions} of {r.data_frames} frames "
        f"({100 * r.retransmissions / max(1, r.data_frames):.1f} %), timeouts {r.timeouts}, "
        f"rejected frames {r.rejected_frames}"
    )
    print(f"rtt {rtt}")
