"""`cgpop route ...`: the routing table (router/)."""

from __future__ import annotations

import argparse

from cgpop import config as configmod
from cgpop.cli.base import (
    EX_OK,
    EX_USAGE,
    CliError,
    Parsers,
    command,
    open_store,
    out,
)


# --- routes ---
@command("route", "add")
def cmd_route_add(args: argparse.Namespace, cfg: configmod.Config) -> int:
    from router.table import validate_route

    try:
        pattern, target = validate_route(args.pattern, args.target)
    except ValueError as exc:
        raise CliError(f"route {args.pattern} -> {args.target}: {exc}", EX_USAGE) from None
    open_store(cfg).add_route(pattern, target)
    return EX_OK


@command("route", "remove")
def cmd_route_remove(args: argparse.Namespace, cfg: configmod.Config) -> int:
    from router.table import parse_pattern

    try:
        pattern = str(parse_pattern(args.pattern))
    except ValueError as exc:
        raise CliError(f"route {args.pattern}: {exc}", EX_USAGE) from None
    open_store(cfg).remove_route(pattern)
    return EX_OK


@command("route", "list")
def cmd_route_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    pairs = open_store(cfg).list_routes()
    rows = [{"pattern": p, "target": t} for p, t in pairs]
    return out(args, rows, lambda: [f"{p} -> {t}" for p, t in pairs])


def add_parsers(ps: Parsers) -> None:
    """The `route` subcommands."""
    r = ps.group("route", "manage the routing table")
    p = r.add_parser("add", parents=[ps.common])
    p.add_argument("pattern")
    p.add_argument("target")
    r.add_parser("remove", parents=[ps.common]).add_argument("pattern")
    r.add_parser("list", parents=[ps.common, ps.listing])
