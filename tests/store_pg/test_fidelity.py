"""Issue 13's store features on PostgresStore: several individual names per message, names
recorded at import. (Inherited ACLs and suspended account services are in the contract suite,
tests/store/test_directory.py, for every backend.)"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from accounts.credentials import make_credentials
from cgpop.store.api import Copy
from cgpop.store.postgres import PostgresStore
from router.table import validate_route
from tests.store_pg.test_snapshots import count
from tests.test_realto import (
    test_import_records_names_through_the_callback,
    test_names_only_for_addresses_routed_to_the_account,
)

__all__ = [
    "test_import_records_names_through_the_callback",
    "test_names_only_for_addresses_routed_to_the_account",
]


@pytest.fixture
def store(open_store: Callable[..., PostgresStore]) -> PostgresStore:
    """As tests/test_realto.py's fixture."""
    st = open_store()
    creds = make_credentials("pw", iterations=1)
    st.add_domain("client1.com")
    st.add_account("client1.com", "cl1", creds)
    st.add_account("client1.com", "jsmith", creds)
    st.add_route(*validate_route("*@client1.com", "cl1@client1.com"))
    return st


def test_several_names_are_matched_and_removed_with_the_message(store: PostgresStore) -> None:
    box = store.get_mailbox("client1.com", "cl1", "INBOX")
    assert box is not None
    store.deliver(b"one\r\n", [Copy(box.id, b"", "a@client1.com", "a")])
    store.deliver(b"two\r\n", [Copy(box.id, b"", "a\nb\nc", "a", more_individuals=("b", "c"))])
    store.deliver(b"three\r\n", [Copy(box.id, b"", "c@client1.com", "c")])

    def seen_by(name: str) -> list[int]:
        snap = store.open_maildrop(box, name)
        store.close_maildrop(snap)
        return list(snap.uids)

    assert (seen_by("a"), seen_by("B"), seen_by("c"), seen_by("d")) == ([1, 2], [2], [2, 3], [])
    infos = store.list_messages(box)
    assert [m.individuals for m in infos] == [("a",), ("a", "b", "c"), ("c",)]
    assert infos[1].real_to == ("a", "b", "c")
    store.expunge(box.id, [2])
    assert seen_by("b") == []
    store.collect()
    assert count(store, "message_individuals") == 0


def test_import_keeps_the_order_whatever_the_flags(store: PostgresStore) -> None:
    box = store.get_mailbox("client1.com", "cl1", "INBOX")
    assert box is not None
    msgs = [(f"Subject: {i}\r\n\r\nx\r\n".encode(), i % 2) for i in range(5)]
    assert store.import_messages(box, msgs, batch=10) == 5
    infos = store.list_messages(box)
    assert [(m.uid, m.flags) for m in infos] == [
        (1, ()),
        (2, ("\\Seen",)),
        (3, ()),
        (4, ("\\Seen",)),
        (5, ()),
    ]
    snap = store.open_maildrop(box, None)
    first_lines = [b"".join(store.read_message(snap, i).chunks())[:10] for i in range(5)]
    assert first_lines == [f"Subject: {i}".encode() for i in range(5)]
