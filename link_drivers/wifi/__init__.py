"""The ``wifi`` link driver: UDP on a wireless interface, with nl80211 radio metrics and
association events."""

from link_drivers.wifi.config import WifiConfig
from link_drivers.wifi.driver import WIFI_COST, WifiDriver
from link_drivers.wifi.iw import run_commands, setup_commands
from link_drivers.wifi.nl80211 import (
    AssociationEvent,
    AssociationState,
    InterfaceInfo,
    RadioMetrics,
    parse_interface,
    parse_mlme_event,
    parse_station,
)
from link_drivers.wifi.radio import Nl80211Radio

__all__ = [
    "WIFI_COST",
    "AssociationEvent",
    "AssociationState",
    "InterfaceInfo",
    "Nl80211Radio",
    "RadioMetrics",
    "WifiConfig",
    "WifiDriver",
    "parse_interface",
    "parse_mlme_event",
    "parse_station",
    "run_commands",
    "setup_commands",
]
