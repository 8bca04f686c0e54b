"""The link-driver interface: unreliable datagram channels and reliable streams.

A *driver* opens an :class:`DatagramChannel` to a neighbour: datagrams of at most
``LinkInfo.mtu`` bytes that may be lost or reordered but never arrive corrupted (the driver's
framing and CRC drop damaged frames). The ARQ core (:mod:`link_drivers.arq`) turns a channel into a
:class:`ReliableStream`: ordered, lossless messages. The two are different types on purpose, as in
anyio's ``abc/_streams.py`` (``UnreliableObjectStream`` vs ``ObjectStream``): code that needs
reliability asks for a ``ReliableStream`` and cannot be handed a raw channel by mistake.

Drivers are found through the ``florete.links`` entry-point group; :func:`load_driver` loads one by
name (``serial_radio``). ``LinkInfo`` follows Reticulum's ``Interface`` (``HW_MTU``, ``bitrate``).
"""

from __future__ import annotations

import abc
import dataclasses
import importlib.metadata
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from agent.errors import ConfigError

__all__ = [
    "ENTRY_POINT_GROUP",
    "DatagramChannel",
    "LinkDriver",
    "LinkInfo",
    "LinkMetrics",
    "ReliableStream",
    "available_drivers",
    "load_driver",
]

ENTRY_POINT_GROUP = "florete.links"
"""The entry-point group that lists link drivers (``name = "module:Class"``)."""


@dataclasses.dataclass(frozen=True)
class LinkInfo:
    """What a link can carry.

    Attributes:
        mtu: the largest datagram, in bytes, the channel carries in one frame (before framing).
        bitrate: the payload bit rate of the line, in bit/s (for a UART at 8N1 this is
            ``baud * 8 / 10``: start and stop bits are not payload).
        half_duplex: True when only one side may transmit at a time (most UART radios).
        cost: routing cost of one byte on this link, relative (1.0 = wired Ethernet); higher is
            dearer (slow or duty-cycled radios).
        turnaround: seconds a half-duplex radio needs to switch from receiving to sending.
        duty_cycle: the largest share of time this side may transmit, 0 < duty_cycle <= 1
            (regulatory caps such as 0.01 on EU 868 MHz sub-bands).
        frame_overhead: bytes the driver adds on the line to each datagram (framing, CRC,
            delimiter), so that pacing can count air time; 0 for packet links.
    """

    mtu: int
    bitrate: float
    half_duplex: bool = False
    cost: float = 1.0
    turnaround: float = 0.0
    duty_cycle: float = 1.0
    frame_overhead: int = 0

    def __post_init__(self) -> None:
        if self.mtu <= 0:
            raise ConfigError(f"LinkInfo.mtu must be > 0 bytes, got {self.mtu}")
        if self.bitrate <= 0:
            raise ConfigError(f"LinkInfo.bitrate must be > 0 bit/s, got {self.bitrate}")
        if not 0.0 < self.duty_cycle <= 1.0:
            raise ConfigError(f"LinkInfo.duty_cycle must be in (0, 1], got {self.duty_cycle}")
        if self.turnaround < 0 or self.frame_overhead < 0:
            raise ConfigError("LinkInfo.turnaround and frame_overhead must be >= 0")


@dataclasses.dataclass
class LinkMetrics:
    """Live measurements of a link; drivers and the ARQ core update them in place.

    Attributes:
        rtt: smoothed round-trip time in seconds (RFC 6298 SRTT), or None before the first sample.
        loss: share of frames sent that needed a retransmission, 0.0 to 1.0 (estimated by ARQ),
            or of received frames rejected by framing for a bare channel.
        retransmissions: frames sent again.
        rx_bytes: bytes read from the device or socket.
        tx_bytes: bytes written to the device or socket.
        rx_frames: datagrams received intact.
        tx_frames: datagrams sent.
        rejected_frames: frames dropped by the framing layer (CRC or stuffing errors, oversize).
        up: True while the device is open and (with ARQ) the peer answers.
        rx_goodput_bytes: message bytes delivered whole and in order to the reader (ARQ only;
            0 for a bare channel); their rate is the receive goodput.
        tx_goodput_bytes: message bytes the peer acknowledged as received in order (ARQ only;
            0 for a bare channel); their rate is the send goodput. Neither counts headers,
            framing, retransmissions, ACKs or keepalives.
    """

    rtt: float | None = None
    loss: float = 0.0
    retransmissions: int = 0
    rx_bytes: int = 0
    tx_bytes: int = 0
    rx_frames: int = 0
    tx_frames: int = 0
    rejected_frames: int = 0
    up: bool = False
    rx_goodput_bytes: int = 0
    tx_goodput_bytes: int = 0


