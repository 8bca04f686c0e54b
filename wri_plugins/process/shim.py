"""Per-task monitor ("shim") of the process runtime, in the manner of podman's conmon.

The runtime starts one shim per task as ``python -I -S run_shim.py run ...`` in a new session. The
shim detaches (forks; the runtime reaps the first process at once, so the shim is nobody's child and
outlives the agent), then:

1. forks the workload, which puts itself in its own process group and in the task's cgroups,
   switches to ``--gid`` and ``--uid`` when given (the shim runs as root then; the gid becomes
   the only supplementary group; a failure is stage ``user``),
   resets the signal dispositions Python changed and execs ``EXECUTABLE`` with the task's
   environment (read from ``--env-file``: NUL-separated ``KEY=VALUE``, so the environment is
   exactly the task's, untouched by Python's locale coercion);
2. tells the runtime on ``--report-fd`` (a socket) whether the exec worked, with both pids and
   their creation times (psutil's definition: ``btime + starttime / CLK_TCK``)::

       ok <shim pid> <shim ctime> <workload pid> <workload ctime>
       error <stage> <errno> <shim pid> <shim ctime> <workload pid> <workload ctime>

   and waits for the runtime's one-byte ack ``1``, sent once the task is persisted. Without it
   (the agent died or gave up in between) the workload is killed at once: a ``start()`` that
   did not return a handle leaves no task running;

3. forwards SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2 and SIGWINCH to the workload's
   process group, copies its stdout/stderr to ``--log`` in CRI format (see ``crilog``) with
   rotation, reaps it, kills what is left of its group and cgroups (container semantics), and
   writes ``exit.json`` in the task dir atomically (tmp + fsync + rename)::

       {"exit_code": 137, "signal": 9, "oom_killed": false, "finished_at": 1700000000.123456}

4. removes the task's cgroups (their OOM counters are in the record now).

``python -I -S run_shim.py exec [--tty 1] [--cgroup DIR]... [--uid U] [--gid G] --env-file FILE --
ARGV...`` joins the cgroups, switches to the workload's user as ``run`` does, and execs ``ARGV``
(PATH from the env file), for ``WorkloadRuntime.exec`` and ``exec_interactive``; with ``--tty``
it first makes its stdin (a pty slave) the controlling terminal of its session (it must lead
one: the runtime starts it with ``setsid``).

``python -I -S run_shim.py serve`` is a fork server (as ``multiprocessing``'s forkserver): it reads
requests from a ``SOCK_SEQPACKET`` socket on its stdin, one datagram each: the working dir and the
``run`` arguments (without ``--report-fd``), NUL-separated, with two descriptors attached
(``SCM_RIGHTS``): the report socket and the shim's stderr. For each it forks a child that enters
a new session and the working dir and runs ``run`` as a freshly started shim would. A shim then
costs a ``fork`` of this small process instead of a new interpreter: about 20 ms less per start
(measured on x86-64; far more on an ARM board). The server exits when the runtime closes the
socket; the shims it started are detached and live on.

Stdlib only, and few modules at that: every container has one shim, so its memory counts
(``_signal`` rather than ``signal``, which would import ``enum``; no ``json``, ``argparse`` or
``typing``). Errors of the shim itself go to its stderr, which the runtime points at
``<task dir>/shim.log``.
"""

from __future__ import annotations

import _socket
import os
import select
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typeshed describes `signal`; `_signal` is its C core with the same API
    import signal as sig

    from wri_plugins.process import crilog
else:
    import _signal as sig

    # imported by run_shim.py with -I -S: the package is not importable, its directory is
    if os.path.dirname(os.path.abspath(__file__)) not in sys.path:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import crilog

