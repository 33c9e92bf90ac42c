"""`cgpop store copy --to DSN`: move the configured store (the embedded one, typically) into an
empty PostgreSQL database (issue 11), keeping every id, UID and uidvalidity, so a POP client
sees the same UIDLs through a node on the new store and downloads nothing again.

Run it with the gateway stopped (or its listeners closed): what arrives during the copy is not
in it. The copy is one transaction on the target; a failure leaves the target empty.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from cgpop import config as configmod
from cgpop.cli.base import EX_OK, EX_TEMPFAIL, CliError, Parsers, command, open_store
from cgpop.store.api import Unavailable


@command("store", "copy")
def cmd_store_copy(args: argparse.Namespace, cfg: configmod.Config) -> int:
    dsn = args.to.strip()
    if not dsn:
        raise CliError("store copy: --to needs a PostgreSQL DSN", 2)
    if cfg.store.backend == "postgresql" and cfg.store.dsn == dsn:
        raise CliError("store copy: the target is the configured store itself", 2)
    # The target as a node would open it (the factory picks the backend; opening it creates or
    # migrates its schema under the advisory lock).
    target_cfg = dataclasses.replace(
        cfg, store=dataclasses.replace(cfg.store, backend="postgresql", dsn=dsn, pool_size=2)
    )
    source = open_store(cfg)
    try:
        try:
            target = open_store(target_cfg)
        except Unavailable as exc:
            raise CliError(
                f"store copy: cannot reach the target database: {exc}", EX_TEMPFAIL
            ) from None
        try:
            found = target.nonempty_tables()
            if found:
                raise CliError(
                    f"store copy: the target database is not empty (it has {', '.join(found)});"
                    " copy into an empty database"
                )
            rows = target.import_tables(source.export_tables(), _progress)
        finally:
            target.close()
    finally:
        source.close()
    print(f"copied {rows} rows")
    return EX_OK


def _progress(table: str, rows: int) -> None:
    print(f"cgpop: store copy: {table}: {rows} rows", file=sys.stderr, flush=True)


def add_parsers(ps: Parsers) -> None:
    """The `store` subcommands."""
    sub = ps.group("store", "the store as a whole (copy it to PostgreSQL)")
    p = sub.add_parser(
        "copy",
        parents=[ps.common],
        help="copy the configured store into an empty PostgreSQL database",
    )
    p.add_argument("--to", required=True, metavar="DSN", help="libpq URI or key=value string")
