"""One SSH connection to the phone (Termux's sshd), opened on demand and shared.

asyncssh is imported on first connect, never at agent start (it costs about 37 MB). The host key
is always checked against ``known_hosts`` (the option, or ``~/.ssh/known_hosts``); a key that is
not there fails the connection, it is never accepted blindly. ``~/.ssh/config`` is not read: the
runtime's options alone say where and how to connect.

Each helper command is one SSH session on the connection. OpenSSH's sshd allows 10 sessions per
connection (``MaxSessions``), so at most ``max_sessions`` run at once and the others queue. After
connecting, the helper is installed (an atomic rename: tasks that run it are not disturbed).

Every failure to reach the phone — refused, timed out, host key not trusted, login refused, the
connection lost — raises :class:`RuntimeUnavailableError`; the connection is then dropped and the
next call connects again. Callers that queue behind a failing connect get its error instead of
trying again at once, so an unreachable phone costs one ``connect_timeout`` per round, not one
per caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.errors import RuntimeUnavailableError
from wri_plugins.android import commands

if TYPE_CHECKING:
    import asyncssh

_log = logging.getLogger(__name__)

KEEPALIVE_INTERVAL = 15.0  # seconds between SSH keepalives on an idle connection
KEEPALIVE_COUNT = 3  # unanswered keepalives before the connection counts as lost
OPEN_ATTEMPTS = 8  # tries to open a session that sshd refuses
OPEN_BACKOFF = 0.05  # seconds, times the attempt number, between those tries


@dataclass(frozen=True)
class Target:
    """Where the phone's sshd is and how to log in.

    Attributes:
        host: address or name of the phone.
        port: sshd's TCP port (Termux: 8022).
        user: login name; empty for the local user's (Termux's sshd takes any name).
        key_file: private key file; empty for the default keys and ssh-agent.
        known_hosts: OpenSSH known_hosts file holding the phone's host key; empty for
            ``~/.ssh/known_hosts``.
        connect_timeout: seconds to connect and log in.
        command_timeout: seconds one helper command may take.
        max_sessions: helper commands run at once on the connection.
        base: the phone's directory for the runtime, as a shell word (``commands.base_expr``).
    """

    host: str
    port: int
    user: str
    key_file: str
    known_hosts: str
    connect_timeout: float
    command_timeout: float
    max_sessions: int
    base: str

    @property
    def where(self) -> str:
        """``host:port`` for messages."""
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class Completed:
    """A finished helper command: exit status (128 + N when killed by signal N) and output."""

    exit_status: int
    stdout: bytes
    stderr: bytes

    @property
    def message(self) -> str:
        """The helper's message (stderr), or a fallback naming the exit status."""
        text = self.stderr.decode(errors="replace").strip()
        return text or f"the helper on the phone exited with status {self.exit_status}"


def _asyncssh() -> Any:
    """Import asyncssh (lazily).

    Raises:
        RuntimeUnavailableError: it is not installed.
    """
    try:
        import asyncssh
    except ImportError as err:
        raise RuntimeUnavailableError(
            "asyncssh is not installed: pip install 'florete-agent[android]'"
        ) from err
    return asyncssh


