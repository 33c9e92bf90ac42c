"""Quota rules of cgpop.store.api for every backend (issue 12): usage kept exact with every
delivery, import and expunge, limits of accounts and domains, warnings, and concurrent
deliveries that never pass a limit together."""

from __future__ import annotations

import threading

import pytest

from accounts.credentials import make_credentials
from cgpop.store.api import Copy, Mailbox, NotFound, OverQuota, Quota, Store, Stored


def inbox(store: Store, name: str) -> Mailbox:
    box = store.get_mailbox("example.com", name, "INBOX")
    assert box is not None
    return box


def listed_size(store: Store, box: Mailbox) -> int:
    """What POP's STAT would report for the mailbox."""
    snap = store.open_maildrop(box, None)
    try:
        return snap.total_size
    finally:
        store.close_maildrop(snap)


def msg(n: int, body: int = 10) -> bytes:
    return f"Message-ID: <m{n}@x>\r\nSubject: {n}\r\n\r\n".encode() + b"x" * body + b"\r\n"


def to(box: Mailbox, who: str = "joe") -> Copy:
    return Copy(box.id, f"X-Real-To: <{who}>\r\n".encode(), who, None, None, f"{box.id}/")


@pytest.mark.parametrize("size", [100, 300_000], ids=["inline", "large"])
def test_every_copy_counts_its_size_as_pop_reports_it(store: Store, size: int) -> None:
    joe, ann = inbox(store, "joe"), inbox(store, "ann")
    other = store.add_mailbox("example.com", "joe", "Other")
    message = b"Subject: s\n\n" + b"y" * size + b"\n"  # bare LF: stored as CRLF
    assert store.deliver(message, [to(joe), to(other), to(ann, "ann")]) == [True, True, True]
    joe_used = listed_size(store, joe) + listed_size(store, other)
    assert store.get_quota("example.com", "joe") == Quota(joe_used, None, 2, None)
    assert store.get_quota("example.com", "ann") == Quota(listed_size(store, ann), None, 1, None)
    assert store.get_quota("example.com", None) == Quota(
        joe_used + listed_size(store, ann), None, 3, None
    )


def test_duplicate_suppressed_copies_are_not_counted(store: Store) -> None:
    joe = inbox(store, "joe")
    copy = Copy(joe.id, b"", None, None, "<same@x>", f"{joe.id}/")
    assert store.deliver(msg(1), [copy]) == [True]
    assert store.deliver(msg(1), [copy]) == [False]
    assert store.get_quota("example.com", "joe").messages_used == 1
    assert store.get_quota("example.com", "joe").storage_used == listed_size(store, joe)


def test_usage_drops_at_expunge_not_at_collection(store: Store) -> None:
    joe = inbox(store, "joe")
    store.deliver_many([(msg(1), [to(joe)]), (msg(2, 500), [to(joe)])])
    snap = store.open_maildrop(joe, None)
    first_size = snap.sizes[0]
    assert store.expunge(joe.id, [snap.uids[0]]) == 1
    assert store.expunge(joe.id, [snap.uids[0]]) == 0  # gone already: counted once
    # The session still holds its snapshot: the collector cannot remove the copy yet, but
    # the user sees it gone, and so does the quota.
    used = store.get_quota("example.com", "joe")
    assert used == Quota(snap.total_size - first_size, None, 1, None)
    store.close_maildrop(snap)
    store.collect()
    assert store.get_quota("example.com", "joe") == used


def test_a_removed_mailbox_leaves_the_usage(store: Store) -> None:
    joe = inbox(store, "joe")
    box = store.add_mailbox("example.com", "joe", "Old")
    store.deliver(msg(1), [to(joe), to(box)])
    store.remove_mailbox("example.com", "joe", "Old")
    assert store.get_quota("example.com", "joe") == Quota(listed_size(store, joe), None, 1, None)


def test_import_counts_but_is_never_refused(store: Store) -> None:
    joe = inbox(store, "joe")
    store.set_quota("example.com", "joe", None, 1)
    assert store.import_messages(joe, [(msg(1), 0), (msg(2), 0), (msg(3), 0)], batch=2) == 3
    assert store.get_quota("example.com", "joe") == Quota(listed_size(store, joe), None, 3, 1)


