"""The snapshot rules of cgpop.store.api (module docstring), for every backend."""

from __future__ import annotations

import pytest

from cgpop.store.api import Copy, Mailbox, NotFound, Store
from tests.store.conftest import Opener


def inbox(store: Store, name: str = "joe") -> Mailbox:
    box = store.get_mailbox("example.com", name, "INBOX")
    assert box is not None
    return box


def put(store: Store, box: Mailbox, text: str, *, big: bool = False) -> None:
    body = (text + "\r\n") * (20_000 if big else 1)
    message = f"Subject: {text}\r\n\r\n{body}".encode()
    assert store.deliver(message, [Copy(box.id, b"X-Real-To: <joe>\r\n", "joe", None)]) == [True]


def test_message_numbers_are_fixed_for_the_session(store: Store) -> None:
    box = inbox(store)
    put(store, box, "one")
    put(store, box, "two")
    snap = store.open_maildrop(box, None)
    put(store, box, "three")
    store.expunge(box.id, [snap.uids[0]])
    assert len(snap) == 2  # neither the delivery nor the expunge shows in it
    assert b"Subject: two" in b"".join(store.read_message(snap, 1).chunks())
    later = store.open_maildrop(box, None)
    assert len(later) == 2 and later.uids[0] == snap.uids[1]
    store.close_maildrop(snap)
    store.close_maildrop(later)


def test_expunge_removes_only_the_given_uids_and_gone_is_no_error(store: Store) -> None:
    box = inbox(store)
    for text in ("a", "b", "c"):
        put(store, box, text)
    snap = store.open_maildrop(box, None)
    assert store.expunge(box.id, [snap.uids[1]]) == 1
    assert store.expunge(box.id, [snap.uids[1]]) == 0  # already gone: not an error
    assert store.expunge(box.id, [999_999]) == 0  # never existed
    assert [m.uid for m in store.list_messages(box)] == [snap.uids[0], snap.uids[2]]
    store.close_maildrop(snap)


@pytest.mark.parametrize("big", [False, True], ids=["inline", "large"])
def test_a_body_stays_readable_until_its_snapshot_closes(store: Store, big: bool) -> None:
    box = inbox(store)
    put(store, box, "keep", big=big)
    holder = store.open_maildrop(box, None)
    other = store.open_maildrop(box, None)
    store.expunge(box.id, [other.uids[0]])
    store.close_maildrop(other)
    store.collect()
    text = b"".join(store.read_message(holder, 0).chunks(4096))
    assert text.startswith(b"X-Real-To: <joe>\r\nSubject: keep\r\n")
    assert store.read_message(holder, 0).size == holder.sizes[0]
    store.close_maildrop(holder)
    store.collect()
    with pytest.raises(NotFound):
        store.read_message(holder, 0)
    assert store.read_messages(holder, [0]) == {}


def test_nothing_is_removed_without_expunge(store: Store) -> None:
    box = inbox(store)
    put(store, box, "a")
    put(store, box, "b", big=True)
    snap = store.open_maildrop(box, None)
    store.close_maildrop(snap)  # a session that ends without QUIT
    assert store.collect() == 0
    again = store.open_maildrop(box, None)
    assert list(again.uids) == list(snap.uids)
    assert all(b"Subject:" in b"".join(store.read_message(again, i).chunks()) for i in (0, 1))
    store.close_maildrop(again)


def test_uids_grow_and_uidls_survive_a_reopen(store: Store, opener: Opener) -> None:
    box = inbox(store)
    put(store, box, "a")
    put(store, box, "b")
    snap = store.open_maildrop(box, None)
    store.expunge(box.id, [snap.uids[1]])  # the highest UID goes
    store.close_maildrop(snap)
    store.collect()
    put(store, box, "c")
    after = store.open_maildrop(box, None)
    assert after.uids[1] > snap.uids[1]  # never reused
    uidls = [after.uidl(i) for i in range(len(after))]
    store.close_maildrop(after)
    reopened = opener.reopen(store)
    box2 = inbox(reopened)
    snap2 = reopened.open_maildrop(box2, None)
    assert [snap2.uidl(i) for i in range(len(snap2))] == uidls
    put(reopened, box2, "d")
    snap3 = reopened.open_maildrop(box2, None)
    assert snap3.uids[-1] > snap2.uids[-1]
    reopened.close_maildrop(snap2)
    reopened.close_maildrop(snap3)


