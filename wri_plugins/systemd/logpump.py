"""The main process of a task's unit: starts the workload and writes its output as a CRI log.

systemd gives a service's output to journald or to plain files; neither is the CRI log the agent
reads (one line per record with its time and stream), and this host has no journald. So the unit
runs ``python -I -S run_pump.py ARGS -- EXECUTABLE ARGV...``, which:

1. opens the CRI log (``--log``; rotation by ``--log-max-bytes`` / ``--log-max-files``, see
   ``wri_plugins.process.crilog``) and reads the task's environment from ``--env-file``
   (NUL-separated ``KEY=VALUE``: the workload gets exactly the task's environment, untouched by
   Python's locale coercion and without systemd's ``NOTIFY_SOCKET``);
2. forks the workload with its stdout and stderr on pipes, in its own process group, with default
   signal dispositions, as ``--uid`` / ``--gid`` when given (the child switches after the fork,
   the gid also its only supplementary group, as the process runtime's shim does; the pump
   keeps the manager's user, root, so it can write the agent's log files); a close-on-exec
   pipe tells whether the switch and ``execve`` worked;
3. on success sends ``READY=1`` and ``STATUS=workload pid N`` to systemd (sd_notify(3); the unit
   is ``Type=notify``), so the start job succeeds only once the workload runs. On failure it
   writes the reason to its stderr (the unit's ``StandardError=append:`` file) and exits 127
   (not found) or 126 (not executable, or the user switch was refused) before ``READY``: the
   start job fails;
4. forwards :data:`FORWARDED` signals to the workload's process group (``KillUnit`` with
   ``who=main`` reaches the pump), timestamps each line of output as it reads it, runs exec
   requests (``--exec-socket``, see ``execserver``; as the workload's user), and when the
   workload ends kills what is left of its process group and of the unit's cgroup (``--unit``:
   only when the pump's cgroup is that unit's; container semantics), reads what is still in
   the pipes (at most :data:`DRAIN_SECONDS`) and
5. ends with the workload's status: the same exit code, or the same signal (re-raised on
   itself with core dumps off), so the unit's ``ExecMainCode`` / ``ExecMainStatus`` are the
   workload's and survive an agent restart.

The pump stays the unit's main process instead of handing over with ``MAINPID=``: when a
service's main process fails systemd kills the rest of the unit at once, which would lose the
output the workload wrote just before it ended.

Stdlib only, and few modules: every task has one pump (``_signal`` rather than ``signal``, no
``json`` or ``argparse``). This module is imported by the runtime only for its constants.
"""

from __future__ import annotations

import errno as errno_module
import os
import select
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # typeshed describes `signal`; `_signal` is its C core with the same API
    import signal as sig

    from wri_plugins.process import crilog
    from wri_plugins.systemd import execserver
else:
    import _signal as sig

    try:  # run by run_pump.py: its sys.path holds wri_plugins/systemd and wri_plugins/process
        import crilog
        import execserver
    except ImportError:  # imported as wri_plugins.systemd.logpump by the runtime or tests
        from wri_plugins.process import crilog
        from wri_plugins.systemd import execserver

USAGE = (
    "usage: run_pump.py --log FILE --log-max-bytes N --log-max-files N --env-file FILE "
    "[--unit NAME] [--exec-socket NAME] [--uid UID] [--gid GID] -- EXECUTABLE ARGV0 [ARG]...\n"
)
#: Seconds to keep reading output after the workload ended and its leftovers were killed.
DRAIN_SECONDS = 2.0
#: Safety net for the main poll, milliseconds; SIGCHLD wakes the pump long before.
POLL_MS = 60_000
#: Signals the pump passes on to the workload's process group; the runtime sends other signals
#: (SIGKILL, SIGSTOP, ...) to every process of the unit instead.
FORWARDED = (
    sig.SIGHUP,
    sig.SIGINT,
    sig.SIGQUIT,
    sig.SIGUSR1,
    sig.SIGUSR2,
    sig.SIGALRM,
    sig.SIGTERM,
    sig.SIGCONT,
    sig.SIGTSTP,
    sig.SIGTTIN,
    sig.SIGTTOU,
    sig.SIGWINCH,
)
#: The pump announces the workload's pid in the unit's status text (``STATUS=``); units parses it.
STATUS_PID_PREFIX = "workload pid "
OOM_SCORE_ADJ = b"-999"  # as conmon: the workload, not the pump, is the OOM killer's victim


def _read_env(path: str) -> dict[bytes, bytes]:
    with open(path, "rb") as f:
        data = f.read()
    env = {}
    for item in data.split(b"\0"):
        if item:
            key, _, value = item.partition(b"=")
            env[key] = value
    return env


def _parse(args: list[str]) -> tuple[dict[str, str], list[str]]:
    opts: dict[str, str] = {}
    while args and args[0] != "--":
        opts[args[0]] = args[1]
        args = args[2:]
    return opts, args[1:]