class DatagramChannel(abc.ABC):
    """An unreliable, message-preserving channel to one neighbour.

    Datagrams may be lost, duplicated or (on some links) reordered; they are never delivered
    corrupted. ``send`` does not wait for delivery.
    """

    @property
    @abc.abstractmethod
    def info(self) -> LinkInfo:
        """The link's :class:`LinkInfo`."""

    @property
    @abc.abstractmethod
    def metrics(self) -> LinkMetrics:
        """The live :class:`LinkMetrics` of this channel."""

    @abc.abstractmethod
    async def send(self, datagram: bytes) -> None:
        """Queue one datagram for transmission.

        Args:
            datagram: at most ``info.mtu`` bytes.

        Raises:
            LocalError: the datagram exceeds the MTU or the channel is closed. A link that is
                down (device unplugged) drops the datagram silently, as a radio would.
        """

    @abc.abstractmethod
    async def receive(self) -> bytes:
        """Wait for the next intact datagram.

        Returns:
            One datagram of at most ``info.mtu`` bytes.

        Raises:
            LocalError: the channel was closed.
        """

    def set_receiver(self, receiver: Callable[[list[bytes]], None] | None) -> bool:
        """Hand received datagrams to ``receiver`` instead of queueing them for :meth:`receive`
        (optional: it saves a task wake-up per datagram).

        ``receiver`` is called in the event loop with the datagrams that arrived together, in
        order, each of at most ``info.mtu`` bytes, and must not block; those already queued
        go to it at once. None goes back to queueing.

        Returns:
            False when the channel cannot (this default): use :meth:`receive`.
        """
        return False

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the channel and release the device; idempotent."""


class ReliableStream(abc.ABC):
    """A reliable, ordered, message-preserving stream to one neighbour (ARQ on top of a channel).

    Every message sent is delivered once, in order, or the stream reports that it broke.
    """

    @property
    @abc.abstractmethod
    def metrics(self) -> LinkMetrics:
        """The live :class:`LinkMetrics` of the underlying link, with ARQ figures."""

    @abc.abstractmethod
    async def send(self, message: bytes) -> None:
        """Queue one message; waits while the send buffer is above its high-water mark.

        Raises:
            LocalError: the stream was closed or broke (the peer restarted).
        """

    @abc.abstractmethod
    async def receive(self) -> bytes:
        """Wait for the next message, in order.

        Raises:
            LocalError: the stream was closed or broke.
        """

    @abc.abstractmethod
    async def drain(self) -> None:
        """Wait until the peer has acknowledged every message sent so far."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Close the stream; idempotent."""


@runtime_checkable
class LinkDriver(Protocol):
    """What a ``florete.links`` entry point provides (a class constructed from a config mapping).

    A driver instance describes one configured link (a serial port, a UDP peer); ``open`` brings it
    up as a channel.
    """

    name: str

    @property
    def info(self) -> LinkInfo:
        """The link's :class:`LinkInfo` (known from the configuration, before opening)."""
        ...

    async def open(self) -> DatagramChannel:
        """Bring the link up; a link whose device is absent still opens and reports ``up=False``."""
        ...


def available_drivers() -> list[str]:
    """Return the names registered in the ``florete.links`` entry-point group, sorted."""
    return sorted(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def load_driver(name: str) -> Any:
    """Load the driver class registered as ``name`` in ``florete.links``.

    Args:
        name: the entry-point name, e.g. ``"serial_radio"``.

    Returns:
        The driver class (call it with its configuration to get a :class:`LinkDriver`).

    Raises:
        ConfigError: no driver of that name is installed, or it fails to import.
    """
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                return ep.load()
            except ImportError as err:
                raise ConfigError(f"link driver {name!r} ({ep.value}) fails to import") from err
    known = ", ".join(available_drivers()) or "none"
    raise ConfigError(f"unknown link driver {name!r} (installed: {known})")
