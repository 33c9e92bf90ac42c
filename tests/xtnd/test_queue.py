"""The queue's bookkeeping (xtnd/queue.py) and the rate limit (xtnd/ratelimit.py) on a real
SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from cgpop.store.sqlite import SqliteStore
from xtnd import queue, ratelimit
from xtnd.queue import State, Update


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "data")


def put(store: SqliteStore, *recipients: str, now: float = 100.0) -> int:
    with store.transaction() as conn:
        return queue.enqueue(
            conn,
            sender="joe@example.com",
            account="joe@example.com",
            message=b"Subject: x\r\n\r\nbody\r\n",
            recipients=recipients,
            now=now,
        )


def states(store: SqliteStore) -> dict[str, tuple[str, int]]:
    return {
        r.recipient: (r.state, r.attempts) for e in queue.list_queue(store) for r in e.recipients
    }


def test_claim_marks_sending_and_only_takes_due(store: SqliteStore) -> None:
    first = put(store, "a@x.org", "b@x.org", now=100.0)
    put(store, "c@x.org", now=500.0)
    [job] = queue.claim_due(store, 200.0, 10)
    assert (job.message_id, job.recipients, job.attempts) == (first, ("a@x.org", "b@x.org"), (0, 0))
    assert job.message == b"Subject: x\r\n\r\nbody\r\n"
    assert states(store) == {
        "a@x.org": ("sending", 0),
        "b@x.org": ("sending", 0),
        "c@x.org": ("queued", 0),
    }
    assert queue.claim_due(store, 200.0, 10) == []  # nothing claimed twice
    assert queue.next_due(store) == 500.0


def test_recover_requeues_sending_rows(store: SqliteStore) -> None:
    put(store, "a@x.org")
    queue.claim_due(store, 200.0, 10)
    assert queue.recover(store, 300.0) == 1
    assert states(store) == {"a@x.org": ("queued", 0)}
    [job] = queue.claim_due(store, 300.0, 10)
    assert job.recipients == ("a@x.org",)


def test_record_retry_sent_and_collect(store: SqliteStore) -> None:
    mid = put(store, "a@x.org", "b@x.org")
    queue.claim_due(store, 200.0, 10)
    queue.record(
        store,
        mid,
        [Update("a@x.org", State.SENT), Update("b@x.org", State.QUEUED, 900.0, "4.2.1 busy")],
    )
    assert states(store) == {"a@x.org": ("sent", 1), "b@x.org": ("queued", 1)}
    assert queue.next_due(store) == 900.0
    [job] = queue.claim_due(store, 900.0, 10)
    assert job.attempts == (1,)
    queue.record(store, mid, [Update("b@x.org", State.SENT)])
    assert queue.list_queue(store) == []  # all sent: the message is gone


def test_failed_rows_wait_for_their_bounce(store: SqliteStore) -> None:
    mid = put(store, "a@x.org", "b@x.org")
    queue.claim_due(store, 200.0, 10)
    queue.record(
        store,
        mid,
        [
            Update("a@x.org", State.FAILED, last_error="5.1.1 550 no user"),
            Update("b@x.org", State.SENT),
        ],
    )
    [bounce] = queue.pending_bounces(store, 300.0)
    assert bounce.failures == (("a@x.org", "5.1.1", "550 no user"),)
    assert bounce.account == "joe@example.com" and bounce.created == 100.0
    assert bounce.head == b"Subject: x\r\n\r\nbody\r\n" and bounce.attempts == 1
    assert queue.list_queue(store) != []
    queue.finish_bounce(store, mid, ["a@x.org"])
    assert queue.pending_bounces(store, 300.0) == [] and queue.list_queue(store) == []


def fail_all(store: SqliteStore, mid: int, *recipients: str) -> None:
    queue.record(store, mid, [Update(r, State.FAILED, last_error=f"5.1.1 {r}") for r in recipients])


def test_pending_bounces_are_bounded_and_load_only_the_head(store: SqliteStore) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * (queue.BOUNCE_HEAD * 3)
    ids = []
    for i in range(queue.BOUNCE_BATCH + 5):
        with store.transaction() as conn:
            ids.append(
                queue.enqueue(
                    conn,
                    sender="joe@example.com",
                    account="joe@example.com",
                    message=big,
                    recipients=[f"b{i}@x.org", f"a{i}@x.org"],
                    now=100.0,
                )
            )
    queue.claim_due(store, 200.0, 100)
    for i, mid in enumerate(ids):
        fail_all(store, mid, f"a{i}@x.org", f"b{i}@x.org")
    bounces = queue.pending_bounces(store, 300.0)
    assert [b.message_id for b in bounces] == ids[: queue.BOUNCE_BATCH]
    assert bounces[0].failures == (
        ("a0@x.org", "5.1.1", "a0@x.org"),
        ("b0@x.org", "5.1.1", "b0@x.org"),
    )
    assert all(b.head == big[: queue.BOUNCE_HEAD] for b in bounces)


def test_deferred_bounce_waits_for_its_time(store: SqliteStore) -> None:
    mid = put(store, "a@x.org")
    queue.claim_due(store, 200.0, 10)
    fail_all(store, mid, "a@x.org")
    queue.defer_bounce(store, mid, ["a@x.org"], 1000.0)
    assert queue.pending_bounces(store, 999.0) == []
    [bounce] = queue.pending_bounces(store, 1000.0)
    assert bounce.attempts == 2
    assert states(store) == {"a@x.org": ("failed", 2)}


def test_requeue_puts_sending_rows_back(store: SqliteStore) -> None:
    mid = put(store, "a@x.org", "b@x.org")
    queue.claim_due(store, 200.0, 10)
    queue.record(store, mid, [Update("b@x.org", State.SENT)])
    queue.requeue(store, mid, ["a@x.org", "b@x.org"], 700.0)
    assert states(store) == {"a@x.org": ("queued", 1), "b@x.org": ("sent", 1)}
    assert queue.next_due(store) == 700.0


def test_flush_and_remove(store: SqliteStore) -> None:
    mid = put(store, "a@x.org", now=1e12)
    assert queue.claim_due(store, 200.0, 10) == []
    assert queue.flush(store) == 1
    assert queue.next_due(store) == 0.0
    assert queue.remove(store, mid) is True
    assert queue.remove(store, mid) is False
    assert queue.list_queue(store) == [] and queue.next_due(store) is None


def test_rate_limit_counts_messages_and_recipients(store: SqliteStore) -> None:
    limits = ratelimit.Limits(messages_per_hour=2, recipients_per_hour=5)
    with store.transaction() as conn:
        assert ratelimit.check(conn, "joe@x", 5, 0.0, limits) is None
        assert ratelimit.check(conn, "joe@x", 6, 0.0, limits) is not None
        ratelimit.record(conn, "joe@x", 3, 0.0)
        assert "recipients" in (ratelimit.check(conn, "joe@x", 3, 10.0, limits) or "")
        assert ratelimit.check(conn, "joe@x", 2, 10.0, limits) is None
        ratelimit.record(conn, "joe@x", 1, 10.0)
        assert "messages" in (ratelimit.check(conn, "joe@x", 1, 20.0, limits) or "")
        assert ratelimit.check(conn, "ann@x", 1, 20.0, limits) is None  # per account
        # An hour later the window has moved past both, and the next record drops them.
        assert ratelimit.check(conn, "joe@x", 5, 3611.0, limits) is None
        ratelimit.record(conn, "joe@x", 1, 3611.0)
        assert conn.execute("SELECT COUNT(*) FROM submissions").fetchone() == (1,)
