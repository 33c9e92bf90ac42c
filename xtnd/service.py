"""XTND XMIT as a service of the gateway: submission, local delivery, the relay queue.

`start_submission(...)` is called by the server wiring at start when `[xtnd] enabled`: it builds
the `Submitter` (xtnd/submit.py) and starts the relay worker (xtnd/worker.py), and returns the
service, whose `submitter` takes submissions and whose `stop()` the wiring awaits at shutdown.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Protocol

from cgpop.blocking import Run
from cgpop.config import Config, XtndConfig
from cgpop.delivery import Prepared, Result
from cgpop.store.api import OutboundQueue
from xtnd.ratelimit import Limits
from xtnd.submit import LocalDelivery, SubmissionStore, Submitter
from xtnd.worker import Deliver, RelayWorker, Settings

__all__ = ["SubmissionService", "XtndStore", "settings_from", "start_submission"]


class XtndStore(SubmissionStore, OutboundQueue, Protocol):
    """What XTND XMIT needs from the store (cgpop.store.api.Store has it all)."""


class SubmissionService:
    def __init__(self, submitter: Submitter, worker: RelayWorker, grace: float) -> None:
        self.submitter, self.worker, self.grace = submitter, worker, grace

    async def stop(self) -> None:
        await self.worker.stop(self.grace)


def settings_from(x: XtndConfig, hostname: str) -> Settings:
    relay = None if x.relay is None else (x.relay.host, x.relay.port)
    return Settings(
        hostname=hostname,
        relay=relay,
        relay_starttls=x.relay_starttls,
        relay_auth=(x.relay_user, x.relay_password) if x.relay_user else None,
        smtp_port=x.smtp_port,
        dns_servers=x.dns_servers,
        dns_port=x.dns_port,
        max_queue_age=timedelta(seconds=x.max_queue_age),
        retry_schedule=tuple(timedelta(seconds=s) for s in x.retry_schedule),
        poll_interval=x.queue_poll_interval,
        timeout=x.relay_timeout,
    )


def start_submission(
    config: Config,
    *,
    store: XtndStore,
    deliverer: LocalDelivery,
    deliver_prepared: Callable[[Prepared], Awaitable[list[Result]]],
    deliver: Deliver,
    read: Run,
    write: Run,
    relay: bool = True,
) -> SubmissionService:
    """Build the submitter and start the relay worker (in the running event loop).
    `deliver_prepared` is the group commit for prepared local deliveries, `deliver` local
    delivery from resolution on (for DSNs); `read` and `write` the store's worker runners.
    Without `relay` the queue is only filled here, another process relays it."""
    x: XtndConfig = config.xtnd
    worker = RelayWorker(
        store=store,
        deliver=deliver,
        read=read,
        write=write,
        settings=settings_from(x, config.server.hostname),
    )
    submitter = Submitter(
        store=store,
        deliverer=deliverer,
        deliver=deliver_prepared,
        read=read,
        write=write,
        hostname=config.server.hostname,
        allowed_from=x.allowed_from,
        max_recipients=x.max_recipients,
        limits=Limits(x.rate_messages_per_hour, x.rate_recipients_per_hour),
        on_queued=worker.wake,
    )
    if relay:  # `[server] workers`: one worker runs the queue (cgpop/prefork.py)
        worker.start()
    return SubmissionService(submitter, worker, config.server.shutdown_grace)
