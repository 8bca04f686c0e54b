"""One UDP socket bound to one interface and address family, read and written by the event loop.

Sockets are made here, because asyncio cannot set ``SO_BINDTODEVICE`` or bind an IPv6 scope
itself. They are driven with ``loop.add_reader`` rather than an asyncio datagram transport: a
readable socket is drained of up to :data:`READ_BATCH` datagrams at once (asyncio reads one per
loop iteration), and the batch goes to the owner in one call, so the ARQ above acknowledges a
burst once. Datagrams are sent with a plain non-blocking ``sendto``; one the kernel cannot take
at once (a full send buffer) is dropped, as a full NIC queue drops.

ICMP errors. Linux reports ICMP errors (port unreachable, host unreachable) on an unconnected UDP
socket only with ``IP_RECVERR`` / ``IPV6_RECVERR`` set (ip(7), ipv6(7)). They are set here so the
driver learns that a peer's port is closed; each error is then queued on the socket's error queue,
which must be drained with ``MSG_ERRQUEUE``: an undrained queue keeps ``EPOLLERR`` raised (the
loop would spin on the socket) and is charged to the receive buffer (it would crowd out data).
Every error is drained, counted and reported to the owner; nothing closes the endpoint.
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
from typing import Any

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
DatagramsHandler = Callable[["UdpEndpoint", list[tuple[bytes, Addr]]], None]
ErrorHandler = Callable[["UdpEndpoint", OSError, Addr | None], None]

READ_BATCH = 64
"""Datagrams read from a socket per readiness event at most (the rest waits for the next loop
iteration, so one busy peer cannot starve the loop)."""
MAX_DATAGRAM = 65535
"""Bytes read per datagram: a larger one than the MTU is read whole and rejected by the driver."""


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


class UdpEndpoint:
    """One bound socket in the event loop; reports datagrams and errors to its owner.

    Args:
        sock: a socket from :func:`bind_socket` (the endpoint owns it from now on).
        interface: the interface the socket is bound to.
        on_datagrams: called with ``(endpoint, [(data, source address tuple), ...])`` for the
            datagrams read at one readiness event, in arrival order.
        on_error: called with ``(endpoint, error, destination or None)`` for every ICMP or
            socket error; the destination is known for errors read from the error queue.
        on_lost: called (soon, from the loop) with the endpoint once it is closed.
    """

    def __init__(
        self,
        sock: socket.socket,
        interface: str,
        on_datagrams: DatagramsHandler,
        on_error: ErrorHandler,
        on_lost: Callable[[UdpEndpoint], None],
    ) -> None:
        self.sock = sock
        self.interface = interface
        self.family = sock.family
        name = sock.getsockname()
        self.local: Addr = tuple(name)
        self.scope_id: int = name[3] if self.family == socket.AF_INET6 else 0
        self._on_datagrams = on_datagrams
        self._on_error = on_error
        self._on_lost = on_lost
        self._log = LinkLog(log, link=f"udp/{interface}/{family_name(self.family)}")
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._loop.add_reader(sock.fileno(), self._on_readable)

    @classmethod
    async def create(
        cls,
        sock: socket.socket,
        interface: str,
        on_datagrams: DatagramsHandler,
        on_error: ErrorHandler,
        on_lost: Callable[[UdpEndpoint], None],
    ) -> UdpEndpoint:
        """Start reading a bound socket in the running loop (arguments as the constructor)."""
        return cls(sock, interface, on_datagrams, on_error, on_lost)

    @property
    def is_open(self) -> bool:
        """True until :meth:`close`."""
        return not self._closed

    def destination(self, host: str, port: int) -> Addr:
        """The ``sendto`` address of a peer on this socket (IPv6 carries this socket's scope)."""
        if self.family == socket.AF_INET6:
            return (host, port, 0, self.scope_id)
        return (host, port)

    def send(self, data: bytes, addr: Addr) -> bool:
        """Send one datagram without waiting.

        Returns:
            False when it was dropped: the endpoint is closed, the socket's send buffer is full,
            or the kernel refused it (the error is reported to ``on_error``).
        """
        if self._closed:
            return False
        try:
            self.sock.sendto(data, addr)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as err:  # EPERM from a firewall, ENETUNREACH, a pending ICMP error
            self._socket_error(err)
            return False
        return True

    def close(self) -> None:
        """Stop reading and close the socket; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self._loop.call_soon(self._on_lost, self)

    # ------------------------------------------------------------ event loop callbacks

    def _on_readable(self) -> None:
        batch: list[tuple[bytes, Addr]] = []
        recvfrom = self.sock.recvfrom
        for _ in range(READ_BATCH):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as err:  # the pending error an ICMP message left on the socket
                self._socket_error(err)
                continue
            batch.append((data, addr))
        if batch:
            self._on_datagrams(self, batch)

    def _socket_error(self, err: OSError) -> None:
        # A read returns the socket's pending error (set by an ICMP error) once, and a failed
        # sendto raises one: drain the error queue, which says which destination each ICMP
        # error is about.
        if not self._drain_error_queue():
            self._on_error(self, err, None)

    def _drain_error_queue(self) -> int:
        # Drain to EAGAIN: a read returns the pending error only once per ICMP error, and a
        # queue left non-empty without one keeps the socket readable for ever. The queue is
        # bounded by the receive buffer, so this ends.
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
