"""`cgpop domain ...`: domains and domain aliases."""

from __future__ import annotations

import argparse

from cgpop import config as configmod
from cgpop.cli.base import (
    EX_OK,
    Parsers,
    command,
    domain_name,
    open_store,
    out,
)


# --- domains ---
@command("domain", "add")
def cmd_domain_add(args: argparse.Namespace, cfg: configmod.Config) -> int:
    open_store(cfg).add_domain(domain_name(args.name))
    return EX_OK


@command("domain", "remove")
def cmd_domain_remove(args: argparse.Namespace, cfg: configmod.Config) -> int:
    open_store(cfg).remove_domain(domain_name(args.name))
    return EX_OK


@command("domain", "list")
def cmd_domain_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    names = open_store(cfg).list_domains()
    return out(args, names, lambda: names)


@command("domain", "alias", "add")
def cmd_alias_add(args: argparse.Namespace, cfg: configmod.Config) -> int:
    open_store(cfg).add_domain_alias(domain_name(args.alias), domain_name(args.domain))
    return EX_OK


@command("domain", "alias", "remove")
def cmd_alias_remove(args: argparse.Namespace, cfg: configmod.Config) -> int:
    open_store(cfg).remove_domain_alias(domain_name(args.alias), domain_name(args.domain))
    return EX_OK


@command("domain", "alias", "list")
def cmd_alias_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    pairs = open_store(cfg).list_domain_aliases()
    rows = [{"alias": a, "domain": d} for a, d in pairs]
    return out(args, rows, lambda: [f"{a} -> {d}" for a, d in pairs])


def add_parsers(ps: Parsers) -> None:
    """The `domain, domain alias` subcommands."""
    d = ps.group("domain", "manage domains")
    d.add_parser("add", parents=[ps.common]).add_argument("name")
    d.add_parser("remove", parents=[ps.common]).add_argument("name")
    d.add_parser("list", parents=[ps.common, ps.listing])
    da = d.add_parser("alias", parents=[ps.common], help="domain aliases").add_subparsers(
        dest="sub2", required=True, metavar="ACTION"
    )
    for action in ("add", "remove"):
        p = da.add_parser(action, parents=[ps.common])
        p.add_argument("alias")
        p.add_argument("domain")
    da.add_parser("list", parents=[ps.common, ps.listing])
