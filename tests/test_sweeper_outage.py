"""The sweeper (cgpop/sweeper.py) through a store outage: a collection that fails because the
store is unavailable is tried again at the next round, not forgotten until the next expunge."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from cgpop import sweeper
from cgpop.pop3conn import ServerState
from cgpop.store.api import TemporaryFailure


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def test_failed_collection_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sweeper, "SWEEP_INTERVAL", 0.01)
    calls: list[str] = []

    async def scenario() -> None:
        stopping = asyncio.Event()

        def collect() -> int:
            calls.append("collect")
            if len(calls) == 1:
                raise TemporaryFailure("database unavailable")
            stopping.set()
            return 1

        sweep = sweeper.Sweeper(ServerState(), 600.0, run, collect, lambda: None)
        sweep.collect_soon()
        await asyncio.wait_for(sweep.run(stopping), 10)

    asyncio.run(scenario())
    assert calls == ["collect", "collect"]
