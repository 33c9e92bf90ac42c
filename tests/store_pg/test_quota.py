"""PostgreSQL quota specifics (issue 12): `recalc_quota` rebuilds usage that went wrong
behind the store's back, and the migration counted what the database already held."""

from __future__ import annotations

from cgpop.store.api import Quota
from cgpop.store.postgres import PostgresStore
from tests.store_pg.helpers import joe_inbox, put


def test_recalc_corrects_usage_and_reports_it(store: PostgresStore) -> None:
    box = joe_inbox(store)
    put(store, box, "one", "two")
    exact = store.get_quota("example.com", "joe")
    with store._conn() as conn:
        conn.execute("UPDATE account_quotas SET storage_used = 5, messages_used = 7")
    wrong = Quota(5, None, 7, None)
    assert store.recalc_quota("example.com", "joe") == [("joe@example.com", wrong, exact)]
    assert store.get_quota("example.com", "joe") == exact
    assert store.recalc_quota() == []
