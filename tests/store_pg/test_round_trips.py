"""Issue 11: a POP session opens with at most two database round trips; a delivery group
commit, whatever its size, commits in two, and \\Seen flags are set in one. Counted on the wire,
by the bench's protocol-reading relay (bench/pgwire.py) between the store and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import pytest

from accounts.credentials import make_credentials
from bench.cluster import background
from bench.pgwire import Relay
from cgpop.auth import Authenticator
from cgpop.delivery import Deliverer, Result, Status
from cgpop.spool import Octets
from cgpop.store.api import SEEN, Copy, Mailbox, OverQuota, Stored
from cgpop.store.postgres import PostgresStore
from tests.pg import PgServer


@pytest.fixture
def relayed(postgres: PgServer, pg_dsn: str) -> Iterator[tuple[PostgresStore, Relay]]:
    relay = Relay(postgres.port)
    store = PostgresStore(
        pg_dsn.replace(f":{postgres.port}/", f":{relay.port}/"), node="rt", pool_size=2
    )
    try:
        yield store, relay
    finally:
        store.close()
        relay.stop()


def test_a_login_opens_its_session_in_two_round_trips(
    relayed: tuple[PostgresStore, Relay],
) -> None:
    store, relay = relayed
    store.add_domain("example.com")
    store.add_account("example.com", "joe", make_credentials("pw", iterations=1))
    auth = Authenticator(store, login_cache_ttl=60.0)

    def login() -> list[list[str]]:
        at = len(relay.log)
        auth.penalty_key("joe", "example.com")  # what LoginSession asks first
        done = auth.password_login("joe", "example.com", password="pw")
        assert done.access is not None
        turns = [t for t in relay.log[at:] if not background(t)]
        store.close_maildrop(done.access.snapshot)
        store.flush_released()
        return turns

    login()  # the first fills the directory caches and registers this node
    store.add_alert("account", "joe@example.com", "hello")
    turns = login()
    assert len(turns) == 2, turns
    assert turns[0] == ["SELECT v FROM directory_version"]
    opened = " ".join(turns[1])
    for part in ("INSERT INTO store_sessions", "FROM messages", "FROM store_sessions", "alerts"):
        assert part in opened


# --- delivery and \Seen (issue 11: the group commit's round trips do not grow with it) ---
@pytest.fixture
def delivering(postgres: PgServer, pg_dsn: str) -> Iterator[tuple[PostgresStore, Relay]]:
    """A store behind the relay with duplicate suppression on and one pooled connection (no
    connection opened in the background while turns are counted)."""
    relay = Relay(postgres.port)
    store = PostgresStore(
        pg_dsn.replace(f":{postgres.port}/", f":{relay.port}/"),
        node="rt",
        pool_size=1,
        duplicate_window=3600.0,
    )
    try:
        store.add_domain("example.com")
        for name in ("joe", "ann"):
            store.add_account("example.com", name, make_credentials("pw", iterations=1))
        yield store, relay
    finally:
        store.close()
        relay.stop()


def _box(store: PostgresStore, name: str) -> Mailbox:
    box = store.get_mailbox("example.com", name, "INBOX")
    assert box is not None
    return box


def _copy(box: Mailbox, mid: str) -> Copy:
    return Copy(box.id, b"X-Real-To: <x>\r\n", "x", None, mid, f"{box.id}/")


def _message(n: int, body: int = 10) -> bytes:
    return f"Message-ID: <m{n}@x>\r\n\r\n".encode() + b"x" * body + b"\r\n"


def _turns(relay: Relay, run: Callable[[], object]) -> list[list[str]]:
    at = len(relay.log)
    run()
    return relay.log[at:]


def test_a_delivery_commits_in_two_round_trips(delivering: tuple[PostgresStore, Relay]) -> None:
    store, relay = delivering
    joe = _box(store, "joe")
    stored: list[list[Stored]] = []
    turns = _turns(relay, lambda: stored.append(store.deliver(_message(1), [_copy(joe, "<m1@x>")])))
    assert stored == [[True]]
    assert len(turns) == 2, turns
    first, second = (" ".join(t) for t in turns)
    assert "FOR UPDATE" in first and "INSERT INTO duplicates" in first
    assert "INSERT INTO messages" in second and second.endswith("COMMIT")
    # What was acknowledged is there, under the first UID.
    snap = store.open_maildrop(joe, None)
    try:
        assert list(snap.uids) == [1]
    finally:
        store.close_maildrop(snap)


def test_a_group_commit_takes_as_many_round_trips_as_one_delivery(
    delivering: tuple[PostgresStore, Relay],
) -> None:
    """Twelve messages to two accounts, large and small bodies, a duplicate, a copy over
    quota and a warning crossed: still two round trips, every verdict exact."""
    store, relay = delivering
    joe, ann = _box(store, "joe"), _box(store, "ann")
    store.set_quota("example.com", "ann", 2000, None)
    store.deliver(_message(0), [_copy(joe, "<m0@x>")])  # joe already has <m0@x>
    items: list[tuple[Octets, Sequence[Copy]]] = [
        (_message(0), [_copy(joe, "<m0@x>")]),  # a duplicate
        (_message(1, 300_000), [_copy(joe, "<m1@x>")]),  # in chunks
        (_message(2, 1500), [_copy(ann, "<m2@x>"), _copy(joe, "<m2@x>")]),  # ann: 75 %
        (_message(3, 1000), [_copy(ann, "<m3@x>")]),  # ann over quota
    ] + [(_message(n), [_copy(joe, f"<m{n}@x>")]) for n in range(4, 12)]
    outcome: list[list[list[Stored]]] = []
    turns = _turns(relay, lambda: outcome.append(store.deliver_many(items, 70)))
    assert len(turns) == 2, turns
    assert outcome[0][:4] == [[False], [True], [True, True], [OverQuota("ann@example.com")]]
    assert outcome[0][4:] == [[True]] * 8
    snap = store.open_maildrop(joe, None)
    try:
        assert list(snap.uids) == list(range(1, 12))  # m0, m1, m2 and m4..m11: no gap, no reuse
    finally:
        store.close_maildrop(snap)
    quota = store.get_quota("example.com", "ann")
    assert (quota.messages_used, quota.storage_used) == (1, len(_message(2, 1500)) + 16)
    assert [a.target for a in store.list_alerts()] == ["ann@example.com"]


def test_seen_flags_are_set_in_one_round_trip(delivering: tuple[PostgresStore, Relay]) -> None:
    store, relay = delivering
    joe = _box(store, "joe")
    store.deliver_many([(_message(n), [_copy(joe, f"<m{n}@x>")]) for n in range(3)])
    turns = _turns(relay, lambda: store.mark_seen([(joe.id, 1), (joe.id, 3)]))
    assert len(turns) == 1, turns
    assert [store.message_flags(joe.id, uid) for uid in (1, 2, 3)] == [SEEN, 0, SEEN]


def test_an_lmtp_delivery_takes_three_round_trips(
    delivering: tuple[PostgresStore, Relay],
) -> None:
    """RCPT reads the directory version (the targets are cached), DATA resolves the checked
    recipients without another read, the commit takes two; a message not checked at RCPT
    (deliver, XTND XMIT) reads the version once for all its recipients."""
    store, relay = delivering
    deliverer = Deliverer(store, default_domain="example.com")
    rcpts = ("joe@example.com", "ann@example.com")
    for rcpt in rcpts:
        assert deliverer.check(rcpt) is None  # fills the cache
    results: list[list[Result]] = []

    def lmtp(n: int) -> None:
        for rcpt in rcpts:
            assert deliverer.check(rcpt) is None
        prepared = deliverer.prepare("s@x", rcpts, _message(n), checked=True)
        results.extend(deliverer.commit([prepared]))

    turns = _turns(relay, lambda: lmtp(1))
    assert [r.status for r in results[0]] == [Status.DELIVERED, Status.DELIVERED]
    assert len(turns) == 2 + 2, turns  # two RCPTs, one commit
    assert turns[0] == turns[1] == ["SELECT v FROM directory_version"]
    turns = _turns(relay, lambda: deliverer.deliver("s@x", rcpts, _message(2)))
    assert len(turns) == 1 + 2, turns
    assert turns[0] == ["SELECT v FROM directory_version"]
