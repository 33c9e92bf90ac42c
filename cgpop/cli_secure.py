"""`cgpop cert` and `cgpop alert`: TLS certificates for testing, and account alerts."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cgpop import alerts, certgen
from cgpop import config as configmod
from cgpop.cli import (
    EX_OK,
    EX_USAGE,
    EXTENSIONS,
    CliError,
    _domain,
    command,
    open_store,
    out,
    row_id,
    split_address,
    when,
)


@command("cert")
def cmd_cert(args: argparse.Namespace, cfg: configmod.Config) -> int:
    try:
        cert, key = certgen.write_self_signed(args.host, Path(args.out), days=args.days)
    except ValueError as exc:
        raise CliError(str(exc), EX_USAGE) from None
    except OSError as exc:
        raise CliError(f"{args.out}: {exc.strerror or exc}") from None
    print(f"certificate: {cert}")
    print(f"key:         {key}")
    return EX_OK


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
        domain = store.canonical_domain(_domain(args.domain))
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


def _extend(sub: Any, common: argparse.ArgumentParser, listing: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "cert", parents=[common], help="write a self-signed certificate and key (for testing)"
    )
    p.add_argument("--host", required=True, help="host name or IP address it is for")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for cert.pem, key.pem")
    p.add_argument("--days", type=int, default=365, help="validity (default 365)")

    a = sub.add_parser("alert", parents=[common], help="alerts shown at login (CommuniGate)")
    acts = a.add_subparsers(dest="sub", required=True, metavar="ACTION")
    p = acts.add_parser(
        "add", parents=[common], usage="cgpop alert add (NAME@DOMAIN | --domain D | --server) TEXT"
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--domain", metavar="D", help="for every account of domain D")
    where.add_argument("--server", action="store_true", help="for every account")
    p.add_argument("words", nargs="+", metavar="[NAME@DOMAIN] TEXT")
    acts.add_parser("list", parents=[common, listing])
    acts.add_parser("remove", parents=[common]).add_argument("id", type=row_id)


EXTENSIONS.append(_extend)
