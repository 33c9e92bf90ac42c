"""Accept one XTND XMIT submission: check it, deliver local copies, queue the rest (issue 5).

`Submitter.submit` is what the asyncio shell awaits after the engine read the body. It returns
None only once every recipient is durably delivered (local, through the same `Deliverer` as LMTP,
so X-Real-To and duplicate suppression apply) or durably queued for the relay worker; otherwise a
`Pop3Error` whose text names the reason, and the offending recipient when there is one (Eudora
shows it and marks the message unsendable).

Order of the steps, all but the envelope on the server's single writer thread in one job, so
the worker and other sessions cannot interleave:

1. `derive_envelope` (pure; in a worker thread, the `email` parser is the costly part): From
   check, recipients, Bcc removed, Received/Date/Message-ID added.
2. Every recipient is classified before anything is written: a route to a mailbox that takes
   mail is local; an address in a domain hosted or routed here that names nothing is refused;
   anything else is remote.
3. The rate limit (messages and recipients per hour).
4. Local copies are delivered (one store transaction).
5. The remote recipients are queued and the submission recorded (one store transaction).

If step 5 failed after step 4 succeeded, the client sees -ERR although local copies exist; a
resend is then caught by duplicate suppression (same Message-ID). Doing 5 before 4 would instead
risk relaying a message whose submission was refused.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from cgpop.delivery import Result, Status
from cgpop.errors import Pop3Error
from cgpop.store.api import SqlAccess, StoreError
from router.route import Route
from xtnd import queue, ratelimit
from xtnd.envelope import Envelope, SubmissionError, derive_envelope

__all__ = ["Submitter"]

log = logging.getLogger("cgpop.xtnd")
T = TypeVar("T")
Run = Callable[..., Awaitable[Any]]

_ACCEPTED = (Status.DELIVERED, Status.DUPLICATE)


class Directory(SqlAccess, Protocol):
    def canonical_domain(self, name: str) -> str | None: ...

    def list_routes(self) -> list[tuple[str, str]]: ...

    def list_domain_aliases(self) -> list[tuple[str, str]]: ...


class LocalDelivery(Protocol):
    def resolve(self, recipient: str) -> Route | None: ...

    def check(self, recipient: str) -> Status | None: ...

    def deliver(self, sender: str, recipients: Sequence[str], message: bytes) -> list[Result]: ...


class Submitter:
    """The `Submitter` of cgpop.server: XTND XMIT behind the engine."""

    def __init__(
        self,
        *,
        store: Directory,
        deliverer: LocalDelivery,
        read: Run,
        write: Run,
        hostname: str,
        allowed_from: Sequence[str],
        max_recipients: int,
        limits: ratelimit.Limits,
        on_queued: Callable[[], None] = lambda: None,
        test_environment: bool = False,
    ) -> None:
        self.store, self.deliverer = store, deliverer
        self.read, self.write = read, write
        self.hostname = hostname
        self.allowed_from = tuple(a.lower() for a in allowed_from)
        self.max_recipients = max_recipients
        self.limits = limits
        self.on_queued = on_queued
        self.test_environment = test_environment

    async def submit(self, account: str, peer: str, message: bytes) -> Pop3Error | None:
        try:
            allowed = await self.read(self.addresses_of, account)
            envelope = await asyncio.to_thread(
                derive_envelope,
                message,
                account=account,
                allowed_from=allowed,
                hostname=self.hostname,
                peer=_peer_ip(peer),
                max_recipients=self.max_recipients,
                test_environment=self.test_environment,
            )
        except SubmissionError as exc:
            log.info("XTND XMIT from %s refused: %s", account, exc.text)
            return Pop3Error(exc.text)
        try:
            error: Pop3Error | None
            queued: int
            error, queued = await self.write(self.commit, account, envelope, time.time())
        except StoreError:
            log.exception("XTND XMIT from %s: store failure", account)
            return Pop3Error("temporary failure, message not sent; try again later", "SYS/TEMP")
        if error is not None:
            log.info("XTND XMIT from %s refused: %s", account, error.text)
            return error
        log.info(
            "XTND XMIT from %s: %d recipients, %d queued", account, len(envelope.recipients), queued
        )
        if queued:
            self.on_queued()
        return None

    # --- blocking parts, on the store's threads ---
    def addresses_of(self, account: str) -> set[str]:
        """The addresses `account` may put in From: its own, its name in every alias of its
        domain, every exact routing record that lands on it, and `[xtnd] allowed_from`.
        Wildcard records are left out: `*@domain` catches mail, it does not make every
        address of the domain the account's own."""
        account = account.lower()
        name, _, domain = account.rpartition("@")
        allowed = {account, *self.allowed_from}
        for alias, target in self.store.list_domain_aliases():
            if target.lower() == domain:
                allowed.add(f"{name}@{alias.lower()}")
        for pattern, _target in self.store.list_routes():
            if "*" in pattern:
                continue
            route = self.deliverer.resolve(pattern)
            if route is not None and route.address.lower() == account:
                allowed.add(pattern.lower())
        return allowed

    def commit(self, account: str, envelope: Envelope, now: float) -> tuple[Pop3Error | None, int]:
        """Steps 2 to 5 of the module docstring: (error or None, number queued)."""
        local: list[str] = []
        remote: list[str] = []
        for rcpt in envelope.recipients:
            status = self.deliverer.check(rcpt)
            if status is None:
                local.append(rcpt)
            elif status is Status.REFUSED:
                return Pop3Error(f"recipient {rcpt} does not accept mail"), 0
            elif self.is_local_domain(rcpt.rpartition("@")[2]):
                return Pop3Error(f"unknown recipient {rcpt}"), 0
            else:
                remote.append(rcpt)
        with self.store.transaction() as conn:
            reason = ratelimit.check(conn, account, len(envelope.recipients), now, self.limits)
        if reason is not None:
            return Pop3Error(reason, "SYS/TEMP"), 0
        if local:
            results = self.deliverer.deliver(envelope.sender, local, envelope.message)
            for r in results:
                if r.status is Status.TEMPORARY:
                    text = f"could not deliver to {r.recipient}; try again later"
                    return Pop3Error(text, "SYS/TEMP"), 0
                if r.status not in _ACCEPTED:
                    return Pop3Error(f"unknown recipient {r.recipient}"), 0
        with self.store.transaction() as conn:
            ratelimit.record(conn, account, len(envelope.recipients), now)
            if remote:
                queue.enqueue(
                    conn,
                    sender=envelope.sender,
                    account=account,
                    message=envelope.message,
                    recipients=remote,
                    now=now,
                )
        return None, len(remote)

    def is_local_domain(self, domain: str) -> bool:
        """Hosted here (or a domain alias), or named by a routing record."""
        domain = domain.lower()
        if self.store.canonical_domain(domain) is not None:
            return True
        return any(p.rpartition("@")[2].lower() == domain for p, _ in self.store.list_routes())


def _peer_ip(peer: str) -> str:
    """ "1.2.3.4:5678" or "::1:5678" (the shell's peer) -> the address, for Received:."""
    host, sep, port = peer.rpartition(":")
    return host if sep and port.isdigit() else peer
