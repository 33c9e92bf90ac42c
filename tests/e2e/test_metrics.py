"""`[metrics] listen` against a live server: /metrics scraped with urllib and parsed with
prometheus_client's own parser after real POP3 sessions, LMTP deliveries, XTND XMIT
submissions and TLS handshakes; /healthz with the store answering and not; the HTTP rules."""

from __future__ import annotations

import poplib
import shutil
import smtplib
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cgpop.metrics import VERBS
from cgpop.store.api import Outbound
from tests.conftest import LiveServer, message
from tests.e2e.helpers import (
    PASSWORD,
    TIMEOUT,
    USER,
    Raw,
    login_error,
    pop,
    wait_sessions_closed,
)
from tests.e2e.secure import client_context, tls_server
from tests.e2e.test_xtnd_live import msg, xmit

METRICS = {"listen": "127.0.0.1:0"}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def url(srv: LiveServer, path: str) -> str:
    host, port = srv.gateway.bound["metrics"][0]
    return f"http://{host}:{port}{path}"


def get(srv: LiveServer, path: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) of a real HTTP request."""
    request = urllib.request.Request(url(srv, path), method=method)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(srv: LiveServer) -> Samples:
    status, content_type, body = get(srv, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def srv(server_factory: Callable[..., LiveServer]) -> LiveServer:
    s = server_factory(metrics=METRICS)
    s.add_account(USER, PASSWORD)
    return s


def test_off_by_default(server: LiveServer) -> None:
    assert server.gateway.bound["metrics"] == []


def test_pop3_sessions_logins_commands_and_bytes(srv: LiveServer) -> None:
    body = "metrics body\n" * 100
    srv.deliver(USER, message("counted", body))
    before = scrape(srv)
    assert value(before, "cgpop_pop3_sessions") == 0
    client = pop(srv)
    client.stat()
    client.list()
    retr = client.retr(1)
    with pytest.raises(poplib.error_proto):
        client._shortcmd("FROB")  # unknown: counted as "other", not as a new label
    with pytest.raises(poplib.error_proto):
        client._shortcmd("XYZZY 1")
    during = scrape(srv)
    assert value(during, "cgpop_pop3_sessions") == 1
    client.quit()
    assert login_error(srv, USER, "wrong password").startswith(b"-ERR [AUTH]")
    wait_sessions_closed(srv)
    after = scrape(srv)

    assert value(after, "cgpop_pop3_sessions") == 0
    assert value(after, "cgpop_pop3_logins_total", result="ok") == 1
    assert value(after, "cgpop_pop3_logins_total", result="auth_failed") == 1
    for verb, count in (("USER", 2), ("PASS", 2), ("STAT", 1), ("LIST", 1), ("RETR", 1)):
        assert value(after, "cgpop_pop3_commands_total", verb=verb) == count, verb
        # The histogram counts the same commands, each with its duration.
        assert value(after, "cgpop_pop3_command_seconds_count", verb=verb) == count, verb
    assert value(after, "cgpop_pop3_commands_total", verb="QUIT") == 1
    assert value(after, "cgpop_pop3_commands_total", verb="other") == 2
    assert value(after, "cgpop_pop3_command_seconds_bucket", verb="RETR", le="+Inf") == 1
    assert value(after, "cgpop_pop3_command_seconds_sum", verb="RETR") > 0
    verbs = {dict(labels)["verb"] for name, labels in after if name == "cgpop_pop3_commands_total"}
    assert verbs == set(VERBS)  # bounded: FROB and XYZZY made no label of their own
    sent = value(after, "cgpop_pop3_sent_bytes_total")
    assert sent > retr[2] >= len(body)
    # Store calls are timed where they run (cgpop/blocking.py).
    assert value(after, "cgpop_store_seconds_count", operation="read_messages") >= 1


def test_login_refused_and_alert(server_factory: Callable[..., LiveServer]) -> None:
    srv = server_factory(metrics=METRICS, pop3={"max_per_account": 1})
    srv.add_account(USER, PASSWORD)
    first = pop(srv)
    assert b"too many sessions" in login_error(srv, USER, PASSWORD)
    first.quit()
    srv.call(srv.store.add_alert, "account", USER, "Pay your bill")
    assert b"Pay your bill" in login_error(srv, USER, PASSWORD)
    samples = scrape(srv)
    assert value(samples, "cgpop_pop3_logins_total", result="ok") == 1
    assert value(samples, "cgpop_pop3_logins_total", result="refused") == 1
    assert value(samples, "cgpop_pop3_logins_total", result="alert") == 1
    assert value(samples, "cgpop_pop3_logins_total", result="auth_failed") == 0


def test_channels_refused(server_factory: Callable[..., LiveServer]) -> None:
    srv = server_factory(metrics=METRICS, pop3={"max_channels": 1})
    with Raw(srv), socket.create_connection((srv.host, srv.port()), TIMEOUT) as second:
        assert second.recv(200).startswith(b"-ERR [SYS/TEMP] too many connections")
        samples = scrape(srv)
    assert value(samples, "cgpop_channels_refused_total", reason="max_channels") == 1
    assert value(samples, "cgpop_channels_refused_total", reason="max_per_ip") == 0


def test_tls_handshakes(server_factory: Callable[..., LiveServer], tmp_path: Path) -> None:
    srv = tls_server(server_factory, tmp_path, metrics=METRICS)
    ctx = client_context(srv.extra["cert"])
    with (
        socket.create_connection((srv.host, srv.port("pop3s")), TIMEOUT) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.recv(100).startswith(b"+OK")  # the greeting follows the counted handshake
    client = poplib.POP3(srv.host, srv.port(), timeout=TIMEOUT)
    client.stls(ctx)
    client.quit()
    with socket.create_connection((srv.host, srv.port("pop3s")), TIMEOUT) as raw:
        raw.sendall(b"USER not a TLS client hello\r\n")
        while raw.recv(100):  # at most an alert, then the server closes: the handshake failed
            pass
    samples = scrape(srv)
    assert value(samples, "cgpop_tls_handshakes_total", result="ok") == 2
    assert value(samples, "cgpop_tls_handshakes_total", result="failed") == 1
    assert value(samples, "cgpop_pop3_commands_total", verb="STLS") == 1


def test_lmtp_recipients(srv: LiveServer) -> None:
    srv.add_account("ann@example.com", PASSWORD)
    mail = message("lmtp", message_id="<once@remote.test>")
    with smtplib.LMTP(srv.host, srv.port("lmtp"), timeout=TIMEOUT) as lmtp:
        lmtp.ehlo("client.test")
        lmtp.mail("sender@remote.test")
        assert lmtp.rcpt("nobody@example.com")[0] == 550
        lmtp.rcpt(USER)
        lmtp.rcpt("ann@example.com")
        assert lmtp.data(mail)[0] == 250
        assert lmtp.getreply()[0] == 250  # LMTP: one reply per recipient
        lmtp.rset()
        lmtp.mail("sender@remote.test")
        lmtp.rcpt(USER)
        code, text = lmtp.data(mail)
        assert code == 250 and b"duplicate" in text
    samples = scrape(srv)
    assert value(samples, "cgpop_lmtp_recipients_total", result="delivered") == 2
    assert value(samples, "cgpop_lmtp_recipients_total", result="duplicate") == 1
    assert value(samples, "cgpop_lmtp_recipients_total", result="unknown") == 1
    # Every fate the issue names is exposed, at 0 until it happens.
    for result in ("over_quota", "tempfail"):
        assert ("cgpop_lmtp_recipients_total", frozenset({("result", result)})) in samples
    assert value(samples, "cgpop_store_seconds_count", operation="commit") >= 1


def test_xtnd_submissions(server_factory: Callable[..., LiveServer]) -> None:
    srv = server_factory(metrics=METRICS)
    srv.add_account(USER, PASSWORD)
    srv.add_account("ann@example.com", PASSWORD)
    with Raw(srv) as raw:
        assert raw.login().startswith(b"+OK")
        assert xmit(raw, msg("ann@example.com")) == b"+OK Message sent successfully\r\n"
        assert xmit(raw, msg("nobody@example.com")).startswith(b"-ERR")
    samples = scrape(srv)
    assert value(samples, "cgpop_xtnd_submissions_total", result="accepted") == 1
    assert value(samples, "cgpop_xtnd_submissions_total", result="refused") == 1
    assert value(samples, "cgpop_pop3_commands_total", verb="XTND") == 2


def test_queue_gauges_come_from_the_store(server_factory: Callable[..., LiveServer]) -> None:
    # No relay worker: the queued message stays where it is.
    srv = server_factory(metrics=METRICS, xtnd={"enabled": False})
    assert value(scrape(srv), "cgpop_queue_messages") == 0
    outbound = Outbound(USER, USER, b"Subject: q\r\n\r\nx\r\n", ("a@remote.test",))
    srv.call(srv.store.enqueue, outbound, time.time() - 120)
    srv.call(srv.store.enqueue, outbound, time.time())
    samples = scrape(srv)
    assert value(samples, "cgpop_queue_messages") == 2
    assert 120 <= value(samples, "cgpop_queue_oldest_seconds") < 120 + 60


def test_healthz_follows_the_store(srv: LiveServer, tmp_path: Path) -> None:
    assert get(srv, "/healthz")[::2] == (200, "ok\n")
    # The database file is replaced by something that is not one: the store stops answering.
    store: Any = srv.store
    db = Path(store.db_path)
    srv.call(store.close)
    saved = tmp_path / "saved.db"
    shutil.move(db, saved)
    db.write_bytes(b"this is not an SQLite database" * 100)
    try:
        status, _, body = get(srv, "/healthz")
        assert status == 503
        assert body.startswith("store unavailable: ") and "not a database" in body
        # /metrics still answers (the queue figures are left as they were).
        assert get(srv, "/metrics")[0] == 200
    finally:
        srv.call(store.close)
        shutil.move(saved, db)
    assert get(srv, "/healthz")[::2] == (200, "ok\n")


def test_http_rules(srv: LiveServer) -> None:
    assert get(srv, "/nothing")[0] == 404
    assert get(srv, "/metrics/more")[0] == 404
    assert get(srv, "/metrics?name[]=x")[0] == 200  # the query string is ignored
    assert get(srv, "/metrics", method="POST")[0] == 405
    assert get(srv, "/healthz", method="DELETE")[0] == 405
    host, port = srv.gateway.bound["metrics"][0]
    # A request head past the bound gets 431 and the connection is closed.
    with socket.create_connection((host, port), TIMEOUT) as sock:
        sock.sendall(b"GET /metrics HTTP/1.1\r\nX-Long: " + b"a" * 20000 + b"\r\n\r\n")
        reply = sock.recv(200)
        assert reply.startswith(b"HTTP/1.1 431 ")
    with socket.create_connection((host, port), TIMEOUT) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert sock.recv(200).startswith(b"HTTP/1.1 400 ")
    # OpenMetrics when the scraper asks for it (prometheus_client chooses the encoder).
    request = urllib.request.Request(
        url(srv, "/metrics"), headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
        assert reply.headers["Content-Type"].startswith("application/openmetrics-text")
        assert reply.read().endswith(b"# EOF\n")
