"""``exec`` into a running task, served by its log pump (the pump is in the unit's cgroup).

A command run this way is a child of the pump, so it lives in the task's cgroup (its limits
apply, ``destroy`` kills it), gets the task's environment and working directory, and ends with
the task. The protocol, on an abstract ``SOCK_SEQPACKET`` socket named by the runtime
(``--exec-socket``; unix(7) abstract namespace, so no path length limit):

1. the client connects; the pump accepts only its own uid or root (``SO_PEERCRED``);
2. the client sends one packet: the argv, NUL-separated, with descriptors attached
   (``SCM_RIGHTS``): either one, the write end of the pipe that gets the command's stdout and
   stderr (``exec``), or three, the command's stdin, stdout and stderr (``exec_interactive``);
   when these three are one terminal (a pty slave) the command gets it as its controlling
   terminal;
3. the pump forks the command (own process group, or with a terminal its own session; default
   signals, the workload's uid and gid, ``execvpe`` with the task's ``PATH``: 127 when not
   found, 126 when not executable, with a message on its stderr), answers a three-descriptor
   request with the packet ``started`` (a pump older than these requests closes the connection
   instead, having run nothing) and, when the command ends, sends one packet: the exit code as
   ASCII digits (128 + N when killed by signal N), then closes the connection;
4. a client that closes the connection first (cancelled, timed out) gets its command's process
   group killed with SIGKILL.

Stdlib C modules only (``_socket``), as the rest of the pump.
"""

from __future__ import annotations

import _socket
import errno as errno_module
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal as sig
    from collections.abc import Callable

    from wri_plugins.process.pathexec import execvpe
else:
    import _signal as sig

    try:  # the pump: the process runtime's directory is on sys.path (see run_pump)
        from pathexec import execvpe
    except ImportError:  # imported as wri_plugins.systemd.execserver by the runtime or tests
        from wri_plugins.process.pathexec import execvpe

REQUEST_MAX = 65536  # bytes of one request packet (the argv)
#: The packet that acknowledges a three-descriptor request once its command is forked.
STARTED = b"started"
_UCRED = 12  # sizeof(struct ucred): pid, uid, gid


def encode_request(argv: list[str] | tuple[str, ...]) -> bytes:
    """The request packet for ``argv`` (see the module docstring).

    Raises:
        ValueError: empty argv, an argument containing NUL, or more than 64 KiB.
    """
    if not argv or any("\0" in arg for arg in argv):
        raise ValueError("exec needs a non-empty argv without NUL characters")
    data = b"\0".join(os.fsencode(arg) for arg in argv)
    if len(data) > REQUEST_MAX:
        raise ValueError(f"exec argv longer than {REQUEST_MAX} bytes")
    return data


def _take_terminal(fd: int) -> None:
    """In a command's child: lead a new session with the terminal ``fd`` as its controlling
    terminal (as login_tty(3))."""
    import fcntl  # only in an interactive exec's child: C modules, as the rest
    import termios

    os.setsid()
    fcntl.ioctl(fd, termios.TIOCSCTTY, 0)


