"""`cgpop account import` and `cgpop mailbox import` (Maildir and mbox), through the real CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from accounts.credentials import verify_password
from cgpop.store.sqlite import SqliteStore


def cgpop(tmp_path: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[str]:
    conf = tmp_path / "c.toml"
    if not conf.exists():
        conf.write_text('[server]\ndata_dir = "data"\n')
    env = {**os.environ, "CGPOP_CONFIG": str(conf)}
    return subprocess.run(
        [sys.executable, "-m", "cgpop", *args],
        input=stdin.decode(),
        env=env,
        capture_output=True,
        text=True,
    )


@pytest.fixture
def domain(tmp_path: Path) -> Path:
    assert cgpop(tmp_path, "domain", "add", "a.test").returncode == 0
    return tmp_path


def test_account_import(domain: Path) -> None:
    out = cgpop(
        domain, "account", "import", stdin=b"# comment\nu1@a.test pass word\n\nU2@A.test pw2\n"
    )
    assert out.returncode == 0, out.stderr
    assert "imported 2 accounts" in out.stdout
    store = SqliteStore(domain / "data")
    account = store.get_account("a.test", "u1")
    assert account is not None and verify_password(account.credentials, "pass word")
    assert store.list_mailboxes("a.test", "u2") == ["INBOX"]
    store.close()


def test_account_import_is_all_or_nothing(domain: Path) -> None:
    out = cgpop(domain, "account", "import", stdin=b"u1@a.test pw\nu2@nowhere.test pw\n")
    assert out.returncode == 1 and "nowhere.test" in out.stderr
    assert json.loads(cgpop(domain, "account", "list", "--json").stdout) == []
    bad = cgpop(domain, "account", "import", stdin=b"u3@a.test\n")
    assert bad.returncode == 65 and "line 1" in bad.stderr


def test_mailbox_import_maildir_keeps_flags_and_order(domain: Path) -> None:
    cgpop(domain, "account", "import", stdin=b"u1@a.test pw\n")
    maildir = domain / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1000.1.host:2,SR").write_bytes(b"Subject: one\n\nfirst\n")
    (maildir / "new" / "1001.1.host").write_bytes(b"Subject: two\n\n.dot line\n")
    out = cgpop(domain, "mailbox", "import", "u1@a.test", "INBOX", str(maildir))
    assert out.returncode == 0, out.stderr
    shown = json.loads(cgpop(domain, "mailbox", "show", "u1@a.test", "INBOX", "--json").stdout)
    assert [m["flags"] for m in shown] == [["\\Seen", "\\Answered"], []]
    assert [m["size"] for m in shown] == [
        len(b"Subject: one\r\n\r\nfirst\r\n"),
        len(b"Subject: two\r\n\r\n.dot line\r\n"),
    ]


def test_mailbox_import_mbox(domain: Path) -> None:
    cgpop(domain, "account", "import", stdin=b"u1@a.test pw\n")
    mbox = domain / "inbox.mbox"
    mbox.write_bytes(
        b"From a@b Sat Jan  1 00:00:00 2000\nSubject: read\nStatus: RO\n\nx\n\n"
        b"From a@b Sat Jan  1 00:00:01 2000\nSubject: unread\n\ny\n"
    )
    assert cgpop(domain, "mailbox", "import", "u1@a.test", "INBOX", str(mbox)).returncode == 0
    shown = json.loads(cgpop(domain, "mailbox", "show", "u1@a.test", "INBOX", "--json").stdout)
    assert [m["flags"] for m in shown] == [["\\Seen"], []]


def test_mailbox_import_errors(domain: Path) -> None:
    cgpop(domain, "account", "import", stdin=b"u1@a.test pw\n")
    missing = cgpop(domain, "mailbox", "import", "u1@a.test", "INBOX", str(domain / "none"))
    assert missing.returncode == 65 and "no such file" in missing.stderr
    (domain / "plain").mkdir()
    notmd = cgpop(domain, "mailbox", "import", "u1@a.test", "INBOX", str(domain / "plain"))
    assert notmd.returncode == 65 and "not a Maildir" in notmd.stderr
    nobox = cgpop(domain, "mailbox", "import", "u1@a.test", "Nope", str(domain / "plain"))
    assert nobox.returncode == 1


def test_mailbox_import_maildir_reads_regular_files_only(domain: Path) -> None:
    """A user's Maildir may hold links to files only the importing administrator can read: the
    import takes regular files only and names what it skipped on stderr."""
    cgpop(domain, "account", "import", stdin=b"u1@a.test pw\n")
    secret = domain / "secret"
    secret.write_bytes(b"root:SECRET-HASH:0:0\n")
    elsewhere = domain / "elsewhere"
    (elsewhere / "cur").mkdir(parents=True)
    (elsewhere / "cur" / "1002.1.host:2,S").write_bytes(b"Subject: foreign\n\nSECRET too\n")
    maildir = domain / "Maildir"
    for sub in ("cur", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1000.1.host:2,S").write_bytes(b"Subject: one\n\nfirst\n")
    (maildir / "cur" / "1001.1.host:2,S").symlink_to(secret)
    (maildir / "cur" / "1003.1.host").mkdir()
    os.mkfifo(maildir / "cur" / "1004.1.host")
    (maildir / "new").symlink_to(elsewhere / "cur")
    out = cgpop(domain, "mailbox", "import", "u1@a.test", "INBOX", str(maildir))
    assert out.returncode == 0, out.stderr
    assert "imported 1 messages" in out.stdout
    assert "skipped 4 entries that are not regular files" in out.stderr
    for shown in (
        "cur/1001.1.host:2,S (symbolic link)",
        "cur/1003.1.host (directory)",
        "cur/1004.1.host (not a regular file)",
        "new (symbolic link)",
    ):
        assert shown in out.stderr
    shown_msgs = json.loads(cgpop(domain, "mailbox", "show", "u1@a.test", "INBOX", "--json").stdout)
    assert [m["size"] for m in shown_msgs] == [len(b"Subject: one\r\n\r\nfirst\r\n")]


@pytest.mark.parametrize("kind", ["maildir-link", "mbox-link", "fifo"])
def test_mailbox_import_refuses_a_link_or_special_file(domain: Path, kind: str) -> None:
    cgpop(domain, "account", "import", stdin=b"u1@a.test pw\n")
    target = domain / "source"
    if kind == "maildir-link":
        (domain / "real" / "cur").mkdir(parents=True)
        target.symlink_to(domain / "real")
        why = "is a symbolic link"
    elif kind == "mbox-link":
        (domain / "shadow").write_bytes(b"From a@b Sat Jan  1 00:00:00 2000\n\nSECRET\n")
        target.symlink_to(domain / "shadow")
        why = "is a symbolic link"
    else:
        os.mkfifo(target)  # opening it for an mbox would block for ever
        why = "is not a regular file"
    out = cgpop(domain, "mailbox", "import", "u1@a.test", "INBOX", str(target))
    assert out.returncode == 65 and why in out.stderr and str(target) in out.stderr
    assert "Traceback" not in out.stderr
    shown = json.loads(cgpop(domain, "mailbox", "show", "u1@a.test", "INBOX", "--json").stdout)
    assert shown == []
