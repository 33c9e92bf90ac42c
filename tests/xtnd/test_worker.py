"""The relay worker (xtnd/worker.py) against a real store and SMTP servers on loopback."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from accounts.credentials import make_credentials
from cgpop.config import Endpoint, XtndConfig
from cgpop.delivery import Deliverer, Result, Status
from cgpop.store.api import Outbound, State, TemporaryFailure, Update
from cgpop.store.sqlite import SqliteStore
from tests.xtnd.conftest import Sink, SinkHandler, _start, start_dns
from xtnd import worker
from xtnd.service import settings_from
from xtnd.worker import RelayWorker

T = TypeVar("T")
MESSAGE = b"From: joe@example.com\r\nTo: x@example.org\r\nSubject: hi\r\n\r\nbody\r\n"


class World:
    def __init__(self, tmp_path: Path) -> None:
        self.store = SqliteStore(tmp_path / "data")
        self.store.add_domain("example.com")
        self.store.add_account("example.com", "joe", make_credentials("secret"))
        self.deliverer = Deliverer(self.store, default_domain="example.com")
        # As the Gateway: one writer thread, readers beside it.
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.readers = ThreadPoolExecutor(max_workers=2)
        self.writes: list[str] = []  # names of the functions run on the writer
        self.reads: list[tuple[str, Any]] = []  # (function name, result) of reader calls

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        result = await asyncio.get_running_loop().run_in_executor(self.readers, fn, *args)
        self.reads.append((getattr(fn, "__name__", ""), result))
        return result

    async def write(self, fn: Callable[..., T], *args: Any) -> T:
        self.writes.append(getattr(fn, "__name__", ""))
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def deliver(self, sender: str, recipients: Sequence[str], message: bytes) -> list[Result]:
        return await self.write(self.deliverer.deliver, sender, recipients, message)

    def worker(self, port: int | None, deliver: Any = None, **xtnd: Any) -> RelayWorker:
        """A worker with `[xtnd]` defaults but for the keys given (relay: the sink's port)."""
        base: dict[str, Any] = {
            "relay": Endpoint("127.0.0.1", port) if port is not None else None,
            "retry_schedule": (0.1,),
            "queue_poll_interval": 60.0,
            "relay_timeout": 5.0,
        }
        config = dataclasses.replace(XtndConfig(), **{**base, **xtnd})
        return RelayWorker(
            store=self.store,
            deliver=deliver or self.deliver,
            read=self.read,
            write=self.write,
            settings=settings_from(config, "test.local"),
        )

    def put(self, *recipients: str, now: float | None = None) -> int:
        outbound = Outbound("joe@example.com", "joe@example.com", MESSAGE, recipients)
        return self.store.enqueue(outbound, time.time() if now is None else now)

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
    w.readers.shutdown()
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
    world.store.claim_due(time.time(), 10)  # "sending", then the process died

    async def main() -> None:
        worker = world.worker(sink.port)
        worker.start()
        await until(lambda: sink.handler.messages)
        await worker.stop()

    run(main())
    assert sink.handler.messages[0].rcpt_tos == ["x@example.org"]
    assert world.store.list_queue() == []


def test_wake_delivers_without_waiting_for_the_poll(world: World, sink: Sink) -> None:
    """With a ten-minute poll, only wake() can make the worker look at the queue again."""
    world.put("first@example.org")

    def idle() -> bool:
        # The worker read "nothing queued" after the first message was recorded: it is (about
        # to be) waiting for the poll interval or a wake().
        return any(name == "next_due" and due is None for name, due in world.reads)

    async def main() -> None:
        worker = world.worker(sink.port, queue_poll_interval=600.0)
        worker.start()
        try:
            await until(idle)
            world.put("second@example.org")
            worker.wake()
            await until(lambda: len(sink.handler.messages) == 2, timeout=3.0)
        finally:
            await worker.stop()

    run(main())
    assert [m.rcpt_tos for m in sink.handler.messages] == [
        ["first@example.org"],
        ["second@example.org"],
    ]


def test_idle_worker_takes_no_write_lock(world: World, sink: Sink) -> None:
    world.put("later@example.org", now=time.time() + 3600)

    async def main() -> None:
        w = world.worker(sink.port)
        for _ in range(3):
            await w.run_once()

    run(main())
    assert world.writes == []
    assert sink.handler.messages == []


def test_failed_bookkeeping_requeues_and_the_pass_goes_on(
    world: World, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Database busy while recording one job: its recipient is queued again (at-least-once),
    the other job is recorded, and the pass still delivers the DSN that was due."""
    failed = world.put("perm@example.org", now=time.time() - 10)
    world.store.claim_due(time.time(), 10)
    world.store.record_attempt(failed, [Update("perm@example.org", State.FAILED, 0, "5.1.1 no")])
    busy = world.put("busy@example.org")
    world.put("fine@example.org")
    real_record = world.store.record_attempt

    def record(message_id: int, updates: Any) -> None:
        if message_id == busy:
            raise TemporaryFailure("database busy: database is locked")
        real_record(message_id, updates)

    monkeypatch.setattr(world.store, "record_attempt", record)

    async def main() -> None:
        await world.worker(sink.port, retry_schedule=(3600.0,)).run_once()

    run(main())
    rows = {e.id: e.recipients[0] for e in world.store.list_queue()}
    assert set(rows) == {busy}  # `fine` is done, `failed` bounced
    assert (rows[busy].state, rows[busy].attempts) == ("queued", 1)
    assert rows[busy].next_attempt > time.time() + 3000
    assert sorted(r for m in sink.handler.messages for r in m.rcpt_tos) == [
        "busy@example.org",
        "fine@example.org",
    ]
    [dsn] = world.inbox()
    assert b"Final-Recipient: rfc822; perm@example.org" in dsn


def test_attempt_unrecorded_in_an_outage_is_requeued_when_the_store_is_back(
    world: World, sink: Sink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store unavailable both to record an attempt and to requeue it (a database outage
    that began during the attempt): the recipient is not left claimed until a restart; the
    first pass once the store answers queues it again (at-least-once)."""
    world.put("x@example.org")

    def unavailable(*args: object) -> None:
        raise TemporaryFailure("database unavailable")

    def state() -> tuple[str, int]:
        [entry] = world.store.list_queue()
        return entry.recipients[0].state, entry.recipients[0].attempts

    async def main() -> None:
        relay = world.worker(sink.port, retry_schedule=(3600.0,))
        with monkeypatch.context() as m:
            m.setattr(world.store, "record_attempt", unavailable)
            m.setattr(world.store, "requeue", unavailable)
            await relay.run_once()
        assert state() == ("sending", 0)  # claimed, the outcome unrecorded
        await relay.run_once()
        assert state() == ("queued", 1)

    run(main())
    assert [r for m in sink.handler.messages for r in m.rcpt_tos] == ["x@example.org"]


def _fail(store: SqliteStore, *recipients: str, world: World) -> list[int]:
    ids = [world.put(r, now=time.time() - 10) for r in recipients]
    store.claim_due(time.time(), 10)
    for mid, r in zip(ids, recipients, strict=True):
        store.record_attempt(mid, [Update(r, State.FAILED, 0, "5.1.1 no such user")])
    return ids


def test_one_failing_bounce_does_not_stop_the_others(world: World, sink: Sink) -> None:
    first, _ = _fail(world.store, "a@example.org", "b@example.org", world=world)
    calls: list[str] = []

    async def deliver(sender: str, recipients: Sequence[str], message: bytes) -> list[Result]:
        calls.append(sender)
        if len(calls) == 1:
            raise OSError("disk full")
        return await world.deliver(sender, recipients, message)

    async def main() -> None:
        await world.worker(sink.port, deliver=deliver, retry_schedule=(3600.0,)).run_once()

    run(main())
    [dsn] = world.inbox()
    assert b"Final-Recipient: rfc822; b@example.org" in dsn
    [entry] = world.store.list_queue()  # the first waits for its retry
    assert entry.id == first and entry.recipients[0].state == "failed"
    assert entry.recipients[0].next_attempt > time.time() + 3000


def test_temporarily_failing_dsn_is_not_retried_every_pass(world: World, sink: Sink) -> None:
    _fail(world.store, "a@example.org", world=world)
    tries: list[int] = []

    async def deliver(sender: str, recipients: Sequence[str], message: bytes) -> list[Result]:
        tries.append(1)
        return [Result(r, Status.TEMPORARY) for r in recipients]

    async def main() -> None:
        # The failed row had one relay attempt; DSN attempts continue its schedule.
        w = world.worker(sink.port, deliver=deliver, retry_schedule=(0.3, 0.3, 3600.0))
        await w.run_once()
        await w.run_once()  # too early: the DSN waits for its retry time
        assert len(tries) == 1
        await asyncio.sleep(0.4)
        await w.run_once()

    run(main())
    assert len(tries) == 2
    [entry] = world.store.list_queue()
    assert entry.recipients[0].state == "failed"
    assert entry.recipients[0].next_attempt > time.time() + 3000  # the backoff grew


def test_connections_are_bounded_across_domains(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One message to many domains: at most CONCURRENCY SMTP connections at once."""

    class Slow(SinkHandler):
        active = 0
        most = 0

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            Slow.active += 1
            Slow.most = max(Slow.most, Slow.active)
            await asyncio.sleep(0.2)
            Slow.active -= 1
            return await super().handle_DATA(server, session, envelope)

    monkeypatch.setattr(worker, "CONCURRENCY", 2)
    domains = [f"d{i}.example" for i in range(6)]
    world.put(*(f"user@{d}" for d in domains))
    zone: Any = {(f"{d}.", "MX"): ["10 mx.example."] for d in domains}
    zone[("mx.example.", "A")] = ["127.0.0.1"]
    sinks = _start(Slow())
    sink = next(sinks)

    async def main() -> None:
        transport, _, dns_port = await start_dns(zone)
        try:
            w = world.worker(
                None, dns_servers=("127.0.0.1",), dns_port=dns_port, smtp_port=sink.port
            )
            await w.run_once()
        finally:
            transport.close()

    try:
        run(main())
    finally:
        sinks.close()
    assert len(sink.handler.messages) == 6
    assert Slow.most == 2


def test_uncertain_outcome_is_retried_not_bounced(
    world: World, scripted: Callable[[str], int]
) -> None:
    port = scripted("after-data-end")
    mid = world.put("x@example.org")

    async def main() -> None:
        await world.worker(port, retry_schedule=(3600.0,)).run_once()

    run(main())
    [entry] = world.store.list_queue()
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
    assert world.store.list_queue() == []


def test_smarthost_with_starttls_and_auth(world: World, tls_sink: Sink) -> None:
    """`relay_user` set and `relay_starttls` off: STARTTLS is still used when offered
    (opportunistic), and AUTH happens inside it (the sink refuses AUTH in the clear)."""
    world.put("x@example.org")

    async def main() -> None:
        await world.worker(tls_sink.port, relay_user="joe", relay_password="secret").run_once()

    run(main())
    [got] = tls_sink.handler.messages
    assert got.rcpt_tos == ["x@example.org"]
    assert world.store.list_queue() == []


def test_wrong_smarthost_password_is_retried(world: World, tls_sink: Sink) -> None:
    world.put("x@example.org")

    async def main() -> None:
        await world.worker(
            tls_sink.port, relay_user="joe", relay_password="wrong", retry_schedule=(3600.0,)
        ).run_once()

    run(main())
    [entry] = world.store.list_queue()
    assert entry.recipients[0].state == "queued"
    assert "AUTH failed" in (entry.recipients[0].last_error or "")
    assert tls_sink.handler.messages == [] and world.inbox() == []


def test_settings_repr_hides_the_relay_password(world: World) -> None:
    w = world.worker(1, relay_user="joe", relay_password="s3cret-pw")
    assert "s3cret-pw" not in repr(w.settings)
    assert w.settings.relay_auth == ("joe", "s3cret-pw")
