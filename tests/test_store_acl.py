"""ACL entries and groups in the SQLite store, and the rights they give at login and delivery
(issue 3; Cyrus semantics from accounts/acl.py, applied to what the store keeps)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from accounts.acl import DEFAULT_PUBLIC_ACL, AclEntry, Rights, effective_rights, parse_acl_entry
from accounts.credentials import make_credentials
from cgpop.access import Access, LoginResult
from cgpop.auth import AUTH_FAILED, Authenticator
from cgpop.delivery import Deliverer, Status
from cgpop.store.api import Mailbox, NotFound, StoreError
from cgpop.store.sqlite import SqliteStore
from router.resolve import resolve_login

DOMAIN = "example.com"
# One cheap KDF for every account: these tests are about rights, not passwords.
CREDS = make_credentials("pw")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    st = SqliteStore(tmp_path / "data")
    st.add_domain(DOMAIN)
    for name in ("owner", "fred", "jsmith", "admin"):
        st.add_account(DOMAIN, name, CREDS)
    yield st
    st.close()


def box(store: SqliteStore, name: str = "shared", account: str = "owner") -> Mailbox:
    found = store.get_mailbox(DOMAIN, account, name)
    return found if found is not None else store.add_mailbox(DOMAIN, account, name)


def entry(identifier: str, rights: str) -> AclEntry:
    return parse_acl_entry(identifier, rights, default_domain=DOMAIN)


def test_set_list_replace_delete(store: SqliteStore) -> None:
    mb = box(store)
    assert store.acl_entries(mb) == []
    store.set_acl_entry(mb, entry("fred", "lr"))
    store.set_acl_entry(mb, entry("anyone", "l"))
    store.set_acl_entry(mb, entry("-fred", "s"))
    assert [str(e) for e in store.acl_entries(mb)] == [
        "anyone l",
        "fred@example.com lr",
        "-fred@example.com s",
    ]
    # Setting the same (identifier, sign) again replaces the rights, it does not add to them.
    store.set_acl_entry(mb, entry("fred", "lrsd"))
    assert store.get_acl_entry(mb, "fred@example.com") == entry("fred", "lrste")
    assert store.get_acl_entry(mb, "fred@example.com", True) == entry("-fred", "s")
    store.delete_acl_entry(mb, "fred@example.com", True)
    assert store.get_acl_entry(mb, "fred@example.com", True) is None
    assert store.get_acl_entry(mb, "fred@example.com") is not None
    with pytest.raises(NotFound):
        store.delete_acl_entry(mb, "fred@example.com", True)
    # Empty rights remove the entry (SETACL with "" in RFC 4314 section 3.1).
    store.set_acl_entry(mb, entry("fred", "none"))
    assert [str(e) for e in store.acl_entries(mb)] == ["anyone l"]


def test_acls_are_per_mailbox_and_die_with_it(store: SqliteStore) -> None:
    one, two = box(store, "one"), box(store, "two")
    store.set_acl_entry(one, entry("fred", "lr"))
    assert store.acl_entries(two) == []
    store.remove_mailbox(DOMAIN, "owner", "one")
    with pytest.raises(NotFound):
        store.set_acl_entry(one, entry("fred", "lr"))
    # A mailbox re-created under the same name does not inherit the old ACL.
    assert store.acl_entries(box(store, "one")) == []


def test_cyrus_example(store: SqliteStore) -> None:
    """Cyrus "Access Control Lists": `anyone lrsp`, `fred lwi`, `-anonymous s`."""
    mb = box(store)
    for ident, rights in (("anyone", "lrsp"), ("fred", "lwi"), ("-anonymous", "s")):
        store.set_acl_entry(mb, entry(ident, rights))
    acl = store.acl_entries(mb)
    assert str(effective_rights(acl, user="fred@example.com")) == "lrswip"
    assert str(effective_rights(acl, user=None)) == "lrp"
    assert str(effective_rights(acl, user="jsmith@example.com")) == "lrsp"


def test_groups(store: SqliteStore) -> None:
    store.add_group_member("staff", "Fred@Example.com")
    store.add_group_member("staff", "jsmith@example.com")
    store.add_group_member("admins", "fred@example.com")
    with pytest.raises(StoreError):
        store.add_group_member("STAFF", "fred@example.com")
    assert store.groups_of("FRED@example.com") == frozenset({"staff", "admins"})
    assert store.list_group_members() == [
        ("admins", "fred@example.com"),
        ("staff", "fred@example.com"),
        ("staff", "jsmith@example.com"),
    ]
    assert store.list_group_members("staff") == [
        ("staff", "fred@example.com"),
        ("staff", "jsmith@example.com"),
    ]
    store.remove_group_member("staff", "fred@example.com")
    with pytest.raises(NotFound):
        store.remove_group_member("staff", "fred@example.com")
    assert store.groups_of("fred@example.com") == frozenset({"admins"})
    assert store.groups_of("nobody@example.com") == frozenset()


def test_public_account_mailboxes_start_with_default_acl(store: SqliteStore) -> None:
    store.add_domain("client1.com")
    store.add_account("client1.com", "Public", CREDS)
    store.add_account(DOMAIN, "public", CREDS)
    for domain in ("client1.com", DOMAIN):
        inbox = store.get_mailbox(domain, "public", "INBOX")
        assert inbox is not None
        assert tuple(store.acl_entries(inbox)) == DEFAULT_PUBLIC_ACL
    announces = store.add_mailbox(DOMAIN, "public", "announces")
    assert [str(e) for e in store.acl_entries(announces)] == ["anyone lrs"]
    # Other accounts' mailboxes start with no entries: only the owner reads them.
    assert store.acl_entries(box(store)) == []
    owner_inbox = store.get_mailbox(DOMAIN, "owner", "INBOX")
    assert owner_inbox is not None and store.acl_entries(owner_inbox) == []


# --- the rights as the Authenticator applies them at login ---
def granted(outcome: LoginResult) -> Access:
    assert outcome.error is None and outcome.access is not None
    return outcome.access


def login(store: SqliteStore, name: str, admins: tuple[str, ...] = ()) -> LoginResult:
    auth = Authenticator(store, admins=admins)
    target = resolve_login(name, default_domain=DOMAIN, directory=store)
    account = store.get_account(target.auth_domain, target.auth_account)
    assert account is not None
    return auth.open(target, account)


def test_login_rights_from_acl_and_groups(store: SqliteStore) -> None:
    mb = box(store)
    name = "~owner/shared#fred"
    assert login(store, name).error is AUTH_FAILED
    store.set_acl_entry(mb, entry("group:staff", "lrt"))
    assert login(store, name).error is AUTH_FAILED
    store.add_group_member("staff", "fred@example.com")
    grant = granted(login(store, name))
    assert (grant.may_seen, grant.may_delete, grant.may_expunge) == (False, True, False)
    assert grant.account == "fred@example.com"
    assert grant.snapshot.mailbox.id == mb.id
    store.set_acl_entry(mb, entry("-fred", "r"))
    assert login(store, name).error is AUTH_FAILED


def test_owner_and_admin_rights(store: SqliteStore) -> None:
    mb = box(store)
    grant = granted(login(store, "shared#owner"))
    assert (grant.may_seen, grant.may_delete, grant.may_expunge) == (True, True, True)
    # The owner's own negative entry takes rights away, but not its implicit ones.
    store.set_acl_entry(mb, entry("-owner", "t"))
    grant = granted(login(store, "shared#owner"))
    assert (grant.may_seen, grant.may_delete) == (True, False)
    # Admins get `la`, not `r`: they cannot read someone else's mail.
    outcome = login(store, "~owner/shared#admin", admins=("admin@example.com",))
    assert outcome.error is AUTH_FAILED
    auth = Authenticator(store, admins=("admin@example.com",))
    assert str(auth.rights(mb, "admin@example.com")) == "la"
    assert str(Authenticator(store).rights(mb, "admin@example.com")) == ""


# --- posting rights at delivery ---
def test_posting_needs_p_for_anyone_or_anonymous(store: SqliteStore) -> None:
    d = Deliverer(store, default_domain=DOMAIN)
    mb = box(store)
    rcpt = "shared#owner@example.com"
    assert d.check("owner@example.com") is None  # INBOX always takes mail
    assert d.check("nobody@example.com") is Status.UNKNOWN
    assert d.check("missing#owner@example.com") is Status.UNKNOWN
    assert d.check(rcpt) is Status.REFUSED
    store.set_acl_entry(mb, entry("fred", "p"))  # a named user's p is not enough
    assert d.check(rcpt) is Status.REFUSED
    store.set_acl_entry(mb, entry("anonymous", "p"))
    assert d.check(rcpt) is None
    store.delete_acl_entry(mb, "anonymous")
    store.set_acl_entry(mb, entry("anyone", "lp"))
    assert d.check(rcpt) is None
    store.set_acl_entry(mb, entry("-anonymous", "p"))
    assert d.check(rcpt) is Status.REFUSED
    [result] = d.deliver("s@remote.test", [rcpt], b"Subject: x\r\n\r\nx\r\n")
    assert result.status is Status.REFUSED
    assert result.lmtp_reply.startswith("550 5.7.1 ")
    assert store.list_messages(mb) == []
    store.delete_acl_entry(mb, "anonymous", True)
    [result] = d.deliver("s@remote.test", [rcpt], b"Subject: x\r\n\r\nx\r\n")
    assert result.status is Status.DELIVERED
    assert len(store.list_messages(mb)) == 1


def test_rights_parse_round_trip_from_store(store: SqliteStore) -> None:
    mb = box(store)
    store.set_acl_entry(mb, AclEntry("anyone", Rights.parse("all")))
    assert str(store.acl_entries(mb)[0].rights) == "lrswipkxtean"