def _notify(message: bytes) -> None:
    """Send an sd_notify(3) datagram to systemd, if it is listening."""
    import _socket  # only the pump itself needs it

    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    address = "\0" + path[1:] if path.startswith("@") else path
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        sock.sendto(message, address)
    finally:
        sock.close()


def _unit_procs_file(unit: str) -> str | None:
    """The ``cgroup.procs`` file of the pump's own cgroup, only if that cgroup is ``unit``'s.

    A pump started any other way (by hand, by a test, in a unit of another name) returns None
    and so never kills beyond the workload's process group: the cgroup it runs in may hold
    unrelated processes, up to every process of the host.
    """
    with open("/proc/self/cgroup", "rb") as f:
        lines = f.read().decode().splitlines()
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if path.rsplit("/", 1)[-1] != unit or not unit.endswith(".service"):
            continue
        if controllers == "":
            roots = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        elif controllers == "name=systemd":
            roots = ["/sys/fs/cgroup/systemd"]
        else:
            continue
        for root in roots:
            name = f"{root}{path}/cgroup.procs"
            if os.path.exists(name):
                return name
    return None


def _kill_leftovers(pgid: int, unit: str) -> None:
    """SIGKILL the workload's process group and every other process of the unit's cgroup."""
    try:
        os.killpg(pgid, sig.SIGKILL)
    except OSError:
        pass
    me = os.getpid()
    try:
        name = _unit_procs_file(unit) if unit else None
        if name is None:
            return
        with open(name, "rb") as f:
            pids = [int(p) for p in f.read().split()]
    except (OSError, ValueError):
        return
    for pid in pids:
        if pid != me:
            try:
                os.kill(pid, sig.SIGKILL)
            except OSError:
                pass


def _reset_signals() -> None:
    """Undo what Python and the pump changed, in a child before ``execve``: default
    dispositions (ignored signals stay ignored across exec otherwise) and an empty mask."""
    sig.set_wakeup_fd(-1)
    for signum in (sig.SIGPIPE, sig.SIGXFSZ, sig.SIGCHLD, *FORWARDED):
        sig.signal(signum, sig.SIG_DFL)
    sig.pthread_sigmask(sig.SIG_SETMASK, [])


def _switch_user(uid: int, gid: int) -> None:
    """Become ``uid``/``gid`` (-1: keep), the gid also the only supplementary group."""
    if gid >= 0 or uid >= 0:
        os.setgroups([gid if gid >= 0 else os.getgid()])
    if gid >= 0:
        os.setgid(gid)
    if uid >= 0:
        os.setuid(uid)


