"""Accept one XTND XMIT submission: check it, deliver local copies, queue the rest (issue 5).

`Submitter.submit` is what the asyncio shell awaits after the engine read the body. It returns
None only once every recipient is durably delivered (local, through the same `Deliverer` and
group commit as LMTP, so X-Real-To and duplicate suppression apply) or durably queued for the
relay worker; otherwise it raises `SubmissionError`, whose text names the reason, and the offending
recipient when there is one (Eudora shows it and marks the message unsendable); the shell makes
it the `-ERR` reply. A store failure at any step is a temporary refusal, and the session goes on.

The steps, and the threads they run on:

1. The addresses the account may use (reader; cached until the directory changes), then
   `derive_envelope` (reader; pure, the `email` parser is the costly part): From check,
   recipients, Bcc removed, Received/Date/Message-ID added.
2. Every recipient is classified before anything is written (reader, `Deliverer.prepare`): a
   route to a mailbox that takes mail is local; an address the router would call an unknown
   account (its domain is hosted here) or that a routing record claims is refused; anything
   else is remote. The rate limit (messages and recipients per hour) is checked here too, so a
   submission over it delivers nothing.
3. On the writer, in one store transaction (`take_submission_slot`), the rate limit is taken:
   checked again and the submission recorded, before anything is stored or queued, so
   parallel sessions of one account cannot deliver more copies than the limit allows (issue
   10, defect 3).
4. Local copies are delivered through the gateway's group commit (writer, shared transaction).
5. On the writer, in one transaction: the remote recipients queued.

If step 4 or 5 fails, the slot taken in step 3 is given back. If step 5 failed after step 4
succeeded, the client sees -ERR although local copies exist; a resend is then caught by duplicate
suppression (same Message-ID). Queueing before delivering would instead risk relaying a message
whose submission was refused.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from cgpop import spool
from cgpop.blocking import Run
from cgpop.delivery import Prepared, Result, Status
from cgpop.dircache import DirectoryCache
from cgpop.spool import Octets
from cgpop.store.api import Outbound, SubmissionCounts, TemporaryFailure, Verdict
from router.resolve import is_claimed
from router.route import Route
from xtnd import ratelimit
from xtnd.envelope import Envelope, SubmissionError, derive_envelope

__all__ = ["SubmissionError", "SubmissionStore", "Submitter"]

log = logging.getLogger("cgpop.xtnd")

_ACCEPTED = (Status.DELIVERED, Status.DUPLICATE)
_TRY_LATER = "temporary failure, message not sent; try again later"


class SubmissionStore(Protocol):
    """What a submission needs from the store (cgpop.store.api.Store has it all)."""

    def directory_version(self) -> int: ...
    def canonical_domain(self, name: str) -> str | None: ...
    def account_exists(self, domain: str, account: str) -> bool: ...
    def route_target(self, pattern: str) -> str | None: ...
    def list_routes(self) -> list[tuple[str, str]]: ...
    def list_domain_aliases(self) -> list[tuple[str, str]]: ...
    def submission_counts(self, account: str, since: float) -> SubmissionCounts: ...
    def take_submission_slot(
        self, account: str, recipients: int, now: float, since: float, verdict: Verdict
    ) -> int | str: ...
    def release_submission_slot(self, slot: int) -> None: ...
    def enqueue(self, outbound: Outbound, now: float) -> int: ...


class LocalDelivery(Protocol):
    def resolve(self, recipient: str) -> Route | None: ...

    def prepare(self, sender: str, recipients: Sequence[str], message: Octets) -> Prepared: ...


class Submitter:
    """XTND XMIT behind the engine: `submit` accepts one message or raises SubmissionError.

    `read` and `write` run blocking work on the store's reader pool and its single writer
    thread; `deliver` is the group commit for prepared local deliveries.
    """

    def __init__(
        self,
        *,
        store: SubmissionStore,
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
        self, account: str, peer: str, message: Octets, login_address: str = ""
    ) -> None:
        """Deliver or queue `message` for every recipient, or raise SubmissionError.
        `login_address`: the address part of the name the session logged in with; it routes
        to `account`, so it is an allowed From even through a wildcard (issue 13)."""
        try:
            queued, count = await self._submit(account, peer, message, login_address)
        except SubmissionError as exc:
            log.info("XTND XMIT from %s refused: %s", account, exc.text)
            raise
        except TemporaryFailure as exc:  # the store cannot be used now (database down)
            log.warning("XTND XMIT from %s: store unavailable: %s", account, exc)
            raise SubmissionError(_TRY_LATER, temporary=True) from exc
        except Exception as exc:
            # A failing store (its own errors, the file system's) or anything unexpected: the
            # client may retry; the traceback is for the operator only.
            log.exception("XTND XMIT from %s: store failure", account)
            raise SubmissionError(_TRY_LATER, temporary=True) from exc
        finally:
            spool.close(message)  # a spooled message's file, once stored and queued
        log.info("XTND XMIT from %s: %d recipients, %d queued", account, count, queued)
        if queued:
            self.on_queued()

    async def _submit(
        self, account: str, peer: str, message: Octets, login_address: str
    ) -> tuple[int, int]:
        """The steps of the module docstring: (number queued, recipients)."""
        allowed = await self.read(self.addresses_of, account)
        if login_address:
            allowed = allowed | {login_address.lower()}
        # A spooled message: the envelope is derived from its header block, and the body
        # stays in the spool (cgpop/spool.py).
        head, body = await self.read(spool.split_head, message)
        if head is None:
            raise SubmissionError(f"message header too large (over {spool.HEADER_MAX} octets)")
        envelope: Envelope = await self.read(
            functools.partial(
                derive_envelope,
                head,
                account=account,
                allowed_from=allowed,
                hostname=self.hostname,
                peer=_peer_ip(peer),
                max_recipients=self.max_recipients,
            )
        )
        envelope = dataclasses.replace(envelope, message=spool.join(envelope.message, body))
        now = time.time()
        prepared, remote = await self.read(self.classify, account, envelope, now)
        slot = await self.write(self.take_slot, account, len(envelope.recipients), now)
        sent = False
        try:
            await self._deliver_local(prepared)
            if remote:
                outbound = Outbound(envelope.sender, account, envelope.message, tuple(remote))
                await self.write(self.store.enqueue, outbound, now)
            sent = True
            return len(remote), len(envelope.recipients)
        finally:
            if not sent:
                await self.write(self.store.release_submission_slot, slot)

    async def _deliver_local(self, prepared: Prepared) -> None:
        """Step 4: the local copies, or SubmissionError naming one that could not be stored."""
        if not prepared.copies:
            return
        results = await self.deliver(prepared)
        for before, r in zip(prepared.results, results, strict=True):
            if before is not None:
                continue  # a remote recipient, no copy here
            if r.status is Status.TEMPORARY:
                text = f"could not deliver to {r.recipient}; try again later"
                raise SubmissionError(text, temporary=True)
            if r.status is Status.OVER_QUOTA:
                # Issue 12: the -ERR names the recipient whose mailbox is full.
                text = f"mailbox of {r.recipient} is full"
                raise SubmissionError(text, temporary=not r.permanent)
            if r.status not in _ACCEPTED:
                raise SubmissionError(f"unknown recipient {r.recipient}")

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

    def classify(self, account: str, envelope: Envelope, now: float) -> tuple[Prepared, list[str]]:
        """Step 2 (reads only): the prepared local delivery and the remote recipients."""
        prepared = self.deliverer.prepare(envelope.sender, envelope.recipients, envelope.message)
        remote: list[str] = []
        for rcpt, result in zip(envelope.recipients, prepared.results, strict=True):
            if result is None:
                continue  # a local copy
            if result.status is Status.REFUSED:
                raise SubmissionError(f"recipient {rcpt} does not accept mail")
            if is_claimed(rcpt, directory=self.store):
                raise SubmissionError(f"unknown recipient {rcpt}")
            remote.append(rcpt)
        count = len(envelope.recipients)
        counts = self.store.submission_counts(account, now - ratelimit.WINDOW)
        reason = ratelimit.judge(counts, count, self.limits)
        if reason is not None:
            raise SubmissionError(reason, temporary=True)
        return prepared, remote

    def take_slot(self, account: str, recipients: int, now: float) -> int:
        """Step 3, on the writer: check and record the submission in one store transaction."""
        slot = self.store.take_submission_slot(
            account,
            recipients,
            now,
            now - ratelimit.WINDOW,
            functools.partial(ratelimit.judge, recipients=recipients, limits=self.limits),
        )
        if isinstance(slot, str):
            raise SubmissionError(slot, temporary=True)
        return slot


def _peer_ip(peer: str) -> str:
    """ "1.2.3.4:5678" or "::1:5678" (the shell's peer) -> the address, for Received:."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer
