"""Where blocking store work runs: a pool of reader threads and one writer thread.

The one place the asyncio shell leaves the event loop for the store. Readers run in parallel
(SQLite's WAL lets them); every write goes through the single writer so writes never contend
for the database lock, and a group commit (cgpop/groupcommit.py) can batch them. Parts that
need them are given `read` or `write` as a `Run`.

Being the one place, it is where `cgpop_store_seconds{operation}` is measured (cgpop/metrics.py):
each call's time on its thread, labelled with the function's name (a set the code bounds).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, TypeVar

T = TypeVar("T")


class Run(Protocol):
    """Runs blocking `fn(*args)` off the event loop and returns its result (StoreWorkers.read
    and StoreWorkers.write have this shape)."""

    def __call__(self, fn: Callable[..., T], /, *args: Any) -> Awaitable[T]: ...


READERS = 4
# (operation, seconds) of each call, from the thread that ran it.
Observe = Callable[[str, float], None]


def operation_name(fn: Callable[..., Any]) -> str:
    """A call's label: the function's name; a lambda is named after the function it is in."""
    name = getattr(fn, "__name__", "") or type(fn).__name__
    if name == "<lambda>":
        outer = getattr(fn, "__qualname__", "").removesuffix(".<locals>.<lambda>")
        name = outer.rpartition(".")[2] or name
    return name


class StoreWorkers:
    def __init__(self, readers: int = READERS, observe: Observe | None = None) -> None:
        self._readers = ThreadPoolExecutor(max_workers=readers, thread_name_prefix="cgpop-read")
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgpop-write")
        self._observe = observe

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on a reader thread."""
        return await asyncio.get_running_loop().run_in_executor(
            self._readers, self._timed(fn), *args
        )

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the writer thread, after the writes submitted before it."""
        return await asyncio.get_running_loop().run_in_executor(
            self._writer, self._timed(fn), *args
        )

    def _timed(self, fn: Callable[..., T]) -> Callable[..., T]:
        observe = self._observe
        if observe is None:
            return fn
        operation = operation_name(fn)

        def timed(*args: Any) -> T:
            start = time.perf_counter()
            try:
                return fn(*args)
            finally:
                observe(operation, time.perf_counter() - start)

        return timed

    def shutdown(self) -> None:
        """Wait for the work under way, then stop the threads."""
        self._readers.shutdown(wait=True)
        self._writer.shutdown(wait=True)
