"""The workers supervisor (issue 14, `[server] workers`): fork N worker processes that share the
listening sockets the parent opened, replace a worker that dies, pass SIGHUP to every worker, and
on SIGTERM/SIGINT let all of them drain, then exit.

Shaped after gunicorn's arbiter and uvicorn's `Multiprocess`: the parent does no mail work and
runs no event loop (it must not hold threads when it forks); each worker runs the same
composition root as a single-process server, on the inherited sockets. Each worker has its own
POP3/POP3S/LMTP listening sockets on the shared ports (SO_REUSEPORT, cgpop/prefork.py), so the
kernel spreads connections evenly; with one shared socket, the worker that woke first took
bursts (4 workers, 6,000 connections opened at once: 1,233 to 1,877 each, against 1,487 to
1,526 now), and a worker at its open-files limit refused what others could serve. A dead
worker's queued connections wait for its replacement, which the supervisor starts at once.

The parent waits on signals with `sigtimedwait` (no handlers, no polling): SIGCHLD, SIGHUP,
SIGTERM, SIGINT and SIGUSR1 are blocked in the parent and restored to their defaults in each
worker before it runs.

Readiness: a worker calls `worker_ready(index)` once it serves; that writes its index to a pipe
and sends the parent SIGUSR1 (signals coalesce, so the parent reads every index the pipe holds
at each wake-up). Once every worker has reported, the parent tells its `notify` (systemd's
READY=1, cgpop/sdnotify.py): only the parent talks to the service manager.

The watchdog (systemd WatchdogSec=): each worker's event loop beats into shared memory every
`watchdog` seconds (cgpop.shared.Heartbeats, started by its ready call), and the parent sends
WATCHDOG=1 every `watchdog` seconds only while it is healthy, i.e. every worker slot is
- a running worker that has beaten within two intervals (a worker whose loop is stuck stops
  beating), or one started less than `_START_GRACE` ago that has not served yet, or
- a worker that died and is being replaced, unless it died at start `_UNHEALTHY_FAILURES`
  times in a row (a bad certificate, an unreachable store: systemd's restart is the remedy).
So a stuck worker or one that cannot start stops the pings, and systemd restarts the service
after WatchdogSec, as it would a stuck single process. While draining after SIGTERM the parent
sends no more pings (STOPPING=1 was sent; the drain is bounded by `shutdown_grace`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Notify", "Supervisor", "worker_count"]

log = logging.getLogger("cgpop.workers")

_SIGNALS = frozenset({signal.SIGCHLD, signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1})
_INDEX = 2  # bytes per index on the readiness pipe (a write this short is atomic, PIPE_BUF)
# A worker that dies sooner than this after its start is failing at start (bad certificate,
# store unreachable): restart it with a growing delay rather than fork in a tight loop.
_QUICK_DEATH = 1.0
_MAX_BACKOFF = 30.0
# After the drain grace, workers still alive get SIGKILL this much later at most.
_KILL_MARGIN = 5.0
# A started worker opens the store and runs the collector before it serves: longer than this
# without a heartbeat is a hung start, and the parent stops the watchdog pings.
_START_GRACE = 30.0
# Quick deaths in a row after which a worker that cannot start makes the parent unhealthy.
_UNHEALTHY_FAILURES = 3


def worker_count(setting: int | str) -> int:
    """`[server] workers`: a positive count, or "auto" for one per CPU this process may use."""
    if setting == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    assert isinstance(setting, int) and setting >= 1
    return setting


class Notify(Protocol):
    """What the parent tells the service manager (cgpop.sdnotify.Notifier)."""

    def ready(self, status: str = "") -> bool: ...
    def reloading(self) -> bool: ...
    def reloaded(self, status: str = "") -> bool: ...
    def stopping(self) -> bool: ...
    def ping(self) -> bool: ...


class Beats(Protocol):
    """When each worker's event loop last beat (cgpop.shared.Heartbeats), time.monotonic()."""

    def last(self, index: int) -> float: ...


@dataclass
class _Slot:
    index: int
    pid: int = 0
    started: float = 0.0
    failures: int = 0  # quick deaths in a row
    restart_at: float | None = None