def _start(
    executable: str, argv: list[str], env: dict[bytes, bytes], uid: int, gid: int
) -> tuple[int, bytes, int, list[int]]:
    """Fork the workload as ``uid``/``gid`` (-1: the pump's).

    Returns:
        ``(pid, stage, errno, [stdout, stderr])``: ``stage`` is ``b""`` when it exec'd, else
        ``b"setup"`` (process group, descriptors), ``b"user"`` (the switch) or ``b"exec"``,
        with the errno of the failed call.
    """
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    status_r, status_w = os.pipe()  # close-on-exec: EOF means execve worked
    pid = os.fork()
    if pid == 0:
        code, stage = 126, b"setup"
        try:
            os.setpgid(0, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            _reset_signals()
            stage = b"user"
            _switch_user(uid, gid)
            stage = b"exec"
            os.execve(executable, argv, env)
        except OSError as err:
            code = 127 if stage == b"exec" and err.errno == errno_module.ENOENT else 126
            try:
                os.write(status_w, b"%s %d" % (stage, err.errno or 0))
            except OSError:
                pass
        finally:
            os._exit(code)
    try:
        os.setpgid(pid, pid)  # also here: a signal forwarded right away must find the group
    except OSError:
        pass  # the child did it first, or has exec'd already
    for fd in (out_w, err_w, status_w):
        os.close(fd)
    report = b""
    while True:
        try:
            chunk = os.read(status_r, 64)
        except InterruptedError:
            continue
        if not chunk:
            break
        report += chunk
    os.close(status_r)
    stage, _, errno = report.partition(b" ")
    return pid, stage, int(errno or 0), [out_r, err_r]


def _reap(pid: int, execs: execserver.ExecServer | None) -> int | None:
    """Reap every ended child; return the workload's wait status if it was among them."""
    status = None
    while True:
        try:
            reaped, wstatus = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return status
        if reaped == 0:
            return status
        if reaped == pid:
            status = wstatus
        elif execs is not None:
            execs.reaped(reaped, wstatus)


def _monitor(
    pid: int,
    fds: list[int],
    wake_r: int,
    log: crilog.LogWriter,
    unit: str,
    execs: execserver.ExecServer | None,
) -> int:
    """Copy output to the log and serve exec requests until the workload ended and its pipes
    drained (at most :data:`DRAIN_SECONDS` after its end).

    Returns:
        The workload's wait status.
    """
    poller = select.poll()
    output = crilog.OutputCopier(fds[0], fds[1], log)
    for fd in (*fds, wake_r):
        poller.register(fd, select.POLLIN)
    polled: set[int] = set()
    status: int | None = None
    deadline = 0.0
    while True:
        if execs is not None:  # connections come and go: keep the poll set in step
            now = set(execs.fds())
            for fd in polled - now:
                poller.unregister(fd)
            for fd in now - polled:
                poller.register(fd, select.POLLIN)
            polled = now
        if status is None:
            status = _reap(pid, execs)
            if status is not None:
                for signum in FORWARDED:  # its process group may be gone: forward no more
                    sig.signal(signum, sig.SIG_IGN)
                if execs is not None:
                    execs.stop_accepting()
                    execs.kill_all()
                _kill_leftovers(pid, unit)
                deadline = time.monotonic() + DRAIN_SECONDS
                continue  # refresh the poll set: the listener is closed
        else:
            _reap(pid, execs)
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
            elif fd in polled:
                assert execs is not None
                execs.handle(fd)
            elif not output.copy(fd):
                poller.unregister(fd)
        output.write()
    if output.finish():
        sys.stderr.write(f"pump: output still open {DRAIN_SECONDS}s after the workload ended\n")
    return status


def _reap_commands(execs: execserver.ExecServer) -> None:
    """Give killed exec commands 1 s to end, so their clients get an exit code."""
    deadline = time.monotonic() + 1.0
    while execs.children and time.monotonic() < deadline:
        try:
            reaped, wstatus = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if reaped:
            execs.reaped(reaped, wstatus)
        else:
            time.sleep(0.01)


def _end_like(status: int) -> int:
    """End the pump with the workload's wait status: its exit code, or its signal."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        import resource  # only on this path

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the workload dumped already, if any
        sys.stderr.flush()
        sig.signal(signum, sig.SIG_DFL)
        sig.pthread_sigmask(sig.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
        return 128 + signum  # a signal whose default is not to terminate
    return os.waitstatus_to_exitcode(status)


def run(opts: dict[str, str], argv: list[str]) -> int:
    """Start and watch one workload (see the module docstring). Returns the exit code."""
    try:
        with open("/proc/self/comm", "wb") as f:
            f.write(b"florete-pump")  # what ps and top show
    except OSError:
        pass
    executable, argv = argv[0], argv[1:]
    try:
        env = _read_env(opts["--env-file"])
    except OSError as err:
        sys.stderr.write(f"pump: cannot read the environment: {err}\n")
        return 1
    log = crilog.LogWriter(
        opts["--log"], int(opts["--log-max-bytes"]), int(opts["--log-max-files"])
    )
    if log.failed:
        return 1  # LogWriter said why on stderr
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    sig.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    sig.signal(sig.SIGCHLD, lambda _s, _f: None)
    uid, gid = int(opts.get("--uid", "-1")), int(opts.get("--gid", "-1"))
    pid, stage, failure, fds = _start(executable, argv, env, uid, gid)
    if stage:
        if stage == b"user":
            ids = [f"{kind} {value}" for kind, value in (("uid", uid), ("gid", gid)) if value >= 0]
            what = "switch to " + " ".join(ids)
        elif stage == b"exec":
            what = f"execute {executable}"
        else:
            what = "set up the workload's process"
        sys.stderr.write(f"pump: cannot {what}: {os.strerror(failure)}\n")
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    def setup_command() -> None:
        _reset_signals()
        _switch_user(uid, gid)

    execs = None
    if opts.get("--exec-socket"):
        try:
            execs = execserver.ExecServer(opts["--exec-socket"], env, setup_command)
        except OSError as err:
            sys.stderr.write(f"pump: no exec into this task: {err}\n")

    def forward(signum: int, _frame: object) -> None:
        try:
            os.killpg(pid, signum)
        except OSError:
            pass

    for signum in FORWARDED:
        sig.signal(signum, forward)
    try:
        with open("/proc/self/oom_score_adj", "wb") as f:
            f.write(OOM_SCORE_ADJ)
    except OSError:
        pass  # not root: the pump keeps the default score
    try:
        _notify(b"READY=1\nSTATUS=%s%d" % (STATUS_PID_PREFIX.encode(), pid))
    except OSError as err:
        sys.stderr.write(f"pump: cannot notify systemd: {err}\n")
    try:
        status = _monitor(pid, fds, wake_r, log, opts.get("--unit", ""), execs)
    except Exception:  # a bug in the copying must not lose the exit status
        import traceback  # only on this path: it costs memory

        traceback.print_exc()
        for fd in fds:
            try:
                os.close(fd)  # the workload's further output fails with EPIPE
            except OSError:
                pass
        status = os.waitpid(pid, 0)[1]
    if execs is not None:
        execs.kill_all()
        _reap_commands(execs)
    return _end_like(status)


def main(args: list[str]) -> int:
    """Entry point of ``run_pump.py``: ``[--OPTION VALUE]... -- EXECUTABLE ARGV0 ARGS...``."""
    opts, argv = _parse(args)
    if len(argv) < 2:
        sys.stderr.write(USAGE)
        return 2
    return run(opts, argv)
