"""The store's typed interface (STYLE rule 9) and the records that cross it.

Contract (Cyrus-style snapshot semantics, issue 2):
- `open_maildrop` returns an immutable snapshot; message numbers are indexes into it and never
  change for the life of the session. No call ever refuses or waits for another session.
- `expunge` removes only the given UIDs; UIDs already gone are not an error.
- A body stays readable through `read_message` by every session whose snapshot holds it until
  that session calls `close_maildrop`, even after another session expunged the message.
- Nothing is removed unless `expunge` is called (a session that ends without QUIT commits nothing).
"""

from __future__ import annotations

import sqlite3
from array import array
from collections.abc import Generator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from accounts.acl import AclEntry
from accounts.credentials import Credentials

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


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """A copy's octets as stored: CRLF, dot-stuffed, ending in CRLF. The body is inline
    (`data`) when small, else in the file at `path`, read in bounded chunks."""

    prefix: bytes
    data: bytes | None
    path: Path | None
    size: int  # unstuffed size of prefix + body, as LIST reports it

    def chunks(self, chunk_size: int = 256 * 1024) -> Generator[bytes, None, None]:
        """The octets in bounded chunks. The body file is opened before the first chunk is
        produced, so a missing body raises `OSError` before a single octet was sent."""
        if self.data is not None:
            yield self.prefix
            yield self.data
            return
        assert self.path is not None
        with open(self.path, "rb") as fh:
            yield self.prefix
            while chunk := fh.read(chunk_size):
                yield chunk


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


class SqlAccess(Protocol):
    """For modules that keep their own tables in the store (alerts, the XTND queue)."""

    def connection(self) -> sqlite3.Connection: ...

    def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...


class Store(SqlAccess, Protocol):
    """What the engine, the delivery path and the CLI need from a backend."""

    # --- domains, accounts, mailboxes ---
    def add_domain(self, name: str) -> None: ...
    def remove_domain(self, name: str) -> None: ...
    def list_domains(self) -> list[str]: ...
    def domain_exists(self, name: str) -> bool: ...
    def directory_version(self) -> int: ...
    # router.resolve.Directory
    def canonical_domain(self, name: str) -> str | None: ...
    def account_exists(self, domain: str, account: str) -> bool: ...
    def route_target(self, pattern: str) -> str | None: ...
    def add_account(self, domain: str, name: str, creds: Credentials) -> None: ...
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
    def list_mailboxes(self, domain: str, account: str) -> list[str]: ...
    def get_mailbox(self, domain: str, account: str, mailbox: str) -> Mailbox | None: ...
    def list_messages(self, mailbox: Mailbox) -> list[MessageInfo]: ...

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

    # --- delivery ---
    def deliver(self, message: bytes, copies: Sequence[Copy]) -> list[bool]:
        """Store `message` once for all copies; durable before it returns. Returns per copy
        whether it was stored (False: suppressed as a duplicate)."""
        ...

    def deliver_many(self, items: Sequence[tuple[bytes, Sequence[Copy]]]) -> list[list[bool]]:
        """`deliver` for several messages at once, durable together (group commit)."""
        ...

    # --- POP sessions ---
    def open_maildrop(self, mailbox: Mailbox, individual: str | None) -> Snapshot: ...
    def read_message(self, snapshot: Snapshot, index: int) -> StoredMessage:
        """Where the copy's stored octets are. Works for every message of the snapshot until
        `close_maildrop`, even after another session expunged it."""
        ...

    def mark_seen(self, items: Sequence[tuple[int, int]]) -> None: ...
    def expunge(self, mailbox_id: int, uids: Sequence[int]) -> int: ...
    def close_maildrop(self, snapshot: Snapshot) -> None: ...
    def close(self) -> None: ...
