"""The relay worker: takes due recipients off the queue, sends them, keeps the books, bounces.

One asyncio task. It wakes when a submission queued something (`wake()`), when the earliest
`next_attempt` comes, and at the latest every `poll_interval` seconds, so a `cgpop queue flush`
run by another process is noticed within that bound. It waits on an `asyncio.Event`; no loop
spins. Each pass first asks a reader thread whether anything is due; only then does it claim
rows on the writer thread, so an idle worker takes no write lock.

Delivery goes to the `[xtnd] relay` smarthost when one is configured (STARTTLS verified when
`relay_starttls`, else opportunistic; AUTH when `relay_user` is set), otherwise to the MX hosts of
each recipient domain (`xtnd.mx`), in preference order, trying the next address only when the
failure was the host's (`RelayResult.host_failure`), at most `MAX_ADDRESSES` addresses per domain
(Postfix's smtp_mx_address_limit is 5). At most `CONCURRENCY` SMTP connections are open at once.

Per recipient: ACCEPTED -> `sent`; PERMANENT -> `failed` and a DSN; TEMPORARY and UNCERTAIN ->
retried after the `retry_schedule` wait, until the message is `max_queue_age` old, then `failed`
with status 4.4.7 and a DSN (RFC 3463 section 3.5). UNCERTAIN is retried (at-least-once), see
`xtnd.relay` and `cgpop.store.api.OutboundQueue`. Recipients are marked `sending` before
`send()`; rows still `sending` at start are requeued for the same reason, and so are the
recipients of an attempt whose outcome could not be stored.

DSNs (RFC 3464, `xtnd.dsn`) go into the INBOX of the submitting account through the gateway's
local delivery (reader-thread resolution, then the group commit), with a null Return-Path. A DSN
that cannot be delivered now is tried again after the `retry_schedule` wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from cgpop.blocking import Run
from cgpop.delivery import Result, Status
from cgpop.store.api import (
    BOUNCE_BATCH,
    Bounce,
    Job,
    OutboundQueue,
    State,
    TemporaryFailure,
    Update,
)
from xtnd.dsn import Failure, build_dsn, is_failure_status
from xtnd.mx import MxError, make_resolver, resolve_mx
from xtnd.relay import Outcome, RecipientResult, RelayResult, StartTLS, send
from xtnd.retry import expired, next_attempt

__all__ = ["CONCURRENCY", "MAX_ADDRESSES", "RelayWorker", "Settings"]

log = logging.getLogger("cgpop.xtnd")
# Local delivery (resolution, then the group commit): sender, recipients, message -> results.
Deliver = Callable[[str, Sequence[str], bytes], Awaitable[list[Result]]]

MAX_ADDRESSES = 5
# Messages taken per pass, and SMTP connections open at the same time: bounds the threads and
# sockets in use.
BATCH = 20
CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class Settings:
    """`[xtnd]` as the worker uses it (built by `xtnd.service.settings_from`; the defaults live
    in cgpop.config.XtndConfig): the relay parsed, the waits as `xtnd.retry` takes them."""

    hostname: str
    relay: tuple[str, int] | None
    relay_starttls: bool
    relay_auth: tuple[str, str] | None = field(repr=False)  # (user, password)
    smtp_port: int
    dns_servers: tuple[str, ...]
    dns_port: int
    max_queue_age: timedelta
    retry_schedule: tuple[timedelta, ...]
    poll_interval: float
    timeout: float


class RelayWorker:
    def __init__(
        self, *, store: OutboundQueue, deliver: Deliver, read: Run, write: Run, settings: Settings
    ) -> None:
        self.store, self.deliver = store, deliver
        self.read, self.write = read, write
        self.settings = settings
        self.resolver = make_resolver(
            settings.dns_servers or None, port=settings.dns_port, timeout=min(settings.timeout, 30)
        )
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._connections = asyncio.Semaphore(CONCURRENCY)
        # (message id, recipients, when) of attempts neither recorded nor requeued (the store
        # unavailable): still claimed by this process, requeued at the next pass.
        self._unrecorded: list[tuple[int, tuple[str, ...], float]] = []

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="xtnd-relay")

    def wake(self) -> None:
        self._wake.set()

    async def stop(self, grace: float = 10.0) -> None:
        """Finish the pass under way within `grace` seconds, else cancel it (rows it left
        `sending` are requeued at the next start)."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._task), grace)
        if not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def run(self) -> None:
        try:
            requeued = await self.write(self.store.recover_queue, time.time())
        except Exception:
            log.exception("could not requeue interrupted recipients")
        else:
            if requeued:
                log.warning("requeued %d recipients interrupted while sending", requeued)
        while not self._stopping:
            self._wake.clear()
            due: float | None = None
            try:
                due = await self.run_once()
            except TemporaryFailure as exc:  # the store cannot be used now: the next pass
                log.warning("relay worker pass failed: %s", exc)
            except Exception:
                log.exception("relay worker pass failed")
            wait = self.settings.poll_interval
            if due is not None:
                wait = max(0.0, min(wait, due - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def run_once(self) -> float | None:
        """One pass: send what is due, then bounce what failed. Returns when a recipient is
        next due (now when the batch was full), None when none is queued."""
        while self._unrecorded:
            message_id, recipients, when = self._unrecorded[0]
            await self.write(self.store.requeue, message_id, recipients, when)
            del self._unrecorded[0]
            log.warning("queue message %d: recipients requeued", message_id)
        now = time.time()
        due: float | None = await self.read(self.store.next_due)
        if due is not None and due <= now:
            jobs = await self.write(self.store.claim_due, now, BATCH)
            outcomes = await asyncio.gather(*(self._job(j) for j in jobs), return_exceptions=True)
            for job, outcome in zip(jobs, outcomes, strict=True):
                if isinstance(outcome, TemporaryFailure):  # requeued once the store is back
                    log.warning("queue message %d: attempt failed: %s", job.message_id, outcome)
                elif isinstance(outcome, Exception):
                    log.error("queue message %d: attempt failed", job.message_id, exc_info=outcome)
            due = now if len(jobs) >= BATCH else await self.read(self.store.next_due)
        await self._bounce()
        return due

    async def _job(self, job: Job) -> None:
        try:
            results = await self._send(job)
        except Exception:
            log.exception("queue message %d: delivery attempt failed", job.message_id)
            results = [
                RecipientResult(r, Outcome.TEMPORARY, None, "internal error")
                for r in job.recipients
            ]
        now = datetime.now(UTC)
        attempts = dict(zip(job.recipients, job.attempts, strict=True))
        updates = [self._update(job, r, attempts.get(r.recipient, 0), now) for r in results]
        try:
            await self.write(self.store.record_attempt, job.message_id, updates)
        except Exception as exc:
            # Database busy, disk full: whatever happened on the wire, try again later
            # (at-least-once, see the module docstring).
            if isinstance(exc, TemporaryFailure):
                log.warning(
                    "queue message %d: could not record the attempt: %s", job.message_id, exc
                )
            else:
                log.exception("queue message %d: could not record the attempt", job.message_id)
            when = next_attempt(1, now, self.settings.retry_schedule).timestamp()
            try:
                await self.write(self.store.requeue, job.message_id, job.recipients, when)
            except TemporaryFailure:  # the store unavailable (database down): a later pass
                self._unrecorded.append((job.message_id, tuple(job.recipients), when))
                raise
            log.warning("queue message %d: recipients requeued", job.message_id)
        for r in results:
            log.info(
                "queue message %d to %s: %s %s",
                job.message_id,
                r.recipient,
                r.outcome.value,
                r.diagnostic,
            )

    def _update(self, job: Job, result: RecipientResult, attempts: int, now: datetime) -> Update:
        if result.outcome is Outcome.ACCEPTED:
            return Update(result.recipient, State.SENT)
        status = _status(result)
        diagnostic = result.diagnostic.removeprefix(f"{status} ")
        if result.outcome is Outcome.PERMANENT:
            status = status if status[0] == "5" else "5.0.0"
            return Update(result.recipient, State.FAILED, last_error=f"{status} {diagnostic}")
        if expired(datetime.fromtimestamp(job.created, UTC), now, self.settings.max_queue_age):
            text = f"4.4.7 message expired in the queue; last error: {diagnostic}"
            return Update(result.recipient, State.FAILED, last_error=text)
        when = next_attempt(attempts + 1, now, self.settings.retry_schedule)
        return Update(
            result.recipient,
            State.QUEUED,
            next_attempt=when.timestamp(),
            last_error=f"{status} {diagnostic}",
        )

    async def _send(self, job: Job) -> list[RecipientResult]:
        s = self.settings
        if s.relay is not None:
            starttls: StartTLS = True if s.relay_starttls else "opportunistic"
            result = await self._attempt(
                s.relay[0], s.relay[1], job, job.recipients, starttls=starttls, auth=s.relay_auth
            )
            return list(result.results)
        by_domain: dict[str, list[str]] = {}
        for r in job.recipients:
            by_domain.setdefault(r.rpartition("@")[2].lower(), []).append(r)
        found = await asyncio.gather(*(self._to_domain(job, d, rs) for d, rs in by_domain.items()))
        return [r for results in found for r in results]

    async def _to_domain(
        self, job: Job, domain: str, recipients: list[str]
    ) -> list[RecipientResult]:
        try:
            hosts = await resolve_mx(domain, self.resolver)
        except MxError as exc:
            # RFC 3463: X.1.2 bad destination system address; X.4.3 routing server failure.
            outcome = Outcome.PERMANENT if exc.permanent else Outcome.TEMPORARY
            text = f"{'5.1.2' if exc.permanent else '4.4.3'} {exc.text}"
            return [RecipientResult(r, outcome, None, text) for r in recipients]
        last: RelayResult | None = None
        tried = 0
        for host in hosts:
            for address in host.addresses:
                if tried >= MAX_ADDRESSES:
                    break
                tried += 1
                last = await self._attempt(
                    host.host,
                    self.settings.smtp_port,
                    job,
                    recipients,
                    starttls="opportunistic",
                    auth=None,
                    address=address,
                )
                if not last.host_failure:
                    return list(last.results)
        assert last is not None  # resolve_mx returns only hosts with addresses
        return list(last.results)

    async def _attempt(
        self,
        host: str,
        port: int,
        job: Job,
        recipients: Sequence[str],
        *,
        starttls: StartTLS,
        auth: tuple[str, str] | None,
        address: str | None = None,
    ) -> RelayResult:
        """One SMTP connection; waits while `CONCURRENCY` others are open."""
        async with self._connections:
            return await send(
                host,
                port,
                job.sender,
                recipients,
                job.message,
                helo=self.settings.hostname,
                starttls=starttls,
                auth=auth,
                timeout=self.settings.timeout,
                address=address,
            )

    async def _bounce(self) -> None:
        """DSNs for the failed recipients whose DSN is due; one failing does not stop the rest."""
        for bounce in await self.read(self.store.pending_bounces, time.time(), BOUNCE_BATCH):
            try:
                delivered = await self._deliver_dsn(bounce)
            except Exception:
                log.exception("queue message %d: DSN failed", bounce.message_id)
                delivered = False
            if not delivered:
                await self._defer(bounce)

    async def _deliver_dsn(self, bounce: Bounce) -> bool:
        """The DSN into the account's INBOX, then forget the rows. False: try again later."""
        dsn = await self.read(self._build_dsn, bounce)
        # RFC 3464 section 2 / RFC 5321 section 4.5.5: a bounce has a null reverse-path.
        results = await self.deliver("", [bounce.account], dsn)
        # A full mailbox with `over_quota = "tempfail"` may make room: retry as for a failure.
        if any(
            r.status is Status.TEMPORARY or (r.status is Status.OVER_QUOTA and not r.permanent)
            for r in results
        ):
            log.warning("queue message %d: DSN delivery failed, will retry", bounce.message_id)
            return False
        if any(r.status not in (Status.DELIVERED, Status.DUPLICATE) for r in results):
            log.warning(
                "queue message %d: no INBOX for %s, DSN dropped", bounce.message_id, bounce.account
            )
        recipients = [r for r, _, _ in bounce.failures]
        await self.write(self.store.finish_bounce, bounce.message_id, recipients)
        return True

    def _build_dsn(self, bounce: Bounce) -> bytes:
        failures = [
            Failure(r, status if is_failure_status(status) else "5.0.0", text)
            for r, status, text in bounce.failures
        ]
        return build_dsn(
            reporting_mta=self.settings.hostname,
            original_sender=bounce.sender,
            original_message=bounce.head,
            failures=failures,
            arrival_date=datetime.fromtimestamp(bounce.created, UTC),
        )

    async def _defer(self, bounce: Bounce) -> None:
        now = datetime.now(UTC)
        when = next_attempt(bounce.attempts + 1, now, self.settings.retry_schedule).timestamp()
        recipients = [r for r, _, _ in bounce.failures]
        try:
            await self.write(self.store.defer_bounce, bounce.message_id, recipients, when)
        except Exception:
            log.exception("queue message %d: could not defer the DSN", bounce.message_id)


def _status(result: RecipientResult) -> str:
    """RFC 3463 status: one our own text starts with (MX trouble), else the relay's."""
    first = result.text.partition(" ")[0]
    return first if result.code is None and is_failure_status(first) else result.status
