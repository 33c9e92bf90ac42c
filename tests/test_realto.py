"""Issue 13: individual names from a message's own X-Real-To field, recorded in the store and
matched at login; schema migrations 7 (several names) and 8 (account services) on an old data
directory."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from accounts.credentials import make_credentials
from cgpop.realto import MAX_ADDRESSES, HeaderRealTo, field_addresses, resolver
from cgpop.store import schema
from cgpop.store.api import Copy, StoreError
from cgpop.store.sqlite import SqliteStore
from router.table import validate_route

CREDS = make_credentials("pw")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    st = SqliteStore(tmp_path / "data")
    st.add_domain("client1.com")
    st.add_account("client1.com", "cl1", CREDS)
    st.add_account("client1.com", "jsmith", CREDS)
    st.add_route(*validate_route("*@client1.com", "cl1@client1.com"))
    yield st
    st.close()


def test_field_addresses_unfolds_dedupes_and_ignores_other_fields() -> None:
    message = (
        b"X-Real-To-Not: <no@client1.com>\r\n"
        b'x-real-to: <A@client1.com>,\r\n <b@client1.com>, "Name, Quoted" <c@client1.com>\r\n'
        b"X-Real-To : a@client1.com, not-an-address\r\n"
        b"\r\n"
        b"X-Real-To: <body@client1.com>\r\n"
    )
    assert field_addresses(message, "X-Real-To") == [
        "A@client1.com",
        "b@client1.com",
        "c@client1.com",
    ]


def test_field_addresses_are_bounded() -> None:
    many = ", ".join(f"<u{i}@client1.com>" for i in range(MAX_ADDRESSES + 50))
    assert len(field_addresses(f"X-Real-To: {many}\r\n\r\n".encode(), "X-Real-To")) == (
        MAX_ADDRESSES
    )


def test_names_only_for_addresses_routed_to_the_account(store: SqliteStore) -> None:
    message = (
        b"X-Real-To: <Abc@client1.com>, <jsmith@client1.com>, <cl1@client1.com>, "
        b"<x@elsewhere.test>, <abc@client1.com>, <Def@client1.com>\r\n\r\nbody\r\n"
    )
    found = HeaderRealTo(message, "X-Real-To", resolver(store, "client1.com"))
    got = found.for_account("client1.com", "cl1")
    # jsmith is an account (no name), cl1 is the account itself (no name), the other domain
    # is not routed here; the repeat of abc counts once.
    assert got.addresses == ("Abc@client1.com", "Def@client1.com")
    assert got.individuals == ("abc", "def")
    assert got.stored == "Abc@client1.com\nDef@client1.com"
    assert found.for_account("client1.com", "jsmith").individuals == ()


def test_several_names_are_matched_and_removed_with_the_message(store: SqliteStore) -> None:
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
    count = store.connection().execute("SELECT count(*) FROM message_individuals").fetchone()
    assert count == (0,)


def test_import_records_names_through_the_callback(store: SqliteStore) -> None:
    box = store.get_mailbox("client1.com", "cl1", "INBOX")
    assert box is not None
    resolve = resolver(store, "client1.com")

    def tag(raw: bytes) -> tuple[str | None, tuple[str, ...]]:
        found = HeaderRealTo(raw, "X-Real-To", resolve).for_account("client1.com", "cl1")
        return found.stored, found.individuals

    messages = [
        (b"X-Real-To: <p@client1.com>, <q@client1.com>\r\n\r\nx\r\n", 0),
        (b"Subject: none\r\n\r\ny\r\n", 0),
    ]
    assert store.import_messages(box, messages, real_to=tag) == 2
    assert [(m.x_real_to, m.individuals) for m in store.list_messages(box)] == [
        ("p@client1.com\nq@client1.com", ("p", "q")),
        (None, ()),
    ]
    snap = store.open_maildrop(box, "q")
    store.close_maildrop(snap)
    assert list(snap.uids) == [1]


def test_old_data_directory_is_migrated(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / "cgpop.sqlite3", isolation_level=None)
    for target, script in enumerate(schema.MIGRATIONS[:6], 1):
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {target};\nCOMMIT;")
    conn.execute("INSERT INTO domains(name) VALUES ('client1.com')")
    conn.execute(
        "INSERT INTO accounts(domain_id, name, salt, iterations, stored_key, server_key) "
        "VALUES (1, 'old', ?, ?, ?, ?)",
        (CREDS.salt, CREDS.iterations, CREDS.stored_key, CREDS.server_key),
    )
    conn.close()
    st = SqliteStore(data)
    try:
        assert schema.version(st.connection()) == len(schema.MIGRATIONS)
        account = st.get_account("client1.com", "old")
        assert account is not None and account.disabled == frozenset()
        st.set_services_enabled("client1.com", "old", ["pop"], False)
        assert st.disabled_services() == {"old@client1.com": frozenset({"pop"})}
        with pytest.raises(StoreError, match="unknown service"):
            st.set_services_enabled("client1.com", "old", ["imap"], False)
    finally:
        st.close()
