"""Benchmark: ARQ goodput on the radio emulator beside the selective-repeat ceiling and Reticulum.

For every baud rate (9600, 57600, 115200, 8N1) and frame loss (0, 1, 10 %) it moves the same
payload over ``link_drivers`` (ArqStream on SerialRadioChannel, through RadioSim on real ptys)
and reports goodput as a share of the line byte rate ``baud / 10``, the median over ``--runs``.

Selective-repeat ceiling: with ideal feedback a selective-repeat sender spends
``1 / (1 - p)`` transmissions per frame, so its throughput efficiency is

    eta_SR = (1 - p) * P / (P + H)

(S. Lin, D. J. Costello and M. J. Miller, "Automatic-repeat-request error-control schemes",
IEEE Communications Magazine 22(12), 1984, eq. for selective repeat; Bertsekas & Gallager,
*Data Networks*, 2nd ed., section 2.4). ``P`` is the payload per frame (252 bytes) and ``H`` the
bytes each frame adds on the line: 4 ARQ header + 4 CRC-32 + 2 COBS + 1 delimiter = 11. ACKs
travel on the reverse direction of the full-duplex line and do not count.

Reticulum: two ``rns`` instances (separate processes, ``share_instance = No``, one
``SerialInterface`` each, no other interface) on the same emulator settings, with frame loss
applied at HDLC flags (0x7E), transfer the same payload as a ``Resource`` over a ``Link``; the
table gives the ratio of our time to theirs (below 1: we are faster).

Run ``python -m bench.arq`` (full: 256 KiB, 3 runs; takes about 25 minutes because 256 KiB at
9600 baud needs ~280 s of air time) or ``python -m bench.arq --quick`` (32 KiB, 1 run).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from link_drivers.linktest import TransferResult, emulated_transfer, payload
from link_drivers.radio_model import Impairments
from link_drivers.radio_sim import RadioSim, SimConfig

BAUDS = (9600, 57600, 115200)
LOSSES = (0.0, 0.01, 0.10)
PAYLOAD = 252  # bytes of payload per frame (mtu 256 - 4 header)
OVERHEAD = 11  # 4 header + 4 CRC + 2 COBS + 1 delimiter
HDLC_FLAG = 0x7E
REPO = Path(__file__).resolve().parents[1]


def sr_ceiling(loss: float, payload_bytes: int = PAYLOAD, overhead: int = OVERHEAD) -> float:
    """Selective-repeat throughput efficiency ``(1 - p) * P / (P + H)`` (module docstring)."""
    return (1 - loss) * payload_bytes / (payload_bytes + overhead)


# --------------------------------------------------------------------------- ours


async def _ours_round(nbytes: int, seed: int) -> dict[tuple[int, float], TransferResult]:
    cells = [(b, p) for b in BAUDS for p in LOSSES]
    results = await asyncio.gather(
        *(emulated_transfer(baud=b, nbytes=nbytes, frame_loss=p, seed=seed) for b, p in cells)
    )
    return dict(zip(cells, results, strict=True))


# --------------------------------------------------------------------------- Reticulum

RNS_CONFIG = """\
[reticulum]
  enable_transport = False
  share_instance = No
  panic_on_interface_error = No

[logging]
  loglevel = 1

[interfaces]
  [[Serial]]
    type = SerialInterface
    enabled = yes
    port = {port}
    speed = {baud}
    databits = 8
    parity = none
    stopbits = 1
