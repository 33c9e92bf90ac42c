"""`cgpop group ...`: groups, the ACL identifiers `group:NAME`."""

from __future__ import annotations

import argparse

from accounts.acl import GROUP_PREFIX
from accounts.names import normalize_account
from cgpop import config as configmod
from cgpop.cli.base import (
    EX_OK,
    EX_USAGE,
    CliError,
    Parsers,
    command,
    open_store,
    out,
    split_address,
)


def _group(text: str) -> str:
    name = text[len(GROUP_PREFIX) :] if text.lower().startswith(GROUP_PREFIX) else text
    try:
        return normalize_account(name)
    except ValueError as exc:
        raise CliError(f"group {text!r}: {exc}", EX_USAGE) from None


def _member(text: str) -> str:
    domain, name = split_address(text)
    return f"{name}@{domain}"


@command("group", "add")
def cmd_group_add(args: argparse.Namespace, cfg: configmod.Config) -> int:
    open_store(cfg).add_group_member(_group(args.group), _member(args.member))
    return EX_OK


@command("group", "remove")
def cmd_group_remove(args: argparse.Namespace, cfg: configmod.Config) -> int:
    open_store(cfg).remove_group_member(_group(args.group), _member(args.member))
    return EX_OK


@command("group", "list")
def cmd_group_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    wanted = _group(args.group) if args.group else None
    groups: dict[str, list[str]] = {}
    for group, member in open_store(cfg).list_group_members(wanted):
        groups.setdefault(group, []).append(member)
    if wanted is not None and not groups:
        raise CliError(f"no group {wanted} (a group exists while it has members)")
    return out(args, groups, lambda: [f"{g}: {' '.join(m)}" for g, m in groups.items()])


def add_parsers(ps: Parsers) -> None:
    """The `group` subcommands."""
    g = ps.group("group", "manage groups (ACL identifiers group:NAME)")
    for action in ("add", "remove"):
        p = g.add_parser(action, parents=[ps.common])
        p.add_argument("group")
        p.add_argument("member", metavar="MEMBER@DOMAIN")
    g.add_parser("list", parents=[ps.common, ps.listing]).add_argument("group", nargs="?")
