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


def test_every_refusal_says_why_and_changes_nothing(store: Store) -> None:
    """The refusals the CLI shows, the same text on every backend; a refused change leaves
    the directory as it was."""
    box = store.get_mailbox("example.com", "joe", "INBOX")
    assert box is not None
    store.add_domain_alias("example.net", "example.com")
    store.add_mailbox("example.com", "joe", "Work")
    store.add_group_member("staff", "joe@example.com")
    refusals: list[tuple[Callable[[], object], type[StoreError], str]] = [
        (lambda: store.add_domain("EXAMPLE.com"), StoreError, "domain already exists: EXAMPLE.com"),
        (lambda: store.add_domain("example.net"), StoreError, "example.net is already a domain"),
        (lambda: store.add_domain_alias("example.com", "example.com"), StoreError, "is a domain"),
        (lambda: store.add_domain_alias("Example.NET", "example.com"), StoreError, "alias already"),
        (lambda: store.add_domain_alias("x.test", "nowhere.test"), NotFound, "no such domain"),
        (lambda: store.remove_domain_alias("x.test", "example.com"), NotFound, "no alias x.test"),
        (lambda: store.remove_domain("nowhere.test"), NotFound, "no such domain: nowhere.test"),
        (lambda: store.add_mailbox("example.com", "joe", "Work"), StoreError, "mailbox already"),
        (lambda: store.add_mailbox("example.com", "bob", "Work"), NotFound, "no such account"),
        (lambda: store.remove_mailbox("example.com", "joe", "Play"), NotFound, "no such mailbox"),
        (lambda: store.remove_mailbox("example.com", "joe", "INBOX"), StoreError, "INBOX cannot"),
        (lambda: store.list_mailboxes("example.com", "bob"), NotFound, "no such account"),
        (lambda: store.list_accounts("nowhere.test"), NotFound, "no such domain"),
        (lambda: store.disabled_services("nowhere.test"), NotFound, "no such domain"),
        (lambda: store.add_group_member("STAFF", "Joe@example.com"), StoreError, "already in"),
        (lambda: store.remove_group_member("staff", "ann@example.com"), NotFound, "not in group"),
        (lambda: store.delete_acl_entry(box, "anyone", True), NotFound, "no ACL entry for -anyone"),
    ]
    for change, error, text in refusals:
        with pytest.raises(error, match=text):
            change()
    assert store.list_domains() == ["example.com"]
    assert store.list_domain_aliases() == [("example.net", "example.com")]
    assert store.list_mailboxes("example.com", "joe") == ["INBOX", "Work"]
    assert store.list_group_members() == [("staff", "joe@example.com")]


def test_an_acl_entry_for_a_removed_mailbox_is_not_found(store: Store) -> None:
    work = store.add_mailbox("example.com", "joe", "Work")
    store.remove_mailbox("example.com", "joe", "Work")
    with pytest.raises(NotFound, match="no such mailbox: Work"):
        store.set_acl_entry(work, AclEntry("anyone", Rights.parse("lr")))


def test_set_acl_entry_replaces_and_empty_rights_remove(store: Store) -> None:
    box = store.get_mailbox("example.com", "joe", "INBOX")
    assert box is not None
    store.set_acl_entry(box, AclEntry("ann@example.com", Rights.parse("lr")))
    store.set_acl_entry(box, AclEntry("ann@example.com", Rights.parse("lrs")))
    store.set_acl_entry(box, AclEntry("ann@example.com", Rights.parse("l"), negative=True))
    assert store.get_acl_entry(box, "ann@example.com") == AclEntry(
        "ann@example.com", Rights.parse("lrs")
    )
    assert [str(e) for e in store.acl_entries(box)] == ["ann@example.com lrs", "-ann@example.com l"]
    store.set_acl_entry(box, AclEntry("ann@example.com", Rights.parse("")))
    assert [str(e) for e in store.acl_entries(box)] == ["-ann@example.com l"]
    assert store.get_acl_entry(box, "ann@example.com") is None