EXIT_RECORD = "exit.json"
#: Seconds to keep reading output after the workload ended (a process outside its group and
#: cgroups may still hold the pipes).
DRAIN_SECONDS = 2.0
#: Safety net for the main poll, milliseconds; SIGCHLD wakes the shim long before.
POLL_MS = 60_000
FORWARDED = (
    sig.SIGHUP,
    sig.SIGINT,
    sig.SIGQUIT,
    sig.SIGTERM,
    sig.SIGUSR1,
    sig.SIGUSR2,
    sig.SIGWINCH,
)
#: Seconds to wait for the runtime to acknowledge the report (it persists the task first).
ACK_SECONDS = 60.0
OOM_SCORE_ADJ = b"-999"  # as conmon: keep the monitor alive to record the workload's end


def _proc_ctime(pid: int, btime: float, ticks: int) -> float:
    """Creation time of ``pid`` (seconds since the epoch), as psutil computes it."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2 :].split()
    return btime + int(fields[19]) / ticks  # field 22 "starttime"; fields[0] is field 3


def _boot_time() -> float:
    with open("/proc/stat", "rb") as f:
        for line in f:
            if line.startswith(b"btime "):
                return float(line.split()[1])
    raise OSError("no btime in /proc/stat")


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _join_cgroups(cgroups: list[str]) -> None:
    pid = b"%d" % os.getpid()
    for directory in cgroups:
        fd = os.open(os.path.join(directory, "cgroup.procs"), os.O_WRONLY)
        try:
            os.write(fd, pid)
        finally:
            os.close(fd)


def _read_env(path: str) -> dict[bytes, bytes]:
    env = {}
    for item in _read_file(path).split(b"\0"):
        if item:
            key, _, value = item.partition(b"=")
            env[key] = value
    return env


def _reset_signals() -> None:
    """Undo what Python and the shim changed (as subprocess's ``restore_signals``) and unblock
    every signal, so the workload starts with default dispositions and an empty mask."""
    sig.set_wakeup_fd(-1)
    for signum in (sig.SIGPIPE, sig.SIGXFSZ, sig.SIGCHLD, *FORWARDED):
        sig.signal(signum, sig.SIG_DFL)
    sig.pthread_sigmask(sig.SIG_SETMASK, [])


def _oom_killed(cgroups: list[str], killed_by: int | None) -> bool:
    """Whether the OOM killer acted in any of the task's cgroups.

    cgroup v2 ``memory.events`` and cgroup v1 ``memory.oom_control`` (Linux >= 4.13) count
    ``oom_kill``; older v1 kernels only have ``memory.failcnt``, which is trusted when the
    workload died of SIGKILL.
    """
    for directory in cgroups:
        for name in ("memory.events", "memory.oom_control"):
            try:
                text = _read_file(os.path.join(directory, name))
            except OSError:
                continue
            for line in text.splitlines():
                key, _, value = line.partition(b" ")
                if key == b"oom_kill":
                    if int(value) > 0:
                        return True
                    break
            else:
                if killed_by == sig.SIGKILL:
                    try:
                        failcnt = _read_file(os.path.join(directory, "memory.failcnt"))
                    except OSError:
                        continue
                    if int(failcnt or b"0") > 0:
                        return True
    return False


def _kill_leftovers(pgid: int, cgroups: list[str]) -> None:
    try:
        os.killpg(pgid, sig.SIGKILL)
    except OSError:
        pass
    for directory in cgroups:
        try:
            pids = _read_file(os.path.join(directory, "cgroup.procs")).split()
        except OSError:
            continue
        for pid in pids:
            try:
                os.kill(int(pid), sig.SIGKILL)
            except OSError:
                pass


def _remove_cgroups(cgroups: list[str]) -> None:
    """Remove the task's cgroups once its end is recorded, so none is left behind even if the
    agent never calls ``destroy``; retries for up to 1 s while killed processes finish exiting."""
    for _attempt in range(20):
        busy = []
        for directory in cgroups:
            try:
                os.rmdir(directory)
            except FileNotFoundError:
                pass
            except OSError:
                busy.append(directory)
        if not busy:
            return
        cgroups = busy
        time.sleep(0.05)
    sys.stderr.write(f"shim: cgroups still busy, left for destroy: {cgroups}\n")


def _write_exit_record(task_dir: str, status: int, cgroups: list[str]) -> None:
    if os.WIFSIGNALED(status):
        signum: int | None = os.WTERMSIG(status)
        code = 128 + os.WTERMSIG(status)
    else:
        signum = None
        code = os.waitstatus_to_exitcode(status)
    oom = _oom_killed(cgroups, signum)
    text = (
        f'{{"exit_code": {code}, "signal": {"null" if signum is None else signum}, '
        f'"oom_killed": {"true" if oom else "false"}, "finished_at": {time.time():.6f}}}\n'
    )
    path = os.path.join(task_dir, EXIT_RECORD)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(task_dir, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


#: What the workload child sets up: cgroups, oom_score_adj, then uid and gid (-1: keep).
Setup = tuple[list[str], bytes, int, int]


def _switch_user(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` (-1: keep), the gid also the only supplementary group."""
    if gid >= 0 or uid >= 0:
        os.setgroups([gid if gid >= 0 else os.getgid()])
    if gid >= 0:
        os.setgid(gid)
    if uid >= 0:
        os.setuid(uid)


def _child(
    argv: list[str],
    env: dict[bytes, bytes],
    setup: Setup,
    pipes: tuple[int, int, int],
) -> None:
    """In the forked child: set up and exec the workload; never returns."""
    cgroups, oom_score_adj, uid, gid = setup
    out_w, err_w, status_w = pipes
    stage = b"setup"
    try:
        os.setpgid(0, 0)
        stage = b"cgroup"
        _join_cgroups(cgroups)
        stage = b"setup"
        try:
            with open("/proc/self/oom_score_adj", "wb") as f:
                f.write(oom_score_adj)
        except OSError:
            pass
        stage = b"user"
        _switch_user(uid, gid)
        stage = b"setup"
        _reset_signals()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out_w, 1)
        os.dup2(err_w, 2)
        stage = b"exec"
        os.execve(argv[0], argv[1:], env)
    except OSError as err:
        os.write(status_w, b"%s %d" % (stage, err.errno or 0))
        os._exit(127 if stage == b"exec" and err.errno == 2 else 126)
    except BaseException:
        os.write(status_w, b"setup 0")
        os._exit(126)


