"""Configuration of a serial radio link: the UART settings and the radio's air profile.

The UART carries ``bytesize`` data bits per character framed by a start bit, an optional parity
bit and ``stopbits`` stop bits, so its payload rate is ``baud * bytesize / bits_per_char``
(8N1: 10 bits per byte, 80 % of the baud rate). A radio behind the UART may be slower on air
(``air_rate``), half-duplex with a ``turnaround`` time, and limited by regulation to a duty cycle;
the link's :class:`~link_drivers.api.LinkInfo` takes the slowest of these.

The named profiles are starting points taken from the vendors' data sheets, not measurements:
check your module's configuration (SiK ``AIR_SPEED``, HC-12 ``AT+FU``, LoRa spreading factor).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from agent.errors import ConfigError
from link_drivers.api import LinkInfo
from link_drivers.framing import encoded_frame_size

__all__ = ["PROFILES", "RadioProfile", "SerialConfig"]


@dataclasses.dataclass(frozen=True)
class RadioProfile:
    """What the radio behind a UART does to the bytes.

    Attributes:
        name: profile name.
        air_rate: payload bit rate on air in bit/s, or None when the UART is the bottleneck
            (a cable, or a radio faster than its UART).
        half_duplex: the radio cannot send and receive at once.
        turnaround: seconds to switch from receiving to sending.
        duty_cycle: largest share of time spent transmitting, 0 < duty_cycle <= 1.
        mtu: largest datagram the link carries, bytes (smaller frames lose less to bit errors).
        cost: routing cost per byte relative to Ethernet.
    """

    name: str = "wire"
    air_rate: float | None = None
    half_duplex: bool = False
    turnaround: float = 0.0
    duty_cycle: float = 1.0
    mtu: int = 256
    cost: float = 10.0


PROFILES: dict[str, RadioProfile] = {
    "wire": RadioProfile(),
    # SiK (RFD900, 3DR): TDM makes it look full duplex to the host; AIR_SPEED 64 kbit/s default.
    "sik": RadioProfile("sik", air_rate=64_000, mtu=252, cost=20.0),
    # HC-12 in FU3 mode: 15 kbit/s on air, half duplex.
    "hc12": RadioProfile("hc12", air_rate=15_000, half_duplex=True, turnaround=0.01, mtu=128),
    # LoRa SF7/125 kHz (~5.5 kbit/s) on an EU 868 MHz sub-band with a 1 % duty-cycle cap.
    "lora-eu868": RadioProfile(
        "lora-eu868",
        air_rate=5_470,
        half_duplex=True,
        turnaround=0.01,
        duty_cycle=0.01,
        mtu=200,
        cost=200.0,
    ),
}

_PARITIES = {"N": 0, "E": 1, "O": 1, "M": 1, "S": 1}


@dataclasses.dataclass(frozen=True)
class SerialConfig:
    """One serial radio link.

    Attributes:
        port: device path (``/dev/ttyUSB0``) or a stable symlink (``/dev/serial/by-id/...``).
        baudrate: UART speed in baud (symbols/s).
        bytesize: data bits per character, 5..8.
        parity: ``N``, ``E``, ``O``, ``M`` or ``S``.
        stopbits: 1, 1.5 or 2.
        rtscts: hardware flow control.
        xonxoff: software flow control (avoid with binary framing: 0x11/0x13 are data).
        profile: the radio's :class:`RadioProfile`.
        reopen_min: first delay before reopening a vanished device, seconds.
        reopen_max: largest delay between reopen attempts (exponential backoff), seconds.
    """

    port: str
    baudrate: int = 57600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1
    rtscts: bool = False
    xonxoff: bool = False
    profile: RadioProfile = PROFILES["wire"]
    reopen_min: float = 0.5
    reopen_max: float = 30.0

    def __post_init__(self) -> None:
        if not self.port:
            raise ConfigError("serial_radio: port is required")
        if self.baudrate <= 0:
            raise ConfigError(f"serial_radio: baudrate must be > 0, got {self.baudrate}")
        if self.bytesize not in (5, 6, 7, 8):
            raise ConfigError(f"serial_radio: bytesize must be 5..8, got {self.bytesize}")
        if self.parity not in _PARITIES:
            raise ConfigError(f"serial_radio: parity must be one of NEOMS, got {self.parity!r}")
        if self.stopbits not in (1, 1.5, 2):
            raise ConfigError(f"serial_radio: stopbits must be 1, 1.5 or 2, got {self.stopbits}")
        if not 0 < self.reopen_min <= self.reopen_max:
            raise ConfigError("serial_radio: need 0 < reopen_min <= reopen_max")

    @property
    def bits_per_char(self) -> float:
        """Bits on the UART line per data byte: start + data + parity + stop (8N1: 10)."""
        return 1 + self.bytesize + _PARITIES[self.parity] + self.stopbits

    @property
    def line_byte_rate(self) -> float:
        """UART bytes per second, ``baudrate / bits_per_char`` (8N1 at 9600 baud: 960 B/s)."""
        return self.baudrate / self.bits_per_char

    def link_info(self) -> LinkInfo:
        """Return the :class:`LinkInfo`: payload bit rate is the slower of UART and air.

        Returns:
            ``LinkInfo`` with ``bitrate = min(8 * line_byte_rate, air_rate)`` in bit/s and the
            COBS/CRC-32 framing overhead of a full frame.
        """
        p = self.profile
        bitrate = 8 * self.line_byte_rate
        if p.air_rate is not None:
            bitrate = min(bitrate, p.air_rate)
        return LinkInfo(
            mtu=p.mtu,
            bitrate=bitrate,
            half_duplex=p.half_duplex,
            cost=p.cost,
            turnaround=p.turnaround,
            duty_cycle=p.duty_cycle,
            frame_overhead=encoded_frame_size(p.mtu) - p.mtu,
        )

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> SerialConfig:
        """Build from a config mapping (the agent's YAML), with the profile given by name.

        Args:
            data: keys as the attributes; ``profile`` is a name from :data:`PROFILES`, and the
                profile's fields (``air_rate``, ``half_duplex``, ``turnaround``, ``duty_cycle``,
                ``mtu``) may be overridden at the top level.

        Raises:
            ConfigError: unknown key, unknown profile or a value of the wrong type or range.
        """
        fields = {f.name for f in dataclasses.fields(cls)} - {"profile"}
        pfields = {f.name for f in dataclasses.fields(RadioProfile)} - {"name"}
        unknown = set(data) - fields - pfields - {"profile"}
        if unknown:
            raise ConfigError(f"serial_radio: unknown keys {sorted(unknown)}")
        pname = str(data.get("profile", "wire"))
        if pname not in PROFILES:
            raise ConfigError(f"serial_radio: unknown profile {pname!r} ({', '.join(PROFILES)})")
        poverrides: dict[str, Any] = {k: v for k, v in data.items() if k in pfields}
        overrides: dict[str, Any] = {k: v for k, v in data.items() if k in fields}
        try:
            profile = dataclasses.replace(PROFILES[pname], **poverrides)
            return cls(profile=profile, **overrides)
        except TypeError as err:
            raise ConfigError(f"serial_radio: {err}") from err
