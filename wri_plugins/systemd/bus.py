"""D-Bus access to one systemd manager (org.freedesktop.systemd1(5)) with dbus-fast.

dbus-fast is imported inside the functions that connect, never at module import: the agent
imports every runtime at start, and one without systemd must not pay for the library.

Connections live only while an operation uses them. :meth:`SystemdBus.session` hands out one
shared connection to every concurrent operation of a runtime (twenty starts at once share it) and
closes it when the last one leaves, so no socket outlives the operations of a runtime that is
dropped without :meth:`close`, and a manager that went away is simply reconnected to by the next
operation. A connection costs about 1 ms on a local socket (authentication and ``Hello``).

Only message buses are supported (dbus-daemon or dbus-broker: the system bus, or the user bus at
``$XDG_RUNTIME_DIR/bus``): systemd's peer-to-peer socket (``/run/systemd/private``) does not
answer the ``Hello`` call that dbus-fast's ``MessageBus.connect`` always makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from agent.errors import RuntimeUnavailableError, WorkloadError
from wri_plugins.systemd.units import MANAGER_PATH, Property

if TYPE_CHECKING:
    from dbus_fast import Message
    from dbus_fast.aio import MessageBus

_log = logging.getLogger(__name__)

SYSTEMD = "org.freedesktop.systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
PROPERTIES = "org.freedesktop.DBus.Properties"
SYSTEM_BUS = "unix:path=/run/dbus/system_bus_socket"
CONNECT_TIMEOUT = 5.0  # seconds to connect and authenticate
CALL_TIMEOUT = 25.0  # seconds a method call may take (libdbus's default reply timeout)

#: D-Bus error names the runtime tells apart.
NO_SUCH_UNIT = "org.freedesktop.systemd1.NoSuchUnit"
UNIT_EXISTS = "org.freedesktop.systemd1.UnitExists"
NO_SUCH_PROCESS = "org.freedesktop.systemd1.NoSuchProcess"
_SPAWN = "org.freedesktop.DBus.Error.Spawn."
#: Errors from the bus itself that mean systemd is not there (not running, or gone meanwhile).
_UNREACHABLE = frozenset(
    "org.freedesktop.DBus.Error." + name
    for name in ("ServiceUnknown", "NameHasNoOwner", "NoReply", "Disconnected", "TimedOut")
)


class SystemdCallError(WorkloadError):
    """systemd answered a method call with a D-Bus error.

    Attributes:
        name: the D-Bus error name, e.g. ``"org.freedesktop.systemd1.NoSuchUnit"``.
    """

    def __init__(self, name: str, message: str) -> None:
        super().__init__(message)
        self.name = name


def resolve_address(
    bus: str,
    bus_address: str | None,
    env: Mapping[str, str],
    *,
    booted: bool,
    uid: int,
) -> tuple[str, str]:
    """Choose the bus to reach systemd on.

    Args:
        bus: ``"system"``, ``"user"`` or ``"auto"`` (the system bus when the host was booted
            with systemd and we are root, else the user bus).
        bus_address: an explicit D-Bus address (``unix:path=...``) that overrides the choice of
            socket; ``bus`` then only names the kind.
        env: the environment (``DBUS_SYSTEM_BUS_ADDRESS``, ``XDG_RUNTIME_DIR``).
        booted: the host runs systemd as PID 1 (sd_booted(3): ``/run/systemd/system`` exists).
        uid: our user id.

    Returns:
        ``(address, kind)`` with ``kind`` ``"system"`` or ``"user"``.

    Raises:
        ValueError: ``bus`` is none of the three.
    """
    if bus not in ("system", "user", "auto"):
        raise ValueError(f"bus must be system, user or auto, not {bus!r}")
    kind = bus if bus != "auto" else ("system" if booted and uid == 0 else "user")
    if bus_address:
        return bus_address, kind
    if kind == "system":
        return env.get("DBUS_SYSTEM_BUS_ADDRESS") or SYSTEM_BUS, kind
    runtime_dir = env.get("XDG_RUNTIME_DIR") or f"/run/user/{uid}"
    return f"unix:path={runtime_dir}/bus", kind


def booted() -> bool:
    """sd_booted(3): whether this host was booted with systemd as PID 1."""
    return os.path.isdir("/run/systemd/system")


class Watch:
    """Wakes a waiter whenever systemd reports a property change of one unit."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Called for each ``PropertiesChanged`` signal of the unit."""
        self._event.set()

    async def changed(self, at_most: float) -> None:
        """Return after the next change (or one since the last call), at most ``at_most`` s."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(at_most):
                await self._event.wait()
        self._event.clear()


class Connection:
    """One authenticated connection to the bus, with systemd's signals routed to watches."""

    def __init__(self, bus: MessageBus, address: str) -> None:
        self.bus = bus
        self.address = address
        self.loop = asyncio.get_running_loop()
        self.users = 0  # operations using it now (see SystemdBus.session)
        self._watches: dict[str, set[Watch]] = {}
        self._subscribed = False
        bus.add_message_handler(self._on_message)

    @property
    def connected(self) -> bool:
        """The connection is still up."""
        return bool(self.bus.connected)

    def _on_message(self, msg: Message) -> None:
        if msg.member == "PropertiesChanged" and msg.path in self._watches:
            for watch in self._watches[msg.path]:
                watch.notify()

    async def call(
        self,
        member: str,
        signature: str = "",
        body: Sequence[Any] = (),
        *,
        path: str = MANAGER_PATH,
        interface: str = MANAGER,
        destination: str = SYSTEMD,
    ) -> list[Any]:
        """Call a method and return the reply's body.

        Raises:
            SystemdCallError: systemd answered with an error.
            RuntimeUnavailableError: the connection broke, no reply came in 25 s, or the bus says
                systemd is not on it.
        """
        from dbus_fast import Message, MessageFlag, MessageType
        from dbus_fast.errors import DBusFastError

        if not self.connected:
            # dbus-fast would still write to the dead socket and leave the error of that write
            # in a future nobody reads (asyncio logs "Future exception was never retrieved")
            raise RuntimeUnavailableError(f"lost the D-Bus connection to systemd at {self.address}")
        message = Message(
            destination=destination,
            path=path,
            interface=interface,
            member=member,
            signature=signature,
            body=list(body),
            flags=MessageFlag.NO_AUTOSTART,  # a bus must not try to start systemd for us
        )
        try:
            async with asyncio.timeout(CALL_TIMEOUT):
                reply = await self.bus.call(message)
        except TimeoutError:
            raise RuntimeUnavailableError(
                f"systemd did not answer {member} within {CALL_TIMEOUT:.0f}s"
            ) from None
        except (OSError, EOFError, DBusFastError) as err:
            raise RuntimeUnavailableError(f"lost the D-Bus connection to systemd: {err}") from err
        if reply is None:
            raise RuntimeUnavailableError("lost the D-Bus connection to systemd")
        if reply.message_type == MessageType.ERROR:
            text = reply.body[0] if reply.body else reply.error_name
            if reply.error_name in _UNREACHABLE or str(reply.error_name).startswith(_SPAWN):
                raise RuntimeUnavailableError(f"systemd is not on the bus: {text}")
            raise SystemdCallError(str(reply.error_name), f"{member}: {text}")
        return list(reply.body)

    async def properties(self, path: str, interface: str = "") -> dict[str, Any]:
        """``GetAll`` of an object; the empty interface means every interface of it.

        Returns:
            Property name -> plain value (variants unwrapped).
        """
        (values,) = await self.call("GetAll", "s", [interface], path=path, interface=PROPERTIES)
        return {name: variant.value for name, variant in values.items()}

    async def manager_credentials(self) -> tuple[int, int | None]:
        """The user and process of systemd on this bus, from the bus daemon's
        ``GetConnectionCredentials`` of ``org.freedesktop.systemd1`` (D-Bus specification,
        "Message Bus Messages").

        Returns:
            ``(uid, pid)`` of the manager; pid None when the bus does not say.

        Raises:
            RuntimeUnavailableError: systemd is not on the bus, or the bus is gone.
            WorkloadError: the bus answered without a ``UnixUserID``.
        """
        (creds,) = await self.call(
            "GetConnectionCredentials",
            "s",
            [SYSTEMD],
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            destination="org.freedesktop.DBus",
        )
        if "UnixUserID" not in creds:
            raise WorkloadError("the bus does not tell which user runs systemd")
        pid = creds.get("ProcessID")
        return int(creds["UnixUserID"].value), int(pid.value) if pid is not None else None

    async def start_transient(self, name: str, properties: Sequence[Property]) -> str:
        """``StartTransientUnit(name, "fail", properties, [])``; returns the job's object path.

        Raises:
            SystemdCallError: systemd refused (e.g. ``UnitExists``, a bad property).
        """
        from dbus_fast import Variant

        props = [[key, Variant(sig, value)] for key, sig, value in properties]
        (job,) = await self.call(
            "StartTransientUnit", "ssa(sv)a(sa(sv))", [name, "fail", props, []]
        )
        return str(job)

    async def _match(self, method: str, rule: str) -> None:
        await self.call(
            method,
            "s",
            [rule],
            path="/org/freedesktop/DBus",
            interface="org.freedesktop.DBus",
            destination="org.freedesktop.DBus",
        )

    @contextlib.asynccontextmanager
    async def watch(self, path: str) -> AsyncIterator[Watch]:
        """Watch the unit at ``path`` for property changes while the context is open.

        Adds a match rule for the unit's ``PropertiesChanged`` signals (removed when the last
        watch of the unit closes) and subscribes to systemd's signals once per connection
        (``Manager.Subscribe``). Open it before reading the unit's state, so no change between
        the read and the wait is missed.
        """
        rule = (
            f"type='signal',sender='{SYSTEMD}',path='{path}',"
            f"interface='{PROPERTIES}',member='PropertiesChanged'"
        )
        watch = Watch()
        first = path not in self._watches
        self._watches.setdefault(path, set()).add(watch)
        try:
            if first:
                await self._match("AddMatch", rule)
            if not self._subscribed:
                self._subscribed = True
                await self.call("Subscribe")
            yield watch
        finally:
            watches = self._watches.get(path, set())
            watches.discard(watch)
            if not watches:
                self._watches.pop(path, None)
                if self.connected:
                    with contextlib.suppress(WorkloadError, RuntimeUnavailableError):
                        await self._match("RemoveMatch", rule)

    async def close(self) -> None:
        """Disconnect and wait (at most 1 s) until the socket is closed."""
        self.bus.disconnect()
        with contextlib.suppress(Exception):  # an unexpected end is fine: we are leaving
            async with asyncio.timeout(1.0):
                await self.bus.wait_for_disconnect()  # type: ignore[no-untyped-call]


