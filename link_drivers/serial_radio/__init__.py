"""The ``serial_radio`` link driver: pyserial + asyncio, COBS/CRC-32 framing, reconnects."""

from link_drivers.serial_radio.config import PROFILES, RadioProfile, SerialConfig
from link_drivers.serial_radio.driver import SerialRadioChannel, SerialRadioDriver
from link_drivers.serial_radio.port import SerialPort

__all__ = [
    "PROFILES",
    "RadioProfile",
    "SerialConfig",
    "SerialPort",
    "SerialRadioChannel",
    "SerialRadioDriver",
]
