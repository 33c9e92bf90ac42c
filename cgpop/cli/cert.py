"""`cgpop cert`: a self-signed TLS certificate and key, for testing."""

from __future__ import annotations

import argparse
from pathlib import Path

from cgpop import certgen
from cgpop import config as configmod
from cgpop.cli.base import (
    EX_OK,
    EX_USAGE,
    CliError,
    Parsers,
    command,
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


def add_parsers(ps: Parsers) -> None:
    """The `cert` subcommand."""
    p = ps.sub.add_parser(
        "cert", parents=[ps.common], help="write a self-signed certificate and key (for testing)"
    )
    p.add_argument("--host", required=True, help="host name or IP address it is for")
    p.add_argument("--out", required=True, metavar="DIR", help="directory for cert.pem, key.pem")
    p.add_argument("--days", type=int, default=365, help="validity (default 365)")
