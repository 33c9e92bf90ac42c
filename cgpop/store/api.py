"""The store's typed interface (STYLE rule 9) and the records that cross it.

Contract (Cyrus-style snapshot semantics, issue 2):
- `open_maildrop` returns an immutable snapshot; message numbers are indexes into it and never
  change for the life of the session. No call ever refuses or waits for another session.
- `expunge` removes only the given UIDs; UIDs already gone are not an error.
- A body stays readable through `read_message` by every session whose snapshot holds it until
  that session calls `close_maildrop`, even after another session expunged the message.
- Nothing is removed unless `expunge` is called (a session that ends without QUIT commits nothing).

Backends (cgpop/store/factory.py picks one by `[store] backend`) implement `Store`; nothing here
names one, and no connection, cursor or file path crosses this boundary: bodies are streamed by
the backend (`StoredMessage.reader`), and a backend's own errors become `Unavailable`. Methods
block and run on the shell's worker threads (cgpop/blocking.py), except `close_maildrop`, which
is called on the event loop and must not wait. tests/store/ is the contract every backend passes.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from accounts.acl import AclEntry
from accounts.credentials import Credentials
from cgpop.spool import Octets

SEEN = 1
ANSWERED = 2
FLAGGED = 4
DELETED = 8
DRAFT = 16
FLAG_NAMES = {
    SEEN: "\\Seen",
    ANSWERED: "\\Answered",
    FLAGGED: "\\Flagged",
    DELETED: "\\Deleted",
    DRAFT: "\\Draft",
}


# Issue 13: the services an account may have suspended (`cgpop account disable --service`).
SERVICES = ("pop", "xtnd")
# Several X-Real-To addresses are stored in one column joined by this; it never occurs in an
# address there (delivery strips control characters from what it records).
REAL_TO_SEPARATOR = "\n"


def flag_names(bits: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES.items() if bits & bit]


class StoreError(Exception):
    """A request the store refuses (unknown domain, duplicate name...). Text is for operators."""


class NotFound(StoreError):
    pass


class TemporaryFailure(StoreError):
    """Try again later (locked database, disk full): LMTP 451, `deliver` exit 75."""


class Unavailable(TemporaryFailure):
    """The backend cannot be used at all now (unreadable, locked, full): what a backend's own
    errors become at this boundary, so no caller needs to know the backend's exceptions."""


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    domain: str
    name: str
    credentials: Credentials
    disabled: frozenset[str] = frozenset()  # suspended SERVICES

    @property
    def address(self) -> str:
        return f"{self.name}@{self.domain}"


@dataclass(frozen=True, slots=True)
class Mailbox:
    id: int
    account_id: int
    owner: str  # owner's address, name@domain
    name: str
    uidvalidity: int


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A session's view of its maildrop, taken at login. Index i is message number i + 1."""

    mailbox: Mailbox
    uids: array[int]
    sizes: array[int]
    opened_at: float
    total_size: int = field(default=0)

    def __len__(self) -> int:
        return len(self.uids)

    def uidl(self, index: int) -> str:
        # RFC 1939 section 7: 1-70 characters in 0x21-0x7E, unique and stable in the maildrop.
        # UIDs are never reused in a mailbox and uidvalidity changes if the mailbox is recreated.
        return f"{self.mailbox.uidvalidity:x}.{self.uids[index]}"


@dataclass(frozen=True, slots=True)
class OpenedSession:
    """What a POP login needs when it opens its maildrop (Store.open_session)."""

    snapshot: Snapshot
    # Live sessions of other processes on mailboxes of the snapshot's owner (other_sessions),
    # counted after this session's own registration.
    others: int
    # Whether an alert waits for the logging-in account (pending_alert is not None).
    alert_pending: bool


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message as the admin CLI shows it."""

    uid: int
    uidl: str
    size: int
    flags: tuple[str, ...]
    x_real_to: str | None
    internal_date: float
    individuals: tuple[str, ...] = ()  # the names an individual login is matched against

    @property
    def real_to(self) -> tuple[str, ...]:
        """The X-Real-To addresses recorded for the message, one per item."""
        return tuple(self.x_real_to.split(REAL_TO_SEPARATOR)) if self.x_real_to else ()


class BodyReader(Protocol):
    """Streams a body kept outside the copy's row (a file, database chunks...), in pieces of
    at most `chunk_size` octets. Closing the generator releases what it holds."""

    def __call__(self, chunk_size: int) -> Generator[bytes, None, None]: ...


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A copy's octets as stored: CRLF, dot-stuffed, ending in CRLF. The body is inline
    (`data`) when small, else streamed by the backend's `reader` in bounded chunks."""

    prefix: bytes
    data: bytes | None
    reader: BodyReader | None
    size: int  # unstuffed size of prefix + body, as LIST reports it

    def chunks(self, chunk_size: int = 256 * 1024) -> Generator[bytes, None, None]:
        """The octets in bounded chunks. The body file is opened before the first chunk is
        produced, so a missing body raises `OSError` before a single octet was sent."""
        if self.data is not None:
            yield self.prefix
            yield self.data
            return
        assert self.reader is not None
        # The body is opened (its first chunk read) before the prefix goes out, so a missing
        # body raises before a single octet was sent.
        body = self.reader(chunk_size)
        first = next(body, None)
        yield self.prefix
        if first is not None:
            yield first
            yield from body


