"""The SQLite collector honours the snapshots other worker processes hold (issue 14): two
stores on one data directory, as two workers have, share a SnapshotHolds board."""

from __future__ import annotations

from pathlib import Path

import pytest

from accounts.credentials import make_credentials
from cgpop.shared import SnapshotHolds
from cgpop.store.api import Copy
from cgpop.store.sqlite import SqliteStore

BODY = b"Subject: held\r\n\r\n" + b"x" * 300_000 + b"\r\n"  # large: kept in a body file


@pytest.mark.parametrize("shared", [True, False])
def test_a_collector_keeps_what_another_worker_holds(tmp_path: Path, shared: bool) -> None:
    holds = SnapshotHolds(2)
    a = SqliteStore(tmp_path, holds=holds.slot(0) if shared else None)
    b = SqliteStore(tmp_path, holds=holds.slot(1) if shared else None)
    try:
        a.add_domain("example.com")
        a.add_account("example.com", "joe", make_credentials("pw"))
        box = a.get_mailbox("example.com", "joe", "INBOX")
        a.deliver(BODY, [Copy(box.id, b"", None, None)])
        held = b.open_maildrop(box, None)  # a session in worker B
        mine = a.open_maildrop(box, None)  # a session in worker A expunges it and ends
        a.expunge(box.id, [mine.uids[0]])
        a.close_maildrop(mine)
        a.collect()
        found = b.read_messages(held, [0])
        if shared:
            assert b"".join(found[0].chunks()) == BODY
        else:  # without the board, A's collector only knows A's sessions
            assert found == {}
        b.close_maildrop(held)
        assert a.collect() == (1 if shared else 0)  # now it may go
    finally:
        a.close()
        b.close()
