"""`cgpop acl set|delete|list` and `cgpop group add|remove|list` (issue 3), run in-process
against a data directory, checked through their output, exit codes and the store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from accounts.credentials import make_credentials
from cgpop import cli
from cgpop.store.sqlite import SqliteStore


@pytest.fixture
def cfg(tmp_path: Path) -> Iterator[str]:
    path = tmp_path / "cgpop.toml"
    path.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\ndefault_domain = "example.com"\n')
    store = SqliteStore(tmp_path / "data")
    store.add_domain("example.com")
    store.add_account("example.com", "jsmith", make_credentials("pw"))
    store.add_mailbox("example.com", "jsmith", "lists/info")
    store.close()
    yield str(path)


def run(capsys: pytest.CaptureFixture[str], cfg: str, *argv: str) -> tuple[int, str, str]:
    code = cli.main([*argv, "-c", cfg])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def acl_rows(capsys: pytest.CaptureFixture[str], cfg: str) -> list[dict[str, object]]:
    code, out, _ = run(capsys, cfg, "acl", "list", "jsmith@example.com", "lists/info", "--json")
    assert code == 0
    rows: list[dict[str, object]] = json.loads(out)
    return rows


def test_acl_set_list_delete(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    box = ("jsmith@example.com", "lists/info")
    assert run(capsys, cfg, "acl", "set", *box, "anyone", "lrsp")[0] == 0
    assert run(capsys, cfg, "acl", "set", *box, "Fred", "lwi")[0] == 0  # default domain added
    # A negative identifier, written as cyradm does, with and without `--`.
    assert run(capsys, cfg, "acl", "set", *box, "-anonymous", "s")[0] == 0
    assert cli.main(["acl", "set", "-c", cfg, *box, "--", "-fred@example.com", "d"]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, cfg, "acl", "list", *box)
    assert code == 0
    assert out.splitlines() == [
        "anyone lrsp",
        "fred@example.com lwi",
        "-anonymous s",
        "-fred@example.com te",
    ]
    assert acl_rows(capsys, cfg) == [
        {"identifier": "anyone", "negative": False, "rights": "lrsp"},
        {"identifier": "fred@example.com", "negative": False, "rights": "lwi"},
        {"identifier": "anonymous", "negative": True, "rights": "s"},
        {"identifier": "fred@example.com", "negative": True, "rights": "te"},
    ]
    # Deleting the negative entry leaves the positive one for the same identifier.
    assert run(capsys, cfg, "acl", "delete", *box, "-fred@example.com")[0] == 0
    assert run(capsys, cfg, "acl", "delete", *box, "anonymous")[0] == 1  # only -anonymous exists
    code, _, err = run(capsys, cfg, "acl", "delete", *box, "-fred@example.com")
    assert code == 1 and "no ACL entry for -fred@example.com" in err
    assert [r["identifier"] for r in acl_rows(capsys, cfg)] == [
        "anyone",
        "fred@example.com",
        "anonymous",
    ]
    # `none` removes the entry.
    assert run(capsys, cfg, "acl", "set", *box, "fred@example.com", "none")[0] == 0
    assert [r["identifier"] for r in acl_rows(capsys, cfg)] == ["anyone", "anonymous"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["acl", "set", "jsmith@example.com", "lists/info", "fred", "lrz"], 2, "'z' right"),
        (
            ["acl", "set", "jsmith@example.com", "lists/info", "fred@bad..domain", "lr"],
            2,
            "ACL entry",
        ),
        (["acl", "set", "jsmith", "lists/info", "fred", "lr"], 2, "expected NAME@DOMAIN"),
        (["acl", "set", "jsmith@example.com", "../x", "fred", "lr"], 2, "mailbox '../x'"),
        (["acl", "set", "jsmith@example.com", "nosuch", "fred", "lr"], 1, "no mailbox nosuch"),
        (["acl", "list", "nobody@example.com", "INBOX"], 1, "no mailbox INBOX"),
        (["group", "add", "staff", "fred"], 2, "expected NAME@DOMAIN"),
        (["group", "add", "bad group", "fred@example.com"], 2, "group 'bad group'"),
        (["group", "remove", "staff", "fred@example.com"], 1, "not in group staff"),
        (["group", "list", "nobody"], 1, "no group nobody"),
    ],
)
def test_refusals(
    capsys: pytest.CaptureFixture[str], cfg: str, argv: list[str], code: int, message: str
) -> None:
    got, out, err = run(capsys, cfg, *argv)
    assert (got, out) == (code, "")
    assert err.startswith("cgpop: ") and message in err


def test_acl_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["acl", "set", "jsmith@example.com", "lists/info", "fred", "-c", cfg])
    assert exc.value.code == 2  # RIGHTS missing
    assert "RIGHTS" in capsys.readouterr().err


def test_groups(capsys: pytest.CaptureFixture[str], cfg: str) -> None:
    assert run(capsys, cfg, "group", "add", "Staff", "Fred@Example.com")[0] == 0
    assert run(capsys, cfg, "group", "add", "group:staff", "jsmith@example.com")[0] == 0
    assert run(capsys, cfg, "group", "add", "ops", "fred@example.com")[0] == 0
    code, _, err = run(capsys, cfg, "group", "add", "staff", "fred@example.com")
    assert code == 1 and "already in group staff" in err
    code, out, _ = run(capsys, cfg, "group", "list")
    assert (code, out.splitlines()) == (
        0,
        ["ops: fred@example.com", "staff: fred@example.com jsmith@example.com"],
    )
    code, out, _ = run(capsys, cfg, "group", "list", "STAFF", "--json")
    assert (code, json.loads(out)) == (0, {"staff": ["fred@example.com", "jsmith@example.com"]})
    assert run(capsys, cfg, "group", "remove", "staff", "fred@example.com")[0] == 0
    code, out, _ = run(capsys, cfg, "group", "list", "--json")
    assert json.loads(out) == {"ops": ["fred@example.com"], "staff": ["jsmith@example.com"]}
    store = SqliteStore(Path(cfg).parent / "data")
    try:
        assert store.groups_of("fred@example.com") == frozenset({"ops"})
    finally:
        store.close()
