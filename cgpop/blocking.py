"""Where blocking store work runs: a pool of reader threads and one writer thread.

The one place the asyncio shell leaves the event loop for the store. Readers run in parallel
(SQLite's WAL lets them); every write goes through the single writer so writes never contend
for the database lock, and a group commit (cgpop/groupcommit.py) can batch them. Parts that
need them are given `read` or `write` as a `Run`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Run(Protocol):
    """Runs blocking `fn(*args)` off the event loop and returns its result (StoreWorkers.read
    and StoreWorkers.write have this shape)."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]: ...


READERS = 4


class StoreWorkers:
    def __init__(self, readers: int = READERS) -> None:
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="cgpop-read")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgpop-write")

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on a reader thread."""
        return await asyncio.get_running_loop().run_in_executor(self._readers, fn, *args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the writer thread, after the writes submitted before it."""
        return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)

    def shutdown(self) -> None:
        """Wait for the work under way, then stop the threads."""
        self._readers.shutdown(wait=True)
        self._writer.shutdown(wait=True)