def _start(argv: list[str], env: dict[bytes, bytes], setup: Setup) -> tuple[int, bytes, list[int]]:
    """Fork the workload; return its pid, the failure (``b""`` if it exec'd) and its pipes."""
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    status_r, status_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child(argv, env, setup, (out_w, err_w, status_w))
    for fd in (out_w, err_w, status_w):
        os.close(fd)
    try:
        os.setpgid(pid, pid)
    except OSError:
        pass  # the child did it already, or exec'd
    failure = b""
    while True:
        chunk = os.read(status_r, 64)
        if not chunk:
            break
        failure += chunk
    os.close(status_r)
    return pid, failure, [out_r, err_r]


def _monitor(
    pid: int, fds: list[int], wake_r: int, log: crilog.LogWriter, cgroups: list[str]
) -> tuple[int, int]:
    """Copy output to the log until the workload ended and its pipes drained.

    Returns:
        ``(wait status, number of output fds cut at the drain deadline)``.
    """
    poller = select.poll()
    output = crilog.OutputCopier(fds[0], fds[1], log)
    for fd in (*fds, wake_r):
        poller.register(fd, select.POLLIN)
    status: int | None = None
    deadline = 0.0
    while True:
        if status is None:
            reaped, wstatus = os.waitpid(pid, os.WNOHANG)
            if reaped:
                status = wstatus
                _kill_leftovers(pid, cgroups)
                deadline = time.monotonic() + DRAIN_SECONDS
        if status is not None:
            left = deadline - time.monotonic()
            if not output.open_fds or left <= 0:
                break
            timeout = int(left * 1000) + 1
        else:
            timeout = POLL_MS
        for fd, _event in poller.poll(timeout):
            if fd == wake_r:
                os.read(wake_r, 512)
            elif not output.copy(fd):
                poller.unregister(fd)
        output.write()
    assert status is not None
    return status, output.finish()


