"""The `cgpop` command: `serve`, and the administration of domains, accounts, mailboxes,
routes, ACLs, groups and delivery. Each subcommand takes `-c/--config`; listings take `--json`.

Exit codes: 0 success, 1 a refused operation (clear message on stderr), 2 usage or
configuration error. `deliver` uses sendmail's codes (0, 65, 67, 75; sysexits.h).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from cgpop import __version__, tlsconf
from cgpop import config as configmod
from cgpop.cli import (
    accounts,
    acl,
    alerts,
    cert,
    deliver,
    domains,
    groups,
    mailboxes,
    queue,
    quota,
    routes,
    serve,
    sessions,
    store,
)
from cgpop.cli.base import (
    COMMANDS,
    EX_FAIL,
    EX_TEMPFAIL,
    EX_USAGE,
    CliError,
    Parsers,
)
from cgpop.store.api import StoreError, Unavailable

__all__ = ["build_parser", "main"]

# One module per command group, in the order `cgpop --help` lists them.
GROUPS = (
    serve,
    domains,
    accounts,
    mailboxes,
    routes,
    acl,
    groups,
    deliver,
    queue,
    cert,
    alerts,
    sessions,
    store,  # issue 11: `store copy`
    quota,
)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-c",
        "--config",
        default=argparse.SUPPRESS,
        help="TOML configuration file (default: $CGPOP_CONFIG, else built-in)",
    )
    listing = argparse.ArgumentParser(add_help=False)
    listing.add_argument("--json", action="store_true", help="machine-readable output")

    parser = argparse.ArgumentParser(
        prog="cgpop", parents=[common], description="cgpop: a multi-account POP3 gateway"
    )
    parser.add_argument("--version", action="version", version=f"cgpop {__version__}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    parsers = Parsers(sub, common, listing)
    for group in GROUPS:
        group.add_parsers(parsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = configmod.load(getattr(args, "config", None))
        # What the configuration points at: each [tls] certificate and key must load as a
        # pair (the server reads them again when it starts, and on SIGHUP).
        tlsconf.from_config(cfg)
    except configmod.ConfigError as exc:
        print(f"cgpop: configuration error: {exc}", file=sys.stderr)
        return EX_USAGE
    path = tuple(
        x for x in (args.cmd, getattr(args, "sub", None), getattr(args, "sub2", None)) if x
    )
    fn = COMMANDS[path]
    try:
        return fn(args, cfg)
    except CliError as exc:
        print(f"cgpop: {exc}", file=sys.stderr)
        return exc.code
    except (Unavailable, OSError) as exc:
        # A locked or unreadable database, a full disk: say so, never with a traceback.
        where = f"the data directory {cfg.server.data_dir}"
        if isinstance(exc, Unavailable) and cfg.store.backend != "sqlite":
            where = "the database"  # issue 11: the store is a database server, not data_dir
        print(f"cgpop: cannot use {where}: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except StoreError as exc:
        print(f"cgpop: {exc}", file=sys.stderr)
        return EX_TEMPFAIL if args.cmd == "deliver" else EX_FAIL
    except KeyboardInterrupt:
        return 130
