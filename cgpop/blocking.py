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
import contextlib
import queue
import threading
import time
from collections.abc import Awaitable, Callable
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


_Job = tuple[asyncio.AbstractEventLoop, "asyncio.Future[Any]", Callable[..., Any], tuple[Any, ...]]


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # its awaiter was cancelled (a client gone)
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


class Threads:
    """Up to `count` threads (started as work needs them) taking jobs from one queue, each job
    answered straight into an asyncio future on its loop. What ThreadPoolExecutor and
    run_in_executor do, without their second future, its condition variable and the chaining
    between the two: every store call (several per POP session and per LMTP message) pays
    that on the event loop's thread."""

    def __init__(self, count: int, name: str) -> None:
        self.count, self.name = count, name
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._idle = threading.Semaphore(0)  # released by a thread waiting for work
        self._closed = False

    def submit(self, fn: Callable[..., T], args: tuple[Any, ...]) -> asyncio.Future[T]:
        if self._closed:
            raise RuntimeError("cannot run store work after shutdown")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, fn, args))
        if not self._idle.acquire(blocking=False) and len(self._threads) < self.count:
            thread = threading.Thread(
                target=self._work, name=f"{self.name}_{len(self._threads)}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, fn, args = job
            del job
            result: Any = None
            error: BaseException | None = None
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the awaiter, as run_in_executor does
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, result, error)
            del loop, future, fn, args, result, error
            self._idle.release()

    def shutdown(self) -> None:
        """Let the queued work finish, then stop the threads."""
        self._closed = True
        for _ in self._threads:
            self._jobs.put(None)
        for thread in self._threads:
            thread.join()
        self._threads.clear()


class StoreWorkers:
    def __init__(self, readers: int = READERS, observe: Observe | None = None) -> None:
        self._readers = Threads(readers, "cgpop-read")
        self._writer = Threads(1, "cgpop-write")
        self._observe = observe

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on a reader thread."""
        return await self._readers.submit(self._timed(fn), args)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the writer thread, after the writes submitted before it."""
        return await self._writer.submit(self._timed(fn), args)

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
        self._readers.shutdown()
        self._writer.shutdown()
