"""`cgpop store copy` (issue 11) as the store contract: everything one store holds, exported
and imported into an empty store (of either backend), is the same store to every reader."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accounts.acl import AclEntry, Rights
from accounts.credentials import make_credentials
from cgpop.store.api import Copy, Outbound, Store, StoreError
from cgpop.store.factory import open_store
from tests.pg import PgServer, drop_schema, new_schema_dsn
from tests.store.conftest import CONFIGS, SERVER_CONFIGS

LARGE = b"Subject: large\r\n\r\n" + b"0123456789abcdef\r\n" * 20_000  # 360 KB: chunked / a file


@pytest.fixture(params=[*CONFIGS, *SERVER_CONFIGS])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Store]]:
    """Opens the empty store a copy goes to, of each backend in turn."""
    opened: list[Store] = []
    dsn = None
    if request.param in SERVER_CONFIGS:
        server: PgServer = request.getfixturevalue("postgres")
        dsn = new_schema_dsn(server)
        config = SERVER_CONFIGS[request.param](dsn)
    else:
        config = CONFIGS[request.param](tmp_path / "target")

    def make() -> Store:
        opened.append(open_store(config))
        return opened[-1]

    yield make
    for store in opened:
        store.close()
    if dsn is not None:
        drop_schema(request.getfixturevalue("postgres"), dsn)


def fill(store: Store) -> None:
    """A little of everything a store copy keeps (the `store` fixture made joe and ann)."""
    store.add_domain_alias("example.net", "example.com")
    store.add_route("sales@example.com", "joe@example.com")
    store.add_group_member("staff", "ann@example.com")
    store.set_services_enabled("example.com", "ann", ["xtnd"], False)
    joe = store.get_mailbox("example.com", "joe", "INBOX")
    assert joe is not None
    shared = store.add_mailbox("example.com", "joe", "Shared")
    store.set_acl_entry(shared, AclEntry("group:staff", Rights.parse("lr"), False))
    store.deliver(
        b"Subject: one\r\n\r\nfirst\r\n", [Copy(joe.id, b"X-Real-To: <joe>\r\n", "joe", None)]
    )
    store.deliver(LARGE, [Copy(joe.id, b"", None, "sales", more_individuals=("info",))])
    store.deliver(b"Subject: gone\r\n\r\nx\r\n", [Copy(joe.id, b"", None, None)])
    store.deliver(b"Subject: dup\r\n\r\nx\r\n", [Copy(shared.id, b"", None, None, "<d@x>", "joe")])
    uids = [m.uid for m in store.list_messages(joe)]
    store.mark_seen([(joe.id, uids[0])])
    assert store.expunge(joe.id, [uids[2]]) == 1
    store.add_alert("account", "joe@example.com", "taken")
    store.add_alert("server", "", "pending")
    assert store.take_alert("joe@example.com") is not None
    store.enqueue(
        Outbound("joe@example.com", "joe@example.com", b"Subject: q\r\n\r\nq\r\n", ("a@x.org",)),
        100.0,
    )
    store.enqueue(
        Outbound("joe@example.com", "joe@example.com", b"Subject: r\r\n\r\nr\r\n", ("b@x.org",)),
        50.0,
    )
    assert len(store.claim_due(60.0, 1)) == 1  # b@x.org is `sending` when the copy is taken
    store.set_quota("example.com", "joe", 10 * 1024 * 1024, None)
    store.set_quota("example.com", None, None, 1000)


def view(store: Store) -> dict[str, object]:
    """What readers of a store see, ids and times included."""
    joe = store.get_mailbox("example.com", "joe", "INBOX")
    shared = store.get_mailbox("example.com", "joe", "Shared")
    assert joe is not None and shared is not None
    snap = store.open_maildrop(joe, None)
    bodies = [b"".join(store.read_message(snap, i).chunks(8192)) for i in range(len(snap))]
    uidls = [snap.uidl(i) for i in range(len(snap))]
    store.close_maildrop(snap)
    sales = store.open_maildrop(joe, "info")
    info_uidls = [sales.uidl(i) for i in range(len(sales))]
    store.close_maildrop(sales)
    return {
        "domains": store.list_domains(),
        "aliases": store.list_domain_aliases(),
        "routes": store.list_routes(),
        "groups": store.list_group_members(),
        "accounts": [store.get_account("example.com", n) for n in ("joe", "ann")],
        "disabled": store.disabled_services(),
        "mailboxes": [joe, shared],
        "acl": store.acl_entries(shared),
        "messages": store.list_messages(joe) + store.list_messages(shared),
        "uidls": uidls,
        "individual": info_uidls,
        "bodies": bodies,
        "alerts": store.list_alerts(),
        "queue": store.list_queue(),
        "quotas": [
            store.get_quota("example.com", "joe"),
            store.get_quota("example.com", "ann"),
            store.get_quota("example.com", None),
        ],
    }


def test_a_copy_is_the_same_store(store: Store, target: Callable[[], Store]) -> None:
    fill(store)
    before = view(store)
    copy = target()
    assert copy.nonempty_tables() == []
    progress: list[tuple[str, int]] = []
    loaded = copy.import_tables(store.export_tables(), lambda t, n: progress.append((t, n)))
    assert loaded > 0
    assert ("messages", 3) in progress and ("bodies", 3) in progress
    after = view(copy)
    queue_before, queue_after = before.pop("queue"), after.pop("queue")
    assert after == before
    # The queue as it was, but a recipient claimed when the copy was taken is queued again
    # (as `recover_queue` does after a restart: at-least-once).
    assert [(e.id, e.sender, e.size, e.created) for e in queue_after] == [  # type: ignore[attr-defined]
        (e.id, e.sender, e.size, e.created)
        for e in queue_before  # type: ignore[attr-defined]
    ]
    states = {e.recipients[0].recipient: e.recipients[0].state for e in queue_after}  # type: ignore[attr-defined]
    assert states == {"a@x.org": "queued", "b@x.org": "queued"}
    # Alert delivery state kept: joe's taken alert is not shown again, the pending one is.
    pending = copy.take_alert("joe@example.com")
    assert pending is not None and pending.text == "pending"
    # Duplicate suppression and the counters go on where the source left them.
    shared = copy.get_mailbox("example.com", "joe", "Shared")
    joe = copy.get_mailbox("example.com", "joe", "INBOX")
    assert shared is not None and joe is not None
    assert copy.deliver(
        b"Subject: dup\r\n\r\nx\r\n", [Copy(shared.id, b"", None, None, "<d@x>", "joe")]
    ) == [False]
    copy.deliver(b"Subject: new\r\n\r\nx\r\n", [Copy(joe.id, b"", None, None)])
    new_uid = copy.list_messages(joe)[-1].uid
    assert new_uid > max(m.uid for m in before["messages"])  # type: ignore[attr-defined]
    # Also the UID of the expunged message (never handed out again).
    assert new_uid == 4
    box = copy.add_mailbox("example.com", "ann", "New")
    assert box.uidvalidity > max(b.uidvalidity for b in (joe, shared))
    copy.add_domain("example.org")  # ids go on past the copied ones
    assert copy.list_domains() == ["example.com", "example.org"]


def test_a_non_empty_target_is_refused(store: Store, target: Callable[[], Store]) -> None:
    fill(store)
    copy = target()
    copy.add_domain("already.example")
    with pytest.raises(StoreError, match="not empty: domains"):
        copy.import_tables(store.export_tables())
    assert copy.list_domains() == ["already.example"]
    creds = make_credentials("x", iterations=1)
    copy.add_account("already.example", "x", creds)  # still usable
