"""Issue 13 against a live server with real clients (poplib, smtplib.LMTP, the `cgpop` CLI):
X-Real-To read from the message's own field, the login address as an XTND XMIT sender,
foreign mailboxes in other domains, inherited ACLs, account services, and an XTND refusal
that quotes the address as written."""

from __future__ import annotations

import json
import os
import poplib
import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from accounts.acl import parse_acl_entry
from cgpop.store.api import Copy
from router.table import validate_route
from tests.conftest import LiveServer
from tests.e2e.helpers import TIMEOUT, Raw, login_error

CGPOP = [sys.executable, "-m", "cgpop"]
AUTH_FAILED = b"-ERR [AUTH] authentication failed"
PASSWORDS = {
    "cl1@client1.com": "pw-cl1",
    "jsmith@client1.com": "pw-jsmith",
    "boss@client1.com": "pw-boss",
    "jsmith@client2.com": "pw-jsmith2",
    "ann@client2.com": "pw-ann",
}


class Cli:
    """`cgpop` in a subprocess, on the live server's data directory."""

    def __init__(self, srv: LiveServer, tmp_path: Path, extra: str = "") -> None:
        self.config = tmp_path / "cli.toml"
        self.config.write_text(
            f'[server]\ndata_dir = "{srv.config.server.data_dir}"\n'
            f'default_domain = "example.com"\n{extra}'
        )

    def run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "CGPOP_CONFIG"}
        return subprocess.run(
            [*CGPOP, *args, "-c", str(self.config)],
            capture_output=True,
            timeout=60,
            env=env,
            check=False,
        )

    def ok(self, *args: str) -> str:
        done = self.run(*args)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))