def _parse(args: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    opts: dict[str, list[str]] = {"--cgroup": []}
    while args and args[0] != "--":
        opts.setdefault(args[0], []).append(args[1])
        args = args[2:]
    return opts, args[1:]


def _report(fd: int, pid: int, failure: bytes) -> bool:
    """Tell the runtime how the start went (see the module docstring) and wait for its ack.

    Returns:
        True when the runtime acknowledged (``b"1"``: it persisted the task); False when it closed
        the socket, died or did not answer in :data:`ACK_SECONDS`: the task must not live on.
    """
    try:
        btime, ticks = _boot_time(), os.sysconf("SC_CLK_TCK")
        ctimes = (_proc_ctime(os.getpid(), btime, ticks), _proc_ctime(pid, btime, ticks))
    except (OSError, ValueError, IndexError):
        ctimes = (0.0, 0.0)  # the runtime then cannot guard against pid reuse
    pids = b"%d %.2f %d %.2f" % (os.getpid(), ctimes[0], pid, ctimes[1])
    try:
        os.write(fd, (b"error %s %s\n" % (failure, pids)) if failure else b"ok %s\n" % pids)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        ack = os.read(fd, 1) if poller.poll(int(ACK_SECONDS * 1000)) else b""
    except OSError:
        ack = b""
    os.close(fd)
    return ack == b"1"


def run(opts: dict[str, list[str]], argv: list[str]) -> int:
    """The ``run`` command: start and monitor one workload (see the module docstring)."""
    if os.fork():
        os._exit(0)  # the runtime reaps this one; the shim is reparented to init
    try:
        with open("/proc/self/comm", "wb") as f:
            f.write(b"florete-shim")  # what ps and top show
    except OSError:
        pass
    report = int(opts["--report-fd"][0])
    os.set_inheritable(report, False)
    task_dir = opts["--task-dir"][0]
    cgroups = opts["--cgroup"]
    env = _read_env(opts["--env-file"][0])
    try:
        oom_score_adj = _read_file("/proc/self/oom_score_adj").strip()
        with open("/proc/self/oom_score_adj", "wb") as f:
            f.write(OOM_SCORE_ADJ)
    except OSError:
        oom_score_adj = b"0"
    log = crilog.LogWriter(
        opts["--log"][0], int(opts["--log-max-bytes"][0]), int(opts["--log-max-files"][0])
    )
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    sig.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    sig.signal(sig.SIGCHLD, lambda _s, _f: None)
    uid, gid = int(opts.get("--uid", ["-1"])[0]), int(opts.get("--gid", ["-1"])[0])
    pid, failure, fds = _start(argv, env, (cgroups, oom_score_adj, uid, gid))

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(pid, signum)
        except OSError:
            pass

    for signum in FORWARDED:
        sig.signal(signum, forward)
    # before any waitpid: the child's /proc entry still exists
    if not _report(report, pid, failure):
        _kill_leftovers(pid, cgroups)  # the runtime did not take the task: nobody would own it
    if failure:
        stage, _, errno = failure.partition(b" ")
        reason = os.strerror(int(errno)) if int(errno) else "failed"
        message = f"{argv[1]}: {stage.decode()}: {reason}".encode()
        stamp = crilog.format_timestamp(time.time_ns())
        log.write([crilog.format_record(stamp, b"stderr", False, message)])
    try:
        status, cut = _monitor(pid, fds, wake_r, log, cgroups)
    except Exception:  # a bug in the copying must not lose the exit status
        import traceback  # only on this path: it costs memory

        traceback.print_exc()
        for fd in fds:
            try:
                os.close(fd)  # the workload's further output fails with EPIPE
            except OSError:
                pass
        status, cut = os.waitpid(pid, 0)[1], 0
    if cut:
        sys.stderr.write(f"shim: {cut} output pipe(s) still open {DRAIN_SECONDS}s after exit\n")
    _write_exit_record(task_dir, status, cgroups)
    _remove_cgroups(cgroups)
    return 0


def exec_command(opts: dict[str, list[str]], argv: list[str]) -> int:
    """The ``exec`` command: join the cgroups and exec ``argv``; 127/126 when that fails."""
    if TYPE_CHECKING:
        from wri_plugins.process.pathexec import execvpe
    else:
        from pathexec import execvpe  # top-level as crilog; not in a running shim, to spare memory

    env = _read_env(opts["--env-file"][0])
    if "--tty" in opts:
        import fcntl  # only here: C modules, but no shim but an interactive exec needs them
        import termios

        try:
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        except OSError as err:
            sys.stderr.write(f"{argv[0]}: cannot take the terminal: {err.strerror}\n")
            return 126
    try:
        _join_cgroups(opts["--cgroup"])
    except OSError as err:
        sys.stderr.write(f"{argv[0]}: cannot join the task's cgroup: {err.strerror}\n")
        return 126
    try:
        _switch_user(int(opts.get("--uid", ["-1"])[0]), int(opts.get("--gid", ["-1"])[0]))
    except OSError as err:
        sys.stderr.write(f"{argv[0]}: cannot switch to the workload's user: {err.strerror}\n")
        return 126
    _reset_signals()
    try:
        execvpe(argv, env)
    except OSError as err:
        sys.stderr.write(f"{argv[0]}: {err.strerror}\n")
        return 127 if err.errno == 2 else 126
    return 126  # not reached: execvpe execs or raises


#: Largest request the fork server accepts, bytes (a request carries one task's arguments).
REQUEST_MAX = 1 << 20


def serve(control_fd: int) -> int:
    """The ``serve`` command: fork a shim for each request (see the module docstring)."""
    control = _socket.socket(fileno=control_fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    fd_size = _socket.CMSG_SPACE(2 * 4)
    while True:
        try:
            data, ancillary, _flags, _addr = control.recvmsg(
                REQUEST_MAX, fd_size, _socket.MSG_CMSG_CLOEXEC
            )
        except InterruptedError:
            continue
        if not data:
            return 0  # the runtime closed its end: its agent stopped
        fds = [
            int.from_bytes(payload[i : i + 4], sys.byteorder)
            for level, kind, payload in ancillary
            if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS
            for i in range(0, len(payload) - len(payload) % 4, 4)
        ]
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            sys.stderr.write(f"shim server: request with {len(fds)} descriptors, not 2\n")
            continue
        report, errors = fds
        pid = os.fork()
        if pid == 0:
            os._exit(_serve_child(control, devnull, report, errors, data))
        os.close(report)
        os.close(errors)
        os.waitpid(pid, 0)  # it forks the shim proper and exits at once


def _serve_child(
    control: _socket.socket, devnull: int, report: int, errors: int, data: bytes
) -> int:
    """In a fork of the server: become a freshly started ``run`` shim."""
    try:
        control.close()
        os.setsid()
        cwd, *args = [item.decode("utf-8", "surrogateescape") for item in data.split(b"\0")]
        os.dup2(devnull, 0)
        os.dup2(devnull, 1)
        os.dup2(errors, 2)
        for fd in (devnull, errors):
            if fd > 2:
                os.close(fd)
        os.chdir(cwd)
        opts, argv = _parse(args)
        opts["--report-fd"] = [str(report)]
        return run(opts, argv)
    except BaseException:
        import traceback  # only on this path: it costs memory

        traceback.print_exc()
        return 1


def main(args: list[str]) -> int:
    """Entry point: ``run``, ``exec`` or ``serve`` (see the module docstring)."""
    command, rest = args[0], args[1:]
    if command == "serve":
        return serve(0)
    opts, argv = _parse(rest)
    if command == "run":
        return run(opts, argv)
    if command == "exec":
        return exec_command(opts, argv)
    sys.stderr.write(f"shim: unknown command {command!r}\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
