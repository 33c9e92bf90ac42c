"""Small helpers for the PostgreSQL store tests."""

from __future__ import annotations

from accounts.credentials import make_credentials
from cgpop.store.api import Copy, Mailbox, Snapshot
from cgpop.store.postgres import PostgresStore
from tests.conftest import message

__all__ = ["message"]


def joe_inbox(store: PostgresStore) -> Mailbox:
    """example.com with the account joe; its INBOX."""
    if not store.domain_exists("example.com"):
        store.add_domain("example.com")
    if not store.account_exists("example.com", "joe"):
        store.add_account("example.com", "joe", make_credentials("pw", iterations=1))
    box = store.get_mailbox("example.com", "joe", "INBOX")
    assert box is not None
    return box


def put(store: PostgresStore, box: Mailbox, *subjects: str) -> None:
    for subject in subjects:
        assert store.deliver(message(subject), [Copy(box.id, b"", None, None)]) == [True]


def text(store: PostgresStore, snap: Snapshot, index: int) -> bytes:
    return b"".join(store.read_message(snap, index).chunks())


def subjects(store: PostgresStore, snap: Snapshot) -> list[str]:
    out = []
    for i in range(len(snap)):
        line = next(x for x in text(store, snap, i).split(b"\r\n") if x.startswith(b"Subject:"))
        out.append(line.split(b": ", 1)[1].decode())
    return out


def silence(node: PostgresStore, seconds: float) -> None:
    """As if `node` had not beaten for `seconds` (kill -9, power loss): its heartbeat thread
    stops and its last beat moves into the past. Nothing it holds is released by it."""
    node._stop_registry()
    with node._conn() as conn:
        conn.execute(
            "UPDATE store_instances SET heartbeat = now() - %s * interval '1 second' "
            "WHERE node = %s",
            (seconds, node.node),
        )
