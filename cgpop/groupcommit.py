"""Group commit: items submitted while one batch is being written join the next one, so many
sessions' writes share one transaction (and, for deliveries, one fsync)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from cgpop.store.api import TemporaryFailure

Item = TypeVar("Item")
R = TypeVar("R")


class GroupCommit(Generic[Item, R]):
    """`write` stores one batch (off the event loop) and returns one result per item; each
    submitter's future gets its own result, or the batch's exception.

    With `linger`, a batch waits that many seconds for more items before it is written (fewer,
    larger transactions for writes nobody waits on, such as \\Seen); `hurry()` ends the wait
    at once."""

    def __init__(
        self,
        write: Callable[[list[Item]], Awaitable[list[R]]],
        max_batch: int = 256,
        linger: float = 0.0,
    ) -> None:
        self.write = write
        self.max_batch = max_batch
        self.linger = linger
        # (item, its submitter's future; None for an item nobody waits for, see `add`)
        self.pending: list[tuple[Item, asyncio.Future[R] | None]] = []
        self.task: asyncio.Task[None] | None = None
        self._wake: asyncio.Future[None] | None = None  # set while a batch lingers

    def hurry(self) -> None:
        """Write what is pending now, without waiting out the linger."""
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    async def _linger(self) -> None:
        loop = asyncio.get_running_loop()
        self._wake = wake = loop.create_future()
        timer = loop.call_later(self.linger, self.hurry)
        try:
            await wake
        finally:
            timer.cancel()
            self._wake = None

    def submit(self, item: Item) -> asyncio.Future[R]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[R] = loop.create_future()
        self.pending.append((item, future))
        if self.task is None:
            self.task = loop.create_task(self._run())
        return future

    def add(self, item: Item) -> None:
        """Queue an item nobody waits for (a \\Seen mark per RETR): no future to make and
        settle; a failed batch is the write's own concern (see `advisory`)."""
        self.pending.append((item, None))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        try:
            while self.pending:
                if self.linger > 0 and len(self.pending) < self.max_batch:
                    await self._linger()
                batch = self.pending[: self.max_batch]
                del self.pending[: self.max_batch]
                try:
                    results = await self.write([i for i, _ in batch])
                except Exception as exc:
                    for _, future in batch:
                        # Not done: its submitter was cancelled (client gone).
                        if future is not None and not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), result in zip(batch, results, strict=True):
                    if future is not None and not future.done():
                        future.set_result(result)
        finally:
            self.task = None

    async def drain(self) -> None:
        while self.task is not None:
            await asyncio.shield(self.task)


def advisory(
    write: Callable[[list[Item]], object], what: str
) -> Callable[[list[Item]], list[None]]:
    """A batch write whose failure is logged, never an error for the waiters (\\Seen is
    advisory: a RETR succeeded whether or not its flag was stored)."""

    def run(items: list[Item]) -> list[None]:
        try:
            write(items)
        except TemporaryFailure as exc:  # the store cannot be used now (database down)
            logging.getLogger("cgpop").warning(
                "could not set %s on %d messages: %s", what, len(items), exc
            )
        except Exception:
            logging.getLogger("cgpop").exception(
                "could not set %s on %d messages", what, len(items)
            )
        return [None] * len(items)

    return run
