"""The queue's bookkeeping (cgpop.store.api.OutboundQueue) and the rate limit
(xtnd/ratelimit.py) on a real SQLite store."""

from __future__ import annotations

from pathlib import Path

import pytest

from cgpop.store.api import BOUNCE_BATCH, BOUNCE_HEAD, Outbound, State, Update
from cgpop.store.sqlite import SqliteStore
from xtnd import ratelimit


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    return SqliteStore(tmp_path / "data")


def put(store: SqliteStore, *recipients: str, now: float = 100.0) -> int:
    message = b"Subject: x\r\n\r\nbody\r\n"
    return store.enqueue(Outbound("joe@example.com", "joe@example.com", message, recipients), now)


def states(store: SqliteStore) -> dict[str, tuple[str, int]]:
    return {r.recipient: (r.state, r.attempts) for e in store.list_queue() for r in e.recipients}


def test_claim_marks_sending_and_only_takes_due(store: SqliteStore) -> None:
    first = put(store, "a@x.org", "b@x.org", now=100.0)
    put(store, "c@x.org", now=500.0)
    [job] = store.claim_due(200.0, 10)
    assert (job.message_id, job.recipients, job.attempts) == (first, ("a@x.org", "b@x.org"), (0, 0))
    assert job.message == b"Subject: x\r\n\r\nbody\r\n"
    assert states(store) == {
        "a@x.org": ("sending", 0),
        "b@x.org": ("sending", 0),
        "c@x.org": ("queued", 0),
    }
    assert store.claim_due(200.0, 10) == []  # nothing claimed twice
    assert store.next_due() == 500.0


def test_recover_requeues_sending_rows(store: SqliteStore) -> None:
    put(store, "a@x.org")
    store.claim_due(200.0, 10)
    assert store.recover_queue(300.0) == 1
    assert states(store) == {"a@x.org": ("queued", 0)}
    [job] = store.claim_due(300.0, 10)
    assert job.recipients == ("a@x.org",)


def test_record_retry_sent_and_collect(store: SqliteStore) -> None:
    mid = put(store, "a@x.org", "b@x.org")
    store.claim_due(200.0, 10)
    store.record_attempt(
        mid,
        [Update("a@x.org", State.SENT), Update("b@x.org", State.QUEUED, 900.0, "4.2.1 busy")],
    )
    assert states(store) == {"a@x.org": ("sent", 1), "b@x.org": ("queued", 1)}
    assert store.next_due() == 900.0
    [job] = store.claim_due(900.0, 10)
    assert job.attempts == (1,)
    store.record_attempt(mid, [Update("b@x.org", State.SENT)])
    assert store.list_queue() == []  # all sent: the message is gone


def test_failed_rows_wait_for_their_bounce(store: SqliteStore) -> None:
    mid = put(store, "a@x.org", "b@x.org")
    store.claim_due(200.0, 10)
    store.record_attempt(
        mid,
        [
            Update("a@x.org", State.FAILED, last_error="5.1.1 550 no user"),
            Update("b@x.org", State.SENT),
        ],
    )
    [bounce] = store.pending_bounces(300.0)
    assert bounce.failures == (("a@x.org", "5.1.1", "550 no user"),)
    assert bounce.account == "joe@example.com" and bounce.created == 100.0
    assert bounce.head == b"Subject: x\r\n\r\nbody\r\n" and bounce.attempts == 1
    assert store.list_queue() != []
    store.finish_bounce(mid, ["a@x.org"])
    assert store.pending_bounces(300.0) == [] and store.list_queue() == []


def fail_all(store: SqliteStore, mid: int, *recipients: str) -> None:
    store.record_attempt(
        mid, [Update(r, State.FAILED, last_error=f"5.1.1 {r}") for r in recipients]
    )


def test_pending_bounces_are_bounded_and_load_only_the_head(store: SqliteStore) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * (BOUNCE_HEAD * 3)
    ids = []
    for i in range(BOUNCE_BATCH + 5):
        ids.append(
            store.enqueue(
                Outbound("joe@example.com", "joe@example.com", big, (f"b{i}@x.org", f"a{i}@x.org")),
                100.0,
            )
        )
    store.claim_due(200.0, 100)
    for i, mid in enumerate(ids):
        fail_all(store, mid, f"a{i}@x.org", f"b{i}@x.org")
    bounces = store.pending_bounces(300.0)
    assert [b.message_id for b in bounces] == ids[:BOUNCE_BATCH]
    assert bounces[0].failures == (
        ("a0@x.org", "5.1.1", "a0@x.org"),
        ("b0@x.org", "5.1.1", "b0@x.org"),
    )
    assert all(b.head == big[:BOUNCE_HEAD] for b in bounces)


def test_deferred_bounce_waits_for_its_time(store: SqliteStore) -> None:
    mid = put(store, "a@x.org")
    store.claim_due(200.0, 10)
    fail_all(store, mid, "a@x.org")
    store.defer_bounce(mid, ["a@x.org"], 1000.0)
    assert store.pending_bounces(999.0) == []
    [bounce] = store.pending_bounces(1000.0)
    assert bounce.attempts == 2
    assert states(store) == {"a@x.org": ("failed", 2)}


def test_requeue_puts_sending_rows_back(store: SqliteStore) -> None:
    mid = put(store, "a@x.org", "b@x.org")
    store.claim_due(200.0, 10)
    store.record_attempt(mid, [Update("b@x.org", State.SENT)])
    store.requeue(mid, ["a@x.org", "b@x.org"], 700.0)
    assert states(store) == {"a@x.org": ("queued", 1), "b@x.org": ("sent", 1)}
    assert store.next_due() == 700.0


def test_flush_and_remove(store: SqliteStore) -> None:
    mid = put(store, "a@x.org", now=1e12)
    assert store.claim_due(200.0, 10) == []
    assert store.flush_queue() == 1
    assert store.next_due() == 0.0
    assert store.remove_queued(mid) is True
    assert store.remove_queued(mid) is False
    assert store.list_queue() == [] and store.next_due() is None


def test_rate_limit_counts_messages_and_recipients(store: SqliteStore) -> None:
    limits = ratelimit.Limits(messages_per_hour=2, recipients_per_hour=5)

    def check(account: str, recipients: int, now: float) -> str | None:
        counts = store.submission_counts(account, now - ratelimit.WINDOW)
        return ratelimit.judge(counts, recipients, limits)

    def record(account: str, recipients: int, now: float) -> None:
        slot = store.take_submission_slot(
            account, recipients, now, now - ratelimit.WINDOW, lambda _: None
        )
        assert isinstance(slot, int)

    assert check("joe@x", 5, 0.0) is None
    assert check("joe@x", 6, 0.0) is not None
    record("joe@x", 3, 0.0)
    assert "recipients" in (check("joe@x", 3, 10.0) or "")
    assert check("joe@x", 2, 10.0) is None
    record("joe@x", 1, 10.0)
    assert "messages" in (check("joe@x", 1, 20.0) or "")
    assert check("ann@x", 1, 20.0) is None  # per account
    # An hour later the window has moved past both, and the next record drops them.
    assert check("joe@x", 5, 3611.0) is None
    record("joe@x", 1, 3611.0)
    assert store.connection().execute("SELECT COUNT(*) FROM submissions").fetchone() == (1,)
