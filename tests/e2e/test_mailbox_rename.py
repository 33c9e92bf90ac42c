"""`cgpop mailbox rename` against a live server (issue 13, item 6), and every command group's
`--help` listing all of its subcommands (item 7)."""

from __future__ import annotations

import argparse
import poplib
from collections.abc import Callable
from pathlib import Path

import pytest

from cgpop.cli import build_parser
from tests.conftest import LiveServer
from tests.e2e.test_cli import Cli


def uidls(server: LiveServer, login: str) -> list[bytes]:
    client = poplib.POP3(server.host, server.port("pop3"), timeout=10)
    try:
        client.user(login)
        client.pass_("secret")
        return [line.split()[1] for line in client.uidl()[1]]
    finally:
        client.quit()


def test_renamed_mailbox_keeps_its_uidls_for_a_pop_client(
    joe: Cli, server_factory: Callable[..., LiveServer], tmp_path: Path
) -> None:
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for n in range(3):
        (maildir / "cur" / f"100{n}.1.host:2,S").write_bytes(f"Subject: {n}\n\nbody\n".encode())
    joe.ok("mailbox", "add", "joe@example.com", "lists")
    joe.ok("mailbox", "add", "joe@example.com", "lists/info")
    joe.ok("mailbox", "import", "joe@example.com", "lists/info", str(maildir))
    server = server_factory(joe.data_dir)
    before = uidls(server, "lists/info#joe@example.com")
    assert len(before) == 3

    out = joe.ok("mailbox", "rename", "joe@example.com", "lists", "archive")
    assert "renamed lists to archive" in out

    assert uidls(server, "archive/info#joe@example.com") == before
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\]"):
        uidls(server, "lists/info#joe@example.com")
    assert joe.json("mailbox", "list", "joe@example.com") == ["INBOX", "archive", "archive/info"]


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("INBOX", "Old", "INBOX cannot be renamed"),
        ("Work", "Taken", "already exists: Taken"),
        ("Nothing", "Other", "no such mailbox"),
    ],
)
def test_rename_refusals_are_clear_cli_errors(joe: Cli, old: str, new: str, reason: str) -> None:
    joe.ok("mailbox", "add", "joe@example.com", "Work")
    joe.ok("mailbox", "add", "joe@example.com", "Taken")
    done = joe.run("mailbox", "rename", "joe@example.com", old, new)
    assert done.returncode != 0
    err = done.stderr.decode()
    assert reason in err and "Traceback" not in err


def _groups(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            if path:
                found.append(path)
            for name, sub in action.choices.items():
                found += _groups(sub, (*path, name))
    return found


def test_every_command_groups_help_lists_each_subcommand_with_a_line() -> None:
    parser = build_parser()
    groups = _groups(parser)
    assert ("mailbox",) in groups and ("domain", "alias") in groups
    for path in groups:
        sub = parser
        for name in path:
            sub = next(
                a for a in sub._actions if isinstance(a, argparse._SubParsersAction)
            ).choices[name]
        action = next(a for a in sub._actions if isinstance(a, argparse._SubParsersAction))
        described = {choice.dest: choice.help for choice in action._choices_actions}
        text = sub.format_help()
        for name in action.choices:
            assert described.get(name), f"cgpop {' '.join(path)} {name} has no help line"
            assert name in text


def test_mailbox_help_through_the_real_command(cli: Cli) -> None:
    done = cli.run("mailbox", "--help")
    text = done.stdout.decode()
    for name in ("add", "remove", "list", "import", "show", "rename"):
        assert f"    {name} " in text
