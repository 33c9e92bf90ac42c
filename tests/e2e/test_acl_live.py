"""Issue 3 rights on a live server, seen through poplib: a foreign INBOX read with and without
`t`/`e`, RETR without `s`, groups and negative entries, admins, and a public mailbox read by
several users at once."""

from __future__ import annotations

import poplib
import threading
from collections.abc import Callable

import pytest

from accounts.acl import parse_acl_entry
from cgpop.store.api import SEEN, Mailbox
from tests.conftest import LiveServer, message
from tests.e2e.helpers import TIMEOUT, login_error, wait_sessions_closed

AUTH_FAILED = b"-ERR [AUTH] authentication failed"
FOREIGN = "~boss/INBOX#jsmith"


def login(srv: LiveServer, user: str, password: str = "pw") -> poplib.POP3:
    client = poplib.POP3(srv.host, srv.port("pop3"), timeout=TIMEOUT)
    client.user(user)
    client.pass_(password)
    return client


def mailbox(srv: LiveServer, address: str, name: str = "INBOX") -> Mailbox:
    local, _, domain = address.partition("@")
    box = srv.call(srv.store.get_mailbox, domain, local, name)
    assert isinstance(box, Mailbox)
    return box


def set_acl(srv: LiveServer, box: Mailbox, identifier: str, rights: str) -> None:
    srv.call(srv.store.set_acl_entry, box, parse_acl_entry(identifier, rights))


def stored(srv: LiveServer, box: Mailbox) -> list[tuple[int, bool]]:
    """(uid, \\Seen) of the messages left in `box`, read after pending writes."""
    return [(m.uid, "\\Seen" in m.flags) for m in srv.call(srv.store.list_messages, box)]


def seen_bit(srv: LiveServer, box: Mailbox, uid: int) -> bool:
    flags = srv.call(srv.store.message_flags, box.id, uid)
    assert flags is not None
    return bool(flags & SEEN)


@pytest.fixture
def office(server_factory: Callable[..., LiveServer]) -> LiveServer:
    srv = server_factory(
        server={"admins": ["admin@example.com"]},
        pop3={"listen": ["127.0.0.1:0"], "auth_delay": 0.0, "auth_delay_max": 0.0},
    )
    for name in ("boss", "jsmith", "admin", "public"):
        srv.add_account(f"{name}@example.com", "pw")
    for n in (1, 2):
        srv.deliver("boss@example.com", message(f"boss {n}"))
    return srv


def test_foreign_inbox_with_lr_only(office: LiveServer) -> None:
    boss = mailbox(office, "boss@example.com")
    assert login_error(office, FOREIGN) == AUTH_FAILED  # no ACL entry yet
    set_acl(office, boss, "jsmith@example.com", "lr")
    client = login(office, FOREIGN)
    try:
        assert client.stat()[0] == 2
        with pytest.raises(poplib.error_proto) as exc:
            client.dele(1)
        assert exc.value.args[0] == (
            b"-ERR [SYS/PERM] you lack the t (delete) right on this mailbox"
        )
        # The session goes on; RETR works without `s` and sets no \Seen.
        assert client.stat()[0] == 2
        assert b"Subject: boss 1" in b"\r\n".join(client.retr(1)[1])
    finally:
        client.quit()
    wait_sessions_closed(office)
    assert stored(office, boss) == [(1, False), (2, False)]


def test_foreign_inbox_delete_needs_t_and_e(office: LiveServer) -> None:
    boss = mailbox(office, "boss@example.com")
    set_acl(office, boss, "jsmith@example.com", "lrt")
    client = login(office, FOREIGN)
    try:
        with pytest.raises(poplib.error_proto) as exc:
            client.dele(1)
        assert exc.value.args[0] == (
            b"-ERR [SYS/PERM] you lack the e (expunge) right on this mailbox"
        )
    finally:
        client.quit()
    set_acl(office, boss, "jsmith@example.com", "lrste")
    client = login(office, FOREIGN)
    try:
        client.retr(2)
        assert client.dele(1).startswith(b"+OK")
    finally:
        client.quit()
    wait_sessions_closed(office)
    # QUIT expunged message 1; the RETR with `s` marked message 2 \Seen.
    assert stored(office, boss) == [(2, True)]


