"""Local delivery: one code path for LMTP, `cgpop deliver` and XTND XMIT local recipients.

Each recipient is resolved through router/; every copy gets `Return-Path:` and
`X-Real-To: <recipient as given>` on top (CommuniGate's local delivery), and all copies of one
delivery share one stored body. Blocking: run it in a worker thread.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

from accounts.acl import effective_rights
from accounts.names import INBOX
from cgpop.config import QuotaConfig
from cgpop.dircache import DirectoryCache
from cgpop.realto import HeaderRealTo
from cgpop.spool import Octets, head_of
from cgpop.store.api import (
    Copy,
    Mailbox,
    OverQuota,
    Store,
    Stored,
    StoreError,
    TemporaryFailure,
)
from router.resolve import resolve_recipient
from router.route import Route, RouteError

log = logging.getLogger("cgpop.delivery")

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)
_HEADER_END = re.compile(rb"\r?\n\r?\n")


class Status(Enum):
    DELIVERED = "delivered"
    DUPLICATE = "duplicate"
    UNKNOWN = "unknown"  # LMTP 550, deliver exit 67
    REFUSED = "refused"  # the mailbox does not accept posting: LMTP 550, exit 67
    TEMPORARY = "temporary"  # LMTP 451, deliver exit 75
    # Issue 12: the copy would pass a limit of the recipient's account or domain. `[quota]
    # over_quota` decides: LMTP 452 and exit 75 ("tempfail"), or 552 and exit 73 ("reject").
    OVER_QUOTA = "over_quota"


@dataclass(frozen=True, slots=True)
class Result:
    recipient: str
    status: Status
    detail: str = ""  # OVER_QUOTA: the quota root ("name@domain" or "domain") it would pass
    permanent: bool = False  # OVER_QUOTA with `over_quota = "reject"`

    @property
    def lmtp_reply(self) -> str:
        if self.status is Status.OVER_QUOTA:
            # RFC 3463 section 3.3: X.2.2 "mailbox full"; 452/552 as RFC 5321 section 4.2.3.
            if self.permanent:
                return f"552 5.2.2 <{self.recipient}> mailbox full"
            return f"452 4.2.2 <{self.recipient}> mailbox full"
        if self.status is Status.DELIVERED:
            return f"250 2.0.0 <{self.recipient}> delivered"
        if self.status is Status.DUPLICATE:
            return f"250 2.0.0 <{self.recipient}> duplicate suppressed"
        if self.status is Status.TEMPORARY:
            return f"451 4.3.0 <{self.recipient}> temporary failure, try again later"
        if self.status is Status.REFUSED:
            return f"550 5.7.1 <{self.recipient}> mailbox does not accept mail"
        return f"550 5.1.1 <{self.recipient}> no such user"


def message_id(message: bytes) -> str | None:
    end = _HEADER_END.search(message)
    header = message[: end.start()] if end else message
    found = _MESSAGE_ID.search(header)
    if found is None:
        return None
    value = re.sub(rb"\s+", b"", found.group(1)).decode("ascii", "replace")
    return value[:998] or None


def _clean(address: str) -> str:
    # The prefix is a header line: never let an envelope address smuggle a line break in.
    return re.sub(r"[\x00-\x1f\x7f<>]", "", address)[:320]


@dataclass(frozen=True, slots=True)
class Prepared:
    """A delivery with its recipients resolved, ready for `Deliverer.commit`."""

    recipients: tuple[str, ...]
    results: list[Result | None]
    copies: list[Copy]
    message: Octets = field(repr=False)

    def refused(self) -> list[Result]:
        """The results when no recipient gets a copy (nothing to store)."""
        assert not self.copies
        return [r for r in self.results if r is not None]


# A delivery not yet resolved: (sender, recipients, message, checked) as `prepare` takes them.
Job = tuple[str, Sequence[str], Octets, bool]


class Deliverer:
    def __init__(
        self,
        store: Store,
        *,
        default_domain: str,
        real_to_header: str = "X-Real-To",
        quota: QuotaConfig | None = None,
    ) -> None:
        self.store = store
        # `[quota]`, read at every commit: a SIGHUP replaces it (cgpop/reload.py).
        self.quota = quota or QuotaConfig()
        self.default_domain = default_domain
        self.real_to_header = real_to_header
        self._targets: DirectoryCache[tuple[Route, Mailbox] | Status] = DirectoryCache(
            lambda: self.store.directory_version()
        )

    def resolve(self, recipient: str) -> Route | None:
        try:
            return resolve_recipient(
                recipient, default_domain=self.default_domain, directory=self.store
            )
        except (RouteError, ValueError):
            return None

    def may_post(self, mailbox: Mailbox) -> bool:
        """Issue 3: INBOX always takes mail; any other mailbox only when its ACL gives
        `anyone` or `anonymous` the `p` right (RFC 4314 section 2.1, Cyrus's lmtpd rule)."""
        if mailbox.name == INBOX:
            return True
        return "p" in effective_rights(self.store.acl_entries(mailbox), user=None)

    def target(self, recipient: str) -> tuple[Route, Mailbox] | Status:
        """Where a copy for `recipient` goes, or why it cannot go anywhere (cached until the
        directory changes)."""
        return self._targets.get(recipient, lambda: self._target(recipient))

    def _target(self, recipient: str) -> tuple[Route, Mailbox] | Status:
        route = self.resolve(recipient)
        if route is None:
            return Status.UNKNOWN
        mailbox = self.store.get_mailbox(route.domain, route.account, route.mailbox)
        if mailbox is None:
            return Status.UNKNOWN
        if not self.may_post(mailbox):
            return Status.REFUSED
        return route, mailbox

    def check(self, recipient: str) -> Status | None:
        """For LMTP RCPT: None when `recipient` would be accepted, else the refusal."""
        found = self.target(recipient)
        return found if isinstance(found, Status) else None

    def deliver(self, sender: str, recipients: Sequence[str], message: Octets) -> list[Result]:
        return self.deliver_many([(sender, recipients, message)])[0]

    def deliver_many(self, jobs: Sequence[tuple[str, Sequence[str], Octets]]) -> list[list[Result]]:
        """Deliver several messages (sender, recipients, octets), committed together."""
        return self.store_prepared(
            [self.prepare(sender, rcpts, message) for sender, rcpts, message in jobs]
        )

    def prepare(
        self, sender: str, recipients: Sequence[str], message: Octets, checked: bool = False
    ) -> Prepared:
        """Resolve every recipient (reads only): a final Result for those that get no copy,
        None (filled in by `commit`) for those that do, with their Copy.

        One read of the directory version for all recipients. `checked`: the recipients were
        just checked by `check` (LMTP RCPT, in this transaction): their targets as RCPT saw
        them serve without another read (issue 11: the version read was half of an LMTP
        delivery's round trips). A directory change between RCPT and DATA then applies from
        the next transaction; a mailbox removed meanwhile still fails in the store (451)."""
        results: list[Result | None] = []
        copies: list[Copy] = []
        head = head_of(message)
        mid = message_id(head)
        own = HeaderRealTo(head, self.real_to_header, self.resolve)
        version = None if checked else self.store.directory_version()
        for rcpt in recipients:
            compute = functools.partial(self._target, rcpt)
            if version is None:
                found = self._targets.peek(rcpt, compute)
            else:
                found = self._targets.get(rcpt, compute, version)
            if isinstance(found, Status):
                if found is Status.REFUSED:
                    log.info("recipient %s refused: mailbox takes no posting", rcpt[:200])
                results.append(Result(rcpt, found))
                continue
            route, mailbox = found
            prefix = (
                f"Return-Path: <{_clean(sender)}>\r\n{self.real_to_header}: <{_clean(rcpt)}>\r\n"
            ).encode()
            real_to: str | None = _clean(rcpt)
            individual = route.individual
            more: tuple[str, ...] = ()
            if individual is None:
                # Issue 13: the router gave no individual name; the message's own field may
                # (mail to the account itself that an earlier hop addressed to a name).
                named = own.for_account(route.domain, route.account)
                if named.individuals:
                    real_to, individual = named.stored, named.individuals[0]
                    more = named.individuals[1:]
            copies.append(
                Copy(
                    mailbox.id,
                    prefix,
                    real_to,
                    individual,
                    mid,
                    f"{mailbox.id}/{individual or ''}",
                    more,
                )
            )
            results.append(None)
        return Prepared(tuple(recipients), results, copies, message)

    def commit(self, batch: Sequence[Prepared | Job]) -> list[list[Result]]:
        """The group commit's batch (cgpop/groupcommit.py; `cgpop_store_seconds{operation=
        "commit"}`): resolve the jobs not yet prepared here, on the writer thread, so an LMTP
        message costs one worker-thread hop for its recipients and its storing instead of
        two; then store those with copies together."""
        ready: list[Prepared | list[Result]] = []
        for item in batch:
            if isinstance(item, Prepared):
                ready.append(item)
                continue
            sender, recipients, message, checked = item
            try:
                ready.append(self.prepare(sender, recipients, message, checked))
            except Exception as exc:
                # As a failed delivery: 451 for each recipient (the MTA retries), the others
                # of the batch go on; a store that cannot be used now is no bug (no traceback).
                if isinstance(exc, TemporaryFailure):
                    log.warning("delivery failed: recipients not resolved: %s", exc)
                else:
                    log.exception("delivery failed: recipients not resolved")
                ready.append([Result(rcpt, Status.TEMPORARY) for rcpt in recipients])
        to_store = [p for p in ready if isinstance(p, Prepared) and p.copies]
        stored = iter(self.store_prepared(to_store) if to_store else [])
        return [
            p if isinstance(p, list) else next(stored) if p.copies else p.refused() for p in ready
        ]

    def store_prepared(self, batch: Sequence[Prepared]) -> list[list[Result]]:
        """Store prepared deliveries in one transaction when possible; if the joint commit
        fails, each is tried alone so one bad message cannot fail the others."""
        items = [(p.message, p.copies) for p in batch]
        stored: list[list[Stored] | None]
        quota = self.quota
        try:
            stored = list(self.store.deliver_many(items, quota.warn_percent))
        except (StoreError, OSError) as exc:
            if len(items) == 1:
                log.warning("delivery failed: %s", exc)
                stored = [None]
            else:
                stored = [
                    self._deliver_alone(message, copies, quota.warn_percent)
                    for message, copies in items
                ]
        reject = quota.over_quota == "reject"
        return [
            self._fill(p.recipients, p.results, outcome, reject)
            for p, outcome in zip(batch, stored, strict=True)
        ]

    def _deliver_alone(
        self, message: Octets, copies: Sequence[Copy], warn_percent: int
    ) -> list[Stored] | None:
        try:
            return self.store.deliver(message, copies, warn_percent)
        except (StoreError, OSError) as exc:
            log.warning("delivery failed: %s", exc)
            return None

    @staticmethod
    def _fill(
        recipients: Sequence[str],
        results: list[Result | None],
        stored: list[Stored] | None,
        reject: bool,
    ) -> list[Result]:
        out: list[Result] = []
        n = 0
        for rcpt, result in zip(recipients, results, strict=True):
            if result is None:
                if stored is None:
                    result = Result(rcpt, Status.TEMPORARY)
                elif isinstance(verdict := stored[n], OverQuota):
                    log.info("recipient %s over quota (%s)", rcpt[:200], verdict.root)
                    result = Result(rcpt, Status.OVER_QUOTA, verdict.root, reject)
                else:
                    result = Result(rcpt, Status.DELIVERED if stored[n] else Status.DUPLICATE)
                n += 1
            out.append(result)
        return out