def test_a_message_that_fits_exactly_is_stored_the_next_is_refused(store: Store) -> None:
    joe, ann = inbox(store, "joe"), inbox(store, "ann")
    assert store.deliver(msg(1), [to(joe)]) == [True]
    first = store.get_quota("example.com", "joe").storage_used
    store.set_quota("example.com", "joe", 2 * first, None)
    assert store.deliver(msg(2), [to(joe)]) == [True]  # exactly the limit
    outcome: list[Stored] = store.deliver(msg(3), [to(joe), to(ann, "ann")])
    assert outcome == [OverQuota("joe@example.com"), True]
    assert not outcome[0]
    assert store.get_quota("example.com", "joe") == Quota(2 * first, 2 * first, 2, None)
    assert len(store.list_messages(joe)) == 2


def test_message_count_limit(store: Store) -> None:
    joe = inbox(store, "joe")
    store.set_quota("example.com", "joe", None, 2)
    got = [store.deliver(msg(n), [to(joe)])[0] for n in range(3)]
    assert got == [True, True, OverQuota("joe@example.com")]


def test_an_account_quota_caps_all_its_mailboxes_together(store: Store) -> None:
    joe = inbox(store, "joe")
    other = store.add_mailbox("example.com", "joe", "Other")
    store.set_quota("example.com", "joe", None, 1)
    assert store.deliver(msg(1), [to(joe), to(other)]) == [True, OverQuota("joe@example.com")]


def test_a_domain_quota_caps_the_sum_over_its_accounts(store: Store) -> None:
    joe, ann = inbox(store, "joe"), inbox(store, "ann")
    store.set_quota("example.com", None, None, 3)
    assert store.deliver(msg(1), [to(joe), to(ann, "ann")]) == [True, True]
    assert store.deliver(msg(2), [to(joe), to(ann, "ann")]) == [True, OverQuota("example.com")]
    assert store.get_quota("example.com", None) == Quota(
        listed_size(store, joe) + listed_size(store, ann), None, 3, 3
    )
    # An expunge makes room again.
    snap = store.open_maildrop(joe, None)
    store.expunge(joe.id, [snap.uids[0]])
    store.close_maildrop(snap)
    assert store.deliver(msg(3), [to(ann, "ann")]) == [True]


def test_a_refused_copy_claims_no_duplicate_record(store: Store) -> None:
    joe = inbox(store, "joe")
    store.set_quota("example.com", "joe", None, 0)
    copy = Copy(joe.id, b"", None, None, "<retry@x>", f"{joe.id}/")
    assert store.deliver(msg(1), [copy]) == [OverQuota("joe@example.com")]
    store.set_quota("example.com", "joe", None, None)
    assert store.deliver(msg(1), [copy]) == [True]  # the MTA's retry is not a duplicate


def test_set_show_and_list(store: Store) -> None:
    store.set_quota("example.com", "joe", 5 << 20, 100)
    store.set_quota("example.com", "ann", None, None)
    assert store.list_quotas() == [("joe@example.com", Quota(0, 5 << 20, 0, 100))]
    assert store.list_quotas("other.example") == []
    store.set_quota("example.com", "joe", None, 100)  # `none` for the storage limit
    assert store.get_quota("example.com", "joe") == Quota(0, None, 0, 100)
    store.set_quota("example.com", None, 1 << 30, None)
    assert store.get_quota("example.com", None) == Quota(0, 1 << 30, 0, None)
    with pytest.raises(NotFound, match=r"nobody@example\.com"):
        store.get_quota("example.com", "nobody")


