"""The directory (domains, accounts, routes, ACLs, groups) of cgpop.store.api for every backend:
what changes move the directory version, and the errors the CLI shows."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from accounts.acl import AclEntry, Rights
from accounts.credentials import make_credentials
from cgpop.store.api import Copy, NotFound, Store, StoreError


def test_directory_changes_move_the_version(store: Store) -> None:
    changes: list[Callable[[], object]] = [
        lambda: store.add_domain("example.org"),
        lambda: store.add_domain_alias("example.net", "example.com"),
        lambda: store.add_route("sales@example.com", "joe@example.com"),
        lambda: store.add_mailbox("example.com", "joe", "Work"),
        lambda: store.set_credentials("example.com", "ann", make_credentials("other")),
        lambda: store.add_group_member("staff", "joe@example.com"),
        lambda: store.remove_route("sales@example.com"),
    ]
    box = store.get_mailbox("example.com", "joe", "INBOX")
    assert box is not None
    for change in changes:
        before = store.directory_version()
        change()
        assert store.directory_version() != before
    before = store.directory_version()
    store.set_acl_entry(box, AclEntry("anyone", Rights.parse("p")))
    assert store.directory_version() != before
    # Mail traffic is no directory change.
    before = store.directory_version()
    store.deliver(b"Subject: x\r\n\r\nx\r\n", [Copy(box.id, b"", None, None)])
    snap = store.open_maildrop(box, None)
    store.expunge(box.id, list(snap.uids))
    store.close_maildrop(snap)
    store.collect()
    assert store.directory_version() == before


def test_routes_aliases_and_lookups(store: Store) -> None:
    store.add_domain_alias("example.net", "example.com")
    store.add_route("*@example.com", "joe@example.com")
    assert store.canonical_domain("EXAMPLE.NET") == "example.com"
    assert store.canonical_domain("nowhere.test") is None
    assert store.route_target("*@example.com") == "joe@example.com"
    assert store.list_routes() == [("*@example.com", "joe@example.com")]
    assert store.list_domain_aliases() == [("example.net", "example.com")]
    assert store.account_exists("example.com", "joe")
    with pytest.raises(StoreError):
        store.add_route("*@example.com", "ann@example.com")
    with pytest.raises(NotFound):
        store.remove_route("nobody@example.com")
    with pytest.raises(StoreError):
        store.add_account("example.com", "joe", make_credentials("x"))
    with pytest.raises(StoreError):
        store.remove_domain("example.com")  # still has accounts
    assert store.list_accounts("example.com") == ["ann@example.com", "joe@example.com"]


def test_acl_and_groups(store: Store) -> None:
    box = store.get_mailbox("example.com", "joe", "INBOX")
    assert box is not None
    store.set_acl_entry(box, AclEntry("group:staff", Rights.parse("lr")))
    store.add_group_member("staff", "ann@example.com")
    assert store.groups_of("ann@example.com") == frozenset({"staff"})
    assert [str(e) for e in store.acl_entries(box)] == ["group:staff lr"]
    store.delete_acl_entry(box, "group:staff")
    with pytest.raises(NotFound):
        store.delete_acl_entry(box, "group:staff")
    store.remove_account("example.com", "ann")
    assert store.groups_of("ann@example.com") == frozenset()


def test_rename_mailbox_keeps_messages_uids_and_acl_and_moves_children(store: Store) -> None:
    """Issue 13, item 6 (Cyrus keeps UIDs and uidvalidity on rename)."""
    lists = store.add_mailbox("example.com", "joe", "lists")
    info = store.add_mailbox("example.com", "joe", "lists/info")
    store.add_mailbox("example.com", "joe", "listsmore")  # a prefix, not a child
    store.set_acl_entry(info, AclEntry("ann@example.com", Rights.parse("lr")))
    for n in range(3):
        store.deliver(f"Subject: {n}\r\n\r\nbody\r\n".encode(), [Copy(info.id, b"", None, None)])
    before = store.open_maildrop(info, None)
    uidls = [before.uidl(i) for i in range(len(before))]
    store.mark_seen([(info.id, before.uids[0])])
    version = store.directory_version()

    store.rename_mailbox("example.com", "joe", "lists", "archive")

    assert store.directory_version() != version
    assert store.list_mailboxes("example.com", "joe") == [
        "INBOX",
        "archive",
        "archive/info",
        "listsmore",
    ]
    assert store.get_mailbox("example.com", "joe", "lists/info") is None
    moved = store.get_mailbox("example.com", "joe", "archive/info")
    assert moved is not None
    assert (moved.id, moved.uidvalidity) == (info.id, info.uidvalidity)
    after = store.open_maildrop(moved, None)
    assert [after.uidl(i) for i in range(len(after))] == uidls
    assert [m.flags for m in store.list_messages(moved)] == [("\\Seen",), (), ()]
    entry = store.get_acl_entry(moved, "ann@example.com")
    assert entry is not None and entry.rights == Rights.parse("lr")
    # A session opened before the rename reads on.
    assert b"Subject: 0" in b"".join(store.read_message(before, 0).chunks())
    store.close_maildrop(before)
    store.close_maildrop(after)
    archive = store.get_mailbox("example.com", "joe", "archive")
    assert archive is not None and archive.id == lists.id


@pytest.mark.parametrize(
    ("old", "new", "error"),
    [
        ("INBOX", "Old", StoreError),
        ("Work", "INBOX", StoreError),
        ("Work", "Taken", StoreError),
        ("Work", "Work/inner", StoreError),
        ("Missing", "Other", NotFound),
    ],
)
def test_rename_mailbox_refusals(store: Store, old: str, new: str, error: type[StoreError]) -> None:
    store.add_mailbox("example.com", "joe", "Work")
    store.add_mailbox("example.com", "joe", "Taken")
    with pytest.raises(error):
        store.rename_mailbox("example.com", "joe", old, new)
    assert store.list_mailboxes("example.com", "joe") == ["INBOX", "Taken", "Work"]


def test_rename_refused_when_a_child_name_is_taken(store: Store) -> None:
    store.add_mailbox("example.com", "joe", "a")
    store.add_mailbox("example.com", "joe", "a/x")
    store.add_mailbox("example.com", "joe", "b/x")
    with pytest.raises(StoreError, match="b/x"):
        store.rename_mailbox("example.com", "joe", "a", "b")
    assert store.list_mailboxes("example.com", "joe") == ["INBOX", "a", "a/x", "b/x"]
