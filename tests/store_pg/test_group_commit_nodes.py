"""Issue 11: group commits through several nodes at once, each a pipelined transaction that
reads the UID counters under lock and writes them back (cgpop/store/postgres.py): UIDs never
shared or skipped, duplicate claims and quota usage exact, no deadlock between batches that
name the same mailboxes in different orders."""

from __future__ import annotations

import threading
from collections.abc import Callable

from accounts.credentials import make_credentials
from cgpop.store.api import Copy, Mailbox
from cgpop.store.postgres import PostgresStore
from tests.store_pg.helpers import joe_inbox, message

Open = Callable[..., PostgresStore]


def test_concurrent_group_commits_share_no_uid(open_store: Open) -> None:
    nodes = [open_store("pop-a"), open_store("pop-b")]
    joe = joe_inbox(nodes[0])
    nodes[0].add_account("example.com", "ann", make_credentials("pw", iterations=1))
    ann = nodes[0].get_mailbox("example.com", "ann", "INBOX")
    assert ann is not None
    errors: list[BaseException] = []

    def copy(box: Mailbox, mid: str) -> Copy:
        return Copy(box.id, b"", None, None, mid, f"{box.id}/")

    def deliver(node: PostgresStore, tag: str, boxes: tuple[Mailbox, Mailbox]) -> None:
        try:
            for i in range(6):
                batch = [
                    (message(f"{tag}{i}-{k}"), [copy(b, f"<{tag}{i}-{k}@x>") for b in boxes])
                    for k in range(4)
                ]
                # The same Message-ID twice in a batch and again on another node: one copy.
                batch.append((message("dup"), [copy(joe, "<dup@x>")]))
                node.deliver_many(batch)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=deliver, args=(node, f"{node.node}-{t}", order))
        for node in nodes
        for t, order in enumerate([(joe, ann), (ann, joe)])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    # 4 threads x 6 batches x 4 messages to each box, plus one "dup" copy in joe's.
    assert [m.uid for m in nodes[1].list_messages(joe)] == list(range(1, 98))
    assert [m.uid for m in nodes[0].list_messages(ann)] == list(range(1, 97))
    for name, box, count in (("joe", joe, 97), ("ann", ann, 96)):
        quota = nodes[1].get_quota("example.com", name)
        sizes = sum(m.size for m in nodes[1].list_messages(box))
        assert (quota.messages_used, quota.storage_used) == (count, sizes)
