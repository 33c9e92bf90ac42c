"""The relay worker (xtnd/worker.py) against a real store and SMTP servers on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from accounts.credentials import make_credentials
from cgpop.delivery import Deliverer
from cgpop.store.sqlite import SqliteStore
from tests.xtnd.conftest import Sink
from xtnd import queue
from xtnd.worker import RelayWorker, Settings

T = TypeVar("T")
MESSAGE = b"From: joe@example.com\r\nTo: x@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.store = SqliteStore(tmp_path / "data")
        self.store.add_domain("example.com")
        self.store.add_account("example.com", "joe", make_credentials("secret"))
        self.deliverer = Deliverer(self.store, default_domain="example.com")
        self.pool = ThreadPoolExecutor(max_workers=1)

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    def worker(self, port: int, **settings: Any) -> RelayWorker:
        base: dict[str, Any] = {"retry_schedule": (0.1,), "poll_interval": 60.0, "timeout": 5.0}
        return RelayWorker(
            store=self.store,
            deliverer=self.deliverer,
            write=self.write,
            settings=Settings(
                hostname="test.local", relay=("127.0.0.1", port), **{**base, **settings}
            ),
        )

    def put(self, *recipients: str, now: float | None = None) -> int:
        with self.store.transaction() as conn:
            return queue.enqueue(
                conn,
                sender="joe@example.com",
                account="joe@example.com",
                message=MESSAGE,
                recipients=recipients,
                now=time.time() if now is None else now,
            )

    def inbox(self) -> list[bytes]:
        box = self.store.get_mailbox("example.com", "joe", "INBOX")
        assert box is not None
        snap = self.store.open_maildrop(box, None)
        try:
            out = []
            for i in range(len(snap)):
                stored = self.store.read_message(snap, i)
                assert stored.data is not None
                out.append(stored.prefix + stored.data)
            return out
        finally:
            self.store.close_maildrop(snap)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.pool.shutdown()
    w.store.close()


async def until(what: Callable[[], Any], timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (got := what()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
    return got


def run(coro: Awaitable[T]) -> T:
    return asyncio.run(coro)  # type: ignore[arg-type]


def test_rows_left_sending_are_sent_again_at_start(world: World, sink: Sink) -> None:
    """A crash between send() and the bookkeeping: at-least-once, the row is requeued."""
    world.put("x@example.org")
    queue.claim_due(world.store, time.time(), 10)  # "sending", then the process died

    async def main() -> None:
        worker = world.worker(sink.port)
        worker.start()
        await until(lambda: sink.handler.messages)
        await worker.stop()

    run(main())
    assert sink.handler.messages[0].rcpt_tos == ["x@example.org"]
    assert queue.list_queue(world.store) == []


def test_wake_delivers_without_waiting_for_the_poll(world: World, sink: Sink) -> None:
    async def main() -> float:
        worker = world.worker(sink.port, poll_interval=600.0)
        worker.start()
        await until(lambda: queue.next_due(world.store) is None)  # the first pass is done
        await asyncio.sleep(0)
        world.put("x@example.org")
        started = time.monotonic()
        worker.wake()
        await until(lambda: sink.handler.messages)
        await worker.stop()
        return time.monotonic() - started

    assert run(main()) < 5.0


def test_uncertain_outcome_is_retried_not_bounced(
    world: World, scripted: Callable[[str], int]
) -> None:
    port = scripted("after-data-end")
    mid = world.put("x@example.org")

    async def main() -> None:
        await world.worker(port, retry_schedule=(3600.0,)).run_once()

    run(main())
    [entry] = queue.list_queue(world.store)
    [r] = entry.recipients
    assert (entry.id, r.state, r.attempts) == (mid, "queued", 1)
    assert r.next_attempt > time.time() + 3000
    assert world.inbox() == []


def test_too_old_message_bounces_with_4_4_7(world: World, sink: Sink) -> None:
    world.put("temp@example.org", now=time.time() - 100)

    async def main() -> None:
        await world.worker(sink.port, max_queue_age=50.0).run_once()

    run(main())
    [dsn] = world.inbox()
    assert b"Return-Path: <>" in dsn
    assert b"Action: failed" in dsn and b"Status: 4.4.7" in dsn
    assert b"Final-Recipient: rfc822; temp@example.org" in dsn
    assert queue.list_queue(world.store) == []


def test_smarthost_with_starttls_and_auth(world: World, tls_sink: Sink) -> None:
    """`relay_user` set and `relay_starttls` off: STARTTLS is still used when offered
    (opportunistic), and AUTH happens inside it (the sink refuses AUTH in the clear)."""
    world.put("x@example.org")

    async def main() -> None:
        await world.worker(tls_sink.port, relay_auth=("joe", "secret")).run_once()

    run(main())
    [got] = tls_sink.handler.messages
    assert got.rcpt_tos == ["x@example.org"]
    assert queue.list_queue(world.store) == []


def test_wrong_smarthost_password_is_retried(world: World, tls_sink: Sink) -> None:
    world.put("x@example.org")

    async def main() -> None:
        await world.worker(
            tls_sink.port, relay_auth=("joe", "wrong"), retry_schedule=(3600.0,)
        ).run_once()

    run(main())
    [entry] = queue.list_queue(world.store)
    assert entry.recipients[0].state == "queued"
    assert "AUTH failed" in (entry.recipients[0].last_error or "")
    assert tls_sink.handler.messages == [] and world.inbox() == []
