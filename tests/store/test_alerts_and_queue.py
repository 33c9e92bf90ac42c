"""Alerts, the XTND outbound queue and the submission record of cgpop.store.api, for every
backend."""

from __future__ import annotations

from cgpop.store.api import (
    Outbound,
    QueueStats,
    RecipientState,
    State,
    Store,
    SubmissionCounts,
    Update,
)


def test_alerts_are_taken_once_each_oldest_first(store: Store) -> None:
    first = store.add_alert("account", "joe@example.com", "first")
    second = store.add_alert("domain", "example.com", "second")
    third = store.add_alert("server", "", "third")
    store.add_alert("account", "ann@example.com", "not joe's")
    pending = store.pending_alert("JOE@example.com")
    assert pending is not None and pending.id == first
    assert store.pending_alert("joe@example.com") == pending  # pending does not mark it
    taken = [store.take_alert("joe@example.com") for _ in range(4)]
    assert [a.id if a else None for a in taken] == [first, second, third, None]
    assert [a.text for a in taken if a] == ["first", "second", "third"]
    counts = {a.text: a.delivered for a in store.list_alerts()}
    assert counts == {"first": 1, "second": 1, "third": 1, "not joe's": 0}
    assert store.remove_alert(third) is True
    assert store.remove_alert(third) is False


def _outbound(*recipients: str) -> Outbound:
    return Outbound("joe@example.com", "joe@example.com", b"Subject: q\r\n\r\nx\r\n", recipients)


def test_queue_claim_ack_and_retry(store: Store) -> None:
    mid = store.enqueue(_outbound("a@x.org", "b@x.org"), 100.0)
    later = store.enqueue(_outbound("c@x.org"), 500.0)
    assert store.next_due() == 100.0
    [job] = store.claim_due(200.0, 10)
    assert (job.message_id, job.recipients, job.attempts) == (mid, ("a@x.org", "b@x.org"), (0, 0))
    assert store.claim_due(200.0, 10) == []  # claimed once
    store.record_attempt(
        mid, [Update("a@x.org", State.SENT), Update("b@x.org", State.QUEUED, 900.0, "4.2.1 busy")]
    )
    assert store.next_due() == 500.0
    [retry, other] = store.claim_due(900.0, 10)
    assert (retry.recipients, retry.attempts) == (("b@x.org",), (1,))
    assert other.message_id == later
    assert store.recover_queue(950.0) == 2  # both left `sending`: back in the queue
    store.claim_due(950.0, 10)
    store.requeue(later, ["c@x.org"], 2000.0)
    store.record_attempt(mid, [Update("b@x.org", State.FAILED, 0.0, "5.1.1 no such user")])
    [bounce] = store.pending_bounces(1000.0, 10)
    assert bounce.failures == (("b@x.org", "5.1.1", "no such user"),)
    store.defer_bounce(mid, ["b@x.org"], 3000.0)
    assert store.pending_bounces(1000.0, 10) == []
    store.finish_bounce(mid, ["b@x.org"])
    assert [e.id for e in store.list_queue()] == [later]
    assert store.flush_queue() == 1 and store.next_due() == 0.0
    assert store.remove_queued(later) is True and store.remove_queued(later) is False
    assert store.list_queue() == [] and store.next_due() is None


def test_submission_slots_are_taken_judged_and_given_back(store: Store) -> None:
    def at_most_one(counts: SubmissionCounts) -> str | None:
        return "over" if counts.messages >= 1 else None

    slot = store.take_submission_slot("joe@x", 2, 10.0, 0.0, at_most_one)
    assert isinstance(slot, int)
    assert store.submission_counts("joe@x", 0.0) == SubmissionCounts(1, 2)
    assert store.take_submission_slot("joe@x", 1, 20.0, 0.0, at_most_one) == "over"
    assert store.submission_counts("joe@x", 0.0) == SubmissionCounts(1, 2)
    assert store.submission_counts("joe@x", 10.0) == SubmissionCounts(0, 0)  # outside the window
    assert store.submission_counts("ann@x", 0.0) == SubmissionCounts(0, 0)  # per account
    store.release_submission_slot(slot)
    assert store.submission_counts("joe@x", 0.0) == SubmissionCounts(0, 0)
    assert isinstance(store.take_submission_slot("joe@x", 1, 30.0, 0.0, at_most_one), int)