class SystemdBus:
    """Connections to one manager's bus, shared by the operations running at the same time.

    Args:
        address: the D-Bus address, e.g. ``"unix:path=/run/user/0/bus"``.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self._conn: Connection | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[Connection]:
        """A connection for the duration of the context (shared; closed after the last user).

        Raises:
            RuntimeUnavailableError: no bus at the address, connection refused, authentication
                refused, or no answer within 5 s (the message says which).
        """
        conn = await self._acquire()
        try:
            yield conn
        finally:
            conn.users -= 1
            if conn.users == 0:
                if self._conn is conn:
                    self._conn = None
                await conn.close()

    async def _acquire(self) -> Connection:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
            self._conn = None  # a connection of another (closed) loop is dead
        async with self._lock:
            if self._conn is None or not self._conn.connected:
                self._conn = await self._connect()
            self._conn.users += 1
            return self._conn

    async def _connect(self) -> Connection:
        where = self.address.removeprefix("unix:path=")
        if where != self.address and not await asyncio.to_thread(os.path.exists, where):
            # checked before importing dbus_fast: a host without the bus pays no memory for it
            raise RuntimeUnavailableError(f"no D-Bus socket at {where}")
        from dbus_fast.aio import MessageBus
        from dbus_fast.errors import AuthError, DBusFastError

        try:
            bus = MessageBus(bus_address=self.address)
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await bus.connect()
        except FileNotFoundError:
            raise RuntimeUnavailableError(f"no D-Bus socket at {where}") from None
        except ConnectionRefusedError:
            raise RuntimeUnavailableError(f"nothing listens on the D-Bus socket {where}") from None
        except PermissionError:
            raise RuntimeUnavailableError(
                f"no permission to open the D-Bus socket {where}"
            ) from None
        except AuthError as err:
            raise RuntimeUnavailableError(
                f"the bus at {where} refused uid {os.getuid()}: {err}"
            ) from err
        except TimeoutError:
            raise RuntimeUnavailableError(
                f"the bus at {where} did not answer within {CONNECT_TIMEOUT:.0f}s"
            ) from None
        except (OSError, EOFError, DBusFastError) as err:  # e.g. InvalidAddressError
            raise RuntimeUnavailableError(
                f"cannot connect to the bus {self.address}: {err}"
            ) from err
        return Connection(bus, self.address)
