"""The periodic housekeeping of a running server, on one timer: autologout of idle sessions,
the collector after sessions ended or expunged, and the hourly pruning of duplicate records."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from cgpop.blocking import Run
from cgpop.pop3conn import ServerState

SWEEP_INTERVAL = 15.0
PRUNE_INTERVAL = 3600.0


class Sweeper:
    def __init__(
        self,
        state: ServerState,
        idle_timeout: float,
        write: Run,
        collect: Callable[[], int],
        prune_duplicates: Callable[[], None],
        registry_sweep: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.state, self.idle_timeout, self.write = state, idle_timeout, write
        self.collect, self.prune_duplicates = collect, prune_duplicates
        # The live-session registry's flush of state and sent octets (cgpop/livesessions.py).
        self.registry_sweep = registry_sweep
        self._collect_wanted = False

    def collect_soon(self) -> None:
        """Messages may have become collectable; the collector runs on the next round."""
        self._collect_wanted = True

    async def run(self, stopping: asyncio.Event) -> None:
        """Until `stopping` is set. Autologout (RFC 1939 section 3): idle sessions are closed
        silently. One timer for all connections instead of one per read keeps the per-session
        cost down."""
        next_prune = 0.0
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in list(self.state.connections):
                if now - conn.last_active > self.idle_timeout:
                    conn.writer.transport.abort()
            if self.registry_sweep is not None:
                with contextlib.suppress(Exception):
                    await self.registry_sweep()
            if self._collect_wanted:
                self._collect_wanted = False
                try:
                    await self.write(self.collect)
                except Exception:  # the store unavailable (database down): the next round
                    self._collect_wanted = True
            if now >= next_prune:
                # Duplicate-suppression records older than the window are of no more use.
                next_prune = now + PRUNE_INTERVAL
                with contextlib.suppress(Exception):
                    await self.write(self.prune_duplicates)