class ExecServer:
    """The pump's side: accepts requests, runs commands, reports their exit codes.

    Args:
        name: the abstract socket name (without the leading NUL).
        env: the task's environment for the commands.
        setup: called in each command's child before ``execvpe`` (resets signals, switches to
            the workload's user); an ``OSError`` from it fails the command with 126.
    """

    def __init__(self, name: str, env: dict[bytes, bytes], setup: Callable[[], None]) -> None:
        self.env = env
        self._setup = setup
        self.listener: _socket.socket | None = _socket.socket(
            _socket.AF_UNIX, _socket.SOCK_SEQPACKET | _socket.SOCK_CLOEXEC | _socket.SOCK_NONBLOCK
        )
        try:
            self.listener.bind("\0" + name)
            self.listener.listen(16)
        except OSError:
            self.listener.close()
            raise
        self.conns: dict[int, _socket.socket] = {}  # fd -> connection
        self.children: dict[int, int] = {}  # command pid -> connection fd
        self._by_conn: dict[int, int] = {}  # connection fd -> command pid

    def fds(self) -> list[int]:
        """Descriptors to poll for input: the listener and every open connection."""
        listening = [self.listener.fileno()] if self.listener is not None else []
        return listening + list(self.conns)

    def handle(self, fd: int) -> None:
        """Process input on ``fd`` (one of :meth:`fds`)."""
        if self.listener is not None and fd == self.listener.fileno():
            self._accept()
            return
        conn = self.conns.get(fd)
        if conn is None:
            return
        pid = self._by_conn.get(fd)
        if pid is None:
            self._request(fd, conn)
            return
        try:
            data = conn.recv(16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # the client left before its command ended
            self._drop(fd)
            try:
                os.killpg(pid, sig.SIGKILL)
            except OSError:
                pass

    def _accept(self) -> None:
        assert self.listener is not None
        try:
            fd, _address = self.listener._accept()  # type: ignore[attr-defined]
        except OSError:
            return
        conn = _socket.socket(fileno=fd)
        conn.setblocking(False)
        creds = conn.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED)
        uid = int.from_bytes(creds[4:8], sys.byteorder)
        if uid not in (0, os.getuid()):
            conn.close()
            return
        self.conns[fd] = conn

    def _request(self, fd: int, conn: _socket.socket) -> None:
        try:
            data, ancillary, _flags, _addr = conn.recvmsg(
                REQUEST_MAX, _socket.CMSG_SPACE(3 * 4), _socket.MSG_CMSG_CLOEXEC
            )
        except BlockingIOError:
            return
        except OSError:
            data, ancillary = b"", []
        fds = [
            int.from_bytes(cdata[i : i + 4], sys.byteorder)
            for level, kind, cdata in ancillary
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
            for i in range(0, len(cdata) - len(cdata) % 4, 4)
        ]
        argv = [os.fsdecode(arg) for arg in data.split(b"\0")] if data else []
        if len(fds) not in (1, 3) or not argv or not argv[0]:
            for extra in fds:
                os.close(extra)
            self._drop(fd)
            return
        pid = self._spawn(argv, fds)
        for extra in fds:
            os.close(extra)
        self.children[pid] = fd
        self._by_conn[fd] = pid
        if len(fds) == 3:
            try:
                conn.send(STARTED)
            except OSError:
                pass  # the client left: the next poll finds the connection closed

    def _spawn(self, argv: list[str], fds: list[int]) -> int:
        """Fork the command on ``fds``: ``[output]`` or ``[stdin, stdout, stderr]``."""
        stdio = fds if len(fds) == 3 else [-1, fds[0], fds[0]]
        tty = stdio[0] >= 0 and os.isatty(stdio[0])
        pid = os.fork()
        if pid == 0:
            code = 126
            try:
                for target, source in enumerate(stdio):
                    if source >= 0:
                        os.dup2(source, target)
                if tty:
                    _take_terminal(0)
                else:
                    os.setpgid(0, 0)
                self._setup()
                execvpe(argv, self.env)
            except OSError as err:
                code = 127 if err.errno == errno_module.ENOENT else 126
                try:
                    os.write(2, f"exec {argv[0]}: {os.strerror(err.errno or 0)}\n".encode())
                except OSError:
                    pass
            finally:
                os._exit(code)
        if not tty:  # (a session leader's group is its own already)
            try:
                os.setpgid(pid, pid)
            except OSError:
                pass
        return pid

    def reaped(self, pid: int, status: int) -> bool:
        """Report a command's end to its client. Returns False if ``pid`` is not a command."""
        fd = self.children.pop(pid, None)
        if fd is None:
            return False
        self._by_conn.pop(fd, None)
        conn = self.conns.get(fd)
        if conn is not None:
            if os.WIFSIGNALED(status):
                code = 128 + os.WTERMSIG(status)
            else:
                code = os.waitstatus_to_exitcode(status)
            try:
                conn.send(b"%d" % code)
            except OSError:
                pass
            self._drop(fd)
        return True

    def _drop(self, fd: int) -> None:
        conn = self.conns.pop(fd, None)
        if conn is not None:
            conn.close()

    def stop_accepting(self) -> None:
        """Close the listener (the task ended); running commands still report their end."""
        if self.listener is not None:
            self.listener.close()
            self.listener = None

    def kill_all(self) -> None:
        """SIGKILL the process group of every running command."""
        for pid in self.children:
            try:
                os.killpg(pid, sig.SIGKILL)
            except OSError:
                pass
