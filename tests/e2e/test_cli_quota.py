"""`cgpop quota ...` and `cgpop deliver` over quota, run as an operator runs them (issue 12)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.conftest import message
from tests.e2e.test_cli import Cli


@pytest.fixture
def joe(tmp_path: Path) -> Cli:
    cli = Cli(tmp_path)
    cli.ok("domain", "add", "example.com")
    for name in ("joe", "ann"):
        cli.ok("account", "add", f"{name}@example.com", "--password-stdin", stdin=b"pw\n")
    return cli


def test_set_show_list(joe: Cli) -> None:
    joe.ok("quota", "set", "joe@example.com", "--storage", "500M", "--messages", "1000")
    assert joe.json("quota", "show", "joe@example.com") == {
        "storage_used": 0,
        "storage_limit": 500 * 1024 * 1024,
        "messages_used": 0,
        "messages_limit": 1000,
    }
    # Setting one limit keeps the other; `none` removes one.
    joe.ok("quota", "set", "joe@example.com", "--storage", "none")
    joe.ok("quota", "set", "--domain", "example.com", "--storage", "2G")
    assert joe.json("quota", "show", "--domain", "example.com") == {
        "storage_used": 0,
        "storage_limit": 2 << 30,
        "messages_used": 0,
        "messages_limit": None,
    }
    assert joe.json("quota", "list") == [
        {
            "account": "joe@example.com",
            "storage_used": 0,
            "storage_limit": None,
            "messages_used": 0,
            "messages_limit": 1000,
        }
    ]
    assert joe.json("quota", "list", "example.com") == joe.json("quota", "list")
    assert joe.ok("quota", "show", "joe@example.com").splitlines() == [
        "storage\t0 of none bytes",
        "messages\t0 of 1000 (0%)",
    ]


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["joe@example.com", "--storage", "12Q"], 2, b"--storage"),
        (["joe@example.com", "--messages", "-1"], 2, b"--messages"),
        (["joe@example.com"], 2, b"--storage SIZE and/or --messages N"),
        (["nobody@example.com", "--messages", "1"], 1, b"no such account: nobody@example.com"),
        (["--domain", "nowhere.test", "--messages", "1"], 1, b"no such domain: nowhere.test"),
    ],
)
def test_set_refusals_are_clear(joe: Cli, args: list[str], code: int, says: bytes) -> None:
    done = joe.run("quota", "set", *args)
    assert done.returncode == code
    assert says in done.stderr
    assert b"Traceback" not in done.stderr


def test_deliver_exits_75_over_quota_for_that_recipient(joe: Cli) -> None:
    joe.ok("quota", "set", "joe@example.com", "--messages", "0")
    done = joe.run("deliver", "joe@example.com", "ann@example.com", stdin=message("x"))
    assert done.returncode == 75
    assert b"452 4.2.2 <joe@example.com> mailbox full" in done.stderr
    assert joe.json("quota", "show", "ann@example.com")["messages_used"] == 1
    assert joe.json("quota", "show", "joe@example.com")["messages_used"] == 0


def test_deliver_exits_73_when_rejecting(joe: Cli) -> None:
    joe.config.write_text(joe.config.read_text() + '[quota]\nover_quota = "reject"\n')
    joe.ok("quota", "set", "--domain", "example.com", "--storage", "10")
    done = joe.run("deliver", "joe@example.com", stdin=message("x"))
    assert done.returncode == 73
    assert b"552 5.2.2 <joe@example.com> mailbox full" in done.stderr


def test_recalc_rebuilds_usage_and_says_what_it_corrected(joe: Cli) -> None:
    joe.ok("deliver", "joe@example.com", stdin=message("one"))
    joe.ok("deliver", "joe@example.com", stdin=message("two"))
    exact = joe.json("quota", "show", "joe@example.com")
    assert joe.ok("quota", "recalc").strip() == "usage was exact: nothing corrected"
    # Usage gone wrong behind cgpop's back (a restored backup of the database, say).
    with sqlite3.connect(joe.data_dir / "cgpop.sqlite3") as db:
        db.execute("UPDATE account_quotas SET storage_used = 5, messages_used = 7")
    db.close()
    said = joe.ok("quota", "recalc", "joe@example.com").strip()
    assert said == (f"joe@example.com: storage 5 -> {exact['storage_used']} bytes, messages 7 -> 2")
    assert joe.json("quota", "show", "joe@example.com") == exact
    # ann's was wrong too and is left to the full recalc.
    assert joe.ok("quota", "recalc").strip() == (
        "ann@example.com: storage 5 -> 0 bytes, messages 7 -> 0"
    )
