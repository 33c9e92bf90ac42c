"""`cgpop sessions` and `cgpop telemetry` (issue 12, section 3): the open POP sessions of every
serving process and node, closing one, and per-account session transcripts."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from typing import Any

from cgpop import config as configmod
from cgpop.cli.base import EX_OK, CliError, Parsers, command, open_store, out, split_address, when


@command("sessions")
def cmd_sessions(args: argparse.Namespace, cfg: configmod.Config) -> int:
    rows: list[dict[str, Any]] = [asdict(s) for s in open_store(cfg).list_sessions()]

    def text() -> list[str]:
        return [
            f"{r['id']}\t{r['node']}\t{r['peer']}\t{r['login']}\t{r['account']}\t"
            f"{r['mailbox']}\t{r['state']}\t{when(r['since'])}\t{r['sent_bytes']}\t"
            f"{'tls' if r['tls'] else 'plain'}"
            for r in rows
        ]

    return out(args, rows, text)


@command("sessions", "kill")
def cmd_sessions_kill(args: argparse.Namespace, cfg: configmod.Config) -> int:
    if not open_store(cfg).request_kill(args.id):
        raise CliError(f"no such session: {args.id}")
    # The serving process polls for requests (cgpop/livesessions.py, about a second).
    print(f"session {args.id}: close requested")
    return EX_OK


def _account(cfg: configmod.Config, text: str) -> str:
    domain, name = split_address(text)
    store = open_store(cfg)
    canonical = store.canonical_domain(domain)
    if canonical is None or not store.account_exists(canonical, name):
        raise CliError(f"no such account: {text}")
    return f"{name}@{canonical}"


@command("telemetry", "on")
def cmd_telemetry_on(args: argparse.Namespace, cfg: configmod.Config) -> int:
    account = _account(cfg, args.account)
    open_store(cfg).set_telemetry(account, True)
    print(f"telemetry on for {account}: {cfg.server.data_dir / 'telemetry' / account}")
    return EX_OK


@command("telemetry", "off")
def cmd_telemetry_off(args: argparse.Namespace, cfg: configmod.Config) -> int:
    domain, name = split_address(args.account)
    store = open_store(cfg)
    account = f"{name}@{store.canonical_domain(domain) or domain}"
    if not store.set_telemetry(account, False):
        raise CliError(f"telemetry is not on for {args.account}")
    return EX_OK


@command("telemetry", "list")
def cmd_telemetry_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    accounts = open_store(cfg).telemetry_accounts()
    return out(args, accounts, lambda: accounts)


def add_parsers(ps: Parsers) -> None:
    """`sessions [kill ID]` and `telemetry on|off|list`."""
    s = ps.sub.add_parser(
        "sessions",
        parents=[ps.common, ps.listing],
        help="open POP sessions of every process and node",
    )
    acts = s.add_subparsers(dest="sub", metavar="ACTION")
    acts.add_parser("kill", parents=[ps.common], help="close a session").add_argument("id")
    t = ps.group("telemetry", "per-account session transcripts")
    for action in ("on", "off"):
        t.add_parser(
            action,
            parents=[ps.common],
            help=f"{'start' if action == 'on' else 'stop'} writing the account's transcripts",
        ).add_argument("account", metavar="NAME@DOMAIN")
    t.add_parser("list", parents=[ps.common, ps.listing], help="accounts being traced")
