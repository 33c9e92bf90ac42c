"""The `cgpop` admin command run as a user runs it: a subprocess with a TOML config file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer, message
from tests.e2e.helpers import USER, pop

CGPOP = [sys.executable, "-m", "cgpop"]


class Cli:
    def __init__(self, tmp_path: Path) -> None:
        self.config = tmp_path / "cgpop.toml"
        self.data_dir = tmp_path / "cli-data"
        self.config.write_text(
            f'[server]\ndata_dir = "{self.data_dir}"\ndefault_domain = "example.com"\n'
        )

    def run(
        self, *args: str, stdin: bytes = b"", config: Path | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        env = {k: v for k, v in os.environ.items() if k != "CGPOP_CONFIG"}
        return subprocess.run(
            [*CGPOP, *args, "-c", str(config or self.config)],
            input=stdin,
            capture_output=True,
            timeout=60,
            env=env,
            check=False,
        )

    def ok(self, *args: str, stdin: bytes = b"") -> str:
        done = self.run(*args, stdin=stdin)
        assert done.returncode == 0, done.stderr.decode()
        return done.stdout.decode()

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))


def addresses(rows: list[dict[str, str]]) -> list[str]:
    """The accounts of an `account list --json`."""
    return [row["address"] for row in rows]


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def joe(cli: Cli) -> Cli:
    cli.ok("domain", "add", "example.com")
    cli.ok("account", "add", "joe@example.com", "--password-stdin", stdin=b"secret\n")
    return cli


def test_domain_add_list_remove(cli: Cli) -> None:
    cli.ok("domain", "add", "Example.COM")
    cli.ok("domain", "add", "other.test")
    assert cli.json("domain", "list") == ["example.com", "other.test"]
    assert cli.ok("domain", "list").split() == ["example.com", "other.test"]
    again = cli.run("domain", "add", "example.com")
    assert again.returncode == 1
    assert b"example.com" in again.stderr
    cli.ok("domain", "remove", "other.test")
    assert cli.json("domain", "list") == ["example.com"]
    missing = cli.run("domain", "remove", "nowhere.test")
    assert missing.returncode == 1


def test_domain_with_accounts_cannot_be_removed(joe: Cli) -> None:
    refused = joe.run("domain", "remove", "example.com")
    assert refused.returncode == 1
    assert b"account" in refused.stderr
    assert b"Traceback" not in refused.stderr
    assert joe.json("domain", "list") == ["example.com"]


def test_account_add_and_list(joe: Cli) -> None:
    joe.ok("account", "add", "Ann@example.com", "--password-stdin", stdin=b"pw\n")
    # Issue 13: each account is an object with its services' state.
    assert joe.json("account", "list") == [
        {"address": "ann@example.com", "pop": "enabled", "xtnd": "enabled"},
        {"address": "joe@example.com", "pop": "enabled", "xtnd": "enabled"},
    ]
    assert addresses(joe.json("account", "list", "example.com")) == [
        "ann@example.com",
        "joe@example.com",
    ]
    dup = joe.run("account", "add", "joe@example.com", "--password-stdin", stdin=b"x\n")
    assert dup.returncode == 1
    empty = joe.run("account", "add", "bob@example.com", "--password-stdin", stdin=b"\n")
    assert empty.returncode == 2
    no_domain = joe.run("account", "add", "bob@nowhere.test", "--password-stdin", stdin=b"x\n")
    assert no_domain.returncode == 1
    assert b"nowhere.test" in no_domain.stderr
    assert addresses(joe.json("account", "list")) == ["ann@example.com", "joe@example.com"]


def test_mailbox_add_list_show(joe: Cli) -> None:
    joe.ok("mailbox", "add", "joe@example.com", "lists/info")
    assert joe.json("mailbox", "list", "joe@example.com") == ["INBOX", "lists/info"]
    joe.ok(
        "deliver",
        "joe@example.com",
        "Joe@Example.com",
        "--from",
        "a@remote.test",
        stdin=message("one", "x\n"),
    )
    shown = joe.json("mailbox", "show", "joe@example.com", "INBOX")
    assert [m["uid"] for m in shown] == [1, 2]
    assert [m["x_real_to"] for m in shown] == ["joe@example.com", "Joe@Example.com"]
    assert all(m["flags"] == [] for m in shown)
    prefix = b"Return-Path: <a@remote.test>\r\nX-Real-To: <joe@example.com>\r\n"
    assert shown[0]["size"] == len(prefix + message("one", "x\n").replace(b"\n", b"\r\n"))
    uidls = [m["uidl"] for m in shown]
    assert len(set(uidls)) == 2
    assert all(0 < len(u) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in u) for u in uidls)
    assert joe.json("mailbox", "show", "joe@example.com", "lists/info") == []
    missing = joe.run("mailbox", "show", "joe@example.com", "nope", "--json")
    assert missing.returncode == 1


def test_deliver_exit_codes(joe: Cli) -> None:
    assert joe.run("deliver", "joe@example.com", stdin=message("ok")).returncode == 0
    unknown = joe.run("deliver", "nobody@example.com", stdin=message("unknown"))
    assert unknown.returncode == 67
    assert b"nobody@example.com" in unknown.stderr
    # One known and one unknown recipient: the known one gets it, the exit says 67.
    assert (
        joe.run(
            "deliver", "joe@example.com", "nobody@example.com", stdin=message("mixed")
        ).returncode
        == 67
    )
    assert joe.run("deliver", "joe@example.com", stdin=b"").returncode == 65
    assert joe.run("deliver", "joe@example.com", stdin=b"\n\n").returncode == 65
    shown = joe.json("mailbox", "show", "joe@example.com", "INBOX")
    assert len(shown) == 2


def test_bare_name_uses_default_domain(joe: Cli) -> None:
    assert joe.run("deliver", "joe", stdin=message("bare")).returncode == 0
    shown = joe.json("mailbox", "show", "joe@example.com", "INBOX")
    assert [m["x_real_to"] for m in shown] == ["joe"]


def test_bad_config_key(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\ndata_dir = "x"\n[pop3]\nmax_bad_comands = 3\n')
    done = cli.run("domain", "list", config=bad)
    assert done.returncode == 2
    err = done.stderr.decode()
    assert str(bad) in err
    assert "pop3.max_bad_comands" in err
    assert "Traceback" not in err


def test_bad_config_value_and_file(cli: Cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[pop3]\nidle_timeout = 60\n")
    done = cli.run("domain", "list", config=bad)
    assert done.returncode == 2
    assert str(bad).encode() in done.stderr and b"pop3.idle_timeout" in done.stderr
    missing = cli.run("domain", "list", config=tmp_path / "absent.toml")
    assert missing.returncode == 2
    assert b"absent.toml" in missing.stderr


def test_config_from_environment(joe: Cli) -> None:
    env = {**os.environ, "CGPOP_CONFIG": str(joe.config)}
    done = subprocess.run(
        [*CGPOP, "account", "list", "--json"],
        capture_output=True,
        timeout=60,
        env=env,
        check=False,
        cwd=joe.config.parent,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert addresses(json.loads(done.stdout)) == ["joe@example.com"]


def test_show_sees_retr_of_a_live_session(server: LiveServer, tmp_path: Path) -> None:
    """RETR sets \\Seen at once: the admin CLI sees it while the session is still open."""
    cli = Cli(tmp_path)
    cli.config.write_text(f'[server]\ndata_dir = "{server.config.server.data_dir}"\n')
    server.deliver(USER, message("one"))
    server.deliver(USER, message("two"))
    client = pop(server)
    try:
        client.top(1, 0)
        client.retr(2)
        shown = cli.json("mailbox", "show", USER, "INBOX")
        assert [m["flags"] for m in shown] == [[], ["\\Seen"]]
    finally:
        client.quit()
