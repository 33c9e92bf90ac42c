"""The `cgpop` command: `serve`, and the administration of domains, accounts, mailboxes,
routes, ACLs, groups and delivery. Each subcommand takes `-c/--config`; listings take `--json`.

Exit codes: 0 success, 1 a refused operation (clear message on stderr), 2 usage or
configuration error. `deliver` uses sendmail's codes (0, 65, 67, 75; sysexits.h).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import json
import sqlite3
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from accounts.acl import GROUP_PREFIX, AclEntry, parse_acl_entry
from accounts.credentials import make_credentials
from accounts.names import normalize_account, normalize_domain, validate_mailbox
from cgpop import __version__
from cgpop import config as configmod
from cgpop.store.api import SERVICES, Mailbox, StoreError
from cgpop.store.sqlite import SqliteStore

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


def open_store(cfg: configmod.Config) -> SqliteStore:
    return SqliteStore(
        cfg.server.data_dir,
        duplicate_window=cfg.delivery.duplicate_window
        if cfg.delivery.duplicate_suppression
        else None,
    )


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


# --- serve ---
@command("serve")
def cmd_serve(args: argparse.Namespace, cfg: configmod.Config) -> int:
    from cgpop import logs
    from cgpop.server import Gateway

    logs.setup(cfg.server.log_level, cfg.server.syslog, cfg.server.syslog_socket)
    raise_open_files_limit()

    async def main() -> None:
        gw = Gateway(cfg)
        await gw.serve_forever()

    try:
        with asyncio.Runner(loop_factory=event_loop_factory(cfg.server.event_loop)) as runner:
            runner.run(main())
    except configmod.ConfigError as exc:  # a certificate file named in [tls], found unusable
        raise CliError(f"configuration error: {exc}", EX_USAGE) from None
    except OSError as exc:
        raise CliError(str(exc)) from None
    return EX_OK


def raise_open_files_limit() -> None:
    """Each POP session is a file descriptor: take the hard limit, which the operator set,
    instead of the often small soft default (1024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (libuv) is a drop-in asyncio loop with a faster I/O path; "auto" uses it when
    installed. None means the standard loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise CliError('[server] event_loop = "uvloop" but uvloop is not installed') from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


# --- domains ---
@command("domain", "add")
def cmd_domain_add(args: argparse.Namespace, cfg: configmod.Config) -> int:
    open_store(cfg).add_domain(_domain(args.name))
    return EX_OK


@command("domain", "remove")
def cmd_domain_remove(args: argparse.Namespace, cfg: configmod.Config) -> int:
    open_store(cfg).remove_domain(_domain(args.name))
    return EX_OK


@command("domain", "list")
def cmd_domain_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    names = open_store(cfg).list_domains()
    return out(args, names, lambda: names)


@command("domain", "alias", "add")
def cmd_alias_add(args: argparse.Namespace, cfg: configmod.Config) -> int:
    open_store(cfg).add_domain_alias(_domain(args.alias), _domain(args.domain))
    return EX_OK


@command("domain", "alias", "remove")
def cmd_alias_remove(args: argparse.Namespace, cfg: configmod.Config) -> int:
    open_store(cfg).remove_domain_alias(_domain(args.alias), _domain(args.domain))
    return EX_OK


@command("domain", "alias", "list")
def cmd_alias_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    pairs = open_store(cfg).list_domain_aliases()
    rows = [{"alias": a, "domain": d} for a, d in pairs]
    return out(args, rows, lambda: [f"{a} -> {d}" for a, d in pairs])


def _domain(text: str) -> str:
    try:
        return normalize_domain(text)
    except ValueError as exc:
        raise CliError(f"{text}: {exc}", EX_USAGE) from None


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
    accounts = open_store(cfg).disabled_services(_domain(args.domain) if args.domain else None)
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


# --- mailboxes ---
def _mailbox(text: str) -> str:
    try:
        return validate_mailbox(text)
    except ValueError as exc:
        raise CliError(f"mailbox {text!r}: {exc}", EX_USAGE) from None


@command("mailbox", "add")
def cmd_mailbox_add(args: argparse.Namespace, cfg: configmod.Config) -> int:
    domain, name = split_address(args.address)
    open_store(cfg).add_mailbox(domain, name, _mailbox(args.mailbox))
    return EX_OK


@command("mailbox", "remove")
def cmd_mailbox_remove(args: argparse.Namespace, cfg: configmod.Config) -> int:
    domain, name = split_address(args.address)
    open_store(cfg).remove_mailbox(domain, name, _mailbox(args.mailbox))
    return EX_OK


@command("mailbox", "list")
def cmd_mailbox_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    domain, name = split_address(args.address)
    names = open_store(cfg).list_mailboxes(domain, name)
    return out(args, names, lambda: names)


def _existing_mailbox(
    args: argparse.Namespace, cfg: configmod.Config
) -> tuple[SqliteStore, Mailbox]:
    """The store and the mailbox `args.address` / `args.mailbox` name, or a clear error."""
    domain, name = split_address(args.address)
    store = open_store(cfg)
    mailbox = store.get_mailbox(domain, name, _mailbox(args.mailbox))
    if mailbox is None:
        raise CliError(f"no mailbox {args.mailbox} for {name}@{domain}")
    return store, mailbox


@command("mailbox", "import")
def cmd_mailbox_import(args: argparse.Namespace, cfg: configmod.Config) -> int:
    from pathlib import Path

    from cgpop.importer import messages_from

    store, mailbox = _existing_mailbox(args, cfg)
    try:
        source = messages_from(Path(args.path))
        count = store.import_messages(mailbox, source, real_to=_real_to(cfg, store, mailbox))
    except (ValueError, OSError) as exc:
        raise CliError(str(exc), EX_DATAERR) from None
    print(f"imported {count} messages into {args.mailbox} of {args.address}")
    return EX_OK


def _real_to(
    cfg: configmod.Config, store: SqliteStore, mailbox: Mailbox
) -> Callable[[bytes], tuple[str | None, tuple[str, ...]]]:
    """Issue 13: what an imported message's own `[pop3] real_to_header` field records."""
    from cgpop.realto import HeaderRealTo, resolver

    resolve = resolver(store, cfg.server.default_domain)
    name, _, domain = mailbox.owner.partition("@")

    def tag(raw: bytes) -> tuple[str | None, tuple[str, ...]]:
        found = HeaderRealTo(raw, cfg.pop3.real_to_header, resolve).for_account(domain, name)
        return found.stored, found.individuals

    return tag


@command("mailbox", "show")
def cmd_mailbox_show(args: argparse.Namespace, cfg: configmod.Config) -> int:
    store, mailbox = _existing_mailbox(args, cfg)
    msgs = store.list_messages(mailbox)
    rows = [
        {
            "uid": m.uid,
            "uidl": m.uidl,
            "size": m.size,
            "flags": list(m.flags),
            # Issue 13: a list when the message names several addresses.
            "x_real_to": list(m.real_to) if len(m.real_to) > 1 else m.x_real_to,
            "individuals": list(m.individuals),
            "internal_date": m.internal_date,
        }
        for m in msgs
    ]
    return out(
        args,
        rows,
        lambda: [
            f"{m.uid:>8} {m.uidl:<20} {m.size:>9} {' '.join(m.flags) or '-':<16} "
            f"{', '.join(m.real_to) or '-'}"
            for m in msgs
        ],
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


# --- access control and groups (issue 3; Cyrus semantics, accounts/acl.py) ---
class _IdentifierParser(argparse.ArgumentParser):
    """`acl set|delete` take a negative identifier such as `-fred@example.com` (cyradm's
    syntax): a single-dash word that is no option of ours is a positional argument here, so
    it works with or without `--`. `-c PATH` and `--config PATH` still name the config."""

    def _parse_optional(self, arg_string: str) -> Any:
        if (
            arg_string.startswith("-")
            and not arg_string.startswith("--")
            and len(arg_string) > 2
            and arg_string.split("=", 1)[0] not in self._option_string_actions
        ):
            return None
        return super()._parse_optional(arg_string)


def _acl_mailbox(store: SqliteStore, args: argparse.Namespace) -> Mailbox:
    domain, name = split_address(args.address)
    mailbox = store.get_mailbox(domain, name, _mailbox(args.mailbox))
    if mailbox is None:
        raise CliError(f"no mailbox {args.mailbox} for {name}@{domain}")
    return mailbox


def _acl_entry(args: argparse.Namespace, cfg: configmod.Config, rights: str) -> AclEntry:
    try:
        return parse_acl_entry(args.identifier, rights, default_domain=cfg.server.default_domain)
    except ValueError as exc:
        raise CliError(f"ACL entry {args.identifier} {rights}: {exc}", EX_USAGE) from None


@command("acl", "set")
def cmd_acl_set(args: argparse.Namespace, cfg: configmod.Config) -> int:
    entry = _acl_entry(args, cfg, args.rights)
    store = open_store(cfg)
    store.set_acl_entry(_acl_mailbox(store, args), entry)
    return EX_OK


@command("acl", "delete")
def cmd_acl_delete(args: argparse.Namespace, cfg: configmod.Config) -> int:
    entry = _acl_entry(args, cfg, "")
    store = open_store(cfg)
    store.delete_acl_entry(_acl_mailbox(store, args), entry.identifier, entry.negative)
    return EX_OK


@command("acl", "list")
def cmd_acl_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    store = open_store(cfg)
    entries = store.acl_entries(_acl_mailbox(store, args))
    rows = [
        {"identifier": e.identifier, "negative": e.negative, "rights": str(e.rights)}
        for e in entries
    ]
    return out(args, rows, lambda: [str(e) for e in entries])


def _group(text: str) -> str:
    name = text[len(GROUP_PREFIX) :] if text.lower().startswith(GROUP_PREFIX) else text
    try:
        return normalize_account(name)
    except ValueError as exc:
        raise CliError(f"group {text!r}: {exc}", EX_USAGE) from None


def _member(text: str) -> str:
    domain, name = split_address(text)
    return f"{name}@{domain}"


@command("group", "add")
def cmd_group_add(args: argparse.Namespace, cfg: configmod.Config) -> int:
    open_store(cfg).add_group_member(_group(args.group), _member(args.member))
    return EX_OK


@command("group", "remove")
def cmd_group_remove(args: argparse.Namespace, cfg: configmod.Config) -> int:
    open_store(cfg).remove_group_member(_group(args.group), _member(args.member))
    return EX_OK


@command("group", "list")
def cmd_group_list(args: argparse.Namespace, cfg: configmod.Config) -> int:
    wanted = _group(args.group) if args.group else None
    groups: dict[str, list[str]] = {}
    for group, member in open_store(cfg).list_group_members(wanted):
        groups.setdefault(group, []).append(member)
    if wanted is not None and not groups:
        raise CliError(f"no group {wanted} (a group exists while it has members)")
    return out(args, groups, lambda: [f"{g}: {' '.join(m)}" for g, m in groups.items()])


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
        store, default_domain=cfg.server.default_domain, real_to_header=cfg.pop3.real_to_header
    )
    results = deliverer.deliver(args.sender, args.recipients, data)
    code = EX_OK
    for r in results:
        if r.status in (Status.DELIVERED, Status.DUPLICATE):
            continue
        print(f"cgpop deliver: {r.lmtp_reply}", file=sys.stderr)
        if r.status is Status.TEMPORARY:
            code = EX_TEMPFAIL
        elif code == EX_OK:
            code = EX_NOUSER
    return code


# --- the parser ---
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

    def group(name: str, help_: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        p = sub.add_parser(name, help=help_, parents=[common])
        return p.add_subparsers(dest="sub", required=True, metavar="ACTION")

    sub.add_parser("serve", parents=[common], help="run the gateway (POP3 and LMTP listeners)")

    d = group("domain", "manage domains")
    d.add_parser("add", parents=[common]).add_argument("name")
    d.add_parser("remove", parents=[common]).add_argument("name")
    d.add_parser("list", parents=[common, listing])
    da = d.add_parser("alias", parents=[common], help="domain aliases").add_subparsers(
        dest="sub2", required=True, metavar="ACTION"
    )
    for action in ("add", "remove"):
        p = da.add_parser(action, parents=[common])
        p.add_argument("alias")
        p.add_argument("domain")
    da.add_parser("list", parents=[common, listing])

    a = group("account", "manage accounts")
    for action in ("add", "passwd"):
        p = a.add_parser(action, parents=[common])
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
        "import", parents=[common], help="create accounts from NAME@DOMAIN PASSWORD lines on stdin"
    )
    p.add_argument("--shared-secret", action="store_true")
    a.add_parser("remove", parents=[common]).add_argument("address", metavar="NAME@DOMAIN")
    a.add_parser("list", parents=[common, listing]).add_argument("domain", nargs="?")
    _register_account_services(a, common)

    m = group("mailbox", "manage mailboxes")
    for action in ("add", "remove"):
        p = m.add_parser(action, parents=[common])
        p.add_argument("address", metavar="NAME@DOMAIN")
        p.add_argument("mailbox")
    m.add_parser("list", parents=[common, listing]).add_argument("address", metavar="NAME@DOMAIN")
    p = m.add_parser("import", parents=[common], help="import a Maildir or an mbox file")
    p.add_argument("address", metavar="NAME@DOMAIN")
    p.add_argument("mailbox")
    p.add_argument("path", metavar="MAILDIR_OR_MBOX")
    p = m.add_parser("show", parents=[common, listing])
    p.add_argument("address", metavar="NAME@DOMAIN")
    p.add_argument("mailbox")

    r = group("route", "manage the routing table")
    p = r.add_parser("add", parents=[common])
    p.add_argument("pattern")
    p.add_argument("target")
    r.add_parser("remove", parents=[common]).add_argument("pattern")
    r.add_parser("list", parents=[common, listing])

    acl = sub.add_parser("acl", parents=[common], help="mailbox access-control lists")
    # typeshed ties `parents` to the parser class; an _IdentifierParser is an ArgumentParser.
    ac: argparse._SubParsersAction[argparse.ArgumentParser] = acl.add_subparsers(
        dest="sub", required=True, metavar="ACTION", parser_class=_IdentifierParser
    )
    for action in ("set", "delete"):
        p = ac.add_parser(action, parents=[common])
        p.add_argument("address", metavar="OWNER@DOMAIN")
        p.add_argument("mailbox")
        p.add_argument(
            "identifier",
            metavar="IDENTIFIER",
            help="NAME@DOMAIN, group:NAME, anyone or anonymous; '-' first: negative",
        )
        if action == "set":
            p.add_argument("rights", metavar="RIGHTS", help="letters of lrswipkxtean, d, c; none")
    p = ac.add_parser("list", parents=[common, listing])
    p.add_argument("address", metavar="OWNER@DOMAIN")
    p.add_argument("mailbox")

    g = group("group", "manage groups (ACL identifiers group:NAME)")
    for action in ("add", "remove"):
        p = g.add_parser(action, parents=[common])
        p.add_argument("group")
        p.add_argument("member", metavar="MEMBER@DOMAIN")
    g.add_parser("list", parents=[common, listing]).add_argument("group", nargs="?")

    p = sub.add_parser("deliver", parents=[common], help="deliver a message from stdin")
    p.add_argument("--from", dest="sender", default="", metavar="SENDER")
    p.add_argument("recipients", nargs="+", metavar="RCPT")
    for extend in EXTENSIONS:
        extend(sub, common, listing)
    return parser


Extension = Callable[[Any, argparse.ArgumentParser, argparse.ArgumentParser], None]
EXTENSIONS: list[Extension] = []


def main(argv: Sequence[str] | None = None) -> int:
    # Subcommands that live in their own modules register themselves on import.
    from cgpop import cli_queue, cli_secure  # noqa: F401

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = configmod.load(getattr(args, "config", None))
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
    except StoreError as exc:
        print(f"cgpop: {exc}", file=sys.stderr)
        return EX_TEMPFAIL if args.cmd == "deliver" else EX_FAIL
    except (sqlite3.Error, OSError) as exc:
        # A locked or unreadable database, a full disk: say so, never with a traceback.
        print(f"cgpop: cannot use the data directory {cfg.server.data_dir}: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    except KeyboardInterrupt:
        return 130
