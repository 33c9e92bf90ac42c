"""cgpop/metrics.py without a server: the verb label is bounded, and the hot-path numbers come
out of the registry as prometheus_client's parser reads them."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from cgpop.delivery import Status
from cgpop.metrics import VERBS, CommandStats, Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def test_verbs_are_the_engine_verbs_and_other() -> None:
    verb = CommandStats.verb
    assert VERBS[verb(b"top 1 2\r\n")] == "TOP"
    assert VERBS[verb(b"RETR 1\r\n")] == "RETR"
    assert VERBS[verb(b"quit\r\n")] == "QUIT"
    assert VERBS[verb(b"STAT\n")] == "STAT"
    for line in (b"USERX joe\r\n", b"\r\n", b" USER joe\r\n", b"\xff\xfe\r\n", b"GET / HTTP/1.1"):
        assert VERBS[verb(line)] == "other", line


def test_command_histogram_is_cumulative() -> None:
    metrics = Metrics(sessions=lambda: 3)
    stats = metrics.commands
    retr = stats.verb(b"RETR 1\r\n")
    for seconds in (0.00005, 0.002, 0.002, 30.0):
        stats.observe(retr, seconds)
    stats.sent_bytes += 1234
    got = samples(metrics)
    assert got[("cgpop_pop3_sessions", ())] == 3
    assert got[("cgpop_pop3_commands_total", (("verb", "RETR"),))] == 4
    bucket = "cgpop_pop3_command_seconds_bucket"
    assert got[(bucket, (("le", "0.0001"), ("verb", "RETR")))] == 1
    assert got[(bucket, (("le", "0.0025"), ("verb", "RETR")))] == 3
    assert got[(bucket, (("le", "10.0"), ("verb", "RETR")))] == 3
    assert got[(bucket, (("le", "+Inf"), ("verb", "RETR")))] == 4
    assert got[("cgpop_pop3_command_seconds_sum", (("verb", "RETR"),))] == 30.00405
    assert got[("cgpop_pop3_sent_bytes_total", ())] == 1234
    assert got[("cgpop_pop3_commands_total", (("verb", "STAT"),))] == 0


def test_recipient_results() -> None:
    metrics = Metrics()
    metrics.count_recipient(Status.TEMPORARY)
    metrics.count_recipient(Status.REFUSED)
    metrics.count_recipient("over_quota")  # the quota feature's delivery status value
    metrics.count_recipient("something new")  # a status this module does not know yet
    got = samples(metrics)
    for result in ("tempfail", "refused", "over_quota", "other"):
        assert got[("cgpop_lmtp_recipients_total", (("result", result),))] == 1, result
    assert got[("cgpop_lmtp_recipients_total", (("result", "delivered"),))] == 0
