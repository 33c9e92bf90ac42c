"""`cgpop deliver`: deliver a message from standard input (sendmail exit codes)."""

from __future__ import annotations

import argparse
import sys

from cgpop import config as configmod
from cgpop.cli.base import (
    EX_DATAERR,
    EX_NOUSER,
    EX_OK,
    EX_TEMPFAIL,
    CliError,
    Parsers,
    command,
    open_store,
)

# sysexits.h EX_CANTCREAT: what Cyrus's `deliver` and Postfix's local(8) treat as "mailbox
# full, permanently" (issue 12, `[quota] over_quota = "reject"`).
EX_CANTCREAT = 73


# --- delivery ---
@command("deliver")
def cmd_deliver(args: argparse.Namespace, cfg: configmod.Config) -> int:
    from cgpop.delivery import Deliverer, Status

    limit = cfg.lmtp.max_message_size
    data = sys.stdin.buffer.read(limit + 1)
    if len(data) > limit:
        raise CliError(f"message larger than lmtp.max_message_size ({limit} octets)", EX_DATAERR)
    if not data.strip():
        raise CliError("empty message on standard input", EX_DATAERR)
    store = open_store(cfg)
    deliverer = Deliverer(
        store,
        default_domain=cfg.server.default_domain,
        real_to_header=cfg.pop3.real_to_header,
        quota=cfg.quota,
    )
    results = deliverer.deliver(args.sender, args.recipients, data)
    code = EX_OK
    for r in results:
        if r.status in (Status.DELIVERED, Status.DUPLICATE):
            continue
        print(f"cgpop deliver: {r.lmtp_reply}", file=sys.stderr)
        # A temporary failure wins: the MTA then retries (duplicate suppression catches the
        # copies already stored). Over quota is temporary unless `over_quota = "reject"`.
        if r.status is Status.TEMPORARY or (r.status is Status.OVER_QUOTA and not r.permanent):
            code = EX_TEMPFAIL
        elif r.status is Status.OVER_QUOTA and code != EX_TEMPFAIL:
            code = EX_CANTCREAT
        elif code == EX_OK:
            code = EX_NOUSER
    return code


def add_parsers(ps: Parsers) -> None:
    """The `deliver` subcommands."""
    p = ps.sub.add_parser("deliver", parents=[ps.common], help="deliver a message from stdin")
    p.add_argument("--from", dest="sender", default="", metavar="SENDER")
    p.add_argument("recipients", nargs="+", metavar="RCPT")
