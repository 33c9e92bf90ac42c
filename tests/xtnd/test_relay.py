"""Relay tests against a real aiosmtpd server on loopback, and a scripted one for lost replies."""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable

from tests.xtnd.conftest import Sink
from xtnd.envelope import derive_envelope
from xtnd.relay import Outcome, RelayResult, send

MESSAGE = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.org\r\n"
    b"Bcc: carol@example.net\r\n"
    b"Subject: relay test\r\n"
    b"\r\n"
    b"first line\r\n"
    b".leading dot survives the round trip\r\n"
    b".\r\n"
    b"last line\r\n"
)


def _send(port: int, recipients: list[str], message: bytes = MESSAGE, **kw: object) -> RelayResult:
    options: dict[str, object] = {"helo": "gw.example.com", "starttls": False, "timeout": 10.0}
    options.update(kw)
    return asyncio.run(
        send("127.0.0.1", port, "alice@example.com", recipients, message, **options)  # type: ignore[arg-type]
    )


def test_envelope_and_bcc_stripped(sink: Sink) -> None:
    env = derive_envelope(
        MESSAGE,
        account="alice@example.com",
        allowed_from={"alice@example.com"},
        hostname="gw.example.com",
        peer="192.0.2.7",
        max_recipients=10,
    )
    result = _send(sink.port, list(env.recipients), env.message)
    assert result.recipients(Outcome.ACCEPTED) == ("bob@example.org", "carol@example.net")
    assert not result.host_failure
    [got] = sink.handler.messages
    assert got.mail_from == "alice@example.com"
    assert got.rcpt_tos == ["bob@example.org", "carol@example.net"]
    assert b"Bcc" not in got.content
    assert b"carol" not in got.content
    # The bytes arrive unchanged: smtplib stuffed the dots and the server unstuffed them.
    assert got.content == env.message
    assert b"\r\n.\r\nlast line" in got.content


def test_4xx_and_5xx_recipients(sink: Sink) -> None:
    result = _send(sink.port, ["bob@example.org", "temp@example.org", "perm@example.org"])
    by = {r.recipient: r for r in result.results}
    assert by["bob@example.org"].outcome is Outcome.ACCEPTED
    assert by["temp@example.org"].outcome is Outcome.TEMPORARY
    assert by["temp@example.org"].code == 450
    assert by["temp@example.org"].status == "4.2.1"
    assert by["perm@example.org"].outcome is Outcome.PERMANENT
    assert by["perm@example.org"].text == "5.1.1 No such user here"
    assert by["perm@example.org"].diagnostic == "550 5.1.1 No such user here"
    assert sink.handler.messages[0].rcpt_tos == ["bob@example.org"]


def test_all_refused_sends_no_data(sink: Sink) -> None:
    result = _send(sink.port, ["perm1@example.org", "temp1@example.org"])
    assert result.recipients(Outcome.PERMANENT) == ("perm1@example.org",)
    assert result.recipients(Outcome.TEMPORARY) == ("temp1@example.org",)
    assert sink.handler.messages == []


def test_data_refused_5xx(sink: Sink) -> None:
    sink.handler.data_reply = "554 5.6.0 Content rejected"
    result = _send(sink.port, ["bob@example.org"])
    [r] = result.results
    assert (r.outcome, r.code, r.status) == (Outcome.PERMANENT, 554, "5.6.0")


def test_data_refused_4xx(sink: Sink) -> None:
    sink.handler.data_reply = "451 4.3.0 Try again"
    [r] = _send(sink.port, ["bob@example.org"]).results
    assert (r.outcome, r.code) == (Outcome.TEMPORARY, 451)


def test_connection_refused_is_temporary_host_failure() -> None:
    # A port nothing listens on: bind one, note it, close it.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = _send(port, ["bob@example.org", "x@example.org"])
    assert result.host_failure
    assert {r.outcome for r in result.results} == {Outcome.TEMPORARY}
    assert all(r.code is None and r.status == "4.4.1" for r in result.results)


def test_lost_reply_after_data_end_is_uncertain(scripted: Callable[[str], int]) -> None:
    [r] = _send(scripted("after-data-end"), ["bob@example.org"]).results
    assert r.outcome is Outcome.UNCERTAIN
    assert r.status == "4.4.2"


def test_lost_connection_during_data_is_temporary(scripted: Callable[[str], int]) -> None:
    # 16 MB cannot fit in loopback socket buffers, so the write fails before the final ".".
    big = MESSAGE + (b"y" * 998 + b"\r\n") * 16_000
    [r] = _send(scripted("during-data"), ["bob@example.org"], big).results
    assert r.outcome is Outcome.TEMPORARY


def test_starttls_and_auth(tls_sink: Sink, client_tls_context: ssl.SSLContext) -> None:
    result = _send(
        tls_sink.port,
        ["bob@example.org"],
        starttls=True,
        auth=("alice", "secret"),
        ssl_context=client_tls_context,
    )
    assert result.recipients(Outcome.ACCEPTED) == ("bob@example.org",)
    assert len(tls_sink.handler.messages) == 1


def test_auth_failure_is_temporary(tls_sink: Sink, client_tls_context: ssl.SSLContext) -> None:
    result = _send(
        tls_sink.port,
        ["bob@example.org"],
        starttls=True,
        auth=("alice", "wrong"),
        ssl_context=client_tls_context,
    )
    [r] = result.results
    assert r.outcome is Outcome.TEMPORARY and result.host_failure
    assert "AUTH failed" in r.text
    assert tls_sink.handler.messages == []


def test_unverified_certificate_refused_when_starttls_required(tls_sink: Sink) -> None:
    [r] = _send(tls_sink.port, ["bob@example.org"], starttls=True).results
    assert r.outcome is Outcome.TEMPORARY
    assert "STARTTLS" in r.text


def test_opportunistic_starttls_accepts_self_signed(tls_sink: Sink) -> None:
    result = _send(
        tls_sink.port, ["bob@example.org"], starttls="opportunistic", auth=("a", "secret")
    )
    assert result.recipients(Outcome.ACCEPTED) == ("bob@example.org",)


def test_required_starttls_missing(sink: Sink) -> None:
    result = _send(sink.port, ["bob@example.org"], starttls=True)
    assert result.host_failure
    assert "does not offer STARTTLS" in result.results[0].text
    assert sink.handler.messages == []
