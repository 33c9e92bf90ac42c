"""The quota migration (issue 12) counts the copies a data directory already holds, once:
usage is exact from the first start of this cgpop on old data."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from accounts.credentials import make_credentials
from cgpop.store import schema
from cgpop.store.api import Copy, Quota
from cgpop.store.sqlite import SqliteStore


def test_migration_counts_existing_copies_not_expunged_ones(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "data")
    store.add_domain("example.com")
    store.add_accounts([("example.com", n, make_credentials("pw")) for n in ("joe", "ann")])
    joe = store.get_mailbox("example.com", "joe", "INBOX")
    assert joe is not None
    store.deliver(b"Subject: a\r\n\r\nbody\r\n", [Copy(joe.id, b"X: y\r\n", None, None)])
    store.deliver(b"Subject: b\r\n\r\nmore body\r\n", [Copy(joe.id, b"", None, None)])
    snap = store.open_maildrop(joe, None)
    store.expunge(joe.id, [snap.uids[1]])
    store.close_maildrop(snap)
    kept = snap.sizes[0]
    store.close()
    # The same data as the cgpop before the quota step left it.
    db = sqlite3.connect(tmp_path / "data" / "cgpop.sqlite3", isolation_level=None)
    db.execute("DROP TABLE account_quotas")
    db.execute("DROP TABLE domain_quotas")
    step = next(i for i, m in enumerate(schema.MIGRATIONS) if "TABLE account_quotas" in m)
    db.execute(f"PRAGMA user_version = {step}")  # migrations are numbered from 1
    db.close()
    store = SqliteStore(tmp_path / "data")
    assert store.get_quota("example.com", "joe") == Quota(kept, None, 1, None)
    assert store.get_quota("example.com", "ann") == Quota(0, None, 0, None)
    assert store.recalc_quota() == []
    store.close()
