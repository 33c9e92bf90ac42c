"""`cgpop acl ...`: mailbox access-control lists (issue 3; Cyrus semantics, accounts/acl.py)."""

from __future__ import annotations

import argparse
from typing import Any

from accounts.acl import AclEntry, parse_acl_entry
from cgpop import config as configmod
from cgpop.cli.base import (
    EX_OK,
    EX_USAGE,
    CliError,
    Parsers,
    command,
    mailbox_name,
    open_store,
    out,
    split_address,
)
from cgpop.store.api import Mailbox, Store


# --- access control and groups (issue 3; Cyrus semantics, accounts/acl.py) ---
class _IdentifierParser(argparse.ArgumentParser):
    """`acl set|delete` take a negative identifier such as `-fred@example.com` (cyradm's
    syntax): a single-dash word that is no option of ours is a positional argument here, so
    it works with or without `--`. `-c PATH` and `--config PATH` still name the config."""

    def _parse_optional(self, arg_string: str) -> Any:
        if (
            arg_string.startswith("-")
            and not arg_string.startswith("--")
            and len(arg_string) > 2
            and arg_string.split("=", 1)[0] not in self._option_string_actions
        ):
            return None
        return super()._parse_optional(arg_string)


def _acl_mailbox(store: Store, args: argparse.Namespace) -> Mailbox:
    domain, name = split_address(args.address)
    mailbox = store.get_mailbox(domain, name, mailbox_name(args.mailbox))
    if mailbox is None:
        raise CliError(f"no mailbox {args.mailbox} for {name}@{domain}")
    return mailbox


def _acl_entry(args: argparse.Namespace, cfg: configmod.Config, rights: str) -> AclEntry:
    try:
        return parse_acl_entry(args.identifier, rights, default_domain=cfg.server.default_domain)
    except ValueError as exc:
        raise CliError(f"ACL entry {args.identifier} {rights}: {exc}", EX_USAGE) from None


@command("acl", "set")
def cmd_acl_set(args: argparse.Namespace, cfg: configmod.Config) -> int:
    entry = _acl_entry(args, cfg, args.rights)
    store = open_store(cfg)
    store.set_acl_entry(_acl_mailbox(store, args), entry)
    return EX_OK


@command("acl", "delete")
def cmd_acl_delete(args: argparse.Namespace, cfg: configmod.Config) -> int:
    entry = _acl_entry(args, cfg, "")
    store = open_store(cfg)
    store.delete_acl_entry(_acl_mailbox(store, args), entry.identifier, entry.negative)
    return EX_OK


@command("acl", "list")
def cmd_acl_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    store = open_store(cfg)
    entries = store.acl_entries(_acl_mailbox(store, args))
    rows = [
        {"identifier": e.identifier, "negative": e.negative, "rights": str(e.rights)}
        for e in entries
    ]
    return out(args, rows, lambda: [str(e) for e in entries])


def add_parsers(ps: Parsers) -> None:
    """The `acl` subcommands."""
    acl = ps.sub.add_parser("acl", parents=[ps.common], help="mailbox access-control lists")
    # typeshed ties `parents` to the parser class; an _IdentifierParser is an ArgumentParser.
    ac: argparse._SubParsersAction[argparse.ArgumentParser] = acl.add_subparsers(
        dest="sub", required=True, metavar="ACTION", parser_class=_IdentifierParser
    )
    for action in ("set", "delete"):
        p = ac.add_parser(action, parents=[ps.common])
        p.add_argument("address", metavar="OWNER@DOMAIN")
        p.add_argument("mailbox")
        p.add_argument(
            "identifier",
            metavar="IDENTIFIER",
            help="NAME@DOMAIN, group:NAME, anyone or anonymous; '-' first: negative",
        )
        if action == "set":
            p.add_argument("rights", metavar="RIGHTS", help="letters of lrswipkxtean, d, c; none")
    p = ac.add_parser("list", parents=[ps.common, ps.listing])
    p.add_argument("address", metavar="OWNER@DOMAIN")
    p.add_argument("mailbox")