def test_queue_stats_count_messages_and_the_oldest(store: Store) -> None:
    assert store.queue_stats() == QueueStats(0, None)
    first = store.enqueue(_outbound("a@x.org", "b@x.org"), 100.0)
    store.enqueue(_outbound("c@x.org"), 500.0)
    # Messages, not recipients; the oldest is the first one in.
    assert store.queue_stats() == QueueStats(2, 100.0)
    store.claim_due(600.0, 10)
    store.record_attempt(first, [Update("a@x.org", State.SENT), Update("b@x.org", State.SENT)])
    assert store.queue_stats() == QueueStats(1, 500.0)


def test_queue_list_shows_every_recipient_and_a_done_message_goes(store: Store) -> None:
    message = b"Subject: q\r\n\r\nx\r\n"
    mid = store.enqueue(_outbound("b@x.org", "B@x.org", "a.b@x.org", "a-b@x.org"), 100.0)
    [entry] = store.list_queue()
    assert (entry.id, entry.sender, entry.account, entry.size, entry.created) == (
        mid,
        "joe@example.com",
        "joe@example.com",
        len(message),
        100.0,
    )
    # Recipients in byte order, as `cgpop queue list` shows them.
    assert entry.recipients == tuple(
        RecipientState(r, "queued", 0, 100.0, None)
        for r in ("B@x.org", "a-b@x.org", "a.b@x.org", "b@x.org")
    )
    store.claim_due(100.0, 10)
    store.record_attempt(
        mid,
        [
            Update("B@x.org", State.SENT),
            Update("a-b@x.org", State.SENT),
            Update("a.b@x.org", State.SENT),
            Update("b@x.org", State.FAILED, 0.0, "5.1.1 no such user"),
        ],
    )
    # A failed recipient keeps its message until its bounce is done; the sent ones are gone
    # from the listing only with it.
    [entry] = store.list_queue()
    assert [(r.recipient, r.state, r.attempts) for r in entry.recipients] == [
        ("B@x.org", "sent", 1),
        ("a-b@x.org", "sent", 1),
        ("a.b@x.org", "sent", 1),
        ("b@x.org", "failed", 1),
    ]
    store.finish_bounce(mid, ["b@x.org"])
    assert store.list_queue() == [] and store.queue_stats() == QueueStats(0, None)
    done = store.enqueue(_outbound("c@x.org"), 100.0)
    store.claim_due(100.0, 10)
    store.record_attempt(done, [Update("c@x.org", State.SENT)])
    assert store.list_queue() == [] and store.remove_queued(done) is False


def test_a_removed_alert_goes_with_its_delivery_records(store: Store) -> None:
    shown = store.add_alert("server", "", "shown")
    taken = store.take_alert("joe@example.com")
    assert taken is not None and taken.id == shown
    assert store.remove_alert(shown) is True
    assert store.list_alerts() == []
    later = store.add_alert("domain", "EXAMPLE.com", "later")
    [listed] = store.list_alerts()
    assert (listed.id, listed.scope, listed.target, listed.delivered) == (
        later,
        "domain",
        "example.com",
        0,
    )
    assert store.pending_alert("ann@EXAMPLE.COM") == listed
    assert store.pending_alert("joe@other.example") is None


def test_a_bounce_lists_each_failed_recipient_with_its_status(store: Store) -> None:
    mid = store.enqueue(_outbound("c@x.org", "a@x.org", "b@x.org"), 100.0)
    store.claim_due(100.0, 10)
    store.record_attempt(
        mid,
        [
            Update("c@x.org", State.FAILED, 0.0, "5.1.1 no such user"),
            Update("a@x.org", State.FAILED, 0.0, None),  # no reply text was recorded
            Update("b@x.org", State.SENT),
        ],
    )
    [bounce] = store.pending_bounces(100.0, 10)
    assert (bounce.message_id, bounce.sender, bounce.account) == (
        mid,
        "joe@example.com",
        "joe@example.com",
    )
    assert bounce.failures == (("a@x.org", "5.0.0", "failed"), ("c@x.org", "5.1.1", "no such user"))
    assert (bounce.created, bounce.attempts) == (100.0, 1)
    assert bounce.head == b"Subject: q\r\n\r\nx\r\n"
