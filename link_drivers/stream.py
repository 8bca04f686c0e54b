"""ArqStream: the asyncio adapter that runs an :class:`ArqSession` over a datagram channel.

A thin layer, as STYLE.md item 1 asks; all protocol decisions live in the sans-IO session.

* Received datagrams go into the session as the channel hands them over (``set_receiver``: a
  whole batch at a time, in the loop's I/O callback), or through a reader task for channels that
  only offer ``receive``; the session's answer to a batch is sent at once.
* A message goes out from :meth:`ArqStream.send` itself, in the caller's task, when the window
  allows: no task is woken to send it.
* One ``loop.call_at`` timer follows ``get_timer``; it is moved only when the deadline comes
  earlier (one that fires early re-arms itself), so a deadline that moves on with every ACK
  costs nothing. The timer callback sends what fell due itself.

Datagrams are handed to ``channel.send`` synchronously: every driver here queues a datagram and
returns without waiting, so its coroutine finishes in one step. A channel whose ``send`` does
wait has the rest of that call, and the datagrams after it, finished by a writer task, in order.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from collections.abc import Callable
from types import TracebackType

from agent.errors import LocalError
from agent.stepping import Rest, step
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

    Use as an async context manager (it owns its tasks)::

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
        self._progress = asyncio.Event()  # input arrived: receivers and blocked senders look
        self._connected = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # when the armed timer fires, seconds of loop time
        # A channel send that waited: its rest, then the datagrams behind it (writer task).
        self._stalled: Rest | None = None
        self._backlog: collections.deque[bytes] = collections.deque()
        self._wake = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._broken: str | None = None
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
        """Start receiving and send the first HELLO (called by ``async with``)."""
        self._loop = asyncio.get_running_loop()
        self._resolution = time.get_clock_info("monotonic").resolution
        self._push()
        if not self.channel.set_receiver(self._on_datagrams):
            self._tasks.append(asyncio.create_task(self._reader(), name="arq-reader"))

    async def aclose(self) -> None:
        """Stop the session and its tasks; idempotent; the channel stays open."""
        if self._closed:
            return
        self._closed = True
        self.session.close()
        self.channel.set_receiver(None)
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
        """Channel counters with ARQ figures (SRTT, retransmissions, loss share, goodput
        bytes: ``ArqStats.bytes_delivered`` and ``ArqStats.bytes_acked``)."""
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
            rx_goodput_bytes=st.bytes_delivered,
            tx_goodput_bytes=st.bytes_acked,
        )

    async def wait_connected(self) -> None:
        """Wait for the handshake (wrap in ``asyncio.timeout`` to bound it)."""
        await self._connected.wait()

    async def send(self, message: bytes) -> None:
        """Queue one message (see :meth:`ReliableStream.send`); what the window allows is on the
        channel when this returns. Cancelled while waiting for room, nothing was queued.

        Raises:
            LocalError: the stream is closed or broke (its channel closed).
        """
        while self.session.send_buffered > self.high_water:
            self._check_open()
            self._progress.clear()
            await self._progress.wait()
        self._check_open()
        session = self.session
        waiting = session.send_queued  # then an ACK or the timer sends, not this call
        session.send(message)
        if not waiting:
            self._push()
            self._check_open()  # the channel refused the datagrams: the stream broke

    async def receive(self) -> bytes:
        """Next message in order (see :meth:`ReliableStream.receive`).

        Raises:
            LocalError: the stream was closed or broke, or (once per reset) the peer restarted.
        """
        while True:
            if self._inbox:
                msg = self._inbox.popleft()
                if msg is None:
                    self.resets_reported += 1
                    raise LocalError("ARQ session was reset (peer restarted); messages were lost")
                if self.session.consumed(len(msg)):
                    self._push()  # a window update is due
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
        if self._broken is not None:
            raise LocalError(f"ARQ stream broke: {self._broken}")

    def _fail(self, err: LocalError) -> None:
        """The channel failed (closed under us): stop, and tell every waiter."""
        if self._broken is None:
            self._broken = str(err)
            self._log.warning("channel failed: %s", err)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._progress.set()

    # ----------------------------------------------------------------- machinery

    async def _reader(self) -> None:
        receive, session, loop = self.channel.receive, self.session, self._loop
        while self._broken is None:
            try:
                datagram = await receive()
            except LocalError as err:
                self._fail(err)
                return
            session.receive_frame(datagram, loop.time())
            self._after_input()
            self._push()

    def _on_datagrams(self, datagrams: list[bytes]) -> None:
        session = self.session
        now = self._loop.time()
        for datagram in datagrams:
            session.receive_frame(datagram, now)
        self._after_input()
        self._push()

    def _after_input(self) -> None:
        session = self.session
        while (ev := session.next_event()) is not None:
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

    def _set_up(self, up: bool) -> None:
        if up != self.up:
            self.up = up
            if self._on_link is not None:
                self._on_link(up)

    def _push(self) -> None:
        """Hand every datagram the session releases now to the channel, then follow its timer.

        Raises nothing: a channel that refuses datagrams (closed) breaks the stream.
        """
        if self._broken is not None:
            return
        if self._stalled is not None:
            self._wake.set()  # the writer sends in order once the waiting send is done
            return
        send = self.channel.send
        datagrams = self.session.frames_to_send(self._loop.time())
        try:
            for i, datagram in enumerate(datagrams):
                rest = step(send(datagram))
                if rest is None:
                    continue
                self._stalled = rest
                self._backlog.extend(datagrams[i + 1 :])
                if self._writer_task is None:
                    self._writer_task = asyncio.create_task(self._writer(), name="arq-writer")
                    self._tasks.append(self._writer_task)
                self._wake.set()
                return
        except LocalError as err:
            self._fail(err)
            return
        self._arm()

    async def _writer(self) -> None:
        """Finish channel sends that waited, in order, then go back to sending at once."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                while (stalled := self._stalled) is not None:
                    await stalled
                    while self._backlog:
                        await self.channel.send(self._backlog.popleft())
                    self._stalled = None
                    self._push()
            except LocalError as err:
                self._fail(err)
                return

    def _arm(self) -> None:
        at = self.session.get_timer()
        if at is None or (self._timer is not None and self._timer_at <= at):
            return  # an earlier timer fires first and re-arms (or finds nothing to do)
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        at = self.session.get_timer()
        if at is None:
            return
        now = self._loop.time()
        if at <= now + self._resolution:
            # call_at may fire up to one clock resolution early: use the deadline itself.
            self.session.handle_timer(max(now, at))
            self._after_input()
        self._push()
