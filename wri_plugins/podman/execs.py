"""Running a command in a container: a libpod exec session, attached, until it ends.

``POST /libpod/containers/{id}/exec`` creates the session, ``POST /libpod/exec/{id}/start`` with
``{"Detach": false, "Tty": false}`` runs it and answers with its output as a multiplexed stream
(see :mod:`.frames`) that ends when the command does, and ``GET /libpod/exec/{id}/json`` gives
its ``ExitCode`` (podman 4.3 API). A cancelled exec is killed by its host pid, since libpod has
no endpoint that kills an exec session.

An interactive exec (:func:`run_attached`) creates the session with ``AttachStdin`` and ``Tty``
as asked and starts it with ``Upgrade: tcp``: podman answers ``101`` and the connection then
carries stdin to the command (a half-close ends it) and its output back, multiplexed or, with a
terminal, raw. Terminal sizes go to ``POST /libpod/exec/{id}/resize?h=ROWS&w=COLUMNS``.

Podman keeps the conmon of an API exec session alive for ``exit_command_delay`` (containers.conf,
default 300 s) after the command ended, so that clients can still read the exit code. That conmon
sits in the pod's cgroup: removing the pod in those 5 minutes makes podman retry the cgroup's
removal for 3 s and then leave it behind. Once the exit code is read, :func:`run_exec` and
:func:`run_attached` therefore send that conmon SIGTERM, which makes it run its exit command at
once (``podman container cleanup --rm --exec``, removing the session) and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import Any

import psutil

from agent.errors import FloreteError, WorkloadError
from wri_plugins.api import ExecIO, ExecResult
from wri_plugins.podman.frames import FrameDecoder
from wri_plugins.podman.libpod import LibpodError
from wri_plugins.podman.service import PodmanService

_log = logging.getLogger(__name__)

EXIT_POLL = 0.05  # seconds between looks at a session whose output has ended
EXIT_WAIT = 5.0  # seconds podman may take to record the exit code after the output ended


async def run_exec(
    service: PodmanService, container: str, argv: tuple[str, ...], limit: int
) -> ExecResult:
    """Run ``argv`` in ``container`` (its environment and working dir) and wait for it.

    Args:
        service: the API.
        container: the container's id.
        argv: the command line.
        limit: bytes of output kept; the rest is read and dropped so the command can finish.

    Returns:
        Exit code (podman's 126/127 when the command cannot run) and stdout+stderr.

    Raises:
        WorkloadError: the container is not running or podman refused.
    """
    body = {"AttachStdout": True, "AttachStderr": True, "Tty": False, "Cmd": list(argv)}
    output = bytearray()
    code = await _run_session(
        service, container, body, lambda exec_id: _attach(service, exec_id, output, limit)
    )
    return ExecResult(code, bytes(output))


async def run_attached(
    service: PodmanService, container: str, argv: tuple[str, ...], io: ExecIO
) -> int:
    """Run ``argv`` in ``container`` attached to ``io`` (see the module docstring).

    Returns:
        Exit code (podman's 126/127 when the command cannot run).

    Raises:
        WorkloadError: the container is not running or podman refused.
        asyncio.CancelledError: after killing the command; so is what ``io`` raised.
    """
    body = {
        "AttachStdin": io.stdin,
        "AttachStdout": True,
        "AttachStderr": True,
        "Tty": io.tty,
        "Cmd": list(argv),
    }
    return await _run_session(
        service, container, body, lambda exec_id: _stream(service, exec_id, io)
    )


async def _run_session(
    service: PodmanService,
    container: str,
    body: dict[str, Any],
    attach: Callable[[str], Awaitable[None]],
) -> int:
    """Create an exec session with ``body``, run ``attach(exec_id)`` until its output ends and
    return its exit code; a session abandoned on the way (an error, a cancellation) is killed,
    and an ended one's conmon is ended (see the module docstring).

    Raises:
        WorkloadError: the container is not running, podman refused, or the exit code did not
            come.
    """
    try:
        created = await service.call("POST", f"/containers/{container}/exec", body=body)
        exec_id = str(created["Id"])
    except LibpodError as err:
        raise WorkloadError(f"cannot exec in container {container}: {err}") from err
    except (KeyError, TypeError) as err:
        raise WorkloadError(f"podman answered exec create without an Id: {err}") from err
    try:
        await attach(exec_id)
        code = await _exit_code(service, exec_id)
    except BaseException:
        await _kill(service, exec_id)
        raise
    await asyncio.to_thread(end_lingering_conmon, exec_id)
    return code


async def _stream(service: PodmanService, exec_id: str, io: ExecIO) -> None:
    """Copy the streams of a started session until its output ends."""
    client = await service.client()
    start = {"Detach": False, "Tty": io.tty}
    try:
        async with client.hijack("POST", f"/exec/{exec_id}/start", body=start) as hijacked:
            reader, writer, buffered = hijacked
            feeders = []
            if io.stdin:
                feeders.append(asyncio.create_task(_copy_in(io, writer)))
            if io.tty:
                feeders.append(asyncio.create_task(_copy_sizes(service, exec_id, io)))
            try:
                await _copy_out(io, reader, buffered)
                for feeder in feeders:
                    if feeder.done():
                        feeder.result()  # io failed: the caller is gone
            finally:
                for feeder in feeders:
                    feeder.cancel()
                if feeders:
                    await asyncio.wait(feeders)
    except LibpodError as err:  # podman could not run it at all
        await io.write("stderr", f"{err}\n".encode())


async def _copy_in(io: ExecIO, writer: asyncio.StreamWriter) -> None:
    """The caller's input to the command; its end half-closes the connection (no terminal)."""
    try:
        while data := await io.read_stdin():
            writer.write(data)
            await writer.drain()
        if not io.tty and writer.can_write_eof():
            writer.write_eof()
    except OSError:  # the command ended: the connection is closed
        return


async def _copy_sizes(service: PodmanService, exec_id: str, io: ExecIO) -> None:
    while True:
        size = await io.next_size()
        query = {"h": size.rows, "w": size.columns}
        with contextlib.suppress(LibpodError):  # the session just ended
            await service.call("POST", f"/exec/{exec_id}/resize", query=query)


async def _copy_out(io: ExecIO, reader: asyncio.StreamReader, buffered: bytes) -> None:
    decoder = None if io.tty else FrameDecoder()
    data = buffered
    while True:
        if data:
            if decoder is None:
                await io.write("stdout", data)
            else:
                for frame in decoder.feed(data):
                    if frame.stream in ("stdout", "stderr") and frame.payload:
                        await io.write(frame.stream, frame.payload)
        try:
            data = await reader.read(65536)
        except OSError:
            data = b""
        if not data:
            return


async def _attach(service: PodmanService, exec_id: str, output: bytearray, limit: int) -> None:
    decoder = FrameDecoder()
    client = await service.client()
    body = {"Detach": False, "Tty": False}
    try:
        async with client.stream("POST", f"/exec/{exec_id}/start", body=body) as response:
            async for chunk in response.chunks():
                for frame in decoder.feed(chunk):
                    room = limit - len(output)
                    if room > 0 and frame.stream != "stdin":
                        output += frame.payload[:room]
    except LibpodError as err:  # podman could not run it at all
        output += str(err).encode()[: max(limit - len(output), 0)]


async def _exit_code(service: PodmanService, exec_id: str) -> int:
    """The session's exit code, once podman has recorded it.

    Raises:
        WorkloadError: not recorded within :data:`EXIT_WAIT` seconds.
    """
    try:
        async with asyncio.timeout(EXIT_WAIT):
            while True:
                data = await service.call("GET", f"/exec/{exec_id}/json")
                if not data.get("Running"):
                    return int(data.get("ExitCode") or 0)
                await asyncio.sleep(EXIT_POLL)
    except TimeoutError:
        raise WorkloadError(f"exec {exec_id} runs {EXIT_WAIT:g}s after its output ended") from None


async def _kill(service: PodmanService, exec_id: str) -> None:
    """Kill an abandoned session's process, wait (briefly) for its end, then end its conmon.

    Best effort: the session is being abandoned (cancelled, or its output broke off).
    """
    with contextlib.suppress(FloreteError, OSError, TimeoutError, ValueError, AttributeError):
        async with asyncio.timeout(EXIT_WAIT):
            data = await service.call("GET", f"/exec/{exec_id}/json")
            pid = int(data.get("Pid") or 0)
            if data.get("Running") and pid > 0:
                os.kill(pid, signal.SIGKILL)
            while data.get("Running"):
                await asyncio.sleep(EXIT_POLL)
                data = await service.call("GET", f"/exec/{exec_id}/json")
    await asyncio.to_thread(end_lingering_conmon, exec_id)


def end_lingering_conmon(exec_id: str) -> int:
    """SIGTERM the conmon processes of an ended exec session (see the module docstring).

    Blocking (looks at every process's name); run it in a thread. Best effort: conmons not
    visible from here are left to podman's own delay.

    Returns:
        How many processes were signalled.
    """
    signalled = 0
    for proc in psutil.process_iter(["name"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] != "conmon":
                continue
            args = proc.cmdline()
            if "-u" in args and exec_id in args and "--exec-attach" in args:
                proc.terminate()
                signalled += 1
    _log.debug("exec %s: ended %d lingering conmon processes", exec_id, signalled)
    return signalled
