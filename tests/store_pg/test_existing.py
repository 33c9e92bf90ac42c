"""The store-level behaviours already tested against the embedded store, run unchanged against
PostgresStore: the test functions are imported, the `store` fixture here gives them a
PostgreSQL-backed store prepared as their own module's fixture prepares the SQLite one."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from accounts.credentials import make_credentials
from cgpop.delivery import Deliverer, Status
from cgpop.store.postgres import PostgresStore
from tests.test_dircache import test_directory_changes_move_the_version as _dir_changes
from tests.test_dircache import test_mail_traffic_does_not_move_it as _traffic
from tests.test_group_commit import test_a_failing_message_does_not_fail_the_others as _isolated
from tests.test_store_acl import (
    CREDS,
    DOMAIN,
    test_acls_are_per_mailbox_and_die_with_it,
    test_cyrus_example,
    test_groups,
    test_login_rights_from_acl_and_groups,
    test_owner_and_admin_rights,
    test_posting_needs_p_for_anyone_or_anonymous,
    test_public_account_mailboxes_start_with_default_acl,
    test_rights_parse_round_trip_from_store,
    test_set_list_replace_delete,
)

__all__ = [
    "test_acls_are_per_mailbox_and_die_with_it",
    "test_cyrus_example",
    "test_groups",
    "test_login_rights_from_acl_and_groups",
    "test_owner_and_admin_rights",
    "test_posting_needs_p_for_anyone_or_anonymous",
    "test_public_account_mailboxes_start_with_default_acl",
    "test_rights_parse_round_trip_from_store",
    "test_set_list_replace_delete",
]


@pytest.fixture
def store(open_store: Callable[..., PostgresStore]) -> PostgresStore:
    """As tests/test_store_acl.py's fixture: one domain, four accounts."""
    st = open_store()
    st.add_domain(DOMAIN)
    for name in ("owner", "fred", "jsmith", "admin"):
        st.add_account(DOMAIN, name, CREDS)
    return st


def _accounts(store: PostgresStore, *names: str) -> PostgresStore:
    store.add_domain("example.com")
    for name in names:
        store.add_account("example.com", name, make_credentials("pw", iterations=1))
    return store


@pytest.fixture
def joe_store(open_store: Callable[..., PostgresStore]) -> PostgresStore:
    """As tests/test_dircache.py's fixture."""
    return _accounts(open_store(), "joe")


@pytest.fixture
def joe_ann_store(open_store: Callable[..., PostgresStore]) -> PostgresStore:
    """As tests/test_group_commit.py's fixture."""
    return _accounts(open_store(), "joe", "ann")


def test_directory_changes_move_the_version(joe_store: PostgresStore) -> None:
    _dir_changes(joe_store)  # type: ignore[arg-type]


def test_mail_traffic_does_not_move_it(joe_store: PostgresStore) -> None:
    _traffic(joe_store)  # type: ignore[arg-type]


def test_a_failing_message_does_not_fail_the_others(
    joe_ann_store: PostgresStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    _isolated(joe_ann_store, monkeypatch)  # type: ignore[arg-type]


def test_cached_target_follows_changes_from_another_node(
    joe_store: PostgresStore, open_store: Callable[..., PostgresStore]
) -> None:
    d = Deliverer(joe_store, default_domain="example.com")  # type: ignore[arg-type]
    assert d.target("info@example.com") is Status.UNKNOWN
    other = open_store("node-b")  # another node's CLI
    other.add_route("info@example.com", "joe@example.com")
    found = d.target("info@example.com")
    assert not isinstance(found, Status) and found[0].account == "joe"