def test_a_removed_and_recreated_mailbox_repeats_no_uidl(store: Store) -> None:
    box = store.add_mailbox("example.com", "joe", "Work")
    put(store, box, "a")
    first = store.open_maildrop(box, None)
    store.close_maildrop(first)
    store.remove_mailbox("example.com", "joe", "Work")
    again = store.add_mailbox("example.com", "joe", "Work")
    put(store, again, "a")
    second = store.open_maildrop(again, None)
    assert second.uidl(0) != first.uidl(0)
    store.close_maildrop(second)


def test_individual_names_filter_the_maildrop(store: Store) -> None:
    box = inbox(store)
    for who in ("sales", "support", None):
        store.deliver(b"Subject: x\r\n\r\nx\r\n", [Copy(box.id, b"", None, who)])
    snap = store.open_maildrop(box, "sales")
    assert len(snap) == 1
    whole = store.open_maildrop(box, None)
    assert len(whole) == 3
    store.close_maildrop(snap)
    store.close_maildrop(whole)


def test_seen_flags_and_import(store: Store) -> None:
    box = inbox(store)
    assert (
        store.import_messages(box, [(b"Subject: old\n\nread\n", 1), (b"Subject: new\n\nx\n", 0)])
        == 2
    )
    listed = store.list_messages(box)
    assert [m.flags for m in listed] == [("\\Seen",), ()]
    store.mark_seen([(box.id, listed[1].uid)])
    assert store.message_flags(box.id, listed[1].uid) == 1
    snap = store.open_maildrop(box, None)
    # Imported octets are stored CRLF and as POP reports them (no prefix added).
    assert b"".join(store.read_message(snap, 0).chunks()) == b"Subject: old\r\n\r\nread\r\n"
    store.close_maildrop(snap)


def test_a_stores_own_sessions_are_not_other_sessions(store: Store) -> None:
    # Issue 11: other_sessions counts what other processes (nodes) hold; the caller counts
    # its own sessions itself, so one store alone never sees any.
    joe = store.get_mailbox("example.com", "joe", "INBOX")
    assert joe is not None
    snap = store.open_maildrop(joe, None)
    second = store.open_maildrop(joe, None)
    assert store.other_sessions(snap) == 0
    store.close_maildrop(second)
    store.close_maildrop(snap)


def test_open_session_is_open_maildrop_with_the_count_and_the_alert(store: Store) -> None:
    # Issue 11: what a login needs at open, in one call (one round trip on PostgreSQL).
    box = inbox(store)
    put(store, box, "one")
    quiet = store.open_session(box, None, "joe@example.com")
    assert list(quiet.snapshot.uids) == list(store.open_maildrop(box, None).uids)
    assert quiet.others == 0  # its own store's sessions are not "others"
    assert quiet.alert_pending is False
    store.add_alert("account", "joe@example.com", "read me")
    told = store.open_session(box, None, "JOE@example.com")
    assert told.alert_pending is True
    assert store.take_alert("joe@example.com") is not None
    # The snapshot is a session like any other: it keeps what an expunge removes.
    store.expunge(box.id, [told.snapshot.uids[0]])
    store.collect()
    assert b"Subject: one" in b"".join(store.read_message(told.snapshot, 0).chunks())
    for snap in (quiet.snapshot, told.snapshot):
        store.close_maildrop(snap)


def test_import_in_batches_keeps_order_and_records_real_to(store: Store) -> None:
    """Every batch its own transaction, the messages in their order, each with what
    `real_to` read from its own header (issue 13)."""
    box = inbox(store)

    def real_to(raw: bytes) -> tuple[str | None, tuple[str, ...]]:
        names = tuple(n.decode() for n in raw.split(b"\r\n")[0].split()[1:])
        return ("\n".join(f"{n}@example.com" for n in names) or None), names

    messages = [
        (f"To: {who}\r\n\r\n{i}\r\n".encode(), i % 2)
        for i, who in enumerate(["p", "p q r", "", "q", "r p"])
    ]
    assert store.import_messages(box, messages, batch=2, real_to=real_to) == 5
    listed = store.list_messages(box)
    assert [m.uid for m in listed] == [1, 2, 3, 4, 5]
    assert [m.individuals for m in listed] == [("p",), ("p", "q", "r"), (), ("q",), ("r", "p")]
    assert listed[1].x_real_to == "p@example.com\nq@example.com\nr@example.com"
    assert [m.flags for m in listed] == [(), ("\\Seen",), (), ("\\Seen",), ()]
    for name, uids in [("p", [1, 2, 5]), ("q", [2, 4]), ("r", [2, 5])]:
        snap = store.open_maildrop(box, name)
        store.close_maildrop(snap)
        assert list(snap.uids) == uids
    snap = store.open_maildrop(box, None)
    assert b"".join(store.read_message(snap, 4).chunks()) == b"To: r p\r\n\r\n4\r\n"
    store.close_maildrop(snap)
