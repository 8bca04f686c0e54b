"""nl80211 over generic netlink for one wireless interface (pyroute2's asyncio socket).

A thin I/O layer: it sends ``NL80211_CMD_GET_INTERFACE`` and a ``NL80211_CMD_GET_STATION`` dump,
and listens on the ``mlme`` multicast group, handing every decoded message to the pure functions
of :mod:`link_drivers.wifi.nl80211`. pyroute2's ``AsyncNL80211`` runs on the caller's event loop.
"""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

from pyroute2.netlink import NLM_F_DUMP, NLM_F_REQUEST
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.nl80211 import AsyncNL80211, nl80211cmd

from agent.errors import LocalError, RemoteProtocolError
from link_drivers._log import LinkLog
from link_drivers.wifi.nl80211 import (
    CMD_GET_INTERFACE,
    CMD_GET_STATION,
    AssociationEvent,
    InterfaceInfo,
    RadioMetrics,
    parse_interface,
    parse_mlme_event,
    parse_station,
)

__all__ = ["MLME_GROUP", "Nl80211Radio"]

log = logging.getLogger(__name__)

MLME_GROUP = "mlme"  # NL80211_MULTICAST_GROUP_MLME: CONNECT, ROAM, DISCONNECT, NEW/DEL_STATION


async def _bound_socket() -> Any:
    sock = AsyncNL80211()
    # pyroute2 logs a missing family at ERROR; here it is an expected, reported condition.
    sock.module_err_level = "debug"
    try:
        await sock.bind()
    except (NetlinkError, OSError) as err:
        sock.close()
        code = getattr(err, "code", None) or getattr(err, "errno", None)
        why = "no cfg80211 in this kernel" if code == errno.ENOENT else str(err)
        raise LocalError(f"nl80211 unavailable ({why})") from err
    return sock


class Nl80211Radio:
    """Queries and association events of one interface through nl80211.

    Args:
        interface: the wireless interface name.
    """

    def __init__(self, interface: str) -> None:
        self.interface = interface
        self.ifindex = 0
        self._sock: Any = None
        self._log = LinkLog(log, link=f"wifi/{interface}")

    async def open(self) -> InterfaceInfo:
        """Resolve nl80211 and check that the interface answers it.

        Returns:
            The interface's :class:`InterfaceInfo`.

        Raises:
            LocalError: the interface does not exist, the kernel has no nl80211, or the interface
                is not an nl80211 device; the message is the reason shown to the operator.
        """
        try:
            self.ifindex = socket.if_nametoindex(self.interface)
        except OSError as err:
            raise LocalError(f"no interface {self.interface}") from err
        self._sock = await _bound_socket()
        try:
            return await self.interface_info()
        except LocalError:
            self.close()
            raise

    async def _request(self, cmd: int, flags: int) -> list[Any]:
        if self._sock is None:
            raise LocalError(f"nl80211 radio {self.interface} is not open")
        msg = nl80211cmd()
        msg["cmd"] = cmd
        msg["version"] = 1
        msg["attrs"] = [["NL80211_ATTR_IFINDEX", self.ifindex]]
        try:
            replies = await self._sock.nlm_request(msg, msg_type=self._sock.prid, msg_flags=flags)
            return [r async for r in replies]
        except (NetlinkError, OSError) as err:
            raise LocalError(f"nl80211 request {cmd} on {self.interface} failed: {err}") from err

    async def interface_info(self) -> InterfaceInfo:
        """``NL80211_CMD_GET_INTERFACE`` for this interface.

        Raises:
            LocalError: the request failed (ENODEV: not a wireless interface).
        """
        # No NLM_F_ACK: the ACK would arrive after pyroute2 has stopped reading this request
        # and pile up in the socket's default queue for as long as the poller runs.
        for reply in await self._request(CMD_GET_INTERFACE, NLM_F_REQUEST):
            if reply.get("cmd") is not None and reply.get_attr("NL80211_ATTR_IFINDEX"):
                return parse_interface(reply)
        raise LocalError(f"nl80211 has no interface {self.interface}")

    async def stations(self) -> list[RadioMetrics]:
        """Every station entry of the interface (``NL80211_CMD_GET_STATION`` dump).

        Raises:
            LocalError: the request failed.
        """
        out = []
        for reply in await self._request(CMD_GET_STATION, NLM_F_REQUEST | NLM_F_DUMP):
            try:
                out.append(parse_station(reply))
            except RemoteProtocolError as err:
                self._log.debug("skipped a station entry: %s", err)
        return out

    async def events(self) -> AsyncIterator[AssociationEvent]:
        """Association events of this interface from the ``mlme`` multicast group, forever.

        Uses a socket of its own, closed when the iteration ends (or is cancelled).

        Raises:
            LocalError: nl80211 or its ``mlme`` group is unavailable.
        """
        sock = await _bound_socket()
        try:
            if MLME_GROUP not in sock.mcast_groups:
                raise LocalError(f"nl80211 has no {MLME_GROUP!r} multicast group")
            sock.add_membership(MLME_GROUP)
            while True:
                got = False
                async for msg in sock.get():
                    got = True
                    try:
                        event = parse_mlme_event(msg["cmd"], msg)
                    except RemoteProtocolError as err:
                        self._log.debug("skipped an mlme message: %s", err)
                        continue
                    if event is not None and event.ifindex in (None, self.ifindex):
                        yield event
                if not got:
                    return
        except (NetlinkError, OSError) as err:
            raise LocalError(f"nl80211 {MLME_GROUP} events failed: {err}") from err
        finally:
            sock.close()

    def close(self) -> None:
        """Close the query socket; idempotent."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