@dataclass(frozen=True, slots=True)
class Copy:
    """One stored copy of a delivery: its mailbox and the header lines put on top of it."""

    mailbox_id: int
    prefix: bytes  # e.g. b"Return-Path: <a@b>\r\nX-Real-To: <c@d>\r\n", already CRLF
    x_real_to: str | None
    individual: str | None
    message_id: str | None = None
    dedup_key: str | None = None  # recipient key for duplicate suppression
    # Individual names after the first (several listed in the message's own X-Real-To).
    more_individuals: tuple[str, ...] = ()


# --- alerts (CommuniGate): cgpop/alerts.py has the text rules ---
ALERT_SCOPES = ("account", "domain", "server")


@dataclass(frozen=True, slots=True)
class Alert:
    id: int
    scope: str  # "account" | "domain" | "server"
    target: str  # "name@domain", "domain", or "" for the server
    text: str
    created: float
    delivered: int = 0  # accounts it was shown to (filled by list_alerts)


# --- the XTND XMIT outbound queue (states and their rules: OutboundQueue below) ---
# The start of a failed message that `pending_bounces` loads: a DSN carries only the original
# header block (RFC 6522 section 4), which `xtnd.dsn.build_dsn` bounds to 64 KiB; twice that is
# more than its cut ever looks at, so the (up to 25 MiB) body stays where it is.
BOUNCE_HEAD = 128 * 1024
# Messages bounced per pass of the worker: bounds the memory one pass holds (BOUNCE_HEAD each).
BOUNCE_BATCH = 20


