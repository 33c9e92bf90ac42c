"""The relay worker: takes due recipients off the queue, sends them, keeps the books, bounces.

One asyncio task. It wakes when a submission queued something (`wake()`), when the earliest
`next_attempt` comes, and at the latest every `poll_interval` seconds, so a `cgpop queue flush`
run by another process is noticed within that bound. It waits on an `asyncio.Event`; no loop
spins.

Delivery goes to the `[xtnd] relay` smarthost when one is configured (STARTTLS verified when
`relay_starttls`, else opportunistic; AUTH when `relay_user` is set), otherwise to the MX hosts of
each recipient domain (`xtnd.mx`), in preference order, trying the next address only when the
failure was the host's (`RelayResult.host_failure`), at most `MAX_ADDRESSES` addresses per domain
(Postfix's smtp_mx_address_limit is 5).

Per recipient: ACCEPTED -> `sent`; PERMANENT -> `failed` and a DSN; TEMPORARY and UNCERTAIN ->
retried after the `retry_schedule` wait, until the message is `max_queue_age` old, then `failed`
with status 4.4.7 and a DSN (RFC 3463 section 3.5). UNCERTAIN is retried (at-least-once), see
`xtnd.relay` and `xtnd.queue`. Recipients are marked `sending` before `send()` and rows still
`sending` at start are requeued for the same reason.

DSNs (RFC 3464, `xtnd.dsn`) go into the INBOX of the submitting account through the local
`Deliverer`, with a null Return-Path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from cgpop.delivery import Result, Status
from cgpop.store.api import SqlAccess
from xtnd import queue
from xtnd.dsn import Failure, build_dsn
from xtnd.mx import MxError, make_resolver, resolve_mx
from xtnd.queue import State, Update
from xtnd.relay import Outcome, RecipientResult, RelayResult, StartTLS, send
from xtnd.retry import next_attempt

__all__ = ["MAX_ADDRESSES", "RelayWorker", "Settings"]

log = logging.getLogger("cgpop.xtnd")
Run = Callable[..., Awaitable[Any]]

MAX_ADDRESSES = 5
# Messages taken per pass and sent at the same time: bounds threads and sockets in use.
BATCH = 20
CONCURRENCY = 8


@dataclass(frozen=True, slots=True)
class Settings:
    hostname: str
    relay: tuple[str, int] | None = None
    relay_starttls: bool = False
    relay_auth: tuple[str, str] | None = None
    smtp_port: int = 25
    dns_servers: tuple[str, ...] = ()
    dns_port: int = 53
    max_queue_age: float = 5 * 24 * 3600.0
    retry_schedule: tuple[float, ...] = (60.0, 300.0, 900.0, 1800.0, 3600.0)
    poll_interval: float = 5.0
    timeout: float = 300.0


class Bouncer(Protocol):
    def deliver(self, sender: str, recipients: Sequence[str], message: bytes) -> list[Result]: ...


class RelayWorker:
    def __init__(
        self, *, store: SqlAccess, deliverer: Bouncer, write: Run, settings: Settings
    ) -> None:
        self.store, self.deliverer, self.write = store, deliverer, write
        self.settings = settings
        self.schedule = tuple(timedelta(seconds=s) for s in settings.retry_schedule)
        self.resolver = make_resolver(
            settings.dns_servers or None, port=settings.dns_port, timeout=min(settings.timeout, 30)
        )
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._limit = asyncio.Semaphore(CONCURRENCY)

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
            requeued = await self.write(queue.recover, self.store, time.time())
        except Exception:
            log.exception("could not requeue interrupted recipients")
        else:
            if requeued:
                log.warning("requeued %d recipients interrupted while sending", requeued)
        while not self._stopping:
            self._wake.clear()
            due: float | None = None
            try:
                more = await self.run_once()
                if more:
                    continue
                due = await self.write(queue.next_due, self.store)
            except Exception:
                log.exception("relay worker pass failed")
            wait = self.settings.poll_interval
            if due is not None:
                wait = max(0.0, min(wait, due - time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    async def run_once(self) -> bool:
        """One pass: send what is due, then bounce what failed. True if the batch was full."""
        jobs = await self.write(queue.claim_due, self.store, time.time(), BATCH)
        if jobs:
            await asyncio.gather(*(self._job(job) for job in jobs))
        await self._bounce()
        return len(jobs) >= BATCH

    async def _job(self, job: queue.Job) -> None:
        async with self._limit:
            try:
                results = await self._send(job)
            except Exception:
                log.exception("queue message %d: delivery attempt failed", job.message_id)
                results = [
                    RecipientResult(r, Outcome.TEMPORARY, None, "internal error")
                    for r in job.recipients
                ]
            now = time.time()
            updates = [self._update(job, r, now) for r in results]
            await self.write(queue.record, self.store, job.message_id, updates)
            for r in results:
                log.info(
                    "queue message %d to %s: %s %s",
                    job.message_id,
                    r.recipient,
                    r.outcome.value,
                    r.diagnostic,
                )

    def _update(self, job: queue.Job, result: RecipientResult, now: float) -> Update:
        if result.outcome is Outcome.ACCEPTED:
            return Update(result.recipient, State.SENT)
        status = _status(result)
        diagnostic = result.diagnostic.removeprefix(f"{status} ")
        if result.outcome is Outcome.PERMANENT:
            status = status if status[0] == "5" else "5.0.0"
            return Update(result.recipient, State.FAILED, last_error=f"{status} {diagnostic}")
        if now - job.created >= self.settings.max_queue_age:
            text = f"4.4.7 message expired in the queue; last error: {diagnostic}"
            return Update(result.recipient, State.FAILED, last_error=text)
        attempts = self._attempts(job, result.recipient) + 1
        when = next_attempt(attempts, datetime.fromtimestamp(now, UTC), self.schedule)
        return Update(
            result.recipient,
            State.QUEUED,
            next_attempt=when.timestamp(),
            last_error=f"{status} {diagnostic}",
        )

    def _attempts(self, job: queue.Job, recipient: str) -> int:
        return dict(zip(job.recipients, job.attempts, strict=True)).get(recipient, 0)

    async def _send(self, job: queue.Job) -> list[RecipientResult]:
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
        self, job: queue.Job, domain: str, recipients: list[str]
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
        job: queue.Job,
        recipients: Sequence[str],
        *,
        starttls: StartTLS,
        auth: tuple[str, str] | None,
        address: str | None = None,
    ) -> RelayResult:
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
        for bounce in await self.write(queue.pending_bounces, self.store):
            await self.write(self._deliver_dsn, bounce)

    def _deliver_dsn(self, bounce: queue.Bounce) -> None:
        """On the writer thread: the DSN into the account's INBOX, then forget the rows."""
        failures = [
            Failure(r, status if _is_status(status) else "5.0.0", text)
            for r, status, text in bounce.failures
        ]
        dsn = build_dsn(
            reporting_mta=self.settings.hostname,
            original_sender=bounce.sender,
            original_message=bounce.message,
            failures=failures,
            arrival_date=datetime.fromtimestamp(bounce.created, UTC),
        )
        # RFC 3464 section 2 / RFC 5321 section 4.5.5: a bounce has a null reverse-path.
        results = self.deliverer.deliver("", [bounce.account], dsn)
        if any(r.status is Status.TEMPORARY for r in results):
            log.warning("queue message %d: DSN delivery failed, will retry", bounce.message_id)
            return
        if any(r.status not in (Status.DELIVERED, Status.DUPLICATE) for r in results):
            log.warning(
                "queue message %d: no INBOX for %s, DSN dropped", bounce.message_id, bounce.account
            )
        queue.finish_bounce(self.store, bounce.message_id, [r for r, _, _ in bounce.failures])


def _status(result: RecipientResult) -> str:
    """RFC 3463 status: one our own text starts with (MX trouble), else the relay's."""
    first = result.text.partition(" ")[0]
    return first if result.code is None and _is_status(first) else result.status


def _is_status(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 3 and text[:1] in "45" and all(p.isdigit() for p in parts)