def message(subject: str, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return f"From: a@remote.test\r\n{head}Subject: {subject}\r\n\r\nBody.\r\n".encode()


def subjects(srv: LiveServer, user: str, password: str) -> list[str]:
    client = poplib.POP3(srv.host, srv.port("pop3"), timeout=TIMEOUT)
    try:
        client.user(user)
        client.pass_(password)
        count = client.stat()[0]
        found = []
        for n in range(1, count + 1):
            for line in client.top(n, 0)[1]:
                if line.startswith(b"Subject: "):
                    found.append(line[9:].decode())
        return found
    finally:
        client.quit()


def lmtp_send(srv: LiveServer, rcpts: list[str], data: bytes) -> dict[str, tuple[int, bytes]]:
    client = smtplib.LMTP(srv.host, srv.port("lmtp"), timeout=TIMEOUT)
    try:
        client.ehlo("client.test")
        client.mail("a@remote.test")
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        client.putcmd("data")
        assert client.getreply()[0] == 354
        client.send(data.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        return {rcpt: client.getreply() for rcpt in rcpts}
    finally:
        client.quit()


def put(srv: LiveServer, address: str, mailbox: str, subject: str) -> None:
    name, _, domain = address.partition("@")
    box = srv.call(srv.store.get_mailbox, domain, name, mailbox)
    assert box is not None
    srv.call(srv.store.deliver, message(subject), [Copy(box.id, b"", None, None)])


def stuff(data: bytes) -> bytes:
    lines = data.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in lines)


def xmit(srv: LiveServer, user: str, password: str, data: bytes) -> bytes:
    with Raw(srv) as raw:
        assert raw.login(user, password).startswith(b"+OK")
        first = raw.cmd("XTND XMIT")
        if not first.startswith(b"+OK"):
            return first
        raw.send(stuff(data) + b".\r\n")
        return raw.line()


@pytest.fixture
def world(server_factory: Callable[..., LiveServer]) -> LiveServer:
    # Deliberate failed logins follow; the growing delay is tested elsewhere.
    srv = server_factory(pop3={"listen": ["127.0.0.1:0"], "auth_delay": 0.0, "auth_delay_max": 0.0})
    for address, password in PASSWORDS.items():
        srv.add_account(address, password)
    srv.call(srv.store.add_route, *validate_route("*@client1.com", "cl1@client1.com"))
    srv.call(srv.store.add_route, *validate_route("sales@client1.com", "cl1@client1.com"))
    return srv


# --- 1. individual names from the message's own X-Real-To field -----------------------------


def maildir(path: Path, messages: list[bytes]) -> Path:
    for sub in ("new", "cur", "tmp"):
        (path / sub).mkdir(parents=True)
    for i, data in enumerate(messages):
        (path / "cur" / f"{1000 + i}.M{i}.host:2,").write_bytes(data)
    return path


def test_imported_messages_are_visible_to_the_names_they_list(
    world: LiveServer, tmp_path: Path
) -> None:
    cli = Cli(world, tmp_path)
    source = maildir(
        tmp_path / "Maildir",
        [
            message("for abcdef", "X-Real-To: <abcdef@client1.com>"),
            message("for both", "X-Real-To: <abcdef@client1.com>, <XYZ@client1.com>"),
            message("for nobody in particular"),
            # Routed to another account (jsmith exists): no name for cl1's mailbox.
            message("for jsmith", "X-Real-To: <jsmith@client1.com>"),
        ],
    )
    cli.ok("mailbox", "import", "cl1@client1.com", "INBOX", str(source))
    assert subjects(world, "abcdef@client1.com", "pw-cl1") == ["for abcdef", "for both"]
    assert subjects(world, "xyz@client1.com", "pw-cl1") == ["for both"]
    assert subjects(world, "other@client1.com", "pw-cl1") == []
    assert len(subjects(world, "cl1@client1.com", "pw-cl1")) == 4
    shown = cli.json("mailbox", "show", "cl1@client1.com", "INBOX")
    assert [m["x_real_to"] for m in shown] == [
        "abcdef@client1.com",
        ["abcdef@client1.com", "XYZ@client1.com"],
        None,
        None,
    ]
    assert [m["individuals"] for m in shown] == [["abcdef"], ["abcdef", "xyz"], [], []]
    text = cli.ok("mailbox", "show", "cl1@client1.com", "INBOX").splitlines()
    assert text[1].endswith(" abcdef@client1.com, XYZ@client1.com")


def test_lmtp_to_the_account_uses_the_field_the_message_carries(world: LiveServer) -> None:
    replies = lmtp_send(
        world,
        ["cl1@client1.com"],
        message("relayed", "X-Real-To: <abcdef@client1.com>, <someone@elsewhere.test>"),
    )
    assert replies["cl1@client1.com"][0] == 250
    # The router's own name wins over the field: this copy is zz's only.
    lmtp_send(world, ["zz@client1.com"], message("for zz", "X-Real-To: <abcdef@client1.com>"))
    assert subjects(world, "abcdef@client1.com", "pw-cl1") == ["relayed"]
    assert subjects(world, "zz@client1.com", "pw-cl1") == ["for zz"]
    # Deleting through one name removes the message from the account.
    client = poplib.POP3(world.host, world.port("pop3"), timeout=TIMEOUT)
    client.user("abcdef@client1.com")
    client.pass_("pw-cl1")
    client.dele(1)
    client.quit()
    assert subjects(world, "cl1@client1.com", "pw-cl1") == ["for zz"]


def test_the_field_read_is_the_configured_one(
    server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    srv = server_factory(pop3={"real_to_header": "Delivered-To"})
    srv.add_account("cl1@client1.com", "pw-cl1")
    srv.call(srv.store.add_route, *validate_route("*@client1.com", "cl1@client1.com"))
    cli = Cli(srv, tmp_path, '[pop3]\nreal_to_header = "Delivered-To"\n')
    source = maildir(
        tmp_path / "Maildir",
        [
            message("delivered-to", "Delivered-To: abcdef@client1.com"),
            message("x-real-to", "X-Real-To: <abcdef@client1.com>"),
        ],
    )
    cli.ok("mailbox", "import", "cl1@client1.com", "INBOX", str(source))
    lmtp_send(srv, ["cl1@client1.com"], message("lmtp", "Delivered-To: <abcdef@client1.com>"))
    assert subjects(srv, "abcdef@client1.com", "pw-cl1") == ["delivered-to", "lmtp"]


# --- 2. the login address is an allowed From ---------------------------------------------------


def sent(srv: LiveServer, user: str, password: str, sender: str) -> bytes:
    data = f"From: {sender}\r\nTo: ann@client2.com\r\nSubject: from {sender}\r\n\r\nHi.\r\n"
    return xmit(srv, user, password, data.encode())


def test_the_address_logged_in_with_may_send(world: LiveServer) -> None:
    ok = b"+OK Message sent successfully\r\n"
    assert sent(world, "abcdef@client1.com", "pw-cl1", "abcdef@client1.com") == ok
    assert sent(world, "AbcDef@Client1.com", "pw-cl1", "abcdef@client1.com") == ok
    # An exact alias of the account, and the account itself, as before.
    assert sent(world, "sales@client1.com", "pw-cl1", "sales@client1.com") == ok
    assert sent(world, "cl1@client1.com", "pw-cl1", "cl1@client1.com") == ok
    # Other names the wildcard maps to the account stay refused, whoever logs in.
    refused = sent(world, "abcdef@client1.com", "pw-cl1", "boss2@client1.com")
    assert refused == b"-ERR From address boss2@client1.com is not yours\r\n"
    refused = sent(world, "cl1@client1.com", "pw-cl1", "abcdef@client1.com")
    assert refused == b"-ERR From address abcdef@client1.com is not yours\r\n"
    assert subjects(world, "ann@client2.com", "pw-ann") == [
        "from abcdef@client1.com",
        "from abcdef@client1.com",
        "from sales@client1.com",
        "from cl1@client1.com",
    ]


# --- 3. foreign mailboxes in other domains --------------------------------------------------


@pytest.fixture
def shared(world: LiveServer) -> LiveServer:
    st = world.store
    world.call(st.add_mailbox, "client1.com", "boss", "secret")
    put(world, "boss@client1.com", "INBOX", "boss inbox")
    put(world, "boss@client1.com", "secret", "boss secret")
    inbox = world.call(st.get_mailbox, "client1.com", "boss", "INBOX")
    world.call(st.set_acl_entry, inbox, parse_acl_entry("jsmith@client2.com", "lr"))
    return world


def test_foreign_mailbox_in_another_domain(shared: LiveServer) -> None:
    name = "~boss@client1.com/INBOX#jsmith@client2.com"
    assert subjects(shared, name, "pw-jsmith2") == ["boss inbox"]
    client = poplib.POP3(shared.host, shared.port("pop3"), timeout=TIMEOUT)
    try:
        client.user(name)
        client.pass_("pw-jsmith2")
        # `lr` only: the ACL decides exactly as within a domain.
        with pytest.raises(poplib.error_proto, match=r"\[SYS/PERM\].*t \(delete\)"):
            client.dele(1)
    finally:
        client.quit()


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("jsmith@client2.com", "wrong"),  # the reference: a bad password
        ("~boss@client1.com/secret#jsmith@client2.com", "pw-jsmith2"),  # no `r` right
        ("~boss@client1.com/nosuch#jsmith@client2.com", "pw-jsmith2"),  # no such mailbox
        ("~ghost@client2.com/INBOX#jsmith@client2.com", "pw-jsmith2"),  # no such owner
        ("~boss@nowhere.test/INBOX#jsmith@client2.com", "pw-jsmith2"),  # no such domain
        ("~boss@client1.com/INBOX#ann@client2.com", "pw-ann"),  # no entry for ann
        ("~boss@client1.com/INBOX#jsmith@client2.com", "pw-boss"),  # the user authenticates
    ],
)
def test_foreign_refusals_look_like_a_bad_password(
    shared: LiveServer, user: str, password: str
) -> None:
    assert login_error(shared, user, password) == AUTH_FAILED


