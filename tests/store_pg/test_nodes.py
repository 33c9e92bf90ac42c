"""Several nodes on one database: two PostgresStore instances with different node names on the
same schema stand for two gateway machines (issue 11, "What must hold across nodes")."""

from __future__ import annotations

import threading
from collections.abc import Callable

import psycopg
import pytest

from cgpop import config
from cgpop.store import pg_schema
from cgpop.store.api import Copy, NotFound, TemporaryFailure
from cgpop.store.postgres import PostgresStore
from tests.pg import PgServer
from tests.store_pg.helpers import joe_inbox, message, put, silence, subjects

Open = Callable[..., PostgresStore]


def test_body_expunged_on_a_stays_readable_on_b_until_b_closes(open_store: Open) -> None:
    a, b = open_store("pop-a"), open_store("pop-b")
    box = joe_inbox(a)
    put(a, box, "one", "two", "three")
    on_b = b.open_maildrop(box, None)
    on_a = a.open_maildrop(box, None)
    assert a.expunge(box.id, [on_a.uids[0]]) == 1
    a.close_maildrop(on_a)
    a.collect()
    b.collect()
    # B keeps its snapshot: same numbers, RETR of what A deleted still works.
    assert len(on_b) == 3
    assert subjects(b, on_b) == ["one", "two", "three"]
    assert b.expunge(box.id, [on_b.uids[0]]) == 0  # already gone: not an error
    b.close_maildrop(on_b)
    b.flush_released()  # what b's registry thread does right after a close
    assert a.collect() == 1
    with pytest.raises(NotFound):
        b.read_message(on_b, 0)
    fresh = b.open_maildrop(box, None)
    assert subjects(b, fresh) == ["two", "three"]
    b.close_maildrop(fresh)


def test_dead_nodes_sessions_are_released_after_node_timeout(open_store: Open) -> None:
    a = open_store("pop-a", node_timeout=30.0)
    b = open_store("pop-b", node_timeout=30.0)
    box = joe_inbox(a)
    put(a, box, "one")
    held = b.open_maildrop(box, None)
    assert [n for _, n, _, _ in a.live_sessions()] == ["pop-b"]
    a.expunge(box.id, [held.uids[0]])
    silence(b, 20)  # silent, but for less than its node_timeout: still alive
    assert a.collect() == 0
    assert subjects(b, held) == ["one"]
    silence(b, 31)  # now dead: its hold goes, the collector is not blocked forever
    assert a.live_sessions() == []
    assert a.collect() == 1
    with pytest.raises(NotFound):
        b.read_message(held, 0)


def test_heartbeat_keeps_a_live_nodes_sessions(open_store: Open) -> None:
    a = open_store("pop-a", node_timeout=30.0)
    b = open_store("pop-b", node_timeout=30.0)
    box = joe_inbox(a)
    put(a, box, "one")
    held = b.open_maildrop(box, None)
    a.expunge(box.id, [held.uids[0]])
    silence(b, 25)
    b.heartbeat()  # the beat a live node's thread sends every node_timeout / 3
    silence(b, 0)
    assert a.collect() == 0
    assert subjects(b, held) == ["one"]


def test_a_node_declared_dead_registers_again(open_store: Open) -> None:
    a, b = open_store("pop-a"), open_store("pop-b")
    box = joe_inbox(a)
    put(a, box, "one")
    b.close_maildrop(b.open_maildrop(box, None))  # b is registered
    silence(b, 3600)
    a.collect()  # releases b
    held = b.open_maildrop(box, None)  # before b's next beat: it registers again
    a.expunge(box.id, [held.uids[0]])
    assert a.collect() == 0
    assert subjects(b, held) == ["one"]


def test_concurrent_deliveries_through_two_nodes(open_store: Open) -> None:
    nodes = [open_store("pop-a"), open_store("pop-b")]
    box = joe_inbox(nodes[0])
    errors: list[BaseException] = []

    def deliver(node: PostgresStore, tag: str) -> None:
        try:
            for i in range(15):
                node.deliver(message(f"{tag}{i}"), [Copy(box.id, b"", None, None)])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=deliver, args=(node, f"{node.node}-{t}"))
        for node in nodes
        for t in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    uids = [m.uid for m in nodes[1].list_messages(box)]
    assert uids == list(range(1, 61))  # none shared, none skipped
    snap_a, snap_b = (n.open_maildrop(box, None) for n in nodes)
    assert [snap_a.uidl(i) for i in range(60)] == [snap_b.uidl(i) for i in range(60)]


def test_duplicate_suppression_holds_across_nodes(open_store: Open) -> None:
    a, b = open_store("pop-a"), open_store("pop-b")
    box = joe_inbox(a)
    c = Copy(box.id, b"", None, None, "<same@x>", "joe@example.com")
    assert a.deliver(message("x"), [c]) == [True]
    assert b.deliver(message("x"), [c]) == [False]


def test_directory_changes_on_one_node_are_seen_by_the_other(open_store: Open) -> None:
    a, b = open_store("pop-a"), open_store("pop-b")
    joe_inbox(a)
    before = a.directory_version()
    b.add_route("info@example.com", "joe@example.com")
    assert a.directory_version() > before
    assert a.route_target("info@example.com") == "joe@example.com"


