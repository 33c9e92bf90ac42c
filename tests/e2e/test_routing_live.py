"""Issue 3 against a live server: every row of the login table, the refusals that look like a
bad password, individual-name filtering through a `*@client1.com` route, and delivery into
mailboxes other than INBOX (refused at LMTP RCPT and by `cgpop deliver` until `anyone p`)."""

from __future__ import annotations

import email
import poplib
import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from accounts.acl import parse_acl_entry
from cgpop.store.api import Copy
from router.table import validate_route
from tests.conftest import LiveServer
from tests.e2e.helpers import TIMEOUT, login_error

PASSWORDS = {
    "jsmith@example.com": "pw-jsmith",
    "jsmith@client1.com": "pw-jsmith-c1",
    "boss@example.com": "pw-boss",
    "public@example.com": "pw-public",
    "cl1@client1.com": "pw-cl1",
    "info@client2.com": "pw-info",
}
AUTH_FAILED = b"-ERR [AUTH] authentication failed"
CGPOP = [sys.executable, "-m", "cgpop"]


def msg(subject: str) -> bytes:
    return f"From: a@remote.test\r\nSubject: {subject}\r\n\r\nBody of {subject}.\r\n".encode()


def put(srv: LiveServer, address: str, mailbox: str, subject: str) -> None:
    """Store a message straight into a mailbox (set-up only; bypasses the posting right)."""
    name, _, domain = address.partition("@")
    box = srv.call(srv.store.get_mailbox, domain, name, mailbox)
    assert box is not None
    assert srv.call(srv.store.deliver, msg(subject), [Copy(box.id, b"", None, None)]) == [True]


def login(srv: LiveServer, user: str, password: str) -> poplib.POP3:
    client = poplib.POP3(srv.host, srv.port("pop3"), timeout=TIMEOUT)
    client.user(user)
    client.pass_(password)
    return client


def headers(client: poplib.POP3) -> list[email.message.Message]:
    """Each message's header (TOP n 0 sets no \\Seen), in message-number order."""
    count = client.stat()[0]
    return [
        email.message_from_bytes(b"\r\n".join(client.top(n, 0)[1])) for n in range(1, count + 1)
    ]


def subjects(srv: LiveServer, user: str, password: str) -> list[str]:
    client = login(srv, user, password)
    try:
        return [str(h["Subject"]) for h in headers(client)]
    finally:
        client.quit()


@pytest.fixture
def world(server_factory: Callable[..., LiveServer]) -> LiveServer:
    # Many deliberate failures from 127.0.0.1 follow; the growing delay is tested elsewhere.
    srv = server_factory(pop3={"listen": ["127.0.0.1:0"], "auth_delay": 0.0, "auth_delay_max": 0.0})
    for address, password in PASSWORDS.items():
        srv.add_account(address, password)
    st = srv.store
    srv.call(st.add_mailbox, "example.com", "jsmith", "private")
    srv.call(st.add_mailbox, "client1.com", "jsmith", "lists/info")
    srv.call(st.add_mailbox, "example.com", "public", "announces")  # default ACL: anyone lrs
    srv.call(st.add_mailbox, "example.com", "boss", "secret")
    srv.call(st.add_route, *validate_route("*@client1.com", "cl1@client1.com"))
    boss_inbox = srv.call(st.get_mailbox, "example.com", "boss", "INBOX")
    srv.call(st.set_acl_entry, boss_inbox, parse_acl_entry("jsmith@example.com", "lr"))
    put(srv, "jsmith@example.com", "INBOX", "jsmith example inbox")
    put(srv, "jsmith@client1.com", "INBOX", "jsmith client1 inbox")
    put(srv, "jsmith@example.com", "private", "jsmith private")
    put(srv, "jsmith@client1.com", "lists/info", "client1 lists/info")
    put(srv, "public@example.com", "announces", "announcement")
    put(srv, "boss@example.com", "INBOX", "boss inbox")
    put(srv, "boss@example.com", "secret", "boss secret")
    put(srv, "info@client2.com", "INBOX", "client2 info")
    assert [r.status.value for r in srv.deliver("abcdef@client1.com", msg("for abcdef"))] == [
        "delivered"
    ]
    return srv