@pytest.mark.parametrize(("rights", "seen"), [("lr", False), ("lrs", True)])
def test_retr_sets_seen_only_with_s(office: LiveServer, rights: str, seen: bool) -> None:
    boss = mailbox(office, "boss@example.com")
    set_acl(office, boss, "jsmith@example.com", rights)
    client = login(office, FOREIGN)
    try:
        client.retr(1)
    finally:
        client.quit()
    wait_sessions_closed(office)
    assert seen_bit(office, boss, 1) is seen
    assert seen_bit(office, boss, 2) is False


def test_groups_and_negative_entries(office: LiveServer) -> None:
    boss = mailbox(office, "boss@example.com")
    set_acl(office, boss, "group:staff", "lr")
    assert login_error(office, FOREIGN) == AUTH_FAILED
    office.call(office.store.add_group_member, "staff", "jsmith@example.com")
    login(office, FOREIGN).quit()
    # A negative entry beats every positive one: `anyone lr` does not bring `r` back.
    set_acl(office, boss, "anyone", "lr")
    set_acl(office, boss, "-jsmith@example.com", "r")
    assert login_error(office, FOREIGN) == AUTH_FAILED
    # ...and it is the user's own: others still read.
    login(office, "~boss/INBOX#public").quit()


def test_owner_and_admin(office: LiveServer) -> None:
    boss = mailbox(office, "boss@example.com")
    # The owner reads and deletes without any ACL entry.
    client = login(office, "boss")
    try:
        assert client.dele(2).startswith(b"+OK")
    finally:
        client.quit()
    # An admin has `la` everywhere, not `r`: it cannot read other people's mail...
    assert login_error(office, "~boss/INBOX#admin") == AUTH_FAILED
    # ...unless an entry gives it `r` like anybody else.
    set_acl(office, boss, "admin@example.com", "lr")
    client = login(office, "~boss/INBOX#admin")
    try:
        assert client.stat()[0] == 1
    finally:
        client.quit()


def test_public_mailbox_read_by_several_users_at_once(office: LiveServer) -> None:
    users = [f"user{n}@example.com" for n in range(6)]
    for address in users:
        office.add_account(address, "pw")
    # New mailboxes of the `public` account start with `anyone lrs`.
    announces = office.call(office.store.add_mailbox, "example.com", "public", "announces")
    subjects = [f"announce {n}" for n in range(3)]
    set_acl(office, announces, "anyone", "lrsp")
    for subject in subjects:
        office.deliver("announces#public@example.com", message(subject))
    set_acl(office, announces, "anyone", "lrs")
    all_logged_in = threading.Barrier(len(users), timeout=2 * TIMEOUT)
    results: dict[str, tuple[list[bytes], list[bytes], bytes]] = {}
    errors: list[BaseException] = []

    def reader(address: str) -> None:
        try:
            client = login(office, f"~public/announces#{address.partition('@')[0]}")
            try:
                all_logged_in.wait()  # every session holds the mailbox at the same time
                uidl = client.uidl()[1]
                bodies = [b"\r\n".join(client.retr(n)[1]) for n in range(1, len(uidl) + 1)]
                try:
                    client.dele(1)
                    refusal = b"+OK?"
                except poplib.error_proto as exc:
                    refusal = exc.args[0]
                results[address] = (uidl, bodies, refusal)
            finally:
                client.quit()
        except BaseException as exc:
            errors.append(exc)
            all_logged_in.abort()

    threads = [threading.Thread(target=reader, args=(u,)) for u in users]
    for t in threads:
        t.start()
    for t in threads:
        t.join(6 * TIMEOUT)
    assert errors == []
    assert sorted(results) == sorted(users)
    first = results[users[0]]
    assert len(first[0]) == 3
    assert [b.split(b"Subject: ")[1].split(b"\r\n")[0].decode() for b in first[1]] == subjects
    assert all(r == first for r in results.values())
    assert first[2].startswith(b"-ERR [SYS/PERM] you lack the t (delete) right")
    wait_sessions_closed(office)
    assert [uid for uid, _ in stored(office, announces)] == [1, 2, 3]
