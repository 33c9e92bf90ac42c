"""Two gateway nodes (two real Gateways, named pop-a and pop-b) on one PostgreSQL database,
talked to with real clients: the store boundary is all a backend needs to serve POP and LMTP."""

from __future__ import annotations

import poplib
import smtplib
from collections.abc import Callable

import pytest

from tests.conftest import LiveServer, message
from tests.e2e.helpers import USER, pop, wait_sessions_closed
from tests.e2e.test_xtnd_live import msg, queue_empty, relay_to, sink, submit, wait_for
from tests.xtnd.conftest import Sink

__all__ = ["sink"]  # the relay sink fixture

Factory = Callable[..., LiveServer]


def nodes(server_factory: Factory, tmp_path_dsn: tuple[object, str]) -> list[LiveServer]:
    tmp_path, dsn = tmp_path_dsn
    out = []
    for name in ("pop-a", "pop-b"):
        # The node-local data_dir (fake-salt key, spool) is made by the Gateway itself.
        out.append(
            server_factory(
                tmp_path / name,  # type: ignore[operator]
                store={"backend": "postgresql", "dsn": dsn, "node": name, "pool_size": 4},
            )
        )
    out[0].add_account(USER, "secret")
    return out


def test_two_nodes_serve_one_maildrop_with_the_snapshot_rules(
    pg_dsn: str, server_factory: Factory, tmp_path: object
) -> None:
    # pg_dsn first: its schema is dropped after the servers stop (fixtures end in reverse).
    a, b = nodes(server_factory, (tmp_path, pg_dsn))
    with smtplib.LMTP(a.host, a.port("lmtp"), timeout=20) as lmtp:
        for n in (1, 2, 3):
            assert lmtp.sendmail("s@remote.test", [USER], message(f"number {n}")) == {}
    on_b = pop(b)
    on_a = pop(a)
    assert on_a.uidl()[1] == on_b.uidl()[1]  # the same UIDLs on every node
    on_a.dele(1)
    assert on_a.quit().startswith(b"+OK")
    a.call(a.store.collect)
    b.call(b.store.collect)
    # B keeps its snapshot: same numbers, and what A expunged is still readable.
    assert on_b.stat()[0] == 3
    assert b"Subject: number 1" in b"\n".join(on_b.retr(1)[1])
    assert on_b.quit().startswith(b"+OK")
    again = pop(b)
    try:
        assert again.stat()[0] == 2
        assert b"Subject: number 2" in b"\n".join(again.retr(1)[1])
    finally:
        again.quit()


def test_max_per_account_counts_sessions_on_every_node(
    pg_dsn: str, server_factory: Factory, tmp_path: object
) -> None:
    tmp = tmp_path
    a, b = (
        server_factory(
            tmp / name,  # type: ignore[operator]
            store={"backend": "postgresql", "dsn": pg_dsn, "node": name, "pool_size": 4},
            pop3={"max_per_account": 2},
        )
        for name in ("pop-a", "pop-b")
    )
    a.add_account(USER, "secret")
    first, second = pop(a), pop(b)  # one on each node: within the cap of 2
    third = poplib.POP3(b.host, b.port("pop3"), timeout=20)
    third.user(USER)
    with pytest.raises(poplib.error_proto) as refused:
        third.pass_("secret")
    assert refused.value.args[0] == b"-ERR [SYS/TEMP] too many sessions for this account, try later"
    third.quit()
    assert first.quit().startswith(b"+OK")
    wait_sessions_closed(a)
    a.call(a.store.flush_released)  # what A's registry thread does right after a close
    again = pop(b)  # A's session gone: room again, on B
    assert again.stat() == (0, 0)
    again.quit()
    second.quit()


def test_xtnd_queue_is_relayed_once_across_nodes(
    pg_dsn: str, server_factory: Factory, tmp_path: object, sink: Sink
) -> None:
    # Both nodes run the relay worker on the one queue; each message reaches the relay once.
    a, b = (
        server_factory(
            tmp_path / name,  # type: ignore[operator]
            store={"backend": "postgresql", "dsn": pg_dsn, "node": name, "pool_size": 4},
            xtnd=relay_to(sink),
        )
        for name in ("pop-a", "pop-b")
    )
    a.add_account(USER, "secret")
    for n in range(6):
        node = (a, b)[n % 2]
        reply = submit(node, msg(f"r{n}@remote.example"))
        assert reply.startswith(b"+OK"), reply
    wait_for(lambda: queue_empty(a), timeout=60)
    relayed = sorted(r for m in sink.handler.messages for r in m.rcpt_tos)
    assert relayed == [f"r{n}@remote.example" for n in range(6)]


def test_two_nodes_share_one_quota(pg_dsn: str, server_factory: Factory, tmp_path: object) -> None:
    """Issue 12: deliveries through both nodes at once never pass the account's limit; the
    ones over it get 452 4.2.2 on either node, and an expunge on one makes room on the other."""
    import concurrent.futures

    a, b = nodes(server_factory, (tmp_path, pg_dsn))
    a.call(a.store.set_quota, "example.com", "joe", None, 4)

    def send(node: LiveServer, n: int) -> int:
        with smtplib.LMTP(node.host, node.port("lmtp"), timeout=20) as lmtp:
            try:
                lmtp.sendmail("s@remote.test", [USER], message(f"number {n}"))
            except smtplib.SMTPDataError as exc:
                assert exc.smtp_error == f"4.2.2 <{USER}> mailbox full".encode()
                return exc.smtp_code
            return 250

    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        codes = list(pool.map(send, [a, b] * 5, range(10)))
    assert sorted(codes) == [250] * 4 + [452] * 6
    assert b.call(b.store.get_quota, "example.com", "joe").messages_used == 4
    # The delivery that crossed 90 % (3 -> 4 of 4) queued one warning, shown once.
    client = poplib.POP3(b.host, b.port(), timeout=20)
    client.user(USER)
    with pytest.raises(poplib.error_proto, match=r"Mailbox is 100% full: 4 of 4 messages"):
        client.pass_("secret")
    client.close()
    on_a = pop(a)
    assert on_a.stat()[0] == 4
    on_a.dele(1)
    assert on_a.quit().startswith(b"+OK")
    assert send(b, 99) == 250
    assert send(a, 100) == 452
