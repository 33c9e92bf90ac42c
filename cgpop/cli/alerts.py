"""`cgpop alert ...`: CommuniGate alerts, shown once to each account at login."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from cgpop import alerts
from cgpop import config as configmod
from cgpop.cli.base import (
    EX_OK,
    EX_USAGE,
    CliError,
    Parsers,
    command,
    domain_name,
    open_store,
    out,
    row_id,
    split_address,
    when,
)


@command("alert", "add")
def cmd_alert_add(args: argparse.Namespace, cfg: configmod.Config) -> int:
    words: list[str] = args.words
    whole = args.domain is not None or args.server
    if len(words) != (1 if whole else 2):
        raise CliError(
            "usage: cgpop alert add (NAME@DOMAIN | --domain D | --server) TEXT", EX_USAGE
        )
    text = words[-1]
    try:
        text = alerts.check_text(text)
    except ValueError as exc:
        raise CliError(str(exc), EX_USAGE) from None
    store = open_store(cfg)
    if args.server:
        scope, target = "server", ""
    elif args.domain is not None:
        domain = store.canonical_domain(domain_name(args.domain))
        if domain is None:
            raise CliError(f"no such domain: {args.domain}")
        scope, target = "domain", domain
    else:
        domain, name = split_address(words[0])
        canonical = store.canonical_domain(domain)
        if canonical is None or not store.account_exists(canonical, name):
            raise CliError(f"no such account: {words[0]}")
        scope, target = "account", f"{name}@{canonical}"
    alert_id = store.add_alert(scope, target, text)
    print(alert_id)
    return EX_OK


@command("alert", "list")
def cmd_alert_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    rows: list[dict[str, Any]] = [asdict(a) for a in open_store(cfg).list_alerts()]

    def text() -> list[str]:
        return [
            f"{r['id']}\t{r['scope']}\t{r['target'] or '*'}\t{when(r['created'])}\t"
            f"delivered {r['delivered']}\t{r['text']}"
            for r in rows
        ]

    return out(args, rows, text)


@command("alert", "remove")
def cmd_alert_remove(args: argparse.Namespace, cfg: configmod.Config) -> int:
    if not open_store(cfg).remove_alert(args.id):
        raise CliError(f"no such alert: {args.id}")
    return EX_OK


def add_parsers(ps: Parsers) -> None:
    """The `alert` subcommands."""
    a = ps.sub.add_parser("alert", parents=[ps.common], help="alerts shown at login (CommuniGate)")
    acts = a.add_subparsers(dest="sub", required=True, metavar="ACTION")
    p = acts.add_parser(
        "add",
        parents=[ps.common],
        usage="cgpop alert add (NAME@DOMAIN | --domain D | --server) TEXT",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--domain", metavar="D", help="for every account of domain D")
    where.add_argument("--server", action="store_true", help="for every account")
    p.add_argument("words", nargs="+", metavar="[NAME@DOMAIN] TEXT")
    acts.add_parser("list", parents=[ps.common, ps.listing])
    acts.add_parser("remove", parents=[ps.common]).add_argument("id", type=row_id)
