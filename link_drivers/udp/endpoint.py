"""One UDP socket bound to one interface and address family, as an asyncio datagram endpoint.

Sockets are made here and handed to ``loop.create_datagram_endpoint(sock=...)``, because asyncio
cannot set ``SO_BINDTODEVICE`` or bind an IPv6 scope itself.

ICMP errors. Linux reports ICMP errors (port unreachable, host unreachable) on an unconnected UDP
socket only with ``IP_RECVERR`` / ``IPV6_RECVERR`` set (ip(7), ipv6(7)). They are set here so the
driver learns that a peer's port is closed; each error is then queued on the socket's error queue,
which must be drained with ``MSG_ERRQUEUE``: an undrained queue keeps ``EPOLLERR`` raised (asyncio
would spin on the socket) and is charged to the receive buffer (it would crowd out data). Every
error is drained, counted and reported to the owner; nothing closes the endpoint.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

import psutil

from agent.errors import LocalError
from link_drivers._log import LinkLog

__all__ = ["UdpEndpoint", "bind_socket", "family_name", "ipv6_bind_address"]

log = logging.getLogger(__name__)

# linux/in.h and linux/in6.h; Python 3.11's socket module lacks these names.
IP_RECVERR = 11
IPV6_RECVERR = 25
# struct sock_extended_err (linux/errqueue.h): ee_errno u32, origin u8, type u8, code u8, pad u8,
# info u32, data u32.
_SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")

Addr = tuple[Any, ...]
DatagramHandler = Callable[["UdpEndpoint", bytes, Addr], None]
ErrorHandler = Callable[["UdpEndpoint", OSError, Addr | None], None]


def family_name(family: int) -> str:
    """``"ipv4"`` or ``"ipv6"`` for ``AF_INET`` / ``AF_INET6`` (log and error text)."""
    return "ipv6" if family == socket.AF_INET6 else "ipv4"


def ipv6_bind_address(interface: str) -> str | None:
    """The IPv6 address a socket on ``interface`` binds: its link-local address, else ``::1``.

    Args:
        interface: interface name, in the calling thread's network namespace.

    Returns:
        The first ``fe80::/10`` address of the interface; ``"::1"`` when the interface carries
        the loopback address instead (``lo``); None when it has neither (or does not exist).
    """
    candidates: list[ipaddress.IPv6Address] = []
    for addr in psutil.net_if_addrs().get(interface, []):
        if addr.family == socket.AF_INET6:
            candidates.append(ipaddress.IPv6Address(addr.address.split("%", 1)[0]))
    for ip in candidates:
        if ip.is_link_local:
            return ip.compressed
    if ipaddress.IPv6Address("::1") in candidates:
        return "::1"
    return None


def bind_socket(interface: str, family: int, port: int) -> socket.socket | None:
    """Create a non-blocking UDP socket bound to one interface.

    IPv4: ``0.0.0.0:port`` with ``SO_BINDTODEVICE``. IPv6: the address from
    :func:`ipv6_bind_address` with the interface's scope id, ``IPV6_V6ONLY`` and
    ``SO_BINDTODEVICE``. Both get ``IP_RECVERR`` / ``IPV6_RECVERR``.

    Args:
        interface: interface name.
        family: ``socket.AF_INET`` or ``socket.AF_INET6``.
        port: UDP port, 0 for an ephemeral one.

    Returns:
        The bound socket, or None when the interface has no usable IPv6 address (none, or still
        tentative during duplicate address detection) or does not exist: try again later.

    Raises:
        LocalError: the socket cannot be bound for a reason that will not go away by itself
            (port in use, permission denied).
    """
    if family == socket.AF_INET6:
        host = ipv6_bind_address(interface)
        if host is None:
            return None
        try:
            scope = 0 if host == "::1" else socket.if_nametoindex(interface)
        except OSError:
            return None
        addr: Addr = (host, port, 0, scope)
    else:
        addr = ("0.0.0.0", port)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, interface.encode())
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVERR, 1)
        else:
            sock.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
        sock.bind(addr)
    except OSError as err:
        sock.close()
        if err.errno in (errno.ENODEV, errno.EADDRNOTAVAIL, errno.ENXIO):
            return None
        where = f"{interface}/{family_name(family)} {addr[0]}:{port}"
        raise LocalError(f"udp: cannot bind {where}: {err.strerror or err}") from err
    return sock


class UdpEndpoint(asyncio.DatagramProtocol):
    """The asyncio protocol of one bound socket; reports datagrams and errors to its owner.

    Args:
        sock: a socket from :func:`bind_socket` (the endpoint owns it from now on).
        interface: the interface the socket is bound to.
        on_datagram: called with ``(endpoint, data, source address tuple)``.
        on_error: called with ``(endpoint, error, destination or None)`` for every ICMP or
            socket error; the destination is known for errors read from the error queue.
        on_lost: called with the endpoint once its transport is gone.
    """

    def __init__(
        self,
        sock: socket.socket,
        interface: str,
        on_datagram: DatagramHandler,
        on_error: ErrorHandler,
        on_lost: Callable[[UdpEndpoint], None],
    ) -> None:
        self.sock = sock
        self.interface = interface
        self.family = sock.family
        name = sock.getsockname()
        self.local: Addr = tuple(name)
        self.scope_id: int = name[3] if self.family == socket.AF_INET6 else 0
        self._on_datagram = on_datagram
        self._on_error = on_error
        self._on_lost = on_lost
        self._log = LinkLog(log, link=f"udp/{interface}/{family_name(self.family)}")
        self.transport: asyncio.DatagramTransport | None = None
        self._paused = False

    @classmethod
    async def create(
        cls,
        sock: socket.socket,
        interface: str,
        on_datagram: DatagramHandler,
        on_error: ErrorHandler,
        on_lost: Callable[[UdpEndpoint], None],
    ) -> UdpEndpoint:
        """Wrap a bound socket in an asyncio datagram endpoint (arguments as the constructor)."""
        loop = asyncio.get_running_loop()
        endpoint = cls(sock, interface, on_datagram, on_error, on_lost)
        transport, _ = await loop.create_datagram_endpoint(lambda: endpoint, sock=sock)
        endpoint.transport = transport
        return endpoint

    @property
    def is_open(self) -> bool:
        """True while the transport is open."""
        return self.transport is not None and not self.transport.is_closing()

    def destination(self, host: str, port: int) -> Addr:
        """The ``sendto`` address of a peer on this socket (IPv6 carries this socket's scope)."""
        if self.family == socket.AF_INET6:
            return (host, port, 0, self.scope_id)
        return (host, port)

    def send(self, data: bytes, addr: Addr) -> bool:
        """Send one datagram without waiting.

        Returns:
            False when it was dropped: the endpoint is closed, or the socket buffer is full and
            asyncio holds more than its high-water mark (64 KiB) until it drains (a full NIC
            queue drops likewise).
        """
        t = self.transport
        if t is None or t.is_closing() or self._paused:
            return False
        t.sendto(data, addr)
        return True

    def close(self) -> None:
        """Close the transport and the socket; idempotent."""
        if self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # asyncio's selector datagram transport does not subclass DatagramTransport.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False

    def datagram_received(self, data: bytes, addr: Addr) -> None:
        self._on_datagram(self, data, addr)

    def error_received(self, exc: Exception) -> None:
        # Called for a failed sendto (EPERM from a firewall, ENETUNREACH, EMSGSIZE) and when a
        # read returns the socket's pending error (set by an ICMP error): drain the error queue,
        # which says which destination each ICMP error is about.
        drained = self._drain_error_queue()
        if not drained and isinstance(exc, OSError):
            self._on_error(self, exc, None)

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self._log.warning("socket closed: %s", exc)
        self.transport = None
        self._on_lost(self)

    def _drain_error_queue(self) -> int:
        # Drain to EAGAIN: asyncio calls error_received only when a read returns the pending
        # error, and a queue left non-empty without one keeps the socket readable for ever.
        # The queue is bounded by the receive buffer, so this ends.
        count = 0
        while True:
            try:
                _, ancdata, _, dest = self.sock.recvmsg(0, 512, socket.MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:
                self._log.debug("reading the error queue failed: %s", err)
                break
            count += 1
            code = errno.EIO
            for level, kind, data in ancdata:
                if (level, kind) in (
                    (socket.IPPROTO_IP, IP_RECVERR),
                    (socket.IPPROTO_IPV6, IPV6_RECVERR),
                ) and len(data) >= _SOCK_EXTENDED_ERR.size:
                    code = _SOCK_EXTENDED_ERR.unpack_from(data)[0]
            self._on_error(self, OSError(code, os.strerror(code)), dest)
        return count
