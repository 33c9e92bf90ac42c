"""`cgpop account ...`: accounts, their passwords and services."""

from __future__ import annotations

import argparse
import sys

from accounts.credentials import make_credentials
from cgpop import config as configmod
from cgpop.cli.base import (
    EX_DATAERR,
    EX_OK,
    CliError,
    Parsers,
    command,
    domain_name,
    open_store,
    out,
    read_password,
    split_address,
)
from cgpop.store.api import SERVICES


# --- accounts ---
@command("account", "add")
def cmd_account_add(args: argparse.Namespace, cfg: configmod.Config) -> int:
    domain, name = split_address(args.address)
    creds = make_credentials(read_password(args), shared_secret=args.shared_secret)
    open_store(cfg).add_account(domain, name, creds)
    return EX_OK


@command("account", "passwd")
def cmd_account_passwd(args: argparse.Namespace, cfg: configmod.Config) -> int:
    domain, name = split_address(args.address)
    creds = make_credentials(read_password(args), shared_secret=args.shared_secret)
    open_store(cfg).set_credentials(domain, name, creds)
    return EX_OK


@command("account", "import")
def cmd_account_import(args: argparse.Namespace, cfg: configmod.Config) -> int:
    """One `NAME@DOMAIN PASSWORD` per line on stdin (the password is the rest of the line)."""
    entries = []
    for number, line in enumerate(sys.stdin, 1):
        line = line.rstrip("\r\n")
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        address, _, password = line.strip().partition(" ")
        if not password:
            raise CliError(f"line {number}: expected NAME@DOMAIN PASSWORD", EX_DATAERR)
        domain, name = split_address(address)
        creds = make_credentials(password, shared_secret=args.shared_secret)
        entries.append((domain, name, creds))
    open_store(cfg).add_accounts(entries)
    print(f"imported {len(entries)} accounts")
    return EX_OK


@command("account", "remove")
def cmd_account_remove(args: argparse.Namespace, cfg: configmod.Config) -> int:
    domain, name = split_address(args.address)
    open_store(cfg).remove_account(domain, name)
    return EX_OK


@command("account", "list")
def cmd_account_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    accounts = open_store(cfg).disabled_services(domain_name(args.domain) if args.domain else None)
    rows = [
        {"address": a, **{s: "disabled" if s in off else "enabled" for s in SERVICES}}
        for a, off in accounts.items()
    ]
    return out(
        args,
        rows,
        lambda: [
            f"{a} (disabled: {', '.join(sorted(off))})" if off else a for a, off in accounts.items()
        ],
    )


# Issue 13 (CommuniGate "Enabled Services"): suspend an account's services, keep its mail.
@command("account", "disable")
@command("account", "enable")
def cmd_account_services(args: argparse.Namespace, cfg: configmod.Config) -> int:
    domain, name = split_address(args.address)
    services = SERVICES if args.service == "all" else (args.service,)
    open_store(cfg).set_services_enabled(domain, name, services, args.sub == "enable")
    return EX_OK


def _register_account_services(
    a: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    for action in ("disable", "enable"):
        p = a.add_parser(
            action, parents=[common], help=f"{action} an account's services (default: all)"
        )
        p.add_argument("address", metavar="NAME@DOMAIN")
        p.add_argument("--service", choices=(*SERVICES, "all"), default="all")


def add_parsers(ps: Parsers) -> None:
    """The `account` subcommands."""
    a = ps.group("account", "manage accounts")
    for action in ("add", "passwd"):
        p = a.add_parser(action, parents=[ps.common])
        p.add_argument("address", metavar="NAME@DOMAIN")
        pw = p.add_mutually_exclusive_group()
        pw.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password from the first line of standard input",
        )
        pw.add_argument("--password", metavar="PW", help="the password (visible in ps!)")
        p.add_argument(
            "--shared-secret",
            action="store_true",
            help="also keep a plaintext-equivalent secret, for APOP and CRAM-MD5",
        )
    p = a.add_parser(
        "import",
        parents=[ps.common],
        help="create accounts from NAME@DOMAIN PASSWORD lines on stdin",
    )
    p.add_argument("--shared-secret", action="store_true")
    a.add_parser("remove", parents=[ps.common]).add_argument("address", metavar="NAME@DOMAIN")
    a.add_parser("list", parents=[ps.common, ps.listing]).add_argument("domain", nargs="?")
    _register_account_services(a, ps.common)