# --- 4. inherited ACLs ----------------------------------------------------------------------


def test_new_mailboxes_inherit_the_nearest_ancestors_acl(world: LiveServer, tmp_path: Path) -> None:
    cli = Cli(world, tmp_path)
    owner = "jsmith@client1.com"
    cli.ok("mailbox", "add", owner, "private")
    cli.ok("acl", "set", owner, "private", "anyone", "p")
    cli.ok("acl", "set", owner, "private", "-ann@client2.com", "r")
    cli.ok("mailbox", "add", owner, "private/sub")
    cli.ok("mailbox", "add", owner, "private/a/b")  # no private/a: private is the nearest
    cli.ok("mailbox", "add", owner, "other")  # top level: no parent, the defaults
    expected = [
        {"identifier": "anyone", "negative": False, "rights": "p"},
        {"identifier": "ann@client2.com", "negative": True, "rights": "r"},
    ]
    assert cli.json("acl", "list", owner, "private/sub") == expected
    assert cli.json("acl", "list", owner, "private/a/b") == expected
    assert cli.json("acl", "list", owner, "other") == []
    # A copy, not a link: changing the parent later leaves the child alone.
    cli.ok("acl", "delete", owner, "private", "anyone")
    assert cli.json("acl", "list", owner, "private/sub") == expected
    # The inherited `anyone p` lets LMTP post into the new mailbox.
    replies = lmtp_send(world, ["private/sub#jsmith@client1.com"], message("posted"))
    assert replies["private/sub#jsmith@client1.com"][0] == 250
    assert subjects(world, "private/sub#jsmith@client1.com", "pw-jsmith") == ["posted"]
    client = smtplib.LMTP(world.host, world.port("lmtp"), timeout=TIMEOUT)
    try:
        client.ehlo("client.test")
        client.mail("a@remote.test")
        assert client.rcpt("other#jsmith@client1.com")[0] == 550
    finally:
        client.quit()