def test_listings_come_in_byte_order(store: Store) -> None:
    """Names sort by their octets on every backend (a locale would put `a-b` after `a.c`,
    or `Zed` after `ann`)."""
    for name in ("a.test", "a0.test", "a-b.test"):
        store.add_domain(name)
    assert store.list_domains() == ["a-b.test", "a.test", "a0.test", "example.com"]
    creds = make_credentials("x")
    store.add_accounts([("a.test", "b-c", creds), ("a.test", "b.c", creds), ("a.test", "b", creds)])
    by_name = ["b@a.test", "b-c@a.test", "b.c@a.test"]  # sorted by domain, then name
    assert store.list_accounts("a.test") == by_name
    assert list(store.disabled_services("a.test")) == by_name
    assert store.list_accounts()[:3] == by_name
    for member in ("x.y@a.test", "x-y@a.test", "x@a.test"):
        store.add_group_member("g.1", member)
    store.add_group_member("g-1", "x@a.test")
    assert store.list_group_members() == [
        ("g-1", "x@a.test"),
        ("g.1", "x-y@a.test"),
        ("g.1", "x.y@a.test"),
        ("g.1", "x@a.test"),
    ]
    box = store.get_mailbox("example.com", "joe", "INBOX")
    assert box is not None
    for who in ("group:b.c", "Zed@a.test", "group:b-c", "anyone"):
        store.set_acl_entry(box, AclEntry(who, Rights.parse("l")))
    assert [e.identifier for e in store.acl_entries(box)] == [
        "Zed@a.test",
        "anyone",
        "group:b-c",
        "group:b.c",
    ]


def test_a_new_mailbox_inherits_its_nearest_parents_acl(store: Store) -> None:
    lists = store.add_mailbox("example.com", "joe", "lists")
    store.set_acl_entry(lists, AclEntry("ann@example.com", Rights.parse("lr")))
    child = store.add_mailbox("example.com", "joe", "lists/info/daily")
    assert [str(e) for e in store.acl_entries(child)] == ["ann@example.com lr"]
    store.set_acl_entry(child, AclEntry("anyone", Rights.parse("l")))
    grandchild = store.add_mailbox("example.com", "joe", "lists/info/daily/x")
    assert [str(e) for e in store.acl_entries(grandchild)] == ["ann@example.com lr", "anyone l"]
    top = store.add_mailbox("example.com", "joe", "other")
    assert store.acl_entries(top) == []


def test_services_suspended_and_resumed(store: Store) -> None:
    before = store.directory_version()
    store.set_services_enabled("example.com", "joe", ["pop"], False)
    assert store.directory_version() > before  # every process's and node's login cache sees it
    account = store.get_account("EXAMPLE.com", "Joe")
    assert account is not None and account.disabled == frozenset({"pop"})
    assert (account.domain, account.name) == ("example.com", "joe")
    assert store.disabled_services("example.com") == {
        "ann@example.com": frozenset(),
        "joe@example.com": frozenset({"pop"}),
    }
    store.set_services_enabled("example.com", "joe", ["pop", "xtnd"], False)
    store.set_services_enabled("example.com", "joe", ["pop"], True)
    assert store.disabled_services()["joe@example.com"] == frozenset({"xtnd"})
    with pytest.raises(StoreError, match="unknown service"):
        store.set_services_enabled("example.com", "joe", ["imap"], False)
    assert store.get_account("example.com", "nobody") is None


def test_a_recreated_mailbox_never_repeats_a_uidvalidity(store: Store) -> None:
    first = store.add_mailbox("example.com", "joe", "Work")
    store.remove_mailbox("example.com", "joe", "Work")
    second = store.add_mailbox("example.com", "joe", "Work")
    assert second.id != first.id and second.uidvalidity > first.uidvalidity
    assert store.get_mailbox("example.com", "joe", "Work") == second


def test_remove_account_releases_its_name(store: Store) -> None:
    """A later account of the same name starts afresh: no rights, groups or mailboxes."""
    joe = store.get_mailbox("example.com", "joe", "INBOX")
    assert joe is not None
    store.add_mailbox("example.com", "ann", "Work")
    store.set_acl_entry(joe, AclEntry("ann@example.com", Rights.parse("lr")))
    store.add_group_member("staff", "ann@example.com")
    store.remove_account("example.com", "ann")
    assert not store.account_exists("example.com", "ann")
    assert store.acl_entries(joe) == []
    store.add_account("example.com", "ann", make_credentials("new"))
    assert store.list_mailboxes("example.com", "ann") == ["INBOX"]
    assert store.groups_of("ann@example.com") == frozenset()
