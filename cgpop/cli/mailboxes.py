"""`cgpop mailbox ...`: mailboxes, their messages, and import from Maildir or mbox."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from cgpop import config as configmod
from cgpop.cli.base import (
    EX_DATAERR,
    EX_OK,
    CliError,
    Parsers,
    command,
    mailbox_name,
    open_store,
    out,
    split_address,
)
from cgpop.store.api import Mailbox, Store


# --- mailboxes ---
@command("mailbox", "add")
def cmd_mailbox_add(args: argparse.Namespace, cfg: configmod.Config) -> int:
    domain, name = split_address(args.address)
    open_store(cfg).add_mailbox(domain, name, mailbox_name(args.mailbox))
    return EX_OK


@command("mailbox", "remove")
def cmd_mailbox_remove(args: argparse.Namespace, cfg: configmod.Config) -> int:
    domain, name = split_address(args.address)
    open_store(cfg).remove_mailbox(domain, name, mailbox_name(args.mailbox))
    return EX_OK


@command("mailbox", "list")
def cmd_mailbox_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    domain, name = split_address(args.address)
    names = open_store(cfg).list_mailboxes(domain, name)
    return out(args, names, lambda: names)


def _existing_mailbox(args: argparse.Namespace, cfg: configmod.Config) -> tuple[Store, Mailbox]:
    """The store and the mailbox `args.address` / `args.mailbox` name, or a clear error."""
    domain, name = split_address(args.address)
    store = open_store(cfg)
    mailbox = store.get_mailbox(domain, name, mailbox_name(args.mailbox))
    if mailbox is None:
        raise CliError(f"no mailbox {args.mailbox} for {name}@{domain}")
    return store, mailbox


@command("mailbox", "import")
def cmd_mailbox_import(args: argparse.Namespace, cfg: configmod.Config) -> int:
    from pathlib import Path

    from cgpop.importer import messages_from

    store, mailbox = _existing_mailbox(args, cfg)
    skipped: list[str] = []
    try:
        source = messages_from(Path(args.path), skipped)
        count = store.import_messages(mailbox, source, real_to=_real_to(cfg, store, mailbox))
    except (ValueError, OSError) as exc:
        raise CliError(str(exc), EX_DATAERR) from None
    print(f"imported {count} messages into {args.mailbox} of {args.address}")
    report_skipped(skipped)
    return EX_OK


SKIPPED_SHOWN = 20  # names listed on stderr; the count covers the rest


def report_skipped(skipped: list[str]) -> None:
    """Tell the operator, on stderr, which entries an import did not read and why."""
    if not skipped:
        return
    print(f"skipped {len(skipped)} entries that are not regular files:", file=sys.stderr)
    for entry in skipped[:SKIPPED_SHOWN]:
        print(f"  {entry}", file=sys.stderr)
    if len(skipped) > SKIPPED_SHOWN:
        print(f"  ... and {len(skipped) - SKIPPED_SHOWN} more", file=sys.stderr)


def _real_to(
    cfg: configmod.Config, store: Store, mailbox: Mailbox
) -> Callable[[bytes], tuple[str | None, tuple[str, ...]]]:
    """Issue 13: what an imported message's own `[pop3] real_to_header` field records."""
    from cgpop.realto import HeaderRealTo, resolver

    resolve = resolver(store, cfg.server.default_domain)
    name, _, domain = mailbox.owner.partition("@")

    def tag(raw: bytes) -> tuple[str | None, tuple[str, ...]]:
        found = HeaderRealTo(raw, cfg.pop3.real_to_header, resolve).for_account(domain, name)
        return found.stored, found.individuals

    return tag


@command("mailbox", "show")
def cmd_mailbox_show(args: argparse.Namespace, cfg: configmod.Config) -> int:
    store, mailbox = _existing_mailbox(args, cfg)
    msgs = store.list_messages(mailbox)
    rows = [
        {
            "uid": m.uid,
            "uidl": m.uidl,
            "size": m.size,
            "flags": list(m.flags),
            # Issue 13: a list when the message names several addresses.
            "x_real_to": list(m.real_to) if len(m.real_to) > 1 else m.x_real_to,
            "individuals": list(m.individuals),
            "internal_date": m.internal_date,
        }
        for m in msgs
    ]
    return out(
        args,
        rows,
        lambda: [
            f"{m.uid:>8} {m.uidl:<20} {m.size:>9} {' '.join(m.flags) or '-':<16} "
            f"{', '.join(m.real_to) or '-'}"
            for m in msgs
        ],
    )


def add_parsers(ps: Parsers) -> None:
    """The `mailbox` subcommands."""
    m = ps.group("mailbox", "manage mailboxes")
    for action in ("add", "remove"):
        p = m.add_parser(action, parents=[ps.common])
        p.add_argument("address", metavar="NAME@DOMAIN")
        p.add_argument("mailbox")
    m.add_parser("list", parents=[ps.common, ps.listing]).add_argument(
        "address", metavar="NAME@DOMAIN"
    )
    p = m.add_parser("import", parents=[ps.common], help="import a Maildir or an mbox file")
    p.add_argument("address", metavar="NAME@DOMAIN")
    p.add_argument("mailbox")
    p.add_argument("path", metavar="MAILDIR_OR_MBOX")
    p = m.add_parser("show", parents=[ps.common, ps.listing])
    p.add_argument("address", metavar="NAME@DOMAIN")
    p.add_argument("mailbox")