"""


def _rns_peer(role: str, workdir: str, port: str, baud: int, nbytes: int, limit: float) -> int:
    """One Reticulum instance (runs in its own process: RNS is a per-process singleton)."""
    import RNS  # type: ignore[import-untyped,import-not-found,unused-ignore]

    cfgdir = Path(workdir) / role
    cfgdir.mkdir(parents=True, exist_ok=True)
    (cfgdir / "config").write_text(RNS_CONFIG.format(port=port, baud=baud))
    RNS.Reticulum(configdir=str(cfgdir), loglevel=RNS.LOG_ERROR)
    hashfile = Path(workdir) / "destination"
    data = payload(nbytes, seed=1)
    deadline = time.monotonic() + limit
    done = threading.Event()
    if role == "server":
        identity = RNS.Identity()
        dest = RNS.Destination(identity, RNS.Destination.IN, RNS.Destination.SINGLE, "fl", "bench")
        result: dict[str, object] = {}

        def concluded(resource: RNS.Resource) -> None:
            got = resource.data.read() if resource.data is not None else b""
            result["intact"] = hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
            done.set()

        def established(link: RNS.Link) -> None:
            link.set_resource_strategy(RNS.Link.ACCEPT_ALL)
            link.set_resource_concluded_callback(concluded)

        dest.set_link_established_callback(established)
        hashfile.write_text(dest.hash.hex())
        while not done.is_set() and time.monotonic() < deadline:
            dest.announce()
            done.wait(5.0)
        print(json.dumps(result), flush=True)
        time.sleep(2.0)  # let the proof of the last part go out
        return 0
    while not hashfile.exists():
        time.sleep(0.1)
    dest_hash = bytes.fromhex(hashfile.read_text())
    while not RNS.Transport.has_path(dest_hash):
        if time.monotonic() > deadline:
            print(json.dumps({"error": "no path"}), flush=True)
            return 1
        RNS.Transport.request_path(dest_hash)
        time.sleep(1.0)
    server = RNS.Identity.recall(dest_hash)
    dest = RNS.Destination(server, RNS.Destination.OUT, RNS.Destination.SINGLE, "fl", "bench")
    link = RNS.Link(dest)
    while link.status != RNS.Link.ACTIVE:
        if time.monotonic() > deadline:
            print(json.dumps({"error": "no link"}), flush=True)
            return 1
        time.sleep(0.02)
    t0 = time.monotonic()
    res = RNS.Resource(data, link, auto_compress=False, callback=lambda _r: done.set())
    done.wait(max(0.0, deadline - time.monotonic()))
    seconds = time.monotonic() - t0
    ok = res.status == RNS.Resource.COMPLETE
    print(json.dumps({"seconds": seconds, "complete": ok}), flush=True)
    return 0 if ok else 1


async def _rns_cell(baud: int, loss: float, nbytes: int, seed: int, limit: float) -> float | None:
    """Run one Reticulum transfer over a fresh emulator; returns seconds, None on failure."""
    imp = Impairments(frame_loss=loss, delimiter=HDLC_FLAG)
    with tempfile.TemporaryDirectory(prefix="florete-rns-") as tmp:
        async with RadioSim(SimConfig(baud=baud, impairments=imp, seed=seed), link_dir=tmp) as sim:
            procs = []
            for role, port in (("server", sim.b.path), ("client", sim.a.path)):
                argv = [sys.executable, "-m", "bench.arq", "--rns-peer", role, tmp, port]
                argv += [str(baud), str(nbytes), str(limit)]
                procs.append(
                    await asyncio.create_subprocess_exec(
                        *argv,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.DEVNULL,
                        cwd=REPO,
                    )
                )
            try:
                async with asyncio.timeout(limit + 30):
                    outs = [await p.communicate() for p in reversed(procs)]
            except TimeoutError:
                return None
            finally:
                for p in procs:
                    if p.returncode is None:
                        p.kill()
                        await p.wait()
    client = json.loads(outs[0][0].decode().strip().splitlines()[-1] or "{}")
    server = json.loads(outs[1][0].decode().strip().splitlines()[-1] or "{}")
    if client.get("complete") and server.get("intact"):
        return float(client["seconds"])
    return None


# --------------------------------------------------------------------------- report


def _fmt(x: float | None, pct: bool = True) -> str:
    if x is None:
        return "fail"
    return f"{100 * x:5.1f} %" if pct else f"{x:5.2f}"


async def _bench(nbytes: int, runs: int, with_rns: bool, rns_limit: float) -> None:
    ours: dict[tuple[int, float], list[TransferResult]] = {}
    for run in range(runs):
        t = time.monotonic()
        for cell, r in (await _ours_round(nbytes, seed=100 + run)).items():
            ours.setdefault(cell, []).append(r)
        print(f"# florete run {run + 1}/{runs}: {time.monotonic() - t:.0f} s", flush=True)
        for (baud, loss), rs in ours.items():
            print(f"#   {baud} {100 * loss:.0f} %: {100 * rs[-1].share:.1f} %", flush=True)
    rns: dict[tuple[int, float], float | None] = {}
    if with_rns:
        for baud in BAUDS:  # the three loss rates of one baud run side by side
            t = time.monotonic()
            times = await asyncio.gather(
                *(_rns_cell(baud, p, nbytes, 7, rns_limit) for p in LOSSES)
            )
            rns.update(zip(((baud, p) for p in LOSSES), times, strict=True))
            print(f"# reticulum {baud} baud: {time.monotonic() - t:.0f} s", flush=True)
            for p, secs in zip(LOSSES, times, strict=True):
                print(f"#   {baud} {100 * p:.0f} %: {secs if secs is None else round(secs, 1)} s")
    print()
    print(f"payload {nbytes} bytes, median of {runs} run(s); goodput as a share of baud/10")
    head = "baud    loss  | florete goodput  SR ceiling  retx/frames  srtt    "
    head += "| reticulum goodput  ours/theirs time"
    print(head)
    print("-" * len(head))
    for (baud, loss), rs in ours.items():
        share = statistics.median(r.share for r in rs)
        seconds = statistics.median(r.seconds for r in rs)
        intact = all(r.intact for r in rs)
        retx = statistics.median(r.retransmissions / max(1, r.data_frames) for r in rs)
        srtt = statistics.median(r.rtt or 0.0 for r in rs)
        theirs = rns.get((baud, loss))
        their_share = nbytes / theirs / (baud / 10) if theirs else None
        ratio = seconds / theirs if theirs else None
        rns_cols = (
            f"| {_fmt(their_share):>17}  {_fmt(ratio, pct=False):>16}" if with_rns else "| n/a"
        )
        print(
            f"{baud:<7} {100 * loss:4.0f} % | {_fmt(share):>15}{'' if intact else '!'}  "
            f"{_fmt(sr_ceiling(loss)):>10}  {100 * retx:9.1f} %  {1e3 * srtt:5.0f} ms {rns_cols}"
        )


def main(argv: list[str] | None = None) -> None:
    """Print the benchmark table (see the module docstring); ``--quick`` for a short run.

    Args:
        argv: command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(prog="python -m bench.arq", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="32 KiB, one run")
    parser.add_argument("--bytes", type=int, default=0, help="payload bytes (default 256 KiB)")
    parser.add_argument("--runs", type=int, default=0, help="runs per cell (default 3)")
    parser.add_argument("--no-rns", action="store_true", help="skip Reticulum")
    parser.add_argument("--rns-peer", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.rns_peer:
        role, workdir, port, baud, nbytes, limit = args.rns_peer
        sys.exit(_rns_peer(role, workdir, port, int(baud), int(nbytes), float(limit)))
    nbytes = args.bytes or (32 * 1024 if args.quick else 256 * 1024)
    runs = args.runs or (1 if args.quick else 3)
    with_rns = not args.no_rns
    if with_rns:
        try:
            import RNS  # type: ignore[import-untyped,import-not-found,unused-ignore]  # noqa: F401
        except ImportError:
            print("# rns is not installed (pip install '.[bench]'): Reticulum columns skipped")
            with_rns = False
    rns_limit = 60.0 + 5 * nbytes / 960  # five times the 9600-baud air time, plus set-up
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_bench(nbytes, runs, with_rns, rns_limit))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
