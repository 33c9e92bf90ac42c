"""Snapshot semantics on a live server: sessions never lock each other out, message numbers
never change within a session, QUIT expunges only its own DELEs, and bodies stay readable
until the last session that holds them closes."""

from __future__ import annotations

import poplib
import threading
from pathlib import Path

from cgpop.store.sqlite import INLINE_MAX
from tests.conftest import LiveServer, message
from tests.e2e.helpers import USER, pop, uids, wait_sessions_closed


def body_files(server: LiveServer) -> list[Path]:
    return [p for p in (server.store.bodies_dir).glob("*/*") if p.parent.name != "tmp"]


def deliver_three(server: LiveServer) -> None:
    for n in (1, 2, 3):
        server.deliver(USER, message(f"number {n}", f"body {n}\n"))


def test_two_sessions_see_the_same_messages(server: LiveServer) -> None:
    deliver_three(server)
    a, b = pop(server), pop(server)
    try:
        assert a.stat() == b.stat()
        assert a.uidl()[1] == b.uidl()[1]
        assert a.retr(2)[1] == b.retr(2)[1]
    finally:
        a.quit()
        b.quit()


def test_expunged_by_one_session_still_readable_by_another(server: LiveServer) -> None:
    deliver_three(server)
    a, b = pop(server), pop(server)
    uidl_before = b.uidl()[1]
    a.dele(1)
    assert a.quit().startswith(b"+OK")
    wait_sessions_closed(server, remaining=1)
    server.call(server.store.collect)
    assert uids(server) == [2, 3]
    # B keeps its snapshot: same numbers, message 1 still there.
    assert b.stat()[0] == 3
    assert b.uidl()[1] == uidl_before
    assert b"Subject: number 1" in b.retr(1)[1]
    assert b"Subject: number 2" in b.retr(2)[1]
    # B deleting the message A already expunged is not an error.
    b.dele(1)
    assert b.quit().startswith(b"+OK")
    c = pop(server)
    try:
        assert c.stat()[0] == 2
        assert b"Subject: number 2" in c.retr(1)[1]
    finally:
        c.quit()


def test_mail_arriving_during_a_session(server: LiveServer) -> None:
    deliver_three(server)
    a = pop(server)
    server.deliver(USER, message("late", "arrived during the session\n"))
    assert a.stat()[0] == 3
    for n in (1, 2, 3):
        a.dele(n)
    try:
        a.retr(4)
        raise AssertionError("message 4 must not be visible in this session")
    except poplib.error_proto as exc:
        assert str(exc).startswith("b'-ERR")
    assert a.quit().startswith(b"+OK")
    assert uids(server) == [4]
    b = pop(server)
    try:
        assert b.stat()[0] == 1
        assert b"Subject: late" in b.retr(1)[1]
    finally:
        b.quit()


def test_twenty_concurrent_sessions(server: LiveServer) -> None:
    count = 5
    for n in range(count):
        server.deliver(USER, message(f"number {n}", f"body {n}\n" * 50))
    sessions = 20
    barrier = threading.Barrier(sessions, timeout=10)
    results: list[list[bytes] | BaseException] = [[] for _ in range(sessions)]

    def run(i: int) -> None:
        try:
            client = pop(server)
            try:
                barrier.wait()  # all logged in at the same time
                assert client.stat()[0] == count
                results[i] = [b"\r\n".join(client.retr(n)[1]) for n in range(1, count + 1)]
            finally:
                client.quit()
        except BaseException as exc:
            results[i] = exc
            barrier.abort()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(sessions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    errors = [r for r in results if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    assert all(r == results[0] for r in results)
    assert len(results[0]) == count
    assert all(b"Subject: number" in m for m in results[0])  # type: ignore[operator]


def test_big_body_kept_until_last_holder_closes(server: LiveServer) -> None:
    big = message("big", ("x" * 99 + "\n") * (2 * INLINE_MAX // 100))
    server.deliver(USER, big)
    server.deliver(USER, message("small"))
    files = body_files(server)
    assert len(files) == 1
    a, b = pop(server), pop(server)
    a.dele(1)
    assert a.quit().startswith(b"+OK")
    wait_sessions_closed(server, remaining=1)
    server.call(server.store.collect)
    assert files[0].exists(), "B still holds the message"
    assert len(b"\r\n".join(b.retr(1)[1])) > 2 * INLINE_MAX - 100
    # TOP on the streamed body works too.
    assert b.top(1, 0)[1][-1] == b""
    assert b.quit().startswith(b"+OK")
    wait_sessions_closed(server)
    server.call(server.store.collect)
    assert not files[0].exists()
    assert uids(server) == [2]


def test_expunged_rows_collected_after_last_session(server: LiveServer) -> None:
    deliver_three(server)
    a, b = pop(server), pop(server)
    a.dele(2)
    a.quit()
    wait_sessions_closed(server, remaining=1)
    box = server.call(server.store.get_mailbox, "example.com", "joe", "INBOX")
    server.call(server.store.collect)
    # B may still read it: the row is kept (flags readable), though no longer listed.
    assert server.call(server.store.message_flags, box.id, 2) is not None
    b.quit()
    wait_sessions_closed(server)
    server.call(server.store.collect)
    assert server.call(server.store.message_flags, box.id, 2) is None
