"""`cgpop queue list|flush|remove`: the XTND XMIT outbound queue.

They work on the store directly, so they run while the server does: a flush sets the queued
recipients' next attempt to "now", and the running server's relay worker notices within
`[xtnd] queue_poll_interval` seconds.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict

from cgpop import config as configmod
from cgpop.cli.base import EX_OK, CliError, Parsers, command, open_store, out, row_id, when


def _when(moment: float) -> str:
    return "now" if moment <= 0 else when(moment)


@command("queue", "list")
def cmd_queue_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    entries = open_store(cfg).list_queue()
    rows = [asdict(e) for e in entries]

    def text() -> list[str]:
        lines: list[str] = []
        for e in entries:
            lines.append(f"{e.id:>6} {_when(e.created)} {e.size:>9} <{e.sender}>")
            for r in e.recipients:
                when = _when(r.next_attempt)
                lines.append(
                    f"       {r.state:<8} {r.attempts:>3} tries, next {when}"
                    f" <{r.recipient}> {r.last_error or ''}".rstrip()
                )
        return lines or ["queue is empty"]

    return out(args, rows, text)


@command("queue", "flush")
def cmd_queue_flush(args: argparse.Namespace, cfg: configmod.Config) -> int:
    count = open_store(cfg).flush_queue()
    print(f"{count} recipients due now")
    return EX_OK


@command("queue", "remove")
def cmd_queue_remove(args: argparse.Namespace, cfg: configmod.Config) -> int:
    if not open_store(cfg).remove_queued(args.id):
        raise CliError(f"no queued message {args.id}")
    return EX_OK


def add_parsers(ps: Parsers) -> None:
    """The `queue` subcommands."""
    q = ps.sub.add_parser("queue", parents=[ps.common], help="the XTND XMIT outbound queue")
    qs = q.add_subparsers(dest="sub", required=True, metavar="ACTION")
    qs.add_parser("list", parents=[ps.common, ps.listing], help="queued messages and recipients")
    qs.add_parser("flush", parents=[ps.common], help="make every queued recipient due now")
    p = qs.add_parser("remove", parents=[ps.common], help="drop a message (no bounce)")
    p.add_argument("id", type=row_id, metavar="ID")
