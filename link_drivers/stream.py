"""ArqStream: the asyncio adapter that runs an :class:`ArqSession` over a datagram channel.

A thin layer, as STYLE.md item 1 asks: one reader task feeds received datagrams into the session,
one writer task sends what ``frames_to_send`` returns, and a single ``loop.call_at`` timer follows
``get_timer``. All protocol decisions live in the sans-IO session.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Callable
from types import TracebackType

from agent.errors import LocalError
from link_drivers._log import LinkLog
from link_drivers.api import DatagramChannel, LinkMetrics, ReliableStream
from link_drivers.arq import (
    ArqConfig,
    ArqSession,
    Connected,
    LinkDown,
    LinkUp,
    MessageReceived,
    SessionReset,
)

__all__ = ["ArqStream"]

log = logging.getLogger(__name__)


class ArqStream(ReliableStream):
    """Reliable ordered messages over an unreliable :class:`DatagramChannel`.

    Use as an async context manager (it owns its two tasks)::

        async with ArqStream(channel) as stream:
            async with asyncio.timeout(10):
                await stream.wait_connected()
            await stream.send(b"hello")

    After the peer restarts, :meth:`receive` raises :class:`LocalError` once (messages in flight
    were lost) and the stream goes on with the new session.

    Args:
        channel: the link; not closed by the stream.
        config: ARQ parameters; default ``ArqConfig.for_link(channel.info)``.
        rng: seedable source of session ids (tests).
        name: label for log lines.
        high_water: :meth:`send` waits while more than this many bytes are unacknowledged;
            default ``4 * window * mtu``.
        on_link: called with True when the peer answers (handshake done, or heard again after
            a silence) and False when it fell silent for ``config.dead_interval`` seconds;
            liveness comes from these keepalives.
    """

    def __init__(
        self,
        channel: DatagramChannel,
        config: ArqConfig | None = None,
        *,
        rng: random.Random | None = None,
        name: str = "arq",
        high_water: int | None = None,
        on_link: Callable[[bool], None] | None = None,
    ) -> None:
        self.channel = channel
        self.config = config if config is not None else ArqConfig.for_link(channel.info)
        self.session = ArqSession(self.config, rng=rng, name=name)
        self._log = LinkLog(log, link=name)
        self.high_water = high_water or 4 * self.config.window * self.config.mtu
        self._on_link = on_link
        self.resets_reported = 0
        """Peer restarts :meth:`receive` has reported so far."""
        # Messages in order; None marks a session reset at its place in the sequence, so that
        # messages of the new session are never read before the reset is reported.
        self._inbox: collections.deque[bytes | None] = collections.deque()
        self._wake = asyncio.Event()
        self._progress = asyncio.Event()
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._timer_fired = False
        self._closed = False
        self.up = False

    # ----------------------------------------------------------------- lifecycle

    async def __aenter__(self) -> ArqStream:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def start(self) -> None:
        """Start the reader and writer tasks (called by ``async with``)."""
        self._loop = asyncio.get_running_loop()
        self._tasks = [
            asyncio.create_task(self._reader(), name="arq-reader"),
            asyncio.create_task(self._writer(), name="arq-writer"),
        ]
        self._wake.set()

    async def aclose(self) -> None:
        """Stop the session and its tasks; idempotent; the channel stays open."""
        if self._closed:
            return
        self._closed = True
        self.session.close()
        if self._timer is not None:
            self._timer.cancel()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._progress.set()

    # ----------------------------------------------------------------- user API

    @property
    def metrics(self) -> LinkMetrics:
        """Channel counters with ARQ figures (SRTT, retransmissions, loss share)."""
        ch = self.channel.metrics
        st = self.session.stats
        return LinkMetrics(
            rtt=self.session.rto.srtt,
            loss=st.retransmissions / st.data_sent if st.data_sent else 0.0,
            retransmissions=st.retransmissions,
            rx_bytes=ch.rx_bytes,
            tx_bytes=ch.tx_bytes,
            rx_frames=ch.rx_frames,
            tx_frames=ch.tx_frames,
            rejected_frames=ch.rejected_frames,
            up=self.up,
        )

    async def wait_connected(self) -> None:
        """Wait for the handshake (wrap in ``asyncio.timeout`` to bound it)."""
        await self._connected.wait()

    async def send(self, message: bytes) -> None:
        """Queue one message (see :meth:`ReliableStream.send`)."""
        while self.session.send_buffered > self.high_water:
            self._check_open()
            self._progress.clear()
            await self._progress.wait()
        self._check_open()
        self.session.send(message)
        self._wake.set()

    async def receive(self) -> bytes:
        """Next message in order (see :meth:`ReliableStream.receive`).

        Raises:
            LocalError: the stream was closed, or (once per reset) the peer restarted.
        """
        while True:
            if self._inbox:
                msg = self._inbox.popleft()
                if msg is None:
                    self.resets_reported += 1
                    raise LocalError("ARQ session was reset (peer restarted); messages were lost")
                self.session.consumed(len(msg))
                self._wake.set()
                return msg
            self._check_open()
            self._progress.clear()
            await self._progress.wait()

    async def drain(self) -> None:
        """Wait until the peer acknowledged everything sent so far."""
        while self.session.send_buffered:
            self._check_open()
            self._progress.clear()
            await self._progress.wait()

    def _check_open(self) -> None:
        if self._closed:
            raise LocalError("ARQ stream is closed")

    # ----------------------------------------------------------------- machinery

    async def _reader(self) -> None:
        while True:
            datagram = await self.channel.receive()
            self.session.receive_frame(datagram, self._loop.time())
            self._after_input()

    def _after_input(self) -> None:
        while (ev := self.session.next_event()) is not None:
            if isinstance(ev, MessageReceived):
                self._inbox.append(ev.data)
            elif isinstance(ev, Connected | LinkUp):
                self._connected.set()
                self._set_up(True)
            elif isinstance(ev, LinkDown):
                self._set_up(False)
            elif isinstance(ev, SessionReset):
                self._inbox.append(None)
        self._progress.set()
        self._wake.set()

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            if self._on_link is not None:
                self._on_link(up)

    async def _writer(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            now = self._loop.time()
            if self._timer_fired and self._timer_at is not None:
                # call_at may fire up to one clock resolution early: use the deadline itself.
                now = max(now, self._timer_at)
                self._timer_fired = False
                self._timer_at = None
                self.session.handle_timer(now)
                self._after_input()
                self._wake.clear()
            for datagram in self.session.frames_to_send(now):
                await self.channel.send(datagram)
            self._arm()

    def _arm(self) -> None:
        at = self.session.get_timer()
        if at == self._timer_at:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = at
        if at is not None:
            self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_fired = True
        self._wake.set()
