"""The per-command figures of several workers (cgpop/metrics_workers.py): each worker counts in
its own block of shared memory, a block written by a forked process is seen by the scraping
one, and the exposition shows the sum under issue 12's names."""

from __future__ import annotations

import os

from prometheus_client.parser import text_string_to_metric_families

from cgpop.metrics import VERBS, CommandStats, Metrics
from cgpop.metrics_workers import ServerCommandStats


def test_totals_sum_the_blocks_of_every_worker_forked_or_not() -> None:
    stats = ServerCommandStats(2)
    stat, retr = VERBS.index("STAT"), VERBS.index("RETR")
    mine = stats.for_worker(0)
    mine.observe(stat, 0.0002)
    mine.sent_bytes += 100
    pid = os.fork()
    if pid == 0:  # worker 1, in its own process
        other = stats.for_worker(1)
        other.observe(stat, 0.003)
        other.observe(retr, 0.5)
        other.sent_bytes += 5000
        os._exit(0)
    os.waitpid(pid, 0)
    total = stats.total()
    assert isinstance(total, CommandStats)
    assert sum(total.buckets[stat]) == 2 and sum(total.buckets[retr]) == 1
    assert total.sums[stat] == 0.0032
    assert total.sent_bytes == 5100
    # Worker 0's own block is still only its own.
    assert sum(mine.buckets[stat]) == 1 and mine.sent_bytes == 100

    metrics = Metrics(lambda: 7, stats=mine, totals=stats.total)
    body, _ = metrics.exposition()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert samples[("cgpop_pop3_commands_total", (("verb", "STAT"),))] == 2
    assert samples[("cgpop_pop3_commands_total", (("verb", "RETR"),))] == 1
    assert samples[("cgpop_pop3_sent_bytes_total", ())] == 5100
    assert samples[("cgpop_pop3_sessions", ())] == 7
