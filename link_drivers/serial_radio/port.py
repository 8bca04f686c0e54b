"""A serial port as an asyncio byte pipe that survives the device vanishing.

pyserial opens and configures the device (baud, parity, stop bits, flow control, an exclusive
lock); reading and writing then use the file descriptor directly with ``loop.add_reader`` /
``loop.add_writer``. Why not a reader thread: the loop wakes the moment bytes arrive, no thread
polls with ``sleep`` (Reticulum's ``SerialInterface`` reads byte by byte and sleeps 80 ms when
idle), and every error surfaces in the loop where the link state lives. pyserial exposes a
pollable fd on POSIX only; Windows is not a target of the agent.

When the device disappears (USB unplugged: ``read`` returns EOF or raises EIO), the port closes
the fd, reports the link down and retries the open with exponential backoff until the device is
back. Nothing propagates to the caller: the bug to avoid is Reticulum's #425, where a serial
error took down the whole process.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
from collections.abc import Callable

import serial

from link_drivers._log import LinkLog
from link_drivers.api import LinkMetrics
from link_drivers.serial_radio.config import SerialConfig

__all__ = ["SerialPort"]

log = logging.getLogger(__name__)

READ_CHUNK = 4096
WRITE_BUFFER_LIMIT = 65536  # bytes queued behind a slow device before new writes are dropped


class SerialPort:
    """One serial device, reopened whenever it comes back.

    Args:
        config: port settings.
        on_data: called with every chunk of bytes read (in the event loop).
        on_state: called with True when the device opens and False when it is lost or closed.
        metrics: counters to update (``rx_bytes``, ``tx_bytes``, ``up``).
    """

    def __init__(
        self,
        config: SerialConfig,
        on_data: Callable[[bytes], None],
        on_state: Callable[[bool], None],
        metrics: LinkMetrics,
    ) -> None:
        self.config = config
        self._on_data = on_data
        self._on_state = on_state
        self.metrics = metrics
        self._log = LinkLog(log, link=config.port)
        self._serial: serial.Serial | None = None
        self._fd = -1
        self._wbuf = bytearray()
        self._delay = config.reopen_min
        self._retry: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.dropped_bytes = 0
        self.opens = 0

    @property
    def is_open(self) -> bool:
        """True while the device is open."""
        return self._serial is not None

    def start(self) -> None:
        """Try to open the device now; on failure keep retrying in the background.

        Must be called from the event loop. Never raises for a missing or failing device.
        """
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._try_open()

    def _try_open(self) -> None:
        self._retry = None
        if self._closed:
            return
        c = self.config
        try:
            port = serial.Serial(
                port=c.port,
                baudrate=c.baudrate,
                bytesize=c.bytesize,
                parity=c.parity,
                stopbits=c.stopbits,
                rtscts=c.rtscts,
                xonxoff=c.xonxoff,
                timeout=0,
                write_timeout=0,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as err:
            self._log.warn_once("open", "cannot open (retry in %.1f s): %s", self._delay, err)
            self._schedule_retry()
            return
        self._serial = port
        self._fd = port.fileno()
        self._delay = self.config.reopen_min
        self._wbuf.clear()
        assert self._loop is not None
        self._loop.add_reader(self._fd, self._on_readable)
        self.opens += 1
        recovered = self._log.clear("open") | self._log.clear("io")
        self._log.info("opened at %d baud%s", c.baudrate, " (recovered)" if recovered else "")
        self.metrics.up = True
        self._on_state(True)

    def _schedule_retry(self) -> None:
        assert self._loop is not None
        self._retry = self._loop.call_later(self._delay, self._try_open)
        self._delay = min(self._delay * 2, self.config.reopen_max)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError as err:
            self._lost(f"read failed: {err}")
            return
        if not data:
            self._lost("device disconnected (end of file)")
            return
        self.metrics.rx_bytes += len(data)
        self._on_data(data)

    def write(self, data: bytes) -> bool:
        """Write bytes without blocking; the rest is queued and flushed when the device drains.

        Args:
            data: bytes to send.

        Returns:
            False when the bytes were dropped (device absent or write queue over 64 KiB), as a
            radio drops what it cannot send; True otherwise.
        """
        if self._serial is None or len(self._wbuf) + len(data) > WRITE_BUFFER_LIMIT:
            self.dropped_bytes += len(data)
            return False
        if self._wbuf:
            self._wbuf += data
            return True
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            n = 0
        except OSError as err:
            self._lost(f"write failed: {err}")
            return False
        self.metrics.tx_bytes += n
        if n < len(data):
            self._wbuf += data[n:]
            assert self._loop is not None
            self._loop.add_writer(self._fd, self._on_writable)
        return True

    @property
    def write_backlog(self) -> int:
        """Bytes written but not yet accepted by the device driver."""
        return len(self._wbuf)

    def _on_writable(self) -> None:
        try:
            n = os.write(self._fd, self._wbuf)
        except BlockingIOError:
            return
        except OSError as err:
            self._lost(f"write failed: {err}")
            return
        self.metrics.tx_bytes += n
        del self._wbuf[:n]
        if not self._wbuf and self._loop is not None:
            self._loop.remove_writer(self._fd)

    def _lost(self, why: str) -> None:
        self._log.warn_once("io", "device lost (%s); reopening with backoff", why)
        self._shutdown()
        self.metrics.up = False
        self._on_state(False)
        if not self._closed:
            self._schedule_retry()

    def _shutdown(self) -> None:
        if self._serial is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop.remove_writer(self._fd)
        self.dropped_bytes += len(self._wbuf)
        self._wbuf.clear()
        try:
            self._serial.close()
        except (serial.SerialException, OSError) as err:
            if getattr(err, "errno", None) not in (errno.EIO, errno.EBADF, errno.ENXIO):
                self._log.debug("close failed: %s", err)
        self._serial = None
        self._fd = -1

    def close(self) -> None:
        """Close the device and stop retrying; idempotent."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        was_open = self._serial is not None
        self._shutdown()
        self.metrics.up = False
        if was_open:
            self._on_state(False)
