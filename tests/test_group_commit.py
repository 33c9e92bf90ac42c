"""Group commit: several deliveries in one transaction, isolated when one of them fails."""

from __future__ import annotations

import smtplib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from accounts.credentials import make_credentials
from cgpop.delivery import Deliverer, Status
from cgpop.store.api import Copy, Stored, StoreError
from cgpop.store.sqlite import SqliteStore
from tests.conftest import LiveServer, message


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "data", duplicate_window=3600)
    s.add_domain("example.com")
    for name in ("joe", "ann"):
        s.add_account("example.com", name, make_credentials("pw", iterations=1))
    return s


def test_deliver_many_commits_all_with_duplicates_per_item(store: SqliteStore) -> None:
    joe = store.get_mailbox("example.com", "joe", "INBOX")
    ann = store.get_mailbox("example.com", "ann", "INBOX")
    assert joe is not None and ann is not None

    def copy(mailbox_id: int, mid: str) -> Copy:
        return Copy(mailbox_id, b"X-Real-To: <x@example.com>\r\n", "x", None, mid, str(mailbox_id))

    big = b"Subject: big\r\n\r\n" + b"y" * 300_000 + b"\r\n"
    out = store.deliver_many(
        [
            (b"Subject: 1\r\n\r\none\r\n", [copy(joe.id, "<1@x>"), copy(ann.id, "<1@x>")]),
            (b"Subject: 1\r\n\r\none\r\n", [copy(joe.id, "<1@x>")]),  # duplicate within the batch
            (big, [copy(ann.id, "<2@x>")]),
            (b"Subject: none\r\n\r\n", []),
        ]
    )
    assert out == [[True, True], [False], [True], []]
    assert [m.uid for m in store.list_messages(joe)] == [1]
    assert [m.uid for m in store.list_messages(ann)] == [1, 2]
    assert len(list((store.bodies_dir).glob("??/*"))) == 1  # only the big body is a file


def test_a_failing_message_does_not_fail_the_others(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliverer = Deliverer(store, default_domain="example.com")
    real = store.deliver_many

    def fail_on_poison(
        items: list[tuple[bytes, list[Copy]]], warn_percent: int | None = None
    ) -> list[list[Stored]]:
        if any(b"poison" in m for m, _ in items):
            raise StoreError("disk trouble")
        return real(items, warn_percent)

    monkeypatch.setattr(store, "deliver_many", fail_on_poison)
    results = deliverer.deliver_many(
        [
            ("a@remote", ["joe@example.com"], message("fine")),
            ("a@remote", ["ann@example.com", "nobody@example.com"], message("poison")),
            ("a@remote", ["ann@example.com"], message("also fine")),
        ]
    )
    assert [[r.status for r in rs] for rs in results] == [
        [Status.DELIVERED],
        [Status.TEMPORARY, Status.UNKNOWN],
        [Status.DELIVERED],
    ]


def test_concurrent_lmtp_senders_all_get_their_replies(server: LiveServer) -> None:
    def send(i: int) -> dict[str, tuple[int, bytes]]:
        with smtplib.LMTP(server.host, server.port("lmtp"), timeout=20) as lmtp:
            return lmtp.sendmail(
                "s@remote.test", ["joe@example.com"], message(f"n{i}", message_id=f"<{i}@t>")
            )

    with ThreadPoolExecutor(10) as pool:
        refused = list(pool.map(send, range(40)))
    assert refused == [{}] * 40
    joe = server.store.get_mailbox("example.com", "joe", "INBOX")
    assert len(server.call(server.store.list_messages, joe)) == 40


def test_batcher_answers_each_caller(server_factory: Callable[..., LiveServer]) -> None:
    srv = server_factory()
    srv.add_account("joe@example.com", "pw")
    import asyncio

    async def many() -> list[list[Status]]:
        jobs = [
            srv.gateway.deliver("s@x", [rcpt], message(rcpt))
            for rcpt in ("joe@example.com", "nobody@example.com", "joe@example.com")
        ]
        return [[r.status for r in rs] for rs in await asyncio.gather(*jobs)]

    got = asyncio.run_coroutine_threadsafe(many(), srv.loop).result(30)
    assert got == [[Status.DELIVERED], [Status.UNKNOWN], [Status.DELIVERED]]


def test_old_duplicate_records_are_pruned(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    joe = store.get_mailbox("example.com", "joe", "INBOX")
    assert joe is not None
    copy = Copy(joe.id, b"", None, None, "<old@x>", "k")
    store.deliver(message("old"), [copy])
    count = "SELECT count(*) FROM duplicates"
    assert store.connection().execute(count).fetchone()[0] == 1
    store.prune_duplicates()  # still inside the window: kept
    assert store.connection().execute(count).fetchone()[0] == 1
    later = time.time() + 7200  # the fixture's window is one hour
    monkeypatch.setattr("cgpop.store.sqlite._now", lambda: later)
    store.prune_duplicates()
    assert store.connection().execute(count).fetchone()[0] == 0


def test_lmtp_answers_451_not_a_traceback_when_delivery_breaks(
    server: LiveServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> object:
        raise RuntimeError("store exploded")

    monkeypatch.setattr(server.gateway.deliverer, "prepare", broken)
    with smtplib.LMTP(server.host, server.port("lmtp"), timeout=20) as lmtp:
        lmtp.ehlo_or_helo_if_needed()
        lmtp.mail("s@remote.test")
        assert lmtp.rcpt("joe@example.com")[0] == 250
        code, text = lmtp.data(message("x"))
    assert code == 451
    assert b"RuntimeError" not in text and b"exploded" not in text