class State(Enum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message to queue: as relayed (Bcc already removed), for its remote recipients."""

    sender: str
    account: str  # the submitting account, for DSNs
    message: Octets = field(repr=False)  # a spooled one is streamed into the queue
    recipients: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Job:
    """One message and the recipients of it claimed for one delivery attempt."""

    message_id: int
    sender: str
    message: bytes
    created: float
    recipients: tuple[str, ...]
    attempts: tuple[int, ...]  # failed attempts so far, per recipient


@dataclass(frozen=True, slots=True)
class Update:
    """The outcome of an attempt for one recipient: its new state and bookkeeping."""

    recipient: str
    state: State
    next_attempt: float = 0.0
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class Bounce:
    """Failed recipients of one message that still need a DSN: (recipient, status, text).

    `head` is the start of the message (`BOUNCE_HEAD` octets, enough for its header block);
    `attempts` the most any of these rows has had, relay and DSN attempts together.
    """

    message_id: int
    sender: str
    account: str
    head: bytes
    created: float
    failures: tuple[tuple[str, str, str], ...]
    attempts: int


@dataclass(frozen=True, slots=True)
class RecipientState:
    recipient: str
    state: str
    attempts: int
    next_attempt: float
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Entry:
    """One queued message as `cgpop queue list` shows it."""

    id: int
    sender: str
    account: str
    size: int
    created: float
    recipients: tuple[RecipientState, ...]


@dataclass(frozen=True, slots=True)
class QueueStats:
    """The outbound queue at a glance (`cgpop_queue_messages`, `cgpop_queue_oldest_seconds`)."""

    messages: int
    oldest_created: float | None  # Unix time the oldest queued message came in; None: empty


@dataclass(frozen=True, slots=True)
class SubmissionCounts:
    """An account's accepted submissions in a window: messages and their recipients."""

    messages: int
    recipients: int


# Judges a submission against the counts so far: None to accept it, else the reason.
Verdict = Callable[[SubmissionCounts], str | None]


# --- quotas (issue 12; Cyrus semantics, the account is the quota root) ---
@dataclass(frozen=True, slots=True)
class Quota:
    """A quota root's usage and limits: octets as POP reports them (every copy counted once)
    and messages; a limit of None is no limit."""

    storage_used: int
    storage_limit: int | None
    messages_used: int
    messages_limit: int | None


@dataclass(frozen=True, slots=True)
class OverQuota:
    """A copy not stored because it would take `root` ("name@domain" or "domain") past one
    of its limits. False as a truth value: like a duplicate, nothing was stored."""

    root: str

    def __bool__(self) -> bool:
        return False


# Per copy of a delivery: True stored, False suppressed as a duplicate, or OverQuota.
Stored = bool | OverQuota


class Quotas(Protocol):
    """Limits and the usage kept with every delivery, import and expunge (never scanned)."""

    def set_quota(
        self, domain: str, account: str | None, storage: int | None, messages: int | None
    ) -> None:
        """Set both limits of an account (`account` given) or a domain; None removes one."""
        ...

    def get_quota(self, domain: str, account: str | None) -> Quota:
        """An account's usage and limits, or a domain's (usage summed over its accounts).
        NotFound when there is no such account or domain."""
        ...

    def list_quotas(self, domain: str | None = None) -> list[tuple[str, Quota]]:
        """("name@domain", Quota) for every account (in `domain`) that has a limit."""
        ...

    def recalc_quota(
        self, domain: str | None = None, account: str | None = None
    ) -> list[tuple[str, Quota, Quota]]:
        """Rebuild usage from the stored copies (Cyrus `quota -f`): of one account, of a
        domain's, or of all; (address, before, after) for each account it corrected."""
        ...


class Directory(Protocol):
    """Domains, aliases, accounts, mailboxes, routes, ACLs and groups: what routing and rights
    are derived from. Every change moves `directory_version`, from any process."""

    def add_domain(self, name: str) -> None: ...
    def remove_domain(self, name: str) -> None: ...
    def list_domains(self) -> list[str]: ...
    def domain_exists(self, name: str) -> bool: ...
    def directory_version(self) -> int: ...
    # router.resolve.Directory
    def canonical_domain(self, name: str) -> str | None: ...
    def account_exists(self, domain: str, account: str) -> bool: ...
    def route_target(self, pattern: str) -> str | None: ...
    def add_route(self, pattern: str, target: str) -> None: ...
    def remove_route(self, pattern: str) -> None: ...
    def list_routes(self) -> list[tuple[str, str]]: ...
    def add_domain_alias(self, alias: str, domain: str) -> None: ...
    def remove_domain_alias(self, alias: str, domain: str) -> None: ...
    def list_domain_aliases(self) -> list[tuple[str, str]]: ...
    def add_account(self, domain: str, name: str, creds: Credentials) -> None: ...
    def add_accounts(self, entries: Sequence[tuple[str, str, Credentials]]) -> None:
        """Create accounts, each with its INBOX, all or none: (domain, name, creds)."""
        ...

    def set_credentials(self, domain: str, name: str, creds: Credentials) -> None: ...
    def remove_account(self, domain: str, name: str) -> None: ...
    def list_accounts(self, domain: str | None = None) -> list[str]: ...
    def set_services_enabled(
        self, domain: str, name: str, services: Sequence[str], enabled: bool
    ) -> None:
        """Suspend or resume SERVICES of an account (mail and delivery are kept)."""
        ...

    def disabled_services(self, domain: str | None = None) -> dict[str, frozenset[str]]:
        """Per account address (in `domain`, or all), its suspended services."""
        ...

    def get_account(self, domain: str, name: str) -> Account | None: ...
    def add_mailbox(self, domain: str, account: str, mailbox: str) -> Mailbox: ...
    def remove_mailbox(self, domain: str, account: str, mailbox: str) -> None: ...
    def rename_mailbox(self, domain: str, account: str, old: str, new: str) -> None:
        """Rename `old` and the mailboxes below it in one transaction, keeping every message,
        UID, uidvalidity, flag and ACL (`naming.rename_plan` says what moves and what is
        refused)."""
        ...

    def list_mailboxes(self, domain: str, account: str) -> list[str]: ...
    def get_mailbox(self, domain: str, account: str, mailbox: str) -> Mailbox | None: ...

    # --- access control (Cyrus semantics; identifiers canonical, see accounts/acl.py) ---
    def acl_entries(self, mailbox: Mailbox) -> list[AclEntry]: ...
    def get_acl_entry(
        self, mailbox: Mailbox, identifier: str, negative: bool = False
    ) -> AclEntry | None: ...
    def set_acl_entry(self, mailbox: Mailbox, entry: AclEntry) -> None:
        """Add or replace the entry keyed by (identifier, negative); empty rights remove it."""
        ...

    def delete_acl_entry(self, mailbox: Mailbox, identifier: str, negative: bool = False) -> None:
        """Raise NotFound when there is no such entry."""
        ...

    def add_group_member(self, group: str, member: str) -> None: ...
    def remove_group_member(self, group: str, member: str) -> None: ...
    def list_group_members(self, group: str | None = None) -> list[tuple[str, str]]: ...
    def groups_of(self, address: str) -> frozenset[str]:
        """The names (without `group:`) of the groups `address` belongs to."""
        ...


class HoldBoard(Protocol):
    """The oldest open snapshot of every process serving one embedded store (issue 14,
    `[server] workers`): a backend whose collector horizon lives in the process (SQLite)
    publishes its own oldest open snapshot time and reads the oldest of all. A backend that
    registers sessions in the database itself (PostgreSQL) needs none. Given by the wiring."""

    def publish(self, oldest: float | None) -> None: ...
    def oldest(self) -> float | None: ...


class Mailstore(Protocol):
    """Messages: delivery, import, and the POP sessions' snapshots (module docstring)."""

    def deliver(
        self, message: Octets, copies: Sequence[Copy], warn_percent: int | None = None
    ) -> list[Stored]:
        """Store `message` once for all copies; durable before it returns. Returns per copy
        whether it was stored (False: suppressed as a duplicate, Copy.dedup_key; OverQuota:
        it would pass a limit of its account or domain, and it claimed no duplicate record).
        A copy that fits is stored even if it brings usage to exactly the limit; usage moves
        in the same transaction. When a stored copy takes its account's usage of a limit
        from below `warn_percent` % to at or above it, an account alert is queued in that
        transaction. A spooled message (cgpop/spool.py) should be streamed, not read whole."""
        ...

    def deliver_many(
        self, items: Sequence[tuple[Octets, Sequence[Copy]]], warn_percent: int | None = None
    ) -> list[list[Stored]]:
        """`deliver` for several messages at once, durable together, all or none (group
        commit)."""
        ...

    def import_messages(
        self,
        mailbox: Mailbox,
        messages: Iterable[tuple[bytes, int]],
        batch: int = 500,
        real_to: Callable[[bytes], tuple[str | None, tuple[str, ...]]] | None = None,
    ) -> int:
        """Bulk import: (octets, flag bits) per message, stored as-is. `real_to(octets)`
        gives what to record from the message's own X-Real-To field: the addresses (joined
        by REAL_TO_SEPARATOR) and the individual names. Returns the count. Counted in the
        account's usage but never refused for quota (a migration must not stop half way)."""
        ...

    def prune_duplicates(self) -> None:
        """Forget duplicate-suppression records older than the window."""
        ...

    def list_messages(self, mailbox: Mailbox) -> list[MessageInfo]: ...
    def message_flags(self, mailbox_id: int, uid: int) -> int | None:
        """The flag bits of a copy that still has a row (expunged or not), else None."""
        ...

    # --- POP sessions (the live-session registry: open_maildrop .. close_maildrop) ---
    def open_maildrop(self, mailbox: Mailbox, individual: str | None) -> Snapshot: ...
    def open_session(self, mailbox: Mailbox, individual: str | None, account: str) -> OpenedSession:
        """`open_maildrop`, then `other_sessions` of the new snapshot and whether
        `pending_alert(account)` has one, with the same guarantees as those three calls in
        that order (the count is taken after this session is registered), in one database
        round trip where the backend has a network between it and the process (issue 11)."""
        ...

    def read_message(self, snapshot: Snapshot, index: int) -> StoredMessage:
        """The copy's stored octets. Works for every message of the snapshot until
        `close_maildrop`, even after another session expunged it."""
        ...

    def read_messages(self, snapshot: Snapshot, indexes: Sequence[int]) -> dict[int, StoredMessage]:
        """`read_message` for several at once; an index whose copy is gone is left out."""
        ...

    def mark_seen(self, items: Sequence[tuple[int, int]]) -> None:
        """Set \\Seen on (mailbox_id, uid) pairs (advisory state)."""
        ...

    def expunge(self, mailbox_id: int, uids: Sequence[int]) -> int:
        """Remove these UIDs (others untouched; ones already gone are no error). Returns how
        many were removed now. Their octets and count leave the account's usage here, in
        the same transaction (the user sees them gone), not when the collector runs."""
        ...

    def close_maildrop(self, snapshot: Snapshot) -> None:
        """The session holding `snapshot` ended: what only it could still read may go. Called
        on the event loop: it must not wait (a backend that records sessions elsewhere defers
        that write)."""
        ...

    # --- the collector (the safety mechanism) ---
    def other_sessions(self, snapshot: Snapshot) -> int:
        """Issue 11: live sessions that other processes sharing this store (other gateway
        nodes) hold on mailboxes of `snapshot`'s owner, counted from the session registry;
        the caller counts its own. A session counts from its login until shortly after it
        ends. 0 for a store only one process serves."""
        ...

    def collect(self) -> int:
        """Remove expunged copies and bodies no open session can still read. Returns how many
        bodies went."""
        ...

    def remove_orphan_files(self) -> int:
        """At start: remove bodies a crash left half-written (none where the backend keeps
        every body in its transactions)."""
        ...


class Alerts(Protocol):
    def add_alert(self, scope: str, target: str, text: str) -> int:
        """Post an alert (scope in ALERT_SCOPES, text already checked); returns its id."""
        ...

    def list_alerts(self) -> list[Alert]:
        """Every alert with the number of accounts it was shown to."""
        ...

    def remove_alert(self, alert_id: int) -> bool:
        """Delete an alert and its delivery records; False when there was no such alert."""
        ...

    def pending_alert(self, account: str) -> Alert | None:
        """The oldest alert not yet shown to `account` ("name@domain"): its own, its domain's
        or the server's. Does not mark it."""
        ...

    def take_alert(self, account: str) -> Alert | None:
        """`pending_alert`, marked shown in the same transaction: two sessions logging in at
        once get different alerts, never the same one twice."""
        ...


class OutboundQueue(Protocol):
    """The durable queue of XTND XMIT: one message, one row per remote recipient in a State.

    * `queued`: waiting for `next_attempt` (Unix time; 0 after `flush_queue`).
    * `sending`: claimed for an attempt, an SMTP transaction may be in flight. Left over at
      start-up (`recover_queue`) it means whether the remote server took the message is
      unknown: it is queued again (at-least-once, RFC 5321 section 6.1), a possible duplicate
      rather than a message lost after the sender was told it was sent.
    * `sent`: accepted by the next hop; kept until the whole message is done.
    * `failed`: needs a bounce. `last_error` is "STATUS DIAGNOSTIC" (RFC 3463 status first); the
      row goes once the DSN is delivered (`finish_bounce`), so a crash in between bounces twice,
      never zero times. `next_attempt` is when the DSN is due (0 when the row fails).

    A message goes when none of its recipients is queued, sending or failed.
    """

    def enqueue(self, outbound: Outbound, now: float) -> int:
        """Queue a message for its recipients, due at once; returns its id."""
        ...

    def recover_queue(self, now: float) -> int:
        """Start-up: recipients left `sending` are queued again, due now. Returns how many."""
        ...

    def claim_due(self, now: float, limit: int) -> list[Job]:
        """Mark up to `limit` messages' due recipients `sending` and return them as jobs."""
        ...

    def record_attempt(self, message_id: int, updates: Iterable[Update]) -> None:
        """Store the outcome of an attempt; drop the message when nothing is left to do."""
        ...

    def requeue(self, message_id: int, recipients: Sequence[str], when: float) -> None:
        """The outcome of an attempt could not be stored: its recipients still `sending` are
        queued again for `when`, counted as a failed attempt."""
        ...

    def pending_bounces(self, now: float, limit: int = BOUNCE_BATCH) -> list[Bounce]:
        """Up to `limit` messages with failed recipients whose DSN is due. Reads only."""
        ...

    def defer_bounce(self, message_id: int, recipients: Sequence[str], when: float) -> None:
        """The DSN for these failed recipients could not be delivered: try again at `when`."""
        ...

    def finish_bounce(self, message_id: int, recipients: Sequence[str]) -> None:
        """The DSN for these failed recipients is delivered: forget them."""
        ...

    def next_due(self) -> float | None:
        """The earliest `next_attempt` of a queued recipient."""
        ...

    def flush_queue(self) -> int:
        """Every queued recipient is due now. Returns how many."""
        ...

    def remove_queued(self, message_id: int) -> bool:
        """Drop a message without a bounce; False when there is none. A recipient being sent
        at this moment may still be delivered; its bookkeeping then changes nothing."""
        ...

    def list_queue(self) -> list[Entry]: ...

    def queue_stats(self) -> QueueStats:
        """How many messages the queue holds and when the oldest came in. Reads only."""
        ...


class Submissions(Protocol):
    """The per-account record of accepted submissions, for the XTND rate limit."""

    def submission_counts(self, account: str, since: float) -> SubmissionCounts:
        """Submissions of `account` after `since`. Reads only."""
        ...

    def take_submission_slot(
        self, account: str, recipients: int, now: float, since: float, verdict: Verdict
    ) -> int | str:
        """In one transaction: the counts after `since` judged by `verdict`; if it accepts,
        the submission recorded (records before `since` may be dropped). Returns the slot
        (for `release_submission_slot`) or the verdict's refusal. Parallel submissions of one
        account cannot together pass a limit."""
        ...

    def release_submission_slot(self, slot: int) -> None:
        """Give back a slot taken for a submission that was not sent."""
        ...


# ---- issue 11: `cgpop store copy` ------------------------------------------------------------
# What a store copy carries, table by table in the order they are loaded (a row only names rows
# of tables before it), with the columns of each. Backend-neutral: values are int, float, str,
# bytes, bool or None; ids, UIDs, uidvalidity and times are kept as they are, so every UIDL
# stays the same. `bodies.data` is the whole CRLF-normalised, dot-stuffed body (one at a time in
# memory, bounded by the message size limit). Expunged copies and the bodies only they named
# are left out; a recipient left `sending` comes out `queued` (as `recover_queue` would make it).
# `counters.uidvalidity` is the last uidvalidity handed out, so a mailbox created on the copy
# never repeats a UIDL.
COPY_TABLES: dict[str, tuple[str, ...]] = {
    "counters": ("name", "value"),
    "domains": ("id", "name"),
    "domain_aliases": ("alias", "domain_id"),
    "accounts": (
        "id",
        "domain_id",
        "name",
        "salt",
        "iterations",
        "stored_key",
        "server_key",
        "shared_secret",
        "pop_enabled",
        "xtnd_enabled",
    ),
    "mailboxes": ("id", "account_id", "name", "uidvalidity", "next_uid"),
    "routes": ("pattern", "target"),
    "acl": ("mailbox_id", "identifier", "negative", "rights"),
    "group_members": ("group_name", "member"),
    "bodies": ("id", "size", "data"),
    "messages": (
        "mailbox_id",
        "uid",
        "body_id",
        "size",
        "flags",
        "internal_date",
        "x_real_to",
        "individual",
        "prefix",
    ),
    "message_individuals": ("mailbox_id", "individual", "uid"),
    "duplicates": ("message_id", "rcpt", "seen_at"),
    "alerts": ("id", "scope", "target", "text", "created"),
    "alerts_delivered": ("alert_id", "account", "delivered_at"),
    "queue_messages": ("id", "sender", "account", "message", "created"),
    "queue_recipients": (
        "message_id",
        "recipient",
        "state",
        "attempts",
        "next_attempt",
        "last_error",
    ),
    "submissions": ("account", "at", "recipients"),
    # Issue 12: limits, and usage as the source kept it (exact, never rescanned).
    "account_quotas": (
        "account_id",
        "storage_used",
        "messages_used",
        "storage_limit",
        "messages_limit",
    ),
    "domain_quotas": ("domain_id", "storage_limit", "messages_limit"),
}


@dataclass(frozen=True, slots=True)
class Table:
    """One table of a store copy: `rows` (tuples in COPY_TABLES[name] order) are streamed."""

    name: str
    rows: Iterable[tuple[Any, ...]]


# Called after every `COPY_PROGRESS_EVERY` rows of a table, and at its end: (table, rows so far).
Progress = Callable[[str, int], None]
COPY_PROGRESS_EVERY = 10_000


class Transfer(Protocol):
    """Moving a whole store to another backend (`cgpop store copy --to DSN`)."""

    def export_tables(self) -> Iterator[Table]:
        """Everything COPY_TABLES names, in its order, as one consistent snapshot."""
        ...

    def nonempty_tables(self) -> list[str]:
        """The COPY_TABLES this store holds rows in (counters aside): a copy's target must
        have none."""
        ...

    def import_tables(self, tables: Iterable[Table], progress: Progress | None = None) -> int:
        """Load an export into this store in one transaction, keeping every id, UID, flag,
        time and uidvalidity. StoreError when the store is not empty. Returns the rows loaded."""
        ...


def copy_rows(
    table: str, rows: Iterable[tuple[Any, ...]], progress: Progress | None
) -> Iterator[tuple[Any, ...]]:
    """`rows`, reporting progress every COPY_PROGRESS_EVERY rows and at the end."""
    n = 0
    for n, row in enumerate(rows, 1):
        if progress is not None and n % COPY_PROGRESS_EVERY == 0:
            progress(table, n)
        yield row
    if progress is not None:
        progress(table, n)


# ---- end of issue 11: `cgpop store copy` ------------------------------------------------------


# --- issue 12, section 3: live POP sessions and telemetry flags ----------------------------
@dataclass(frozen=True, slots=True)
class LiveSession:
    """One open (logged-in) POP session as `cgpop sessions` shows it. `state` and `sent_bytes`
    are as of the serving process's last flush (seconds old at most, cgpop/livesessions.py)."""

    id: str  # unique across nodes and processes
    node: str
    peer: str
    login: str
    account: str
    mailbox: str
    state: str
    since: float
    sent_bytes: int
    tls: bool

    @classmethod
    def from_row(cls, r: Sequence[Any]) -> LiveSession:
        """From a backend's row, its columns in field order (types as each driver gives them)."""
        return cls(
            str(r[0]), str(r[1]), str(r[2]), str(r[3]), str(r[4]), str(r[5]), str(r[6]),
            float(r[7]), int(r[8]), bool(r[9]),
        )  # fmt: skip

    def row(self) -> tuple[str, str, str, str, str, str, str, float, int, bool]:
        """Its columns in field order, as `from_row` reads them back."""
        return (
            self.id, self.node, self.peer, self.login, self.account, self.mailbox, self.state,
            self.since, self.sent_bytes, self.tls,
        )  # fmt: skip


class LiveSessions(Protocol):
    """The registry of open POP sessions of every serving process (and, on PostgreSQL, every
    node), and the telemetry flags. A row belongs to the process that wrote it; rows of a
    process that is gone disappear (`prune_sessions`, and on PostgreSQL the node's heartbeat)."""

    def record_sessions(
        self,
        opened: Sequence[LiveSession],
        progress: Sequence[tuple[str, str, int]],
        closed: Sequence[str],
    ) -> None:
        """In one transaction, for this process's sessions: add `opened`, set (id, state,
        sent_bytes) of `progress`, remove the `closed` ids."""
        ...

    def list_sessions(self) -> list[LiveSession]:
        """Every live session of every live process, oldest first."""
        ...

    def request_kill(self, session_id: str) -> bool:
        """Ask the process serving `session_id` to close it; False when there is none."""
        ...

    def kill_requests(self) -> list[str]:
        """The ids of this process's sessions an administrator asked to close."""
        ...

    def prune_sessions(self) -> int:
        """Remove the rows of processes that are gone. Returns how many went."""
        ...

    def set_telemetry(self, account: str, on: bool) -> bool:
        """Turn telemetry of `account` ("name@domain") on or off; False when unchanged.
        Moves `telemetry_version`."""
        ...

    def telemetry_accounts(self) -> list[str]: ...
    def telemetry_version(self) -> int: ...


# ---- end of issue 12, section 3 -------------------------------------------------------------


class Store(
    Directory,
    Mailstore,
    Alerts,
    OutboundQueue,
    Submissions,
    Transfer,
    LiveSessions,
    Quotas,
    Protocol,
):
    """Everything a backend provides. Methods block; the asyncio shell runs them on its
    worker threads (cgpop/blocking.py)."""

    def close(self) -> None: ...
