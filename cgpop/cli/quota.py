"""`cgpop quota ...`: limits and usage per account and domain (issue 12, Cyrus semantics)."""

from __future__ import annotations

import argparse
import re
from dataclasses import asdict
from typing import Any

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
    split_address,
)
from cgpop.store.api import Quota, Store

# Both backends keep limits and usage as signed 64-bit integers.
MAX_LIMIT = 2**63 - 1
_SIZE = re.compile(r"([0-9]{1,20})([KMG]?)", re.IGNORECASE)
_FACTOR = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


class _Keep:
    """`--storage`/`--messages` not given: the limit stays as it is."""


KEEP = _Keep()


def parse_size(text: str) -> int | None:
    """SIZE: bytes, or a number with K, M or G (powers of 1024); `none`: no limit."""
    if text.lower() == "none":
        return None
    found = _SIZE.fullmatch(text)
    if found is None:
        raise argparse.ArgumentTypeError(
            f"expected bytes, a number with K, M or G, or none; got {text[:40]!r}"
        )
    value = int(found.group(1)) * _FACTOR[found.group(2).upper()]
    if value > MAX_LIMIT:
        raise argparse.ArgumentTypeError(f"at most {MAX_LIMIT} bytes")
    return value


def parse_count(text: str) -> int | None:
    """N: a number of messages; `none`: no limit."""
    if text.lower() == "none":
        return None
    if not text.isdigit() or len(text) > 19 or int(text) > MAX_LIMIT:
        raise argparse.ArgumentTypeError(
            f"expected a number of messages or none, got {text[:40]!r}"
        )
    return int(text)


def _root(args: argparse.Namespace, store: Store) -> tuple[str, str | None]:
    """(domain, account or None) named by NAME@DOMAIN or --domain, checked to exist."""
    if (args.address is None) == (args.domain is None):
        raise CliError("give NAME@DOMAIN or --domain DOMAIN", EX_USAGE)
    if args.domain is not None:
        domain = store.canonical_domain(domain_name(args.domain))
        if domain is None:
            raise CliError(f"no such domain: {args.domain}")
        return domain, None
    domain, name = split_address(args.address)
    canonical = store.canonical_domain(domain)
    if canonical is None or not store.account_exists(canonical, name):
        raise CliError(f"no such account: {args.address}")
    return canonical, name


def _limit(n: int | None, unit: str) -> str:
    return "none" if n is None else f"{n}{unit}"


def _share(used: int, limit: int | None) -> str:
    return "" if not limit else f" ({used * 100 // limit}%)"


def describe(q: Quota) -> list[str]:
    return [
        f"storage\t{q.storage_used} of {_limit(q.storage_limit, '')} bytes"
        f"{_share(q.storage_used, q.storage_limit)}",
        f"messages\t{q.messages_used} of {_limit(q.messages_limit, '')}"
        f"{_share(q.messages_used, q.messages_limit)}",
    ]


@command("quota", "set")
def cmd_quota_set(args: argparse.Namespace, cfg: configmod.Config) -> int:
    if args.storage is KEEP and args.messages is KEEP:
        raise CliError("give --storage SIZE and/or --messages N", EX_USAGE)
    store = open_store(cfg)
    domain, account = _root(args, store)
    current = store.get_quota(domain, account)
    storage = current.storage_limit if args.storage is KEEP else args.storage
    messages = current.messages_limit if args.messages is KEEP else args.messages
    store.set_quota(domain, account, storage, messages)
    return EX_OK


@command("quota", "show")
def cmd_quota_show(args: argparse.Namespace, cfg: configmod.Config) -> int:
    store = open_store(cfg)
    domain, account = _root(args, store)
    quota = store.get_quota(domain, account)
    return out(args, asdict(quota), lambda: describe(quota))


@command("quota", "list")
def cmd_quota_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    store = open_store(cfg)
    domain: str | None = None
    if args.list_domain is not None:
        domain = store.canonical_domain(domain_name(args.list_domain))
        if domain is None:
            raise CliError(f"no such domain: {args.list_domain}")
    rows: list[dict[str, Any]] = [
        {"account": address, **asdict(q)} for address, q in store.list_quotas(domain)
    ]

    def text() -> list[str]:
        return [
            f"{r['account']}\tstorage {r['storage_used']} of {_limit(r['storage_limit'], '')}"
            f"\tmessages {r['messages_used']} of {_limit(r['messages_limit'], '')}"
            for r in rows
        ]

    return out(args, rows, text)


@command("quota", "recalc")
def cmd_quota_recalc(args: argparse.Namespace, cfg: configmod.Config) -> int:
    store = open_store(cfg)
    if args.address is None:
        fixed = store.recalc_quota()
    else:
        args.domain = None
        domain, account = _root(args, store)
        fixed = store.recalc_quota(domain, account)
    for address, before, after in fixed:
        print(
            f"{address}: storage {before.storage_used} -> {after.storage_used} bytes, "
            f"messages {before.messages_used} -> {after.messages_used}"
        )
    if not fixed:
        print("usage was exact: nothing corrected")
    return EX_OK


def add_parsers(ps: Parsers) -> None:
    """The `quota` subcommands."""
    acts = ps.group("quota", "storage and message limits of accounts and domains")
    p = acts.add_parser(
        "set",
        parents=[ps.common],
        help="set an account's or a domain's limits",
        usage="cgpop quota set (NAME@DOMAIN | --domain DOMAIN) [--storage SIZE] [--messages N]",
    )
    p.add_argument("address", nargs="?", metavar="NAME@DOMAIN")
    p.add_argument("--domain", metavar="DOMAIN", help="the domain's limit (sum of its accounts)")
    p.add_argument(
        "--storage",
        type=parse_size,
        default=KEEP,
        metavar="SIZE",
        help="bytes, or with K, M, G (powers of 1024); none removes the limit",
    )
    p.add_argument(
        "--messages", type=parse_count, default=KEEP, metavar="N", help="none removes the limit"
    )
    p = acts.add_parser(
        "show",
        parents=[ps.common, ps.listing],
        help="usage and limits of an account or a domain",
        usage="cgpop quota show (NAME@DOMAIN | --domain DOMAIN) [--json]",
    )
    p.add_argument("address", nargs="?", metavar="NAME@DOMAIN")
    p.add_argument("--domain", metavar="DOMAIN")
    p = acts.add_parser("list", parents=[ps.common, ps.listing], help="accounts with a limit")
    p.add_argument("list_domain", nargs="?", metavar="DOMAIN")
    p = acts.add_parser(
        "recalc", parents=[ps.common], help="rebuild usage from the messages (Cyrus quota -f)"
    )
    p.add_argument("address", nargs="?", metavar="NAME@DOMAIN")