class PhoneLink:
    """The shared connection; see the module docstring."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = asyncio.Lock()
        self._attempts = 0
        self._last_error: RuntimeUnavailableError | None = None
        self._sessions = asyncio.Semaphore(target.max_sessions)

    async def _connection(self) -> asyncssh.SSHClientConnection:
        attempt = self._attempts
        async with self._lock:
            conn = self._conn
            if conn is not None and not conn.is_closed():
                return conn
            if self._attempts != attempt and self._last_error is not None:
                raise RuntimeUnavailableError(self._last_error.message)
            self._attempts += 1
            try:
                self._conn = await self._connect()
            except RuntimeUnavailableError as err:
                self._last_error = err
                raise
            self._last_error = None
            return self._conn

    async def _connect(self) -> asyncssh.SSHClientConnection:
        ssh = _asyncssh()
        t = self.target
        options: dict[str, Any] = {
            "port": t.port,
            "config": None,
            "known_hosts": t.known_hosts or (),
            "keepalive_interval": KEEPALIVE_INTERVAL,
            "keepalive_count_max": KEEPALIVE_COUNT,
        }
        if t.user:
            options["username"] = t.user
        if t.key_file:
            options["client_keys"] = [t.key_file]
        conn: asyncssh.SSHClientConnection | None = None
        try:
            async with asyncio.timeout(t.connect_timeout):
                conn = await ssh.connect(t.host, **options)
                install = await conn.run(
                    commands.install_command(t.base),
                    input=commands.HELPER_TEXT,
                    encoding=None,
                    check=False,
                )
        except TimeoutError:
            _close(conn)
            raise RuntimeUnavailableError(
                f"phone at {t.where} did not answer within {t.connect_timeout:g}s"
            ) from None
        except ssh.HostKeyNotVerifiable as err:
            known = t.known_hosts or "~/.ssh/known_hosts"
            raise RuntimeUnavailableError(
                f"host key of the phone at {t.where} is not trusted by {known} ({err.reason}); "
                "pair the phone (florete-agent pair ssh://...) or add its key after checking "
                "its fingerprint on the phone"
            ) from err
        except ssh.PermissionDenied as err:
            raise RuntimeUnavailableError(
                f"the phone at {t.where} refused the login of {t.user or 'the local user'} "
                f"({err.reason}); check runtimes.android.user and key_file"
            ) from err
        except (ssh.Error, OSError, ValueError) as err:
            _close(conn)
            raise RuntimeUnavailableError(f"phone at {t.where} unreachable: {_why(err)}") from err
        except asyncio.CancelledError:
            _close(conn)
            raise
        if install.exit_status != 0:
            conn.close()
            text = output_text(install.stderr) or "no message"
            raise RuntimeUnavailableError(
                f"cannot install the helper on the phone at {t.where}: {text}"
            )
        _log.info("connected to the phone at %s", t.where)
        return conn

    def _drop(self, conn: asyncssh.SSHClientConnection) -> None:
        if self._conn is conn:
            self._conn = None
        conn.close()

    async def run(self, command: str, stdin: bytes | None = None) -> Completed:
        """Run one command on the phone and wait for it (at most ``command_timeout`` s).

        Args:
            command: a shell command line (see ``commands.helper_command``).
            stdin: bytes for its standard input, or None for none.

        Returns:
            Its exit status and output.

        Raises:
            RuntimeUnavailableError: the phone cannot be reached, or did not answer in time.
        """
        ssh = _asyncssh()
        conn = await self._connection()
        async with self._sessions:
            try:
                async with asyncio.timeout(self.target.command_timeout):
                    proc = await self._open(conn, command)
                    if stdin:
                        proc.stdin.write(stdin)
                    proc.stdin.write_eof()  # also when empty: a command may read to the end
                    done = await proc.communicate()
                    exit_status, exit_signal = proc.exit_status, proc.exit_signal
            except TimeoutError:
                self._drop(conn)
                raise RuntimeUnavailableError(
                    f"phone at {self.target.where} did not answer within "
                    f"{self.target.command_timeout:g}s"
                ) from None
            except (ssh.Error, OSError) as err:
                self._drop(conn)
                raise RuntimeUnavailableError(
                    f"lost the phone at {self.target.where}: {_why(err)}"
                ) from err
        status = self.exit_code(exit_status, exit_signal)
        return Completed(status, bytes(done[0] or b""), bytes(done[1] or b""))

    def exit_code(self, status: int | None, signal: tuple[str, bool, str, str] | None) -> int:
        """A command's exit code from SSH's exit-status or exit-signal (128 + N for signal N).

        Raises:
            RuntimeUnavailableError: neither came: the connection was lost first.
        """
        if status is not None and status >= 0:
            return status
        if signal:
            return 128 + commands.signal_number(signal[0])
        raise RuntimeUnavailableError(
            f"lost the phone at {self.target.where}: the command's end was not reported"
        )

    async def _open(
        self,
        conn: asyncssh.SSHClientConnection,
        command: str,
        term_size: tuple[int, int] | None = None,
    ) -> asyncssh.SSHClientProcess[bytes]:
        """Open a session running ``command``; retried while sshd refuses it for want of a
        session slot (it frees a closed session's slot a moment after the client sees the
        close, so a burst of commands can briefly exceed ``MaxSessions``). With ``term_size``
        (columns, rows) the session gets a pseudo-terminal (RFC 4254 §6.2)."""
        ssh = _asyncssh()
        attempt = 1
        terminal: dict[str, Any] = {}
        if term_size is not None:
            terminal = {"term_type": "xterm", "term_size": term_size}
        while True:
            try:
                proc: asyncssh.SSHClientProcess[bytes] = await conn.create_process(
                    command, encoding=None, **terminal
                )
            except ssh.ChannelOpenError:
                if attempt == OPEN_ATTEMPTS or conn.is_closed():
                    raise
                await asyncio.sleep(OPEN_BACKOFF * attempt)
                attempt += 1
            else:
                return proc

    @contextlib.asynccontextmanager
    async def process(
        self, command: str, term_size: tuple[int, int] | None = None
    ) -> AsyncIterator[asyncssh.SSHClientProcess[bytes]]:
        """A command on the phone whose output the caller reads as it comes (for ``exec``).

        The session counts against ``max_sessions`` until the block ends; the channel is closed
        then. With ``term_size`` (columns, rows) it runs on a pseudo-terminal.

        Raises:
            RuntimeUnavailableError: the phone cannot be reached, or the connection was lost.
        """
        ssh = _asyncssh()
        conn = await self._connection()
        async with self._sessions:
            try:
                proc = await self._open(conn, command, term_size)
            except (ssh.Error, OSError) as err:
                self._drop(conn)
                raise RuntimeUnavailableError(
                    f"lost the phone at {self.target.where}: {_why(err)}"
                ) from err
            try:
                yield proc
            except (ssh.Error, OSError) as err:
                self._drop(conn)
                raise RuntimeUnavailableError(
                    f"lost the phone at {self.target.where}: {_why(err)}"
                ) from err
            finally:
                proc.close()

    async def close(self) -> None:
        """Close the connection (tasks on the phone keep running)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(OSError, _asyncssh().Error):
                await conn.wait_closed()


def output_text(data: bytes | str | None) -> str:
    """Output of a finished SSH process as stripped text."""
    if isinstance(data, bytes):
        return data.decode(errors="replace").strip()
    return (data or "").strip()


def _close(conn: asyncssh.SSHClientConnection | None) -> None:
    if conn is not None:
        conn.close()


def _why(err: BaseException) -> str:
    reason = getattr(err, "reason", None)
    return str(reason or err or type(err).__name__)
