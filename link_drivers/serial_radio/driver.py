"""The ``serial_radio`` link driver: a UART radio as an unreliable datagram channel.

Datagrams are framed with COBS + CRC-32 (:mod:`link_drivers.framing`); damaged frames are dropped
and counted. Reliability comes from :class:`link_drivers.stream.ArqStream` on top.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import Mapping

from agent.errors import LocalError
from link_drivers.api import DatagramChannel, LinkInfo, LinkMetrics
from link_drivers.framing import FrameDecoder, encode_frame
from link_drivers.serial_radio.config import SerialConfig
from link_drivers.serial_radio.port import SerialPort

__all__ = ["SerialRadioChannel", "SerialRadioDriver"]

log = logging.getLogger(__name__)

RX_QUEUE_FRAMES = 256  # datagrams held for a slow reader before the oldest are dropped


class SerialRadioChannel(DatagramChannel):
    """Framed datagrams over a :class:`SerialPort` (see :class:`DatagramChannel`).

    Args:
        config: the port and radio settings.
    """

    def __init__(self, config: SerialConfig) -> None:
        self.config = config
        self._info = config.link_info()
        self._metrics = LinkMetrics()
        self._decoder = FrameDecoder(self._info.mtu)
        self._rx: collections.deque[bytes] = collections.deque(maxlen=RX_QUEUE_FRAMES)
        self._rx_ready = asyncio.Event()
        self._state_changed = asyncio.Event()
        self._closed = False
        self.port = SerialPort(config, self._on_bytes, self._on_state, self._metrics)

    @property
    def info(self) -> LinkInfo:
        """The link's :class:`LinkInfo`."""
        return self._info

    @property
    def metrics(self) -> LinkMetrics:
        """Live counters; ``rejected_frames`` counts CRC/COBS/oversize rejections."""
        return self._metrics

    def start(self) -> None:
        """Open the device (or start retrying); called by :meth:`SerialRadioDriver.open`."""
        self.port.start()

    def _on_bytes(self, data: bytes) -> None:
        frames = self._decoder.feed(data)
        self._metrics.rejected_frames = self._decoder.stats.rejected
        if frames:
            self._metrics.rx_frames += len(frames)
            self._rx.extend(frames)
            self._rx_ready.set()

    def _on_state(self, up: bool) -> None:
        self._decoder.reset()
        self._state_changed.set()

    async def wait_state_change(self) -> bool:
        """Wait until the device opens or is lost; returns ``metrics.up`` afterwards."""
        self._state_changed.clear()
        await self._state_changed.wait()
        return self._metrics.up

    def send_nowait(self, datagram: bytes) -> None:
        """Frame and write one datagram without waiting (dropped while the device is absent).

        Raises:
            LocalError: the datagram exceeds the MTU or the channel is closed.
        """
        if self._closed:
            raise LocalError("serial channel is closed")
        if len(datagram) > self._info.mtu:
            raise LocalError(f"datagram of {len(datagram)} bytes exceeds MTU {self._info.mtu}")
        if self.port.write(encode_frame(datagram)):
            self._metrics.tx_frames += 1

    async def send(self, datagram: bytes) -> None:
        """Frame and write one datagram (see :meth:`DatagramChannel.send`)."""
        self.send_nowait(datagram)

    async def receive(self) -> bytes:
        """Wait for the next intact datagram (see :meth:`DatagramChannel.receive`)."""
        while not self._rx:
            if self._closed:
                raise LocalError("serial channel is closed")
            self._rx_ready.clear()
            await self._rx_ready.wait()
        return self._rx.popleft()

    async def aclose(self) -> None:
        """Close the device and wake any reader with :class:`LocalError`; idempotent."""
        self._closed = True
        self.port.close()
        self._rx_ready.set()


class SerialRadioDriver:
    """Entry point ``serial_radio`` of ``florete.links``.

    Args:
        config: a :class:`SerialConfig`, or a mapping accepted by
            :meth:`SerialConfig.from_mapping`.

    Raises:
        ConfigError: the mapping is invalid.
    """

    name = "serial_radio"

    def __init__(self, config: SerialConfig | Mapping[str, object]) -> None:
        self.config = (
            config if isinstance(config, SerialConfig) else SerialConfig.from_mapping(config)
        )

    @property
    def info(self) -> LinkInfo:
        """The link's :class:`LinkInfo` (from the configuration)."""
        return self.config.link_info()

    async def open(self) -> SerialRadioChannel:
        """Return a started channel; an absent device is retried in the background."""
        channel = SerialRadioChannel(self.config)
        channel.start()
        return channel
