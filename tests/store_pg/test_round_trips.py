"""Issue 11: a POP session opens with at most two database round trips. Counted on the wire,
by the bench's protocol-reading relay (bench/pgwire.py) between the store and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from accounts.credentials import make_credentials
from bench.cluster import background
from bench.pgwire import Relay
from cgpop.auth import Authenticator
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
