"""The gateway's Prometheus metrics (issue 12, `[metrics]`): one registry per gateway, the metric
objects, and the small meters handed to the parts that count.

Each part gets only its meter or a callable (login.py a `count_login`, lmtp.py
`count_recipient`/`count_refused`, blocking.py `observe`, the POP connections a `Pop3Meter`), never
this module's `Metrics` nor the gateway. Exposition is prometheus_client's `generate_latest`;
metrics_http.py serves it.

The per-command path (a POP3 session's every line) is the hot one: the sessions benchmark must not
lose more than 3% to counting. prometheus_client's own counter and histogram take a lock per
update (about 0.4 and 0.9 us each here), so commands, their durations and the octets sent are
kept in plain lists on the event loop (`CommandStats`, ~0.3 us per command) and turned into
metric families at scrape time by a collector. Every other count (logins, handshakes, LMTP
recipients, store calls) is rare beside the commands and uses the library's objects directly.

With `[server] workers` above 1 (issue 14) one /metrics shows the whole server
(cgpop/metrics_workers.py): the library's objects run in prometheus_client's multiprocess mode
(each process writes its values to files in one directory; the serving process's
MultiProcessCollector sums them), and the per-command numbers live in shared memory, one block
per worker, summed by the same collector as in one process.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from cgpop.pop3.states import LEGAL
from cgpop.store.api import QueueStats

# The verb label: the verbs the engine knows, and "other" for anything a client sends besides,
# so a client cannot create label values (cardinality) at will.
VERBS: tuple[str, ...] = (*sorted(LEGAL), "other")
_OTHER = len(VERBS) - 1
_VERB_INDEX: dict[bytes, int] = {v.encode(): i for i, v in enumerate(VERBS[:-1])}

# Command duration buckets (seconds): most POP3 commands take well under a millisecond; a RETR of
# a large message, or a login that pays the failed-login delay, takes seconds.
COMMAND_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    float("inf"),
)
# Store call buckets: a read is sub-millisecond, a durable group commit a few milliseconds (fsync).
STORE_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    5.0,
    float("inf"),
)

LOGIN_RESULTS = ("ok", "auth_failed", "refused", "alert")
TLS_RESULTS = ("ok", "failed")
# Why a connection got no session: the config key whose limit it hit, or a bad PROXY header.
REFUSAL_REASONS = ("max_channels", "max_per_ip", "proxy_header", "lmtp_max_connections")
# cgpop.delivery.Status values -> the recipient label. "over_quota" is counted when the delivery
# result says so (the quota feature's status value); "refused": the mailbox takes no posting.
RECIPIENT_LABELS = {
    "delivered": "delivered",
    "duplicate": "duplicate",
    "unknown": "unknown",
    "refused": "refused",
    "over_quota": "over_quota",
    "temporary": "tempfail",
    "tempfail": "tempfail",
}
RECIPIENT_RESULTS = (*dict.fromkeys(RECIPIENT_LABELS.values()), "other")
SUBMISSION_RESULTS = ("accepted", "refused", "tempfail")


class CommandStats:
    """Commands per verb, their durations, and the octets sent: plain numbers, updated on the
    event loop only, read by `_PopCollector` at scrape time."""

    __slots__ = ("buckets", "sent_bytes", "sums")

    def __init__(self) -> None:
        # Per verb: how many commands fell in each bucket (not cumulative), and their total time.
        # (Lists here; arrays in shared memory for a worker, cgpop.metrics_workers.)
        self.buckets: Sequence[Any] = [[0] * len(COMMAND_BUCKETS) for _ in VERBS]
        self.sums: Any = [0.0] * len(VERBS)
        self.sent_bytes = 0

    @staticmethod
    def verb(line: bytes) -> int:
        """The verb of a command line as an index into VERBS (unknown: "other")."""
        return _VERB_INDEX.get(line.partition(b" ")[0].rstrip(b"\r\n").upper(), _OTHER)

    def observe(self, verb: int, seconds: float) -> None:
        self.buckets[verb][bisect.bisect_left(COMMAND_BUCKETS, seconds)] += 1
        self.sums[verb] += seconds


class _PopCollector(Collector):
    """The hot-path numbers as metric families, built when scraped. `totals` gives the numbers
    to show: this process's, or the sum over every worker."""

    def __init__(self, totals: Callable[[], CommandStats], sessions: Callable[[], int]) -> None:
        self.totals, self.sessions = totals, sessions

    def collect(self) -> Iterable[Metric]:
        stats = self.totals()
        sessions = GaugeMetricFamily("cgpop_pop3_sessions", "Open POP3 sessions.")
        sessions.add_metric([], self.sessions())
        yield sessions
        commands = CounterMetricFamily(
            "cgpop_pop3_commands", "POP3 commands received, by verb.", labels=["verb"]
        )
        seconds = HistogramMetricFamily(
            "cgpop_pop3_command_seconds",
            "Time from a POP3 command to its reply written, by verb.",
            labels=["verb"],
        )
        for i, verb in enumerate(VERBS):
            counts = list(stats.buckets[i])  # a copy: the loop may count on meanwhile
            total = 0
            cumulative: list[tuple[str, float]] = []
            for bound, n in zip(COMMAND_BUCKETS, counts, strict=True):
                total += n
                cumulative.append((_bound(bound), total))
            commands.add_metric([verb], total)
            seconds.add_metric([verb], cumulative, stats.sums[i])
        yield commands
        yield seconds
        sent = CounterMetricFamily(
            "cgpop_pop3_sent_bytes", "Octets written to POP3 clients (replies and messages)."
        )
        sent.add_metric([], stats.sent_bytes)
        yield sent