@pytest.mark.parametrize(
    ("user", "password", "expected"),
    [
        ("jsmith", "pw-jsmith", ["jsmith example inbox"]),
        ("jsmith@client1.com", "pw-jsmith-c1", ["jsmith client1 inbox"]),
        ("JSmith@Client1.COM", "pw-jsmith-c1", ["jsmith client1 inbox"]),
        ("private#jsmith", "pw-jsmith", ["jsmith private"]),
        ("lists/info#jsmith@client1.com", "pw-jsmith-c1", ["client1 lists/info"]),
        ("~public/announces#jsmith", "pw-jsmith", ["announcement"]),
        ("~boss/INBOX#jsmith", "pw-jsmith", ["boss inbox"]),
        ("info%client2.com", "pw-info", ["client2 info"]),
        ("abcdef@client1.com", "pw-cl1", ["for abcdef"]),
    ],
)
def test_login_table(world: LiveServer, user: str, password: str, expected: list[str]) -> None:
    assert subjects(world, user, password) == expected


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("jsmith", "wrong"),  # the reference: a bad password
        ("nobody", "pw-jsmith"),  # no such account
        ("jsmith@nowhere.test", "pw-jsmith"),  # no such domain
        ("a#b#jsmith", "pw-jsmith"),  # does not parse
        ("../etc#jsmith", "pw-jsmith"),  # a mailbox name is never a path
        ("lists//info#jsmith@client1.com", "pw-jsmith-c1"),
        ("~boss#jsmith", "pw-jsmith"),
        ("nosuch#jsmith", "pw-jsmith"),  # right password, missing mailbox
        ("Private#jsmith", "pw-jsmith"),  # mailbox names keep their case
        ("~nosuch/INBOX#jsmith", "pw-jsmith"),  # missing owner
        ("~boss/nosuch#jsmith", "pw-jsmith"),  # missing foreign mailbox
        ("~boss/secret#jsmith", "pw-jsmith"),  # exists, but no `r` right
        ("~boss/INBOX#jsmith", "pw-boss"),  # the account part authenticates, not the owner
        ("abcdef@client1.com", "pw-jsmith-c1"),  # the route's target authenticates
        ("~public/announces#jsmith@client1.com", "pw-jsmith-c1"),  # no public in client1.com
    ],
)
def test_refusals_look_like_a_bad_password(world: LiveServer, user: str, password: str) -> None:
    assert login_error(world, user, password) == AUTH_FAILED


def test_individual_name_filtering(world: LiveServer) -> None:
    world.deliver("xyz@client1.com", msg("for xyz"))
    world.deliver("cl1@client1.com", msg("for cl1"))
    world.deliver("ABCdef@client1.com", msg("for abcdef again"))
    assert subjects(world, "abcdef@client1.com", "pw-cl1") == ["for abcdef", "for abcdef again"]
    assert subjects(world, "xyz@client1.com", "pw-cl1") == ["for xyz"]
    assert subjects(world, "nobody-yet@client1.com", "pw-cl1") == []
    client = login(world, "cl1@client1.com", "pw-cl1")
    try:
        seen = [(str(h["Subject"]), str(h["X-Real-To"])) for h in headers(client)]
        # UIDLs are the account's own: an individual login shows a subset of the same ones.
        full_uidl = dict(line.split() for line in (x.decode() for x in client.uidl()[1]))
    finally:
        client.quit()
    assert seen == [
        ("for abcdef", "<abcdef@client1.com>"),
        ("for xyz", "<xyz@client1.com>"),
        ("for cl1", "<cl1@client1.com>"),
        ("for abcdef again", "<ABCdef@client1.com>"),
    ]
    client = login(world, "abcdef@client1.com", "pw-cl1")
    try:
        part = [x.decode().split()[1] for x in client.uidl()[1]]
        # Deleting through the individual login removes the message from the account.
        client.dele(1)
    finally:
        client.quit()
    assert part == [full_uidl["1"], full_uidl["4"]]
    assert subjects(world, "cl1@client1.com", "pw-cl1") == [
        "for xyz",
        "for cl1",
        "for abcdef again",
    ]


def write_config(srv: LiveServer, tmp_path: Path) -> Path:
    path = tmp_path / "deliver.toml"
    path.write_text(
        f'[server]\ndata_dir = "{srv.config.server.data_dir}"\ndefault_domain = "example.com"\n'
    )
    return path


def cgpop(config: Path, *argv: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*CGPOP, *argv, "-c", str(config)],
        input=stdin,
        capture_output=True,
        timeout=60,
        check=False,
    )


def lmtp_send(srv: LiveServer, rcpts: list[str], subject: str) -> dict[str, tuple[int, bytes]]:
    """Send one message over LMTP; return the recipients refused at RCPT. Every accepted one
    must then get its own 250 after DATA (RFC 2033 section 4.2; smtplib's sendmail reads only
    the first of those replies, so the transaction is spelled out)."""
    refused: dict[str, tuple[int, bytes]] = {}
    with smtplib.LMTP(srv.host, srv.port("lmtp"), timeout=TIMEOUT) as client:
        client.ehlo()
        assert client.mail("a@remote.test")[0] == 250
        accepted = []
        for rcpt in rcpts:
            reply = client.rcpt(rcpt)
            if reply[0] == 250:
                accepted.append(rcpt)
            else:
                refused[rcpt] = reply
        if accepted:
            replies = [client.data(msg(subject))]
            replies += [client.getreply() for _ in accepted[1:]]
            assert [code for code, _ in replies] == [250] * len(accepted), replies
        else:
            client.rset()
    return refused


def test_posting_into_a_mailbox_needs_anyone_p(world: LiveServer, tmp_path: Path) -> None:
    rcpt = "lists/info#jsmith@client1.com"
    refused = lmtp_send(world, [rcpt], "too early")
    assert refused[rcpt][0] == 550 and refused[rcpt][1].startswith(b"5.7.1 ")
    # Unknown names and missing mailboxes are refused at RCPT as well, as unknown users.
    refused = lmtp_send(world, ["nosuch#jsmith@client1.com", "nobody@example.com"], "lost")
    assert {k: v[1][:6] for k, v in refused.items()} == {
        "nosuch#jsmith@client1.com": b"5.1.1 ",
        "nobody@example.com": b"5.1.1 ",
    }
    # A route whose target names the mailbox is held to the same rule.
    world.call(world.store.add_route, *validate_route("info@client1.com", rcpt))
    # One refused recipient does not stop the others of the same transaction.
    refused = lmtp_send(world, ["info@client1.com", "cl1@client1.com"], "mixed")
    assert list(refused) == ["info@client1.com"] and refused["info@client1.com"][0] == 550
    config = write_config(world, tmp_path)
    done = cgpop(config, "deliver", "--from", "a@remote.test", rcpt, stdin=msg("by deliver"))
    assert done.returncode == 67, done.stderr
    assert b"550 5.7.1" in done.stderr
    assert subjects(world, rcpt, "pw-jsmith-c1") == ["client1 lists/info"]

    # Only `anyone`/`anonymous` count: a named user's p does not open the mailbox to mail.
    done = cgpop(config, "acl", "set", "jsmith@client1.com", "lists/info", "fred@client1.com", "p")
    assert done.returncode == 0, done.stderr
    assert lmtp_send(world, [rcpt], "still refused")[rcpt][0] == 550

    done = cgpop(config, "acl", "set", "jsmith@client1.com", "lists/info", "anyone", "p")
    assert done.returncode == 0, done.stderr
    assert lmtp_send(world, [rcpt, "info@client1.com"], "posted") == {}
    done = cgpop(config, "deliver", "--from", "a@remote.test", rcpt, stdin=msg("by deliver"))
    assert done.returncode == 0, done.stderr
    client = login(world, rcpt, "pw-jsmith-c1")
    try:
        got = [(str(h["Subject"]), h["X-Real-To"]) for h in headers(client)]
    finally:
        client.quit()
    assert got == [
        ("client1 lists/info", None),
        ("posted", f"<{rcpt}>"),
        ("posted", "<info@client1.com>"),
        ("by deliver", f"<{rcpt}>"),
    ]
    # Nothing refused earlier leaked into cl1's INBOX either: only the accepted "mixed" copy.
    assert subjects(world, "cl1@client1.com", "pw-cl1") == ["for abcdef", "mixed"]
