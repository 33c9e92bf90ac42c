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
