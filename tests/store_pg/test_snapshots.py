"""The snapshot rules (cgpop/store/api.py) and the delivery rules, on PostgresStore: what the
POP engine relies on, asserted at the store boundary."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from cgpop.spool import Spool, SpooledMessage
from cgpop.store.api import SEEN, Copy, NotFound, StoreError
from cgpop.store.postgres import CHUNK_SIZE, INLINE_MAX, PostgresStore
from cgpop.wire import normalize_crlf
from tests.store_pg.helpers import joe_inbox, message, put, subjects, text


def count(store: PostgresStore, table: str) -> int:
    with store._conn() as conn:
        row = conn.execute(f"SELECT count(*) FROM {table}".encode()).fetchone()
    assert row is not None
    return int(row[0])


def test_numbers_fixed_and_expunge_only_the_given_uids(store: PostgresStore) -> None:
    box = joe_inbox(store)
    put(store, box, "one", "two", "three")
    a = store.open_maildrop(box, None)
    assert list(a.uids) == [1, 2, 3]
    assert subjects(store, a) == ["one", "two", "three"]
    put(store, box, "four")  # arrives during the session: not in its snapshot
    assert len(a) == 3
    assert store.expunge(box.id, [a.uids[1]]) == 1
    assert store.expunge(box.id, [a.uids[1]]) == 0  # already gone: no error, nothing removed
    assert store.expunge(box.id, [999]) == 0
    store.close_maildrop(a)
    b = store.open_maildrop(box, None)
    assert subjects(store, b) == ["one", "three", "four"]
    assert [b.uidl(i) for i in range(3)] == [f"{box.uidvalidity:x}.{u}" for u in (1, 3, 4)]
    store.close_maildrop(b)


def test_body_readable_until_the_holding_snapshot_closes(store: PostgresStore) -> None:
    box = joe_inbox(store)
    put(store, box, "one", "two")
    holder = store.open_maildrop(box, None)
    quitter = store.open_maildrop(box, None)
    store.expunge(box.id, [quitter.uids[0]])
    store.close_maildrop(quitter)
    store.collect()
    assert subjects(store, holder) == ["one", "two"]  # still readable, same numbers
    store.close_maildrop(holder)
    assert store.collect() == 1
    with pytest.raises(NotFound):
        store.read_message(holder, 0)
    assert count(store, "messages") == 1 and count(store, "bodies") == 1


def test_nothing_removed_without_expunge(store: PostgresStore) -> None:
    box = joe_inbox(store)
    put(store, box, "one")
    snap = store.open_maildrop(box, None)
    store.mark_seen([(box.id, snap.uids[0])])
    store.close_maildrop(snap)  # a session that ends without QUIT commits nothing
    assert store.collect() == 0
    again = store.open_maildrop(box, None)
    assert subjects(store, again) == ["one"]
    assert store.message_flags(box.id, again.uids[0]) == SEEN
    store.close_maildrop(again)


def test_uids_grow_and_uidls_survive_a_reopen(
    store: PostgresStore, open_store: Callable[..., PostgresStore]
) -> None:
    box = joe_inbox(store)
    put(store, box, "one", "two")
    snap = store.open_maildrop(box, None)
    store.expunge(box.id, list(snap.uids))
    store.close_maildrop(snap)
    store.collect()
    put(store, box, "three")
    before = store.list_messages(box)
    assert [m.uid for m in before] == [3]  # never reused
    store.close()
    reopened = open_store()
    box2 = reopened.get_mailbox("example.com", "joe", "INBOX")
    assert box2 == box
    assert reopened.list_messages(box2) == before


def test_recreated_mailbox_never_repeats_a_uidl(store: PostgresStore) -> None:
    joe_inbox(store)
    first = store.add_mailbox("example.com", "joe", "lists")
    store.remove_mailbox("example.com", "joe", "lists")
    second = store.add_mailbox("example.com", "joe", "lists")
    assert second.id != first.id and second.uidvalidity > first.uidvalidity
    with pytest.raises(StoreError):
        store.add_mailbox("example.com", "joe", "lists")


def test_single_instance_body_and_per_copy_prefix(store: PostgresStore) -> None:
    box = joe_inbox(store)
    other = store.add_mailbox("example.com", "joe", "copies")
    prefix = b"X-Real-To: <joe@example.com>\n"
    got = store.deliver(
        message("shared"),
        [Copy(box.id, prefix, "joe@example.com", None), Copy(other.id, b"", None, None)],
    )
    assert got == [True, True]
    assert count(store, "bodies") == 1 and count(store, "messages") == 2
    snap = store.open_maildrop(box, None)
    stored = text(store, snap, 0)
    assert stored.startswith(b"X-Real-To: <joe@example.com>\r\nFrom: ")
    assert len(stored) == snap.sizes[0] == store.list_messages(box)[0].size
    store.close_maildrop(snap)


def test_individual_login_sees_only_its_copies(store: PostgresStore) -> None:
    box = joe_inbox(store)
    store.deliver(message("for ann"), [Copy(box.id, b"", "ann@x", "ann")])
    store.deliver(message("for bob"), [Copy(box.id, b"", "bob@x", "bob")])
    snap = store.open_maildrop(box, "ANN")
    assert subjects(store, snap) == ["for ann"]
    store.close_maildrop(snap)


def test_large_body_is_chunked_and_streamed(store: PostgresStore) -> None:
    box = joe_inbox(store)
    body = "".join(f".line {i} with a leading dot\n" for i in range(40_000))
    raw = message("big", body)
    assert len(raw) > 3 * CHUNK_SIZE
    store.deliver(raw, [Copy(box.id, b"", None, None)])
    assert count(store, "body_chunks") >= 3
    snap = store.open_maildrop(box, None)
    stored = store.read_message(snap, 0)
    assert stored.data is None  # not loaded whole: streamed by chunks()
    parts = list(stored.chunks())
    assert max(len(p) for p in parts) <= CHUNK_SIZE
    octets = b"".join(parts)
    small = list(stored.chunks(10_000))  # the shell's chunk size, whatever the stored one
    assert max(len(p) for p in small) <= 10_000 and b"".join(small) == octets
    # A body gone (it cannot be while the snapshot holds it, but if) fails before any octet.
    with store._conn() as conn:
        conn.execute("DELETE FROM body_chunks")
    with pytest.raises(NotFound):
        next(store.read_message(snap, 0).chunks())
    assert b"\r\n..line 7 with a leading dot\r\n" in octets  # dot-stuffed once
    assert len(octets.replace(b"\r\n..", b"\r\n.")) == snap.sizes[0]
    store.close_maildrop(snap)


def test_small_body_is_inline(store: PostgresStore) -> None:
    box = joe_inbox(store)
    put(store, box, "small")
    snap = store.open_maildrop(box, None)
    stored = store.read_message(snap, 0)
    assert stored.data is not None and len(stored.data) <= INLINE_MAX
    assert count(store, "body_chunks") == 0
    store.close_maildrop(snap)


def test_group_commit_is_all_or_nothing(store: PostgresStore) -> None:
    box = joe_inbox(store)
    put(store, box, "before")
    with pytest.raises(NotFound):
        store.deliver_many(
            [
                (message("good"), [Copy(box.id, b"", None, None)]),
                (message("bad"), [Copy(box.id + 1000, b"", None, None)]),  # no such mailbox
            ]
        )
    assert [m.uid for m in store.list_messages(box)] == [1]
    put(store, box, "after")
    assert [m.uid for m in store.list_messages(box)] == [1, 2]  # no UID lost to the failure


def test_duplicates_suppressed_within_the_window(
    open_store: Callable[..., PostgresStore],
) -> None:
    store = open_store(duplicate_window=3600.0)
    box = joe_inbox(store)

    def copy() -> Copy:
        return Copy(box.id, b"", None, None, "<m1@x>", "joe@example.com")

    out = store.deliver_many(
        [(message("a"), [copy()]), (message("a"), [copy()]), (message("b"), [])]
    )
    assert out == [[True], [False], []]
    assert store.deliver(message("a"), [copy()]) == [False]
    other = Copy(box.id, b"", None, None, "<m1@x>", "ann@example.com")
    assert store.deliver(message("a"), [other]) == [True]
    assert len(store.list_messages(box)) == 2
    # Records older than the window are pruned; the same message is then taken again.
    with store._conn() as conn:
        conn.execute("UPDATE duplicates SET seen_at = seen_at - 7200")
    store.prune_duplicates()
    assert count(store, "duplicates") == 0
    assert store.deliver(message("a"), [copy()]) == [True]


def test_no_window_no_suppression(open_store: Callable[..., PostgresStore]) -> None:
    store = open_store(duplicate_window=None)
    box = joe_inbox(store)
    c = Copy(box.id, b"", None, None, "<m1@x>", "joe@example.com")
    assert store.deliver(message("a"), [c]) == [True]
    assert store.deliver(message("a"), [c]) == [True]


def test_import_keeps_flags_and_order(store: PostgresStore) -> None:
    box = joe_inbox(store)
    big = message("big", "x" * (INLINE_MAX + 10) + "\n")
    n = store.import_messages(box, [(message("a"), SEEN), (big, 0), (message("c"), 0)], 2)
    assert n == 3
    infos = store.list_messages(box)
    assert [m.uid for m in infos] == [1, 2, 3]
    assert [m.flags for m in infos] == [("\\Seen",), (), ()]
    snap = store.open_maildrop(box, None)
    assert subjects(store, snap) == ["a", "big", "c"]
    store.close_maildrop(snap)


def test_concurrent_deliveries_never_share_a_uid(store: PostgresStore) -> None:
    box = joe_inbox(store)
    other = store.add_mailbox("example.com", "joe", "second")
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(10):
                # Both mailboxes in each batch, in opposite orders: locks taken in one order.
                ids = [box.id, other.id] if n % 2 else [other.id, box.id]
                store.deliver_many([(message(f"{n}-{i}"), [Copy(m, b"", None, None) for m in ids])])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for mb in (box, other):
        assert [m.uid for m in store.list_messages(mb)] == list(range(1, 41))


def test_a_spooled_message_is_streamed_into_chunks(store: PostgresStore, tmp_path: Path) -> None:
    box = joe_inbox(store)
    spool = Spool(tmp_path, threshold=4096)  # on disk past 4 KiB, as a large LMTP message
    head = b"Return-Path: <a@b>\r\n"
    rest = b"Subject: big\n\n" + b"".join(b".line %d\n" % i for i in range(60_000))
    for i in range(0, len(rest), 10_000):
        spool.write(rest[i : i + 10_000])
    spooled = SpooledMessage(head, spool)
    assert spool.on_disk and spooled.size > INLINE_MAX
    store.deliver(spooled, [Copy(box.id, b"", None, None)])
    store.deliver(head + rest, [Copy(box.id, b"", None, None)])  # the same octets, in memory
    snap = store.open_maildrop(box, None)
    streamed, whole = (b"".join(store.read_message(snap, i).chunks()) for i in (0, 1))
    assert streamed == whole and streamed.startswith(b"Return-Path: <a@b>\r\nSubject: big\r\n")
    assert snap.sizes[0] == snap.sizes[1] == len(normalize_crlf(head + rest))
    with store._conn() as conn:
        rows = conn.execute("SELECT length(data) FROM body_chunks ORDER BY body_id, seq")
        lengths = [int(r[0]) for r in rows.fetchall()]
    assert max(lengths) == CHUNK_SIZE
    spool.close()
