"""The XTND queue with several nodes relaying: a recipient is claimed by one node at a time,
a dead node's claims return to the queue, a live node's are never taken from it."""

from __future__ import annotations

import threading
from collections.abc import Callable

from cgpop.store.api import Outbound, State, SubmissionCounts, Update
from cgpop.store.postgres import PostgresStore
from tests.store_pg.helpers import silence

Open = Callable[..., PostgresStore]


def outbound(*recipients: str) -> Outbound:
    return Outbound("joe@example.com", "joe@example.com", b"Subject: q\r\n\r\nx\r\n", recipients)


def test_two_nodes_never_claim_the_same_recipient(open_store: Open) -> None:
    a, b = open_store("pop-a"), open_store("pop-b")
    ids = [a.enqueue(outbound(f"r{i}@x.org", f"s{i}@x.org"), 10.0) for i in range(30)]
    claimed: list[tuple[int, str]] = []
    lock = threading.Lock()

    def worker(node: PostgresStore) -> None:
        while jobs := node.claim_due(20.0, 3):
            with lock:
                claimed.extend((j.message_id, r) for j in jobs for r in j.recipients)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (a, b) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(
        (mid, f"{p}{i}@x.org") for i, mid in enumerate(ids) for p in "rs"
    )


def test_a_dead_nodes_claims_return_a_live_nodes_stay(open_store: Open) -> None:
    a = open_store("pop-a", node_timeout=30.0)
    b = open_store("pop-b", node_timeout=30.0)
    mid = a.enqueue(outbound("x@x.org"), 10.0)
    [job] = b.claim_due(20.0, 10)
    assert job.message_id == mid
    assert a.recover_queue(30.0) == 0  # a's start-up: b is alive, its attempt may be running
    assert a.claim_due(40.0, 10) == []
    silence(b, 31)  # b dies mid-attempt
    [again] = a.claim_due(50.0, 10)
    assert (again.message_id, again.recipients) == (mid, ("x@x.org",))
    a.record_attempt(mid, [Update("x@x.org", State.SENT)])
    assert a.list_queue() == []


def test_recover_queue_takes_back_this_process_claims(open_store: Open) -> None:
    a = open_store("pop-a")
    a.enqueue(outbound("x@x.org", "y@x.org"), 10.0)
    a.claim_due(20.0, 10)
    assert a.recover_queue(30.0) == 2
    [entry] = a.list_queue()
    assert [r.state for r in entry.recipients] == ["queued", "queued"]
    assert entry.recipients[0].last_error == "interrupted while sending"


def test_one_accounts_submissions_are_serialised_across_nodes(open_store: Open) -> None:
    nodes = [open_store("pop-a"), open_store("pop-b")]
    refused: list[str | None] = []
    lock = threading.Lock()

    def at_most_five(counts: SubmissionCounts) -> str | None:
        return "over" if counts.messages >= 5 else None

    def submit(node: PostgresStore) -> None:
        for _ in range(5):
            got = node.take_submission_slot("joe@x", 1, 10.0, 0.0, at_most_five)
            with lock:
                refused.append(got)

    threads = [threading.Thread(target=submit, args=(n,)) for n in nodes for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    slots = [s for s in refused if isinstance(s, int)]
    assert len(slots) == 5 and refused.count("over") == 15
    assert nodes[0].submission_counts("joe@x", 0.0) == SubmissionCounts(5, 5)
    nodes[1].release_submission_slot(slots[0])  # a submission that was not sent
    assert nodes[0].submission_counts("joe@x", 0.0) == SubmissionCounts(4, 4)
