"""The store's worker threads (cgpop/blocking.py): results and errors reach the awaiter, the
writer keeps submission order, a gone awaiter strands nothing, shutdown finishes the queue."""

from __future__ import annotations

import asyncio
import threading

import pytest

from cgpop.blocking import StoreWorkers


def test_results_errors_order_and_threads() -> None:
    workers = StoreWorkers(readers=2)
    done: list[int] = []

    def record(n: int) -> int:
        done.append(n)
        return n * 10

    def fail() -> None:
        raise OSError("disk gone")

    async def scenario() -> None:
        assert await workers.read(lambda: threading.current_thread().name) != (
            threading.main_thread().name
        )
        with pytest.raises(OSError, match="disk gone"):
            await workers.read(fail)
        # The single writer runs writes in the order they were submitted.
        assert await asyncio.gather(*(workers.write(record, n) for n in range(20))) == [
            n * 10 for n in range(20)
        ]
        assert done == list(range(20))

    try:
        asyncio.run(scenario())
    finally:
        workers.shutdown()
    with pytest.raises(RuntimeError):
        asyncio.run(workers.read(int))


def test_cancelled_awaiter_and_shutdown_finish_the_queue() -> None:
    workers = StoreWorkers(readers=1)
    release = threading.Event()
    finished: list[str] = []

    def slow(name: str) -> str:
        release.wait(10)
        finished.append(name)
        return name

    async def scenario() -> None:
        gone = asyncio.ensure_future(workers.write(slow, "gone"))
        kept = asyncio.ensure_future(workers.write(slow, "kept"))
        await asyncio.sleep(0)
        gone.cancel()  # its client went away; the write still happens, the next one too
        release.set()
        assert await asyncio.wait_for(kept, 10) == "kept"

    asyncio.run(scenario())
    workers.shutdown()
    assert finished == ["gone", "kept"]
