"""The ``udp`` link driver: unicast datagrams per neighbour on chosen interfaces."""

from link_drivers.udp.config import DEFAULT_PORT, UdpAddress, UdpConfig, parse_peer
from link_drivers.udp.driver import ACCEPT_BACKLOG, UdpChannel, UdpDriver, UdpStats

__all__ = [
    "ACCEPT_BACKLOG",
    "DEFAULT_PORT",
    "UdpAddress",
    "UdpChannel",
    "UdpConfig",
    "UdpDriver",
    "UdpStats",
    "parse_peer",
]
