"""This process's side of the live-session registry (issue 12, section 3; Cyrus's proc
directory): its logged-in POP sessions recorded in the store, so `cgpop sessions` (another
process) lists every session of every worker and node, and `cgpop sessions kill ID` reaches
the one serving it; and the telemetry flags, seen by every process.

Cost on the hot path: a login only queues its row and a close its removal; one task writes
what is queued in one store transaction on the writer thread (as the group commit does), so
a login never waits for the registry. That task starts WRITE_DELAY after the first row is
queued: a session that ends sooner (most POP sessions do) costs the store nothing, and the
rows of many logins share one transaction. `state` and `sent_bytes` are not written as they change:
every session's current values are flushed at the housekeeping sweep (cgpop/sweeper.py, every
SWEEP_INTERVAL seconds), and the row goes at close, so a listing is at most one sweep old for
those two fields and exact for the rest.

One task per process polls the store every POLL_INTERVAL seconds: for kill requests aimed at
its sessions (only while it has any) and for the telemetry version, reading the flagged
accounts again when it moved (as the directory cache does with its version).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cgpop.blocking import Run
from cgpop.store.api import LiveSession, LiveSessions

log = logging.getLogger("cgpop")

# How soon a kill request or a telemetry change reaches this process (the bound of
# about a second).
POLL_INTERVAL = 1.0
# How late a login's row may be listed (well within the poll's second): rows queued within
# this time are written together, and a session shorter than this is never written at all.
WRITE_DELAY = 0.5
# After a failed write, the sweeps that write every row again: two, because the first may come
# before this node's heartbeat has told the others it is alive again (then its rows can be
# removed once more, with the node); by the second, one heartbeat (node_timeout / 3) has gone.
RESYNC_SWEEPS = 2


@dataclass(eq=False, slots=True)
class Local:
    """One of this process's registered sessions: its row, how to read its progress (state,
    sent octets), and how to close it for an administrator."""

    row: LiveSession
    progress: Callable[[], tuple[str, int]]
    kill: Callable[[], None]
    written: tuple[str, int] = ("", -1)  # (state, sent_bytes) as last written


class LiveRegistry:
    def __init__(self, store: LiveSessions, read: Run, write: Run, node: str) -> None:
        self.store, self.read, self.write, self.node = store, read, write, node
        self.local: dict[str, Local] = {}
        self._opened: dict[str, LiveSession] = {}
        self._closed: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._version: int | None = None
        # Sweeps that still write every session's row again, after a failed write.
        self._resync = 0
        # Accounts ("name@domain") whose sessions write a transcript (cgpop/telemetry.py).
        self.telemetry: frozenset[str] = frozenset()

    # --- sessions (event loop; never waits) ---
    def opened(self, local: Local) -> None:
        self.local[local.row.id] = local
        self._opened[local.row.id] = local.row
        self._write_soon()

    def closed(self, session_id: str) -> None:
        if self.local.pop(session_id, None) is None:
            return
        if self._opened.pop(session_id, None) is None:
            self._closed.append(session_id)
            self._write_soon()

    def _write_soon(self) -> None:
        if self._task is None and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(WRITE_DELAY, self._start_write)

    def _start_write(self) -> None:
        self._timer = None
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._write_queued())

    async def _write_queued(self) -> None:
        try:
            while self._opened or self._closed:
                if not await self.flush(progress=False):
                    break  # the store is unavailable: the sweep tries again
        finally:
            self._task = None

    async def flush(self, *, progress: bool) -> bool:
        """Write what is queued (and, with `progress`, every session's state and sent
        octets) in one transaction. The registry is advisory: a failure is logged, and what
        was queued is written at the next flush (the next login, close or sweep)."""
        opened = list(self._opened.values())
        closed = self._closed
        self._opened, self._closed = {}, []
        for row in opened:
            self.local[row.id].written = (row.state, row.sent_bytes)
        updates = []
        changed = []
        if progress:
            if self._resync:
                opened += self._rows_again({row.id for row in opened})
            for sid, local in self.local.items():
                now = local.progress()
                if now != local.written:
                    updates.append((sid, *now))
                    changed.append((local, now))
        if not (opened or closed or updates):
            return True
        try:
            await self.write(self.store.record_sessions, opened, updates, closed)
        except Exception as exc:
            log.warning("live-session registry not updated: %s", exc)
            for row in opened:
                if row.id in self.local:
                    self._opened.setdefault(row.id, row)
            self._closed[:0] = closed
            self._resync = RESYNC_SWEEPS
            return False
        if progress and self._resync:
            self._resync -= 1
        for local, now in changed:
            local.written = now
        return True

    def _rows_again(self, queued: set[str]) -> list[LiveSession]:
        """After a failed write (a database outage), every session's row is written again at
        the next sweeps: the outage may have outlasted node_timeout, and then this node's rows
        were removed with it when the database came back (docs/cluster.md). A row in place
        stays as it is."""
        rows = []
        for sid, local in self.local.items():
            if sid not in queued:
                state, sent = local.progress()
                rows.append(dataclasses.replace(local.row, state=state, sent_bytes=sent))
        return rows

    async def sweep(self) -> None:
        """At the housekeeping sweep: progress of every session, and rows of dead
        processes removed."""
        await self.flush(progress=True)
        with contextlib.suppress(Exception):
            await self.write(self.store.prune_sessions)

    # --- the poll task ---
    async def run(self, stopping: asyncio.Event) -> None:
        with contextlib.suppress(Exception):
            await self.write(self.store.prune_sessions)
        while not stopping.is_set():
            try:
                await self.poll()
            except Exception as exc:
                log.warning("live-session poll failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), POLL_INTERVAL)

    async def poll(self) -> None:
        version = await self.read(self.store.telemetry_version)
        if version != self._version:
            accounts = await self.read(self.store.telemetry_accounts)
            self.telemetry = frozenset(a.lower() for a in accounts)
            self._version = version
        if not self.local:
            return
        for sid in await self.read(self.store.kill_requests):
            local = self.local.get(sid)
            if local is not None:
                log.info("session %s closed by the administrator", sid)
                local.kill()
