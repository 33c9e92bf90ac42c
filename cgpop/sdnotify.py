"""The systemd service notification protocol (sd_notify(3)), with the standard library only.

A notification is one datagram of newline-separated `VAR=value` lines sent to the AF_UNIX socket
named by $NOTIFY_SOCKET: a path, or an abstract-namespace name when it starts with "@". The
socket is non-blocking, so a notification never holds up the event loop (a full receive queue
drops the datagram; systemd reads it at once in practice). Without $NOTIFY_SOCKET (not started by
systemd, or `Type=` other than notify) every call is a silent no-op.

`cgpop serve` sends READY=1 once every listener is open, RELOADING=1 (with MONOTONIC_USEC, as
`Type=notify-reload` requires) and READY=1 around a SIGHUP reload, STOPPING=1 at shutdown, and
WATCHDOG=1 every WATCHDOG_USEC/2 when systemd asks for a watchdog (systemd.service(5)
WatchdogSec=; sd_watchdog_enabled(3) checks WATCHDOG_PID the same way).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("cgpop.sdnotify")


def socket_address(value: str) -> str | None:
    """The address to send to for a $NOTIFY_SOCKET value: "@name" is the abstract name
    "\\0name"; an absolute path is itself. None for anything else (unsupported, e.g. vsock)."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC (systemd.service(5) advises
    pinging at half the timeout), or None when no watchdog is asked of this process (unset,
    not a positive number, or $WATCHDOG_PID names another process)."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid and (not watchdog_pid.isdigit() or int(watchdog_pid) != pid):
        return None
    return int(usec) / 2 / 1_000_000


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, the clock systemd compares MONOTONIC_USEC with."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


class Notifier:
    """Notifications for one service process. Each method returns True when the datagram was
    sent, False when there is nowhere to send it or it could not be sent (logged once)."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        self.address = socket_address(value) if value else None
        if value and self.address is None:
            log.warning("NOTIFY_SOCKET=%r is not a path or @name; not notifying systemd", value)
        self.watchdog = watchdog_interval(env, os.getpid())
        self._sock: socket.socket | None = None
        self._warned = False
        self._ready = False
        self._watchdog_task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send `VAR=value` lines in one datagram."""
        if self.address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.setblocking(False)
            self._sock.sendto("\n".join(assignments).encode("utf-8"), self.address)
        except OSError as exc:
            # A full queue (EAGAIN), a vanished socket: the service goes on regardless.
            if not self._warned:
                self._warned = True
                log.warning("cannot notify systemd (%s): %s", assignments[0], exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        """READY=1: start-up (or a reload) is complete."""
        self._ready = True
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> bool:
        """RELOADING=1 with the time it began. Before the first READY=1 there is nothing to
        say: systemd is still waiting for start-up."""
        if not self._ready:
            return False
        return self.send("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def reloaded(self, status: str = "") -> bool:
        """READY=1 after a reload (whether or not it changed anything)."""
        if not self._ready:
            return False
        return self.ready(status)

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def ping(self) -> bool:
        """WATCHDOG=1: the service is alive (systemd.service(5) WatchdogSec=)."""
        return self.send("WATCHDOG=1")

    def start_watchdog(self) -> asyncio.Task[None] | None:
        """Ping every WATCHDOG_USEC/2 from a task on the running loop, so a stuck loop misses
        its pings and systemd restarts the service. None when no watchdog was asked for."""
        if self.watchdog is None or self.address is None or self._watchdog_task is not None:
            return None
        self._watchdog_task = asyncio.get_running_loop().create_task(
            self._pings(self.watchdog), name="cgpop-watchdog"
        )
        return self._watchdog_task

    async def _pings(self, interval: float) -> None:
        while True:
            self.ping()
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Stop the watchdog and close the socket (after STOPPING=1)."""
        if self._watchdog_task is not None:
            self._watchdog_task.cancel()
            self._watchdog_task = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