def test_warning_once_per_crossing(store: Store) -> None:
    joe = inbox(store, "joe")
    store.deliver(msg(0), [to(joe)])
    one = store.get_quota("example.com", "joe").storage_used
    store.set_quota("example.com", "joe", 10 * one, None)
    for n in range(1, 8):
        store.deliver(msg(n), [to(joe)], warn_percent=90)
    assert store.pending_alert("joe@example.com") is None  # 80 %
    store.deliver(msg(8), [to(joe)], warn_percent=90)  # 90 %: crossed
    store.deliver(msg(9), [to(joe)], warn_percent=90)  # 100 %: still above, no second one
    alerts = [a for a in store.list_alerts() if a.target == "joe@example.com"]
    assert [a.text.split(":")[0] for a in alerts] == ["Mailbox is 90% full"]
    # Going below and crossing again warns again.
    snap = store.open_maildrop(joe, None)
    store.expunge(joe.id, list(snap.uids[:3]))
    store.close_maildrop(snap)
    store.deliver(msg(10), [to(joe)], warn_percent=90)  # 80 %
    store.deliver(msg(11), [to(joe)], warn_percent=90)  # 90 %
    assert len([a for a in store.list_alerts() if a.target == "joe@example.com"]) == 2
    taken = store.take_alert("joe@example.com")
    assert taken is not None and taken.text.startswith("Mailbox is 90% full: ")


def test_concurrent_deliveries_never_pass_the_limit(store: Store) -> None:
    joe, ann = inbox(store, "joe"), inbox(store, "ann")
    store.set_quota("example.com", "joe", None, 5)
    store.set_quota("example.com", None, None, 9)
    results: list[list[Stored]] = []
    lock = threading.Lock()
    failures: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for n in range(4):
                got = store.deliver(msg(100 * k + n), [to(joe), to(ann, "ann")])
                with lock:
                    results.append(got)
        except BaseException as exc:  # reported below, with the thread's exception
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    joe_stored = sum(1 for r in results if r[0] is True)
    all_stored = sum(1 for r in results for c in r if c is True)
    assert joe_stored == 5
    assert all_stored == 9
    assert store.get_quota("example.com", "joe").messages_used == len(store.list_messages(joe))
    assert store.get_quota("example.com", None).messages_used == 9
    assert store.recalc_quota() == []  # the kept usage is exact


def test_recalc_on_a_consistent_store_corrects_nothing(store: Store) -> None:
    joe = inbox(store, "joe")
    store.deliver(msg(1), [to(joe)])
    assert store.recalc_quota("example.com", "joe") == []
    assert store.recalc_quota("example.com") == []


def test_usage_and_limits_read_back_for_accounts_and_domains(store: Store) -> None:
    assert store.get_quota("example.com", "ann") == Quota(0, None, 0, None)  # nothing yet
    assert store.get_quota("example.com", None) == Quota(0, None, 0, None)
    joe, ann = inbox(store, "joe"), inbox(store, "ann")
    store.deliver(msg(1), [to(joe)])
    store.deliver(msg(2), [to(ann, "ann")])
    used = listed_size(store, joe) + listed_size(store, ann)
    assert store.get_quota("example.com", None) == Quota(used, None, 2, None)
    store.set_quota("example.com", None, None, 10)
    assert store.get_quota("example.com", None) == Quota(used, None, 2, 10)
    with pytest.raises(NotFound, match=r"no such domain: nowhere\.test"):
        store.get_quota("nowhere.test", None)
    with pytest.raises(NotFound, match=r"no such domain: nowhere\.test"):
        store.set_quota("nowhere.test", "joe", 1, 1)
    with pytest.raises(NotFound, match=r"nobody@example\.com"):
        store.recalc_quota("example.com", "nobody")


def test_quotas_list_in_byte_order_of_domain_then_account(store: Store) -> None:
    store.add_domain("a-b.test")
    creds = make_credentials("x")
    store.add_accounts([("a-b.test", "z", creds), ("example.com", "b.c", creds)])
    store.add_accounts([("example.com", "b-c", creds)])
    for domain, name in [
        ("example.com", "joe"),
        ("example.com", "b.c"),
        ("a-b.test", "z"),
        ("example.com", "b-c"),
    ]:
        store.set_quota(domain, name, None, 1)
    assert [address for address, _ in store.list_quotas()] == [
        "z@a-b.test",
        "b-c@example.com",
        "b.c@example.com",
        "joe@example.com",
    ]
    assert [address for address, _ in store.list_quotas("EXAMPLE.com")] == [
        "b-c@example.com",
        "b.c@example.com",
        "joe@example.com",
    ]
