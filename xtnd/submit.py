"""Accept one XTND XMIT submission: check it, deliver local copies, queue the rest (issue 5).

`Submitter.submit` is what the asyncio shell awaits after the engine read the body. It returns
None only once every recipient is durably delivered (local, through the same `Deliverer` and
group commit as LMTP, so X-Real-To and duplicate suppression apply) or durably queued for the
relay worker; otherwise a `Pop3Error` whose text names the reason, and the offending recipient
when there is one (Eudora shows it and marks the message unsendable). A store failure at any step
is `-ERR [SYS/TEMP]` and the session goes on.

The steps, and the threads they run on:

1. The addresses the account may use (reader; cached until the directory changes), then
   `derive_envelope` (reader; pure, the `email` parser is the costly part): From check,
   recipients, Bcc removed, Received/Date/Message-ID added.
2. Every recipient is classified before anything is written (reader, `Deliverer.prepare`): a
   route to a mailbox that takes mail is local; an address the router would call an unknown
   account (its domain is hosted here) or that a routing record claims is refused; anything
   else is remote. The rate limit (messages and recipients per hour) is checked here too, so a
   submission over it delivers nothing.
3. On the writer, in one transaction, the rate limit is taken: checked again and the submission
   recorded, before anything is stored or queued, so parallel sessions of one account cannot
   deliver more copies than the limit allows (issue 10, defect 3).
4. Local copies are delivered through the gateway's group commit (writer, shared transaction).
5. On the writer, in one transaction: the remote recipients queued.

If step 4 or 5 fails, the slot taken in step 3 is given back. If step 5 failed after step 4
succeeded, the client sees -ERR although local copies exist; a resend is then caught by duplicate
suppression (same Message-ID). Queueing before delivering would instead risk relaying a message
whose submission was refused.
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from cgpop.delivery import Prepared, Result, Status
from cgpop.dircache import DirectoryCache
from cgpop.errors import Pop3Error
from cgpop.store.api import SqlAccess, StoreError
from router.loginname import parse_name
from router.route import Route, RouteError
from router.table import wildcard_candidates
from xtnd import queue, ratelimit
from xtnd.envelope import Envelope, SubmissionError, derive_envelope

__all__ = ["Submitter"]

log = logging.getLogger("cgpop.xtnd")
Run = Callable[..., Awaitable[Any]]

_ACCEPTED = (Status.DELIVERED, Status.DUPLICATE)
# What a failing store raises: the backend's own error, SQLite's, or the file system's.
_STORE_ERRORS = (StoreError, sqlite3.Error, OSError)
_TRY_LATER = "temporary failure, message not sent; try again later"


class Directory(SqlAccess, Protocol):
    def directory_version(self) -> int: ...

    def canonical_domain(self, name: str) -> str | None: ...

    def route_target(self, pattern: str) -> str | None: ...

    def list_routes(self) -> list[tuple[str, str]]: ...

    def list_domain_aliases(self) -> list[tuple[str, str]]: ...


class LocalDelivery(Protocol):
    def resolve(self, recipient: str) -> Route | None: ...

    def prepare(self, sender: str, recipients: Sequence[str], message: bytes) -> Prepared: ...


class Submitter:
    """The `Submitter` of cgpop.server: XTND XMIT behind the engine.

    `read` and `write` run blocking work on the gateway's reader pool and its single writer
    thread; `deliver` is its group commit for prepared local deliveries.
    """

    def __init__(
        self,
        *,
        store: Directory,
        deliverer: LocalDelivery,
        deliver: Callable[[Prepared], Awaitable[list[Result]]],
        read: Run,
        write: Run,
        hostname: str,
        allowed_from: Sequence[str],
        max_recipients: int,
        limits: ratelimit.Limits,
        on_queued: Callable[[], None] = lambda: None,
    ) -> None:
        self.store, self.deliverer, self.deliver = store, deliverer, deliver
        self.read, self.write = read, write
        self.hostname = hostname
        self.allowed_from = allowed_from  # lower case already (cgpop.config)
        self.max_recipients = max_recipients
        self.limits = limits
        self.on_queued = on_queued
        self._addresses: DirectoryCache[frozenset[str]] = DirectoryCache(
            lambda: self.store.directory_version()
        )

    async def submit(
        self, account: str, peer: str, message: bytes, login_address: str = ""
    ) -> Pop3Error | None:
        """`login_address`: the address part of the name the session logged in with; it
        routes to `account`, so it is an allowed From even through a wildcard (issue 13)."""
        try:
            error, queued, count = await self._submit(account, peer, message, login_address)
        except SubmissionError as exc:
            error = Pop3Error(exc.text)
        except _STORE_ERRORS:
            log.exception("XTND XMIT from %s: store failure", account)
            return Pop3Error(_TRY_LATER, "SYS/TEMP")
        if error is not None:
            log.info("XTND XMIT from %s refused: %s", account, error.text)
            return error
        log.info("XTND XMIT from %s: %d recipients, %d queued", account, count, queued)
        if queued:
            self.on_queued()
        return None

    async def _submit(
        self, account: str, peer: str, message: bytes, login_address: str
    ) -> tuple[Pop3Error | None, int, int]:
        """The steps of the module docstring: (error or None, number queued, recipients)."""
        allowed = await self.read(self.addresses_of, account)
        if login_address:
            allowed = allowed | {login_address.lower()}
        envelope: Envelope = await self.read(
            functools.partial(
                derive_envelope,
                message,
                account=account,
                allowed_from=allowed,
                hostname=self.hostname,
                peer=_peer_ip(peer),
                max_recipients=self.max_recipients,
            )
        )
        now = time.time()
        classified = await self.read(self.classify, account, envelope, now)
        if isinstance(classified, Pop3Error):
            return classified, 0, 0
        prepared, remote = classified
        slot = await self.write(self.take_slot, account, len(envelope.recipients), now)
        if isinstance(slot, Pop3Error):
            return slot, 0, 0
        sent = False
        try:
            error = await self._deliver_local(prepared)
            if error is None:
                await self.write(self.enqueue, account, envelope, remote, now)
                sent = True
            return error, len(remote), len(envelope.recipients)
        finally:
            if not sent:
                await self.write(self.release_slot, slot)

    async def _deliver_local(self, prepared: Prepared) -> Pop3Error | None:
        """Step 4: the local copies, or the reason one could not be stored."""
        if not prepared.copies:
            return None
        results = await self.deliver(prepared)
        for before, r in zip(prepared.results, results, strict=True):
            if before is not None:
                continue  # a remote recipient, no copy here
            if r.status is Status.TEMPORARY:
                text = f"could not deliver to {r.recipient}; try again later"
                return Pop3Error(text, "SYS/TEMP")
            if r.status not in _ACCEPTED:
                return Pop3Error(f"unknown recipient {r.recipient}")
        return None

    # --- blocking parts, on the store's threads ---
    def addresses_of(self, account: str) -> frozenset[str]:
        """The addresses `account` may put in From besides its own (which `derive_envelope`
        adds): its name in every alias of its domain, every exact routing record that lands on
        it, and `[xtnd] allowed_from`. Wildcard records are left out: `*@domain` catches mail,
        it does not make every address of the domain the account's own (only the one the
        session logged in with, which `submit` adds). Cached per account until the directory
        changes."""
        account = account.lower()
        return self._addresses.get(account, lambda: self._addresses_of(account))

    def _addresses_of(self, account: str) -> frozenset[str]:
        name, _, domain = account.rpartition("@")
        allowed = set(self.allowed_from)
        for alias, target in self.store.list_domain_aliases():
            if target.lower() == domain:
                allowed.add(f"{name}@{alias.lower()}")
        for pattern, _target in self.store.list_routes():
            if "*" in pattern:
                continue
            route = self.deliverer.resolve(pattern)
            if route is not None and route.address.lower() == account:
                allowed.add(pattern.lower())
        return frozenset(allowed)

    def classify(
        self, account: str, envelope: Envelope, now: float
    ) -> tuple[Prepared, list[str]] | Pop3Error:
        """Step 2 (reads only): the prepared local delivery and the remote recipients."""
        prepared = self.deliverer.prepare(envelope.sender, envelope.recipients, envelope.message)
        remote: list[str] = []
        for rcpt, result in zip(envelope.recipients, prepared.results, strict=True):
            if result is None:
                continue  # a local copy
            if result.status is Status.REFUSED:
                return Pop3Error(f"recipient {rcpt} does not accept mail")
            if self.is_local(rcpt):
                return Pop3Error(f"unknown recipient {rcpt}")
            remote.append(rcpt)
        count = len(envelope.recipients)
        reason = ratelimit.check(self.store.connection(), account, count, now, self.limits)
        if reason is not None:
            return Pop3Error(reason, "SYS/TEMP")
        return prepared, remote

    def take_slot(self, account: str, recipients: int, now: float) -> int | Pop3Error:
        """Step 3, on the writer: check and record the submission in one transaction."""
        with self.store.transaction() as conn:
            reason = ratelimit.check(conn, account, recipients, now, self.limits)
            if reason is not None:
                return Pop3Error(reason, "SYS/TEMP")
            return ratelimit.record(conn, account, recipients, now)

    def release_slot(self, slot: int) -> None:
        with self.store.transaction() as conn:
            ratelimit.release(conn, slot)

    def enqueue(self, account: str, envelope: Envelope, remote: list[str], now: float) -> None:
        """Step 5, on the writer: the remote recipients queued in one transaction."""
        if not remote:
            return
        with self.store.transaction() as conn:
            queue.enqueue(
                conn,
                sender=envelope.sender,
                account=account,
                message=envelope.message,
                recipients=remote,
                now=now,
            )

    def is_local(self, recipient: str) -> bool:
        """For a recipient that resolves to no mailbox: True when it is ours to refuse rather
        than relay. That is when the router calls it an unknown account (its domain is hosted
        here, or an alias of such a domain), or when a routing record claims the address,
        exactly or by wildcard (its target leads nowhere). The same indexed lookups as the
        router's own walk (router/resolve.py), no table scan."""
        try:
            parsed = parse_name(recipient)
        except RouteError:
            parsed = None
        if parsed is None or parsed.domain is None:
            return self.store.canonical_domain(recipient.rpartition("@")[2].lower()) is not None
        local, domain = parsed.account, parsed.domain
        if self.store.canonical_domain(domain) is not None:
            return True
        patterns = [f"{local}@{domain}", *(p for p, _ in wildcard_candidates(local, domain))]
        return any(self.store.route_target(p) is not None for p in patterns)


def _peer_ip(peer: str) -> str:
    """ "1.2.3.4:5678" or "::1:5678" (the shell's peer) -> the address, for Received:."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer
