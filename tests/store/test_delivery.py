"""Delivery rules of cgpop.store.api for every backend: single-instance bodies, group commit,
duplicate suppression, and the collector."""

from __future__ import annotations

import pytest

from cgpop.store.api import Copy, Mailbox, NotFound, Store


def inbox(store: Store, name: str) -> Mailbox:
    box = store.get_mailbox("example.com", name, "INBOX")
    assert box is not None
    return box


def read_all(store: Store, box: Mailbox) -> list[bytes]:
    snap = store.open_maildrop(box, None)
    try:
        return [b"".join(store.read_message(snap, i).chunks()) for i in range(len(snap))]
    finally:
        store.close_maildrop(snap)


@pytest.mark.parametrize("size", [100, 300_000], ids=["inline", "large"])
def test_one_body_for_all_copies_of_a_delivery(store: Store, size: int) -> None:
    joe, ann = inbox(store, "joe"), inbox(store, "ann")
    message = b"Subject: both\r\n\r\n" + b"x" * size + b"\r\n"
    stored = store.deliver(
        message,
        [Copy(joe.id, b"To: <joe>\r\n", "joe", None), Copy(ann.id, b"To: <ann>\r\n", "ann", None)],
    )
    assert stored == [True, True]
    assert read_all(store, joe) == [b"To: <joe>\r\n" + message]
    assert read_all(store, ann) == [b"To: <ann>\r\n" + message]
    # Expunging one copy leaves the body for the other; the collector frees it only once
    # both are gone, and then once.
    snap = store.open_maildrop(joe, None)
    store.expunge(joe.id, list(snap.uids))
    store.close_maildrop(snap)
    assert store.collect() == 0
    assert read_all(store, ann) == [b"To: <ann>\r\n" + message]
    snap = store.open_maildrop(ann, None)
    store.expunge(ann.id, list(snap.uids))
    store.close_maildrop(snap)
    assert store.collect() == 1


def test_group_commit_is_all_or_nothing(store: Store) -> None:
    joe = inbox(store, "joe")
    gone = store.add_mailbox("example.com", "ann", "Gone")
    store.remove_mailbox("example.com", "ann", "Gone")
    good = (b"Subject: good\r\n\r\nx\r\n", [Copy(joe.id, b"", None, None)])
    bad = (b"Subject: bad\r\n\r\nx\r\n" + b"y" * 300_000, [Copy(gone.id, b"", None, None)])
    with pytest.raises(NotFound):
        store.deliver_many([good, bad])
    assert read_all(store, joe) == []
    assert store.deliver_many([good, good]) == [[True], [True]]
    assert len(read_all(store, joe)) == 2


def test_duplicates_are_suppressed_per_recipient(store: Store) -> None:
    joe, ann = inbox(store, "joe"), inbox(store, "ann")
    message = b"Message-ID: <m1@x>\r\nSubject: d\r\n\r\nx\r\n"

    def copy(box: Mailbox, key: str) -> Copy:
        return Copy(box.id, b"", None, None, "<m1@x>", key)

    assert store.deliver(message, [copy(joe, "joe")]) == [True]
    assert store.deliver(message, [copy(joe, "joe"), copy(ann, "ann")]) == [False, True]
    assert store.deliver_many([(message, [copy(joe, "joe")])]) == [[False]]
    assert len(read_all(store, joe)) == 1 and len(read_all(store, ann)) == 1
    store.prune_duplicates()  # inside the window: still suppressed
    assert store.deliver(message, [copy(joe, "joe")]) == [False]
    # No Message-ID: never a duplicate.
    plain = b"Subject: no id\r\n\r\nx\r\n"
    assert store.deliver(plain, [Copy(joe.id, b"", None, None, None, "joe")]) == [True]
    assert store.deliver(plain, [Copy(joe.id, b"", None, None, None, "joe")]) == [True]


def test_the_collector_keeps_what_an_older_session_can_read(store: Store) -> None:
    joe = inbox(store, "joe")
    for n in range(3):
        store.deliver(f"Subject: {n}\r\n\r\nx\r\n".encode(), [Copy(joe.id, b"", None, None)])
    old = store.open_maildrop(joe, None)
    quitter = store.open_maildrop(joe, None)
    store.expunge(joe.id, list(quitter.uids[:2]))
    store.close_maildrop(quitter)
    assert store.collect() == 0  # `old` may still read both
    assert len(store.read_messages(old, [0, 1, 2])) == 3
    store.close_maildrop(old)
    assert store.collect() == 2
    assert store.collect() == 0
    assert store.remove_orphan_files() == 0
    assert [len(m) > 0 for m in read_all(store, joe)] == [True]