def test_migrations_race_safely_and_need_no_superuser(pg_dsn: str) -> None:
    errors: list[BaseException] = []
    opened: list[PostgresStore] = []
    lock = threading.Lock()

    def start(name: str) -> None:
        try:
            store = PostgresStore(pg_dsn, node=name, pool_size=2)
            with lock:
                opened.append(store)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(f"pop-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert errors == []
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            assert pg_schema.version(conn) == len(pg_schema.MIGRATIONS)
            row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
            assert row.fetchone() == (False,)
            assert pg_schema.migrate(conn) == len(pg_schema.MIGRATIONS)  # nothing to do
    finally:
        for store in opened:
            store.close()


def test_newer_schema_is_refused(pg_dsn: str, open_store: Open) -> None:
    open_store().close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("UPDATE schema_version SET version = version + 1")
    with pytest.raises(RuntimeError, match="newer than this cgpop"):
        PostgresStore(pg_dsn, node="old")


def test_unreachable_database_is_a_temporary_failure() -> None:
    with pytest.raises(TemporaryFailure, match="database unreachable"):
        PostgresStore("postgresql://cgpop@127.0.0.1:1/cgpop?connect_timeout=1", connect_timeout=0.5)


def test_service_resumes_after_connections_are_lost(
    open_store: Open, postgres: object, pg_dsn: str
) -> None:
    store = open_store(pool_size=2)
    joe_inbox(store)
    # Two connections in the pool, both idle.
    with store._conn(), store._conn():
        pass
    with psycopg.connect(pg_dsn, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE usename = 'cgpop' AND pid <> pg_backend_pid()"
        )
    # The call on the lost connection fails cleanly; the pool then replaces the others, so
    # every later call works again (no restart, no failure per pooled connection).
    with pytest.raises(TemporaryFailure, match="database unavailable"):
        store.list_domains()
    for _ in range(4):
        assert store.list_domains() == ["example.com"]


def test_opened_from_the_configuration(pg_dsn: str) -> None:
    cfg = config.from_dict(
        {
            "store": {"backend": "postgresql", "dsn": pg_dsn, "node": "pop-c", "pool_size": 2},
            "delivery": {"duplicate_window": 600},
        }
    )
    store = PostgresStore.from_config(cfg)
    try:
        assert (store.node, store.node_timeout, store.duplicate_window) == ("pop-c", 30.0, 600.0)
        box = joe_inbox(store)
        store.close_maildrop(store.open_maildrop(box, None))
        with store._conn() as conn:
            row = conn.execute("SELECT node, timeout FROM store_instances").fetchone()
        assert row == ("pop-c", 30.0)
    finally:
        store.close()


def test_migrates_a_fresh_database_as_its_unprivileged_owner(postgres: PgServer) -> None:
    """The deployment layout: the default `public` schema of a database the role owns."""
    postgres.admin("CREATE DATABASE cgpop_fresh OWNER cgpop")
    try:
        dsn = f"postgresql://cgpop@127.0.0.1:{postgres.port}/cgpop_fresh"
        store = PostgresStore(dsn, node="pop-a", pool_size=1)
        try:
            box = joe_inbox(store)
            put(store, box, "one")
            assert [m.uid for m in store.list_messages(box)] == [1]
        finally:
            store.close()
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT to_regclass('public.messages') IS NOT NULL").fetchone()
            assert row == (True,)
    finally:
        postgres.admin("DROP DATABASE cgpop_fresh")


def test_close_maildrop_does_not_touch_the_database(
    open_store: Open, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shell calls close_maildrop on its event loop: it must not wait for PostgreSQL."""
    store = open_store()
    box = joe_inbox(store)
    put(store, box, "one")
    snap = store.open_maildrop(box, None)
    store.expunge(box.id, [snap.uids[0]])

    def no_database() -> None:
        # What an unreachable database raises; the registry thread (woken by the close)
        # logs it and writes the release later.
        raise TemporaryFailure("database unavailable")

    with monkeypatch.context() as m:
        m.setattr(store, "_conn", no_database)
        store.close_maildrop(snap)
    assert store.collect() == 1  # the release was written (before collecting at the latest)


def test_other_sessions_counts_the_accounts_sessions_on_other_nodes(open_store: Open) -> None:
    a, b = open_store("pop-a", node_timeout=30.0), open_store("pop-b", node_timeout=30.0)
    box = joe_inbox(a)
    mine = a.open_maildrop(box, None)
    assert a.other_sessions(mine) == 0
    on_b = [b.open_maildrop(box, None), b.open_maildrop(box, None)]
    assert a.other_sessions(mine) == 2
    assert b.other_sessions(on_b[0]) == 1  # a's one session
    b.close_maildrop(on_b.pop())
    b.flush_released()
    assert a.other_sessions(mine) == 1
    silence(b, 31)  # b died: its sessions no longer count
    assert a.other_sessions(mine) == 0
    a.close_maildrop(mine)


def test_open_session_counts_other_nodes_after_registering(open_store: Open) -> None:
    """The count open_session returns is taken after the new session's registry row
    committed: of two logins on two nodes, the later one sees the earlier (max_per_account
    across nodes, cgpop/login.py)."""
    a, b = open_store("pop-a", node_timeout=30.0), open_store("pop-b", node_timeout=30.0)
    box = joe_inbox(a)
    first = a.open_session(box, None, "joe@example.com")
    assert first.others == 0
    second = b.open_session(box, None, "joe@example.com")
    assert second.others == 1  # a's session
    again = a.open_session(box, None, "joe@example.com")
    assert again.others == 1  # b's; a's own two are counted by a's process
    assert b.other_sessions(second.snapshot) == 2
    for store, opened in ((a, first), (b, second), (a, again)):
        store.close_maildrop(opened.snapshot)
