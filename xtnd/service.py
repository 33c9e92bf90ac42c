"""XTND XMIT as a service of the gateway: submission, local delivery, the relay queue.

`start_submission(gateway)` is called by the Gateway at start when `[xtnd] enabled`: it builds the
`Submitter` (xtnd/submit.py) and sets it as `gateway.submitter`, starts the relay worker
(xtnd/worker.py), and returns the service, whose `stop()` the Gateway awaits at shutdown.
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Any

from cgpop.config import XtndConfig
from cgpop.errors import Pop3Error
from xtnd.ratelimit import Limits
from xtnd.submit import SubmissionError, Submitter
from xtnd.worker import RelayWorker, Settings

__all__ = ["SubmissionService", "settings_from", "start_submission"]


class SubmissionService:
    def __init__(self, worker: RelayWorker, grace: float) -> None:
        self.worker, self.grace = worker, grace

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


async def _submit(
    submitter: Submitter, account: str, peer: str, message: bytes
) -> Pop3Error | None:
    try:
        await submitter.submit(account, peer, message)
    except SubmissionError as exc:
        return Pop3Error(exc.text, "SYS/TEMP" if exc.temporary else None)
    return None


async def start_submission(gateway: Any) -> SubmissionService:
    """Wire XTND XMIT into `gateway` (a cgpop.server.Gateway) and start the relay worker."""
    config = gateway.config
    x: XtndConfig = config.xtnd
    worker = RelayWorker(
        store=gateway.store,
        deliver=gateway.deliver,
        read=gateway.read,
        write=gateway.write,
        settings=settings_from(x, config.server.hostname),
    )
    submitter = Submitter(
        store=gateway.store,
        deliverer=gateway.deliverer,
        deliver=gateway.delivery.submit,
        read=gateway.read,
        write=gateway.write,
        hostname=config.server.hostname,
        allowed_from=x.allowed_from,
        max_recipients=x.max_recipients,
        limits=Limits(x.rate_messages_per_hour, x.rate_recipients_per_hour),
        on_queued=worker.wake,
    )
    gateway.submitter = functools.partial(_submit, submitter)
    worker.start()
    return SubmissionService(worker, config.server.shutdown_grace)
