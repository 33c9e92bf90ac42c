"""The live-session registry (cgpop/livesessions.py) through a store outage: what a failed write
carried (logins, closes) is written later, not dropped, and the rows the outage may have cost
(a node declared dead has its rows removed) are written again at the next sweeps."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from cgpop.livesessions import RESYNC_SWEEPS, LiveRegistry, Local
from cgpop.store.api import LiveSession, TemporaryFailure


class Table:
    """A store's registry rows, unavailable while `down`."""

    def __init__(self) -> None:
        self.rows: dict[str, LiveSession] = {}
        self.down = False

    def record_sessions(
        self,
        opened: Sequence[LiveSession],
        progress: Sequence[tuple[str, str, int]],
        closed: Sequence[str],
    ) -> None:
        if self.down:
            raise TemporaryFailure("database unavailable")
        for row in opened:
            self.rows.setdefault(row.id, row)  # a row in place stays
        for sid, state, sent in progress:
            if sid in self.rows:
                self.rows[sid] = dataclasses.replace(self.rows[sid], state=state, sent_bytes=sent)
        for sid in closed:
            self.rows.pop(sid, None)

    def prune_sessions(self) -> int:
        return 0


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def local(sid: str, sent: list[int]) -> Local:
    row = LiveSession(sid, "pop-a", "127.0.0.1:1", "joe", "joe@example.com", "INBOX",
                      "TRANSACTION", 0.0, 0, False)  # fmt: skip
    return Local(row, lambda: ("TRANSACTION", sent[0]), lambda: None)


def test_registry_writes_what_an_outage_held_back_and_restores_lost_rows() -> None:
    async def scenario() -> None:
        table = Table()
        registry = LiveRegistry(table, run, run, "pop-a")  # type: ignore[arg-type]
        sent = [0]
        registry.opened(local("a", sent))
        registry.opened(local("b", sent))
        await registry.flush(progress=False)
        assert set(table.rows) == {"a", "b"}

        table.down = True
        registry.closed("a")
        registry.opened(local("c", sent))
        await asyncio.sleep(0)  # the write task runs, fails, and stops
        await registry.sweep()  # fails too
        assert set(table.rows) == {"a", "b"}

        table.down = False
        sent[0] = 500
        await registry.sweep()
        assert set(table.rows) == {"b", "c"}  # a's close and c's login were kept
        assert {r.sent_bytes for r in table.rows.values()} == {500}
        # The outage outlasted node_timeout: the node was declared dead and its rows removed
        # before its heartbeat came (possibly after the first sweep): they are written again.
        for _ in range(RESYNC_SWEEPS - 1):
            table.rows.clear()
            await registry.sweep()
            assert set(table.rows) == {"b", "c"}
            assert {r.sent_bytes for r in table.rows.values()} == {500}

    asyncio.run(scenario())
