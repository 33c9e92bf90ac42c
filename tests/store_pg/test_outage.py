"""The PostgreSQL backend through a database outage (issue 11, "Database outage"), at the store
boundary: a PostgreSQL of the test's own, stopped and started again on the same port. Calls fail
with TemporaryFailure, quickly once the outage is known, and work again once the database is
back, on the same store (no restart). tests/store_pg/test_outage_live.py checks the same from a
client's side."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from cgpop.store.api import TemporaryFailure
from cgpop.store.pg_base import CONNECT_TIMEOUT, DOWN_WAIT, POOL_WAIT, _connect_kwargs
from cgpop.store.postgres import PostgresStore
from tests.pg import PgServer, private_postgres
from tests.store_pg.helpers import joe_inbox, put


@pytest.fixture
def db() -> Iterator[PgServer]:
    with private_postgres() as server:
        yield server


def failure_time(store: PostgresStore) -> float:
    start = time.monotonic()
    with pytest.raises(TemporaryFailure, match="database unavailable"):
        store.list_domains()
    return time.monotonic() - start


@pytest.mark.parametrize("mode", ["immediate", "fast"])
def test_calls_fail_fast_while_the_database_is_down_and_work_when_it_is_back(
    db: PgServer, mode: str
) -> None:
    """`immediate`: connections drop without a word (a crash); `fast`: each is told first
    (an administrator's shutdown, a failover)."""
    store = PostgresStore(db.dsn, node="pop-a", pool_size=3)
    try:
        box = joe_inbox(store)
        put(store, box, "one")
        with store._conn(), store._conn():  # two connections in the pool
            pass
        db.stop(mode)
        failure_time(store)  # on a connection the stop broke: at once
        # The database is known to be down: DOWN_WAIT per call, not POOL_WAIT (a client
        # behind a worker thread would otherwise wait POOL_WAIT per call queued before it).
        took = [failure_time(store) for _ in range(3)]
        assert max(took) < POOL_WAIT / 2, took
        assert min(took) >= DOWN_WAIT * 0.9, took  # and it did wait for the pool
        db.start(same_port=True)
        back = time.monotonic()
        while True:
            try:
                assert store.list_domains() == ["example.com"]
                break
            except TemporaryFailure:
                assert time.monotonic() - back < POOL_WAIT, "the pool never reconnected"
        assert [m.uid for m in store.list_messages(box)] == [1]
        # Back to the burst-riding wait: a call waits POOL_WAIT again when the pool is busy.
        assert not store._down
    finally:
        store.close()


def test_connections_have_a_connect_timeout_unless_the_dsn_sets_one() -> None:
    assert _connect_kwargs("postgresql://cgpop@db.example.net/cgpop") == {
        "autocommit": True,
        "connect_timeout": CONNECT_TIMEOUT,
    }
    assert _connect_kwargs("host=db.example.net dbname=cgpop connect_timeout=2") == {
        "autocommit": True
    }
