"""The `[metrics] listen` endpoint: `GET /metrics` (Prometheus exposition, by prometheus_client)
and `GET /healthz` (200 "ok" when the store answers, 503 with the reason when it does not).

A deliberately small HTTP/1.1 server on the gateway's event loop: one request per connection,
the request head bounded in size and time, no body read, `Connection: close`. Unknown paths get
404, other methods 405. Nothing here is authenticated: `listen` belongs on loopback or a
management network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable

from cgpop.blocking import Run
from cgpop.config import Endpoint
from cgpop.metrics import Metrics
from cgpop.store.api import QueueStats

log = logging.getLogger("cgpop.metrics")

# A scraper's request head is a few hundred octets (Prometheus sends about 300); 8 KiB, the
# common default of HTTP servers for the whole head, leaves room and bounds the memory a peer
# can make us hold.
MAX_HEAD = 8 * 1024
# A request head must arrive within this (a slow peer holds a connection no longer).
HEAD_TIMEOUT = 10.0
# /healthz: a store that has not answered a trivial read in this time is not answering.
HEALTH_TIMEOUT = 5.0

Scrape = Callable[[str], Awaitable[tuple[bytes, str]]]  # Accept header -> (body, content type)
Health = Callable[[], Awaitable[str | None]]  # None when healthy, else the reason

_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
_PATHS = ("/metrics", "/healthz")


def response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n"
        + ("Allow: GET\r\n" if status == 405 else "")
        + "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def gateway_scrape(metrics: Metrics, read: Run, queue_stats: Callable[[], QueueStats]) -> Scrape:
    """The gateway's /metrics: the queue gauges read from the store on a reader thread (off the
    event loop), then every metric in the format the scraper asked for."""

    async def scrape(accept: str) -> tuple[bytes, str]:
        try:
            metrics.set_queue(await asyncio.wait_for(read(queue_stats), HEALTH_TIMEOUT))
        except Exception as exc:  # the rest is still worth serving; /healthz tells the story
            log.warning("metrics: queue figures not updated: %s", exc)
        return metrics.exposition(accept)

    return scrape


def store_health(read: Run, probe: Callable[[], object]) -> Health:
    """The store answers when `probe` (a trivial read) returns in a reader thread in time."""

    async def health() -> str | None:
        try:
            await asyncio.wait_for(read(probe), HEALTH_TIMEOUT)
        except TimeoutError:
            return f"store did not answer within {HEALTH_TIMEOUT:g} s"
        except Exception as exc:
            log.warning("healthz: store unavailable: %s", exc)
            return f"store unavailable: {exc}"[:500]
        return None

    return health


class MetricsEndpoint:
    def __init__(self, scrape: Scrape, health: Health) -> None:
        self.scrape, self.health = scrape, health

    async def start(self, ep: Endpoint, sock: socket.socket | None = None) -> asyncio.Server:
        """Serve on `ep`, or on `sock` when the listener was opened already (the parent of
        several workers opens it, cgpop/prefork.py)."""
        if sock is not None:
            return await asyncio.start_server(self.handle, sock=sock, limit=MAX_HEAD)
        try:
            return await asyncio.start_server(
                self.handle, ep.host, ep.port, reuse_address=True, limit=MAX_HEAD
            )
        except OSError as exc:
            raise OSError(f"cannot listen on {ep} for metrics: {exc.strerror}") from None

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(await self.answer(reader))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the peer went away
        except Exception:
            log.exception("metrics request failed")
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def answer(self, reader: asyncio.StreamReader) -> bytes:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except asyncio.LimitOverrunError:
            return response(431, b"request head too large\n")
        except TimeoutError:
            return response(408, b"request head not received in time\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return response(400, b"bad request line\n")
        method, target = parts[0], parts[1]
        path = target.partition("?")[0]
        if path not in _PATHS:
            return response(404, b"not found: try /metrics or /healthz\n")
        if method != "GET":
            return response(405, b"only GET\n")
        if path == "/healthz":
            reason = await self.health()
            if reason is None:
                return response(200, b"ok\n")
            return response(503, reason.encode("utf-8", "replace") + b"\n")
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        body, content_type = await self.scrape(accept)
        return response(200, body, content_type)
