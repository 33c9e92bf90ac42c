"""The directory version and the caches keyed to it: every directory change invalidates,
routine mail traffic does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from accounts.credentials import make_credentials
from cgpop.delivery import Deliverer, Status
from cgpop.dircache import DirectoryCache
from cgpop.store.sqlite import SqliteStore
from tests.conftest import message


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(tmp_path / "data")
    s.add_domain("example.com")
    s.add_account("example.com", "joe", make_credentials("pw", iterations=1))
    return s


def test_directory_changes_move_the_version(store: SqliteStore) -> None:
    changes = [
        lambda: store.add_domain("other.test"),
        lambda: store.add_domain_alias("alias.test", "example.com"),
        lambda: store.add_account("example.com", "ann", make_credentials("x", iterations=1)),
        lambda: store.set_credentials("example.com", "ann", make_credentials("y", iterations=1)),
        lambda: store.add_mailbox("example.com", "ann", "lists/info"),
        lambda: store.add_route("*@example.com", "joe@example.com"),
        lambda: store.remove_route("*@example.com"),
        lambda: store.remove_mailbox("example.com", "ann", "lists/info"),
        lambda: store.remove_account("example.com", "ann"),
    ]
    for change in changes:
        before = store.directory_version()
        change()
        assert store.directory_version() > before


def test_mail_traffic_does_not_move_it(store: SqliteStore) -> None:
    before = store.directory_version()
    d = Deliverer(store, default_domain="example.com")
    assert [r.status for r in d.deliver("a@b", ["joe@example.com"], message("x"))] == [
        Status.DELIVERED
    ]
    joe = store.get_mailbox("example.com", "joe", "INBOX")
    assert joe is not None
    snap = store.open_maildrop(joe, None)
    store.mark_seen([(joe.id, snap.uids[0])])
    store.expunge(joe.id, [snap.uids[0]])
    assert store.directory_version() == before


def test_cached_target_follows_changes_from_another_connection(
    store: SqliteStore, tmp_path: Path
) -> None:
    d = Deliverer(store, default_domain="example.com")
    assert d.target("info@example.com") is Status.UNKNOWN
    other = SqliteStore(tmp_path / "data")  # as the CLI would, in its own process
    other.add_route("info@example.com", "joe@example.com")
    other.close()
    found = d.target("info@example.com")
    assert not isinstance(found, Status) and found[0].account == "joe"


def test_cache_is_bounded_and_recomputes_on_a_new_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version = [1]
    calls: list[int] = []
    cache: DirectoryCache[int] = DirectoryCache(lambda: version[0])

    def compute() -> int:
        calls.append(1)
        return len(calls)

    assert cache.get("k", compute) == 1
    assert cache.get("k", compute) == 1
    version[0] = 2
    assert cache.get("k", compute) == 2
    monkeypatch.setattr("cgpop.dircache.MAX_ENTRIES", 3)
    for i in range(10):
        cache.get(i, compute)
    assert len(cache._entries) <= 3


def test_a_version_read_by_the_caller_is_used_and_peek_reads_none() -> None:
    # Issue 11: one read of the version serves all the lookups of a login.
    reads: list[int] = []
    current = [1]

    def version() -> int:
        reads.append(current[0])
        return current[0]

    cache: DirectoryCache[str] = DirectoryCache(version)
    assert cache.get("k", lambda: "one", version=1) == "one"
    assert cache.get("k", lambda: "two", version=1) == "one"
    assert reads == []
    assert cache.get("k", lambda: "two", version=2) == "two"  # a newer version recomputes
    current[0] = 3
    assert cache.peek("k", lambda: "three") == "two"  # cached: no read, whatever its age
    assert reads == []
    assert cache.peek("new", lambda: "fresh") == "fresh"  # not cached: a validated get
    assert reads == [3]
    assert cache.get("k", lambda: "three") == "three"
