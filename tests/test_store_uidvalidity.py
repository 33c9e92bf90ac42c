"""uidvalidity comes from a persistent counter (issue 10, defect 4): it never repeats across
removal, re-creation and restart, and the migration that adds the counter keeps the values of
existing mailboxes and starts above any value the clock-based rule gave out."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest

import cgpop.store.sqlite
from accounts.credentials import make_credentials
from cgpop.store import schema
from cgpop.store.sqlite import SqliteStore

CREDS = make_credentials("pw")


def test_uidvalidity_never_repeats_across_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgpop.store.sqlite, "_now", lambda: 1_800_000_000.0)
    seen: list[int] = []
    for _ in range(3):
        store = SqliteStore(tmp_path / "data")
        if not store.domain_exists("example.com"):
            store.add_domain("example.com")
        store.add_account("example.com", "joe", CREDS)
        for name in ("INBOX", "Work"):
            if name != "INBOX":
                store.add_mailbox("example.com", "joe", name)
            box = store.get_mailbox("example.com", "joe", name)
            assert box is not None and box.uidvalidity not in seen
            seen.append(box.uidvalidity)
        store.remove_account("example.com", "joe")
        store.close()


def version_6_database(path: Path, uidvalidities: list[int], removed: int) -> None:
    """A data directory as the clock-based cgpop left it: mailboxes with these uidvalidity
    values, of which the last `removed` were removed since."""
    path.mkdir()
    conn = sqlite3.connect(path / "cgpop.sqlite3", isolation_level=None)
    for target, script in enumerate(schema.MIGRATIONS[:6], start=1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {target};\nCOMMIT;")
    conn.execute("INSERT INTO domains(id, name) VALUES (1, 'example.com')")
    conn.execute(
        "INSERT INTO accounts(id, domain_id, name, salt, iterations, stored_key, server_key) "
        "VALUES (1, 1, 'joe', x'00', 1, x'00', x'00')"
    )
    for i, value in enumerate(uidvalidities):
        conn.execute(
            "INSERT INTO mailboxes(account_id, name, uidvalidity) VALUES (1, ?, ?)",
            (f"box{i}", value),
        )
    for i in range(len(uidvalidities) - removed, len(uidvalidities)):
        conn.execute("DELETE FROM mailboxes WHERE name = ?", (f"box{i}",))
    conn.close()


def test_migration_keeps_existing_values_and_starts_above_them(tmp_path: Path) -> None:
    far = int(time.time()) + 10**6  # a value above the clock: the counter must pass it
    version_6_database(tmp_path / "data", [1000, far], removed=0)
    store = SqliteStore(tmp_path / "data")
    kept = [store.get_mailbox("example.com", "joe", f"box{i}") for i in range(2)]
    assert [b.uidvalidity for b in kept if b is not None] == [1000, far]
    assert store.add_mailbox("example.com", "joe", "new").uidvalidity > far
    store.close()


def test_migration_starts_above_a_removed_newest_mailbox(tmp_path: Path) -> None:
    """Three mailboxes created in one second got now, now+1, now+2 from the old rule; the two
    newest were removed. Neither value may come back."""
    now = int(time.time())
    version_6_database(tmp_path / "data", [now, now + 1, now + 2], removed=2)
    store = SqliteStore(tmp_path / "data")
    values = [store.add_mailbox("example.com", "joe", f"again{i}").uidvalidity for i in range(3)]
    assert not {now, now + 1, now + 2} & set(values)
    store.close()
