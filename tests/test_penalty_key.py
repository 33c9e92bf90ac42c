"""The failed-login penalty's account key: every spelling of one account is one key, for known
and unknown names alike (issue 10, defect 7)."""

from __future__ import annotations

from pathlib import Path

from accounts.credentials import make_credentials
from cgpop.auth import Authenticator
from cgpop.store.sqlite import SqliteStore


def test_spellings_of_one_account_are_one_key(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path)
    try:
        store.add_domain("example.com")
        store.add_account("example.com", "alice", make_credentials("pw"))
        store.add_domain_alias("mail.example.com", "example.com")
        auth = Authenticator(store)
        spellings = [
            "alice",
            "ALICE",
            "alice@example.com",
            "alice%example.com",
            "INBOX#alice",
            "~alice/INBOX#alice",
            "alice@mail.example.com",
        ]
        assert {auth.penalty_key(s, "example.com") for s in spellings} == {"alice@example.com"}
        # An unknown name is unified by the grammar alone, so it behaves like a known one.
        unknown = ["zed", "INBOX#zed", "zed%example.com", "Zed@Example.com"]
        assert {auth.penalty_key(s, "example.com") for s in unknown} == {"zed@example.com"}
    finally:
        store.close()
