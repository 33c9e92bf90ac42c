"""What every `cgpop` command group shares: exit codes, errors, the command registry, the
store, and the parsing of names and output."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeAlias

from accounts.names import normalize_account, normalize_domain, validate_mailbox
from cgpop import config as configmod
from cgpop.store import factory
from cgpop.store.api import Store

EX_OK, EX_FAIL, EX_USAGE = 0, 1, 2
EX_DATAERR, EX_NOUSER, EX_TEMPFAIL = 65, 67, 75


class CliError(Exception):
    def __init__(self, text: str, code: int = EX_FAIL) -> None:
        super().__init__(text)
        self.code = code


Command = Callable[[argparse.Namespace, configmod.Config], int]
COMMANDS: dict[tuple[str, ...], Command] = {}


def command(*path: str) -> Callable[[Command], Command]:
    def deco(fn: Command) -> Command:
        COMMANDS[path] = fn
        return fn

    return deco


def open_store(cfg: configmod.Config) -> Store:
    """The configured store (cgpop/store/factory.py picks the backend)."""
    return factory.open_store(cfg)


def split_address(text: str) -> tuple[str, str]:
    """`name@domain` -> (domain, name), normalised; a clear CliError otherwise."""
    name, sep, domain = text.rpartition("@")
    if not sep or not name or not domain:
        raise CliError(f"expected NAME@DOMAIN, got {text!r}", EX_USAGE)
    try:
        return normalize_domain(domain), normalize_account(name)
    except ValueError as exc:
        raise CliError(f"{text}: {exc}", EX_USAGE) from None


def out(args: argparse.Namespace, rows: Any, text: Callable[[], Sequence[str]]) -> int:
    if getattr(args, "json", False):
        print(json.dumps(rows, indent=2, sort_keys=True))
    else:
        for line in text():
            print(line)
    return EX_OK


# SQLite's INTEGER is signed 64-bit: a larger id is not "no such id" but an OverflowError.
MAX_ROW_ID = 2**63 - 1


def row_id(text: str) -> int:
    """argparse type for record ids (queue messages, alerts): 1 .. MAX_ROW_ID."""
    if not text.isdigit() or not 1 <= int(text) <= MAX_ROW_ID:
        raise argparse.ArgumentTypeError(f"expected a positive id, got {text[:40]!r}")
    return int(text)


def when(moment: float) -> str:
    """A stored time as listings show it (UTC, so every operator reads the same)."""
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        password = line.rstrip("\r\n")
    elif args.password is not None:
        password = args.password
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
    else:
        raise CliError("give --password-stdin or --password", EX_USAGE)
    if not password:
        raise CliError("empty password refused", EX_USAGE)
    if len(password) > 1024:
        raise CliError("password longer than 1024 characters refused", EX_USAGE)
    return password


def domain_name(text: str) -> str:
    try:
        return normalize_domain(text)
    except ValueError as exc:
        raise CliError(f"{text}: {exc}", EX_USAGE) from None


def mailbox_name(text: str) -> str:
    try:
        return validate_mailbox(text)
    except ValueError as exc:
        raise CliError(f"mailbox {text!r}: {exc}", EX_USAGE) from None


SubParsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


@dataclass(frozen=True, slots=True)
class Parsers:
    """Where a command group adds its subcommands: the top-level subparsers, and the parent
    parsers every subcommand (`common`: -c/--config) or listing (`listing`: --json) takes."""

    sub: SubParsers
    common: argparse.ArgumentParser
    listing: argparse.ArgumentParser

    def group(self, name: str, help_: str) -> SubParsers:
        p = self.sub.add_parser(name, help=help_, parents=[self.common])
        return p.add_subparsers(dest="sub", required=True, metavar="ACTION")