def _bound(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


class Pop3Meter:
    """What the POP3 connections and their runners count."""

    def __init__(self, stats: CommandStats, tls: Counter, refused: Counter) -> None:
        self.commands = stats
        self._tls_ok, self._tls_failed = (tls.labels(r) for r in TLS_RESULTS)
        self._refused = {r: refused.labels(r) for r in REFUSAL_REASONS}

    def refused(self, reason: str) -> None:
        """A connection refused before its session began (`reason` in REFUSAL_REASONS)."""
        self._refused[reason].inc()

    async def handshake(self, done: Awaitable[None]) -> None:
        """Await a TLS handshake, counting how it ended."""
        try:
            await done
        except Exception:
            self._tls_failed.inc()
            raise
        self._tls_ok.inc()


class Metrics:
    """The registry and every metric of one gateway (a registry of its own, not the library's
    global one, so several gateways in one process, as in the tests, count apart).

    A worker of several (cgpop/metrics_workers.py) passes `stats` (its block of the shared
    per-command numbers), `totals` (their sum over all workers) and `multiprocess_dir`: its
    library metrics then go only to that directory's files (prometheus_client multiprocess
    mode, chosen before the fork), and the exposition sums every process's files."""

    def __init__(
        self,
        sessions: Callable[[], int] = lambda: 0,
        *,
        stats: CommandStats | None = None,
        totals: Callable[[], CommandStats] | None = None,
        multiprocess_dir: str | None = None,
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.commands = CommandStats() if stats is None else stats
        own = self.commands
        self.registry.register(_PopCollector(totals or (lambda: own), sessions))
        r: CollectorRegistry | None = self.registry
        if multiprocess_dir is not None:
            MultiProcessCollector(self.registry, multiprocess_dir)  # type: ignore[no-untyped-call]
            r = None  # the values are in the files, which the collector above reads
        logins = Counter(
            "cgpop_pop3_logins", "POP3 login attempts, by outcome.", ["result"], registry=r
        )
        self._logins = {x: logins.labels(x) for x in LOGIN_RESULTS}
        tls = Counter(
            "cgpop_tls_handshakes",
            "TLS handshakes (pop3s and STLS), by outcome.",
            ["result"],
            registry=r,
        )
        refused = Counter(
            "cgpop_channels_refused",
            "Connections refused before a session began, by reason.",
            ["reason"],
            registry=r,
        )
        self.pop3 = Pop3Meter(self.commands, tls, refused)
        recipients = Counter(
            "cgpop_lmtp_recipients", "LMTP recipients, by fate.", ["result"], registry=r
        )
        self._recipients = {x: recipients.labels(x) for x in RECIPIENT_RESULTS}
        submissions = Counter(
            "cgpop_xtnd_submissions", "XTND XMIT submissions, by outcome.", ["result"], registry=r
        )
        self._submissions = {x: submissions.labels(x) for x in SUBMISSION_RESULTS}
        self._store = Histogram(
            "cgpop_store_seconds",
            "Time of blocking store calls on the worker threads, by operation.",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        # Set at scrape time by the process that serves /metrics; with workers the others hold
        # 0, so the largest value of the live processes is the queue's ("livemax": a dead
        # process's file is dropped when the supervisor reaps it).
        self._queue_messages = Gauge(
            "cgpop_queue_messages",
            "Messages in the XTND XMIT outbound queue.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self._queue_oldest = Gauge(
            "cgpop_queue_oldest_seconds",
            "Age of the oldest message in the outbound queue (0 when empty).",
            registry=r,
            multiprocess_mode="livemax",
        )

    # --- the callables handed to the parts ---
    def count_login(self, result: str) -> None:
        self._logins[result].inc()

    def count_recipient(self, status: Any) -> None:
        """One LMTP recipient's fate, a cgpop.delivery.Status (or its value)."""
        value = getattr(status, "value", status)
        self._recipients[RECIPIENT_LABELS.get(value, "other")].inc()

    def count_submission(self, result: str) -> None:
        self._submissions[result].inc()

    def observe_store(self, operation: str, seconds: float) -> None:
        """A store call's duration; thread-safe (the library's histogram takes a lock)."""
        self._store.labels(operation).observe(seconds)

    # --- scrape time ---
    def set_queue(self, stats: QueueStats, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self._queue_messages.set(stats.messages)
        oldest = stats.oldest_created
        self._queue_oldest.set(0.0 if oldest is None else max(0.0, now - oldest))

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """Every metric, and its content type, in the format the scraper's Accept header asks
        for (prometheus_client's choose_encoder: the Prometheus text format by default,
        OpenMetrics when asked)."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