class Supervisor:
    """Run `work(index)` in `count` forked processes until told to stop.

    `work` runs in the child with default signal dispositions and returns its exit status; it
    must treat SIGTERM as "finish what you are doing within `grace` seconds, then exit" and
    SIGHUP as "reload". The parent returns 0 after a clean drain, 1 if a worker had to be
    killed."""

    def __init__(
        self,
        count: int,
        work: Callable[[int], int],
        *,
        grace: float,
        notify: Notify | None = None,
        watchdog: float | None = None,
        beats: Beats | None = None,
        reaped: Callable[[int], None] = lambda pid: None,
    ) -> None:
        if count < 1:
            raise ValueError("at least one worker")
        self.work = work
        self.grace = grace
        self.notify = notify
        # Seconds between WATCHDOG=1 pings (None: no watchdog), sent while _healthy().
        self.watchdog = watchdog if notify is not None else None
        self.beats = beats
        self.reaped = reaped  # told the pid of each worker that ended
        self._next_ping = 0.0
        self.slots = [_Slot(i) for i in range(count)]
        self.stopping = False
        self.announced = False  # every worker has reported ready once
        self._reported: set[int] = set()
        self._ready_r, self._ready_w = os.pipe()
        os.set_blocking(self._ready_r, False)

    # --- a worker ---
    def worker_ready(self, index: int) -> None:
        """In worker `index`: it serves now (its listeners accept)."""
        os.write(self._ready_w, index.to_bytes(_INDEX, "little"))
        os.kill(os.getppid(), signal.SIGUSR1)

    # --- the parent ---
    def run(self) -> int:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            for slot in self.slots:
                self._spawn(slot)
            while not self.stopping:
                info = signal.sigtimedwait(_SIGNALS, self._next_timeout())
                if info is not None:
                    self._on_signal(info.si_signo)
                self._read_ready()
                self._reap()
                self._restart_due()
                self._ping_due()
            return self._drain()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)

    def pids(self) -> list[int]:
        return [s.pid for s in self.slots if s.pid]

    def _on_signal(self, signo: int) -> None:
        if signo == signal.SIGHUP:
            log.info("SIGHUP: passed to %d workers", len(self.pids()))
            if self.notify is not None:
                self.notify.reloading()
            self._send_all(signal.SIGHUP)
            if self.notify is not None:
                self.notify.reloaded()
        elif signo in (signal.SIGTERM, signal.SIGINT):
            log.info("%s: draining %d workers", signal.Signals(signo).name, len(self.pids()))
            self.stopping = True
            if self.notify is not None:
                self.notify.stopping()

    def _read_ready(self) -> None:
        """Take the indexes of workers that reported ready; the first time all have, notify."""
        while True:
            try:
                data = os.read(self._ready_r, 4096)
            except BlockingIOError:
                break
            if not data:
                break
            for i in range(0, len(data) - _INDEX + 1, _INDEX):
                self._reported.add(int.from_bytes(data[i : i + _INDEX], "little"))
        if not self.announced and len(self._reported) >= len(self.slots):
            self.announced = True
            log.info("all %d workers serving", len(self.slots))
            if self.notify is not None:
                self.notify.ready()

    def _next_timeout(self) -> float:
        due = [s.restart_at for s in self.slots if s.restart_at is not None]
        if self.watchdog is not None and self.announced:
            due.append(self._next_ping)
        if not due:
            return 3600.0
        return max(0.0, min(due) - time.monotonic())

    def _ping_due(self) -> None:
        """WATCHDOG=1 once per interval after start-up, while healthy."""
        if self.watchdog is None or not self.announced or self.notify is None:
            return
        now = time.monotonic()
        if now < self._next_ping:
            return
        self._next_ping = now + self.watchdog
        if self._healthy(now):
            self.notify.ping()

    def _healthy(self, now: float) -> bool:
        """Every worker serves with a live event loop, or is starting, or is being replaced
        after a death that was not one of several failed starts in a row (module docstring)."""
        assert self.watchdog is not None
        for slot in self.slots:
            if not slot.pid:
                if slot.failures >= _UNHEALTHY_FAILURES:
                    return False
                continue
            if self.beats is None:
                continue
            last = self.beats.last(slot.index)
            if last < slot.started:  # not serving yet
                if now - slot.started > _START_GRACE:
                    return False
            elif now - last > 2 * self.watchdog:
                return False
        return True

    def _reap(self) -> list[_Slot]:
        """Collect every worker that has exited; schedule its replacement unless stopping."""
        ended: list[_Slot] = []
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            slot = next((s for s in self.slots if s.pid == pid), None)
            if slot is None:
                continue
            self.reaped(pid)
            slot.pid = 0
            ended.append(slot)
            if self.stopping:
                continue
            lived = time.monotonic() - slot.started
            slot.failures = slot.failures + 1 if lived < _QUICK_DEATH else 0
            delay = min(_MAX_BACKOFF, 0.1 * 2**slot.failures) if slot.failures else 0.0
            log.error(
                "worker %d (pid %d) ended: %s; restarting in %.1f s",
                slot.index,
                pid,
                _describe(status),
                delay,
            )
            slot.restart_at = time.monotonic() + delay
        return ended

    def _restart_due(self) -> None:
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now and not self.stopping:
                self._spawn(slot)

    def _spawn(self, slot: _Slot) -> None:
        slot.restart_at = None
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                _end_with_parent(parent)
                for signo in _SIGNALS:
                    signal.signal(signo, signal.SIG_DFL)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
                status = self.work(slot.index)
            except BaseException:
                log.exception("worker %d failed", slot.index)
            finally:
                logging.shutdown()
                os._exit(status)
        slot.pid = pid
        slot.started = time.monotonic()
        log.info("worker %d started (pid %d)", slot.index, pid)

    def _send_all(self, signo: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):  # exited; SIGCHLD reports it
                os.kill(pid, signo)

    def _drain(self) -> int:
        """Pass SIGTERM to every worker; wait for all within the grace, then kill the rest."""
        self._send_all(signal.SIGTERM)
        deadline = time.monotonic() + self.grace + _KILL_MARGIN
        while self.pids():
            self._reap()
            left = deadline - time.monotonic()
            if not self.pids():
                break
            if left <= 0:
                log.error("workers %s did not stop in time: killed", self.pids())
                self._send_all(signal.SIGKILL)
                while self.pids():
                    signal.sigtimedwait({signal.SIGCHLD}, 1.0)
                    self._reap()
                return 1
            signal.sigtimedwait({signal.SIGCHLD}, left)
        log.info("all workers stopped")
        return 0


def _end_with_parent(parent: int) -> None:
    """Linux: this worker gets SIGTERM (and drains) if the parent dies, e.g. of SIGKILL, so no
    worker is left serving the shared sockets without a supervisor (prctl(2) PR_SET_PDEATHSIG)."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os._exit(1)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.waitstatus_to_exitcode(status)}"
