"""`cgpop store copy --to DSN` (issue 11): a gateway on the embedded store, its store copied
into PostgreSQL by the CLI, then a gateway on the copy: the same POP client sees the same
UIDLs and downloads nothing again."""

from __future__ import annotations

import poplib
import smtplib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.conftest import LiveServer, message
from tests.e2e.helpers import USER, pop

CGPOP = [sys.executable, "-m", "cgpop"]


def copy(config: Path, dsn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CGPOP, "-c", str(config), "store", "copy", "--to", dsn],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_store_copy_keeps_every_uidl_and_refuses_a_non_empty_target(
    pg_dsn: str, server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    embedded = server_factory(tmp_path / "embedded")
    embedded.add_account(USER, "secret")
    with smtplib.LMTP(embedded.host, embedded.port("lmtp"), timeout=20) as lmtp:
        for n in range(1, 6):
            assert lmtp.sendmail("s@remote.test", [USER], message(f"number {n}")) == {}
    client = pop(embedded)
    seen_before = client.uidl()[1]
    client.dele(2)  # a message the client deleted stays deleted
    assert client.quit().startswith(b"+OK")
    client = pop(embedded)
    kept = client.uidl()[1]
    body = client.retr(1)[1]
    client.quit()
    assert len(seen_before) == 5 and len(kept) == 4
    embedded.stop()

    config = tmp_path / "cgpop.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "embedded"}"\n')
    done = copy(config, pg_dsn)
    assert done.returncode == 0, done.stderr
    assert "cgpop: store copy: messages: 4 rows" in done.stderr  # progress on stderr
    assert done.stdout.startswith("copied ")

    node = server_factory(
        tmp_path / "node", store={"backend": "postgresql", "dsn": pg_dsn, "node": "pop-a"}
    )
    client = pop(node)  # the same password (credentials copied)
    assert client.uidl()[1] == kept
    assert client.retr(1)[1] == body
    client.quit()
    # A new message after the copy gets a new UIDL, never one the client already has.
    with smtplib.LMTP(node.host, node.port("lmtp"), timeout=20) as lmtp:
        assert lmtp.sendmail("s@remote.test", [USER], message("after")) == {}
    client = pop(node)
    uidls = client.uidl()[1]
    client.quit()
    assert uidls[:4] == kept
    new = uidls[4].split()[1]
    assert new not in {line.split()[1] for line in seen_before}

    again = copy(config, pg_dsn)
    assert again.returncode == 1
    assert "the target database is not empty (it has domains" in again.stderr
    assert "Traceback" not in again.stderr
    bad = pop(node)
    try:
        assert len(bad.uidl()[1]) == 5  # the refused copy changed nothing
    finally:
        bad.quit()


def test_a_wrong_password_still_fails_on_the_copy(
    pg_dsn: str, server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    embedded = server_factory(tmp_path / "embedded")
    embedded.add_account(USER, "secret")
    embedded.stop()
    config = tmp_path / "cgpop.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "embedded"}"\n')
    assert copy(config, pg_dsn).returncode == 0
    node = server_factory(
        tmp_path / "node", store={"backend": "postgresql", "dsn": pg_dsn, "node": "pop-a"}
    )
    client = poplib.POP3(node.host, node.port("pop3"), timeout=10)
    client.user(USER)
    try:
        client.pass_("wrong")
    except poplib.error_proto as exc:
        assert exc.args[0].startswith(b"-ERR [AUTH]")
    else:
        raise AssertionError("a wrong password logged in")
    finally:
        client.quit()
