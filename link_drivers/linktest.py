"""Link test: move N bytes over an ARQ stream and measure goodput (used by the CLI and the bench).

Protocol on the reliable stream (both sides are :class:`~link_drivers.stream.ArqStream`):

1. the client sends ``b"FLT1" + nbytes (8 bytes, big-endian) + sha256(payload)``;
2. then the payload in messages of ``chunk`` bytes;
3. the server answers ``b"OK"`` or ``b"BAD"`` + the SHA-256 it computed.

Goodput is payload bytes over the time from the first payload byte queued until the last one is
acknowledged, as a share of the UART line's byte rate (``baud / bits_per_char``; 8N1: baud/10).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import random
import struct
import tempfile

from agent.errors import LocalError, RemoteProtocolError
from link_drivers.radio_model import Impairments
from link_drivers.radio_sim import RadioSim, SimConfig
from link_drivers.serial_radio import RadioProfile, SerialConfig, SerialRadioDriver
from link_drivers.stream import ArqStream

__all__ = ["TransferResult", "emulated_transfer", "run_client", "serve"]

log = logging.getLogger(__name__)

MAGIC = b"FLT1"
LINGER = 2.0  # seconds the client stays after the verdict to acknowledge retransmissions


@dataclasses.dataclass(frozen=True)
class TransferResult:
    """Outcome of one transfer.

    Attributes:
        nbytes: payload bytes.
        seconds: from the first payload byte queued to the last acknowledged, seconds.
        line_byte_rate: UART bytes per second (baud / bits per char).
        intact: the server's SHA-256 matched.
        retransmissions: DATA frames sent again by the client.
        timeouts: retransmission timer expiries at the client.
        data_frames: DATA frames sent by the client, retransmissions included.
        rtt: client SRTT at the end, seconds (None without a sample).
        rejected_frames: frames the client's and server's framing dropped (CRC/COBS errors).
    """

    nbytes: int
    seconds: float
    line_byte_rate: float
    intact: bool
    retransmissions: int
    timeouts: int
    data_frames: int
    rtt: float | None
    rejected_frames: int

    @property
    def goodput(self) -> float:
        """Payload bytes per second."""
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def share(self) -> float:
        """Goodput as a share of the line byte rate, 0..1."""
        return self.goodput / self.line_byte_rate


def payload(nbytes: int, seed: int = 1) -> bytes:
    """Deterministic pseudo-random test payload of ``nbytes`` bytes."""
    return random.Random(seed).randbytes(nbytes)


async def _client(stream: ArqStream, data: bytes, chunk: int) -> tuple[float, bool]:
    digest = hashlib.sha256(data).digest()
    await stream.send(MAGIC + struct.pack(">Q", len(data)) + digest)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for i in range(0, len(data), chunk):
        await stream.send(data[i : i + chunk])
    await stream.drain()
    seconds = loop.time() - t0
    verdict = await stream.receive()
    # Linger so that the ACK of the verdict can be repeated if it was lost (cf. TCP TIME-WAIT).
    await asyncio.sleep(min(LINGER, 3 * stream.session.rto.rto))
    return seconds, verdict == b"OK" + digest


async def _server_once(stream: ArqStream) -> bool:
    head = await stream.receive()
    if len(head) != 44 or not head.startswith(MAGIC):
        raise RemoteProtocolError(f"link test: bad header of {len(head)} bytes")
    (nbytes,) = struct.unpack(">Q", head[4:12])
    h = hashlib.sha256()
    got = 0
    while got < nbytes:
        msg = await stream.receive()
        h.update(msg)
        got += len(msg)
    ok = got == nbytes and h.digest() == head[12:]
    await stream.send((b"OK" if ok else b"BAD") + h.digest())
    # The client may close before its last ACK gets through: do not wait for it forever.
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(LINGER * 4):
            await stream.drain()
    return ok


def _result(
    stream: ArqStream, n: int, seconds: float, ok: bool, cfg: SerialConfig, rejected: int
) -> TransferResult:
    st = stream.session.stats
    return TransferResult(
        nbytes=n,
        seconds=seconds,
        line_byte_rate=cfg.line_byte_rate,
        intact=ok,
        retransmissions=st.retransmissions,
        timeouts=st.timeouts,
        data_frames=st.data_sent,
        rtt=stream.session.rto.srtt,
        rejected_frames=rejected,
    )


async def run_client(
    config: SerialConfig, nbytes: int, *, connect_timeout: float = 30.0, seed: int = 1
) -> TransferResult:
    """Send ``nbytes`` to a peer running :func:`serve` on the other end of ``config.port``.

    Raises:
        TimeoutError: no peer answered within ``connect_timeout`` seconds.
    """
    channel = await SerialRadioDriver(config).open()
    try:
        async with ArqStream(channel, name=config.port) as stream:
            async with asyncio.timeout(connect_timeout):
                await stream.wait_connected()
            data = payload(nbytes, seed)
            seconds, ok = await _client(stream, data, 16 * (stream.config.mtu - 4))
            return _result(stream, nbytes, seconds, ok, config, channel.metrics.rejected_frames)
    finally:
        await channel.aclose()


async def serve(config: SerialConfig, count: int | None = None) -> int:
    """Answer link tests on ``config.port`` until ``count`` transfers were served (None: forever).

    Returns:
        Transfers that arrived intact.
    """
    channel = await SerialRadioDriver(config).open()
    good = 0
    served = 0
    try:
        async with ArqStream(channel, name=config.port) as stream:
            while count is None or served < count:
                try:
                    good += await _server_once(stream)
                except (LocalError, RemoteProtocolError) as err:
                    log.warning("link test transfer failed: %s", err)
                served += 1
    finally:
        await channel.aclose()
    return good


async def emulated_transfer(
    *,
    baud: int,
    nbytes: int,
    frame_loss: float = 0.0,
    impairments: Impairments | None = None,
    half_duplex: bool = False,
    turnaround: float = 0.0,
    mtu: int = 256,
    seed: int = 1,
) -> TransferResult:
    """Run a client and a server in this process over a :class:`RadioSim` on real ptys.

    Args:
        baud: emulated line speed (8N1).
        nbytes: payload bytes.
        frame_loss: probability of losing a frame, each direction (ignored with ``impairments``).
        impairments: full channel model, overrides ``frame_loss``.
        half_duplex: one shared medium with ``turnaround`` seconds per direction change.
        turnaround: seconds.
        mtu: ARQ packet size, bytes.
        seed: seeds the channel and the payload.

    Wrap the call in ``asyncio.timeout`` to bound it.
    """
    imp = impairments or Impairments(frame_loss=frame_loss)
    sim_cfg = SimConfig(
        baud=baud, impairments=imp, half_duplex=half_duplex, turnaround=turnaround, seed=seed
    )
    profile = RadioProfile(
        "emulated", half_duplex=half_duplex, turnaround=turnaround, mtu=mtu, cost=1.0
    )
    with tempfile.TemporaryDirectory(prefix="florete-radio-") as tmp:
        async with RadioSim(sim_cfg, link_dir=tmp) as sim:
            cfg_a = SerialConfig(port=sim.a.path, baudrate=baud, profile=profile)
            cfg_b = SerialConfig(port=sim.b.path, baudrate=baud, profile=profile)
            chan_a = await SerialRadioDriver(cfg_a).open()
            chan_b = await SerialRadioDriver(cfg_b).open()
            try:
                async with (
                    ArqStream(chan_a, name="emu-a", rng=random.Random(seed)) as a,
                    ArqStream(chan_b, name="emu-b", rng=random.Random(seed + 1)) as b,
                ):
                    async with asyncio.TaskGroup() as tg:
                        server = tg.create_task(_server_once(b))
                        await a.wait_connected()
                        chunk = 16 * (a.config.mtu - 4)  # whole fragments: no short frames
                        seconds, ok = await _client(a, payload(nbytes, seed), chunk)
                    ok = server.result() and ok
                    rejected = chan_a.metrics.rejected_frames + chan_b.metrics.rejected_frames
                    return _result(a, nbytes, seconds, ok, cfg_a, rejected)
            finally:
                await chan_a.aclose()
                await chan_b.aclose()