def test_public_account_children_inherit_too(world: LiveServer, tmp_path: Path) -> None:
    cli = Cli(world, tmp_path)
    world.add_account("public@client1.com", "pw-public")
    cli.ok("mailbox", "add", "public@client1.com", "news")
    default = [{"identifier": "anyone", "negative": False, "rights": "lrs"}]
    assert cli.json("acl", "list", "public@client1.com", "news") == default
    cli.ok("acl", "set", "public@client1.com", "news", "anyone", "lr")
    cli.ok("mailbox", "add", "public@client1.com", "news/today")
    inherited = [{"identifier": "anyone", "negative": False, "rights": "lr"}]
    assert cli.json("acl", "list", "public@client1.com", "news/today") == inherited


# --- 5. account services ----------------------------------------------------------------------


def test_disabled_pop_refuses_after_the_password_and_mail_still_arrives(
    world: LiveServer, tmp_path: Path
) -> None:
    cli = Cli(world, tmp_path)
    cli.ok("account", "disable", "jsmith@client1.com", "--service", "pop")
    disabled = b"-ERR [SYS/PERM] account disabled"
    assert login_error(world, "jsmith@client1.com", "pw-jsmith") == disabled
    assert login_error(world, "jsmith@client1.com", "wrong") == AUTH_FAILED
    assert login_error(world, "nobody@client2.com", "pw-jsmith") == AUTH_FAILED
    # Any name that authenticates as the account, a foreign mailbox's included.
    assert login_error(world, "~cl1@client1.com/INBOX#jsmith@client1.com", "pw-jsmith") == disabled
    replies = lmtp_send(world, ["jsmith@client1.com"], message("while suspended"))
    assert replies["jsmith@client1.com"][0] == 250
    listed = {a["address"]: a for a in cli.json("account", "list", "client1.com")}
    assert listed["jsmith@client1.com"] == {
        "address": "jsmith@client1.com",
        "pop": "disabled",
        "xtnd": "enabled",
    }
    assert listed["cl1@client1.com"]["pop"] == "enabled"
    assert "jsmith@client1.com (disabled: pop)" in cli.ok("account", "list").splitlines()
    cli.ok("account", "enable", "jsmith@client1.com")
    assert subjects(world, "jsmith@client1.com", "pw-jsmith") == ["while suspended"]


def test_disabled_xtnd_refuses_the_submission_and_stores_nothing(
    world: LiveServer, tmp_path: Path
) -> None:
    cli = Cli(world, tmp_path)
    cli.ok("account", "disable", "cl1@client1.com", "--service", "xtnd")
    data = b"From: cl1@client1.com\r\nTo: ann@client2.com, far@remote.test\r\n\r\nHi.\r\n"
    with Raw(world) as raw:
        assert raw.login("cl1@client1.com", "pw-cl1").startswith(b"+OK")
        refused = raw.cmd("XTND XMIT")
        assert refused == b"-ERR [SYS/PERM] XTND XMIT is disabled for this account\r\n"
        assert raw.cmd("NOOP").startswith(b"+OK")  # the session goes on
    assert subjects(world, "ann@client2.com", "pw-ann") == []
    assert world.call(world.store.list_queue) == []
    cli.ok("account", "enable", "cl1@client1.com", "--service", "xtnd")
    local_only = data.replace(b", far@remote.test", b"")
    assert (
        xmit(world, "cl1@client1.com", "pw-cl1", local_only) == b"+OK Message sent successfully\r\n"
    )
    cli.ok("account", "disable", "cl1@client1.com")  # default: all
    listed = {a["address"]: a for a in cli.json("account", "list", "client1.com")}
    assert listed["cl1@client1.com"] == {
        "address": "cl1@client1.com",
        "pop": "disabled",
        "xtnd": "disabled",
    }


def test_account_services_cli_errors(world: LiveServer, tmp_path: Path) -> None:
    cli = Cli(world, tmp_path)
    missing = cli.run("account", "disable", "ghost@client1.com")
    assert missing.returncode == 1
    assert b"ghost@client1.com" in missing.stderr and b"Traceback" not in missing.stderr
    bad = cli.run("account", "disable", "cl1@client1.com", "--service", "imap")
    assert bad.returncode == 2 and b"invalid choice" in bad.stderr
    assert cli.run("account", "enable", "not-an-address").returncode == 2


# --- 7. the refusal quotes the address as written ------------------------------------------


def test_invalid_recipient_is_quoted_as_written(world: LiveServer) -> None:
    data = b"From: cl1@client1.com\r\nTo: Some One <someone@invalid..example>\r\n\r\nHi.\r\n"
    reply = xmit(world, "cl1@client1.com", "pw-cl1", data)
    assert reply.startswith(b"-ERR Invalid recipient address someone@invalid..example in To: ")
