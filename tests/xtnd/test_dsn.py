"""build_dsn: an RFC 3464 report that the email package parses back as intended."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import Message
from typing import cast

import pytest

from xtnd.dsn import Failure, build_dsn

ARRIVAL = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
ORIGINAL = (
    b"Received: from x by y; Tue, 1 Jan 2030 12:00:00 +0000\r\n"
    b"From: alice@example.com\r\n"
    b"To: bob@example.org\r\n"
    b"Subject: caf\xc3\xa9\r\n"
    b"\r\n"
    b"SECRET BODY that must not come back\r\n"
)


def parse(data: bytes) -> Message:
    return message_from_bytes(data, policy=policy.compat32)


def parts(message: Message) -> list[Message]:
    """The sub-parts of a multipart (or the field groups of a message/delivery-status)."""
    payload = message.get_payload()
    assert isinstance(payload, list)
    return cast(list[Message], payload)


def test_failed_report_structure() -> None:
    data = build_dsn(
        reporting_mta="gw.example.com",
        original_sender="alice@example.com",
        original_message=ORIGINAL,
        failures=[
            ("bob@example.org", "5.1.1", "550 5.1.1 No such user"),
            Failure("carol@example.net", "4.4.7", "delivery time expired", "mx.example.net"),
        ],
        arrival_date=ARRIVAL,
    )
    assert b"\r\n" in data and b"\n" not in data.replace(b"\r\n", b"")
    report = parse(data)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["To"] == "<alice@example.com>"
    assert report["Auto-Submitted"] == "auto-replied"
    human, status, headers = parts(report)
    assert human.get_content_type() == "text/plain"
    text = human.get_payload(decode=True)
    assert isinstance(text, bytes) and "bob@example.org" in text.decode()

    assert status.get_content_type() == "message/delivery-status"
    per_message, *per_recipient = parts(status)
    assert per_message["Reporting-MTA"] == "dns; gw.example.com"
    assert per_message["Arrival-Date"] == "Tue, 01 Jan 2030 12:00:00 +0000"
    assert [(r["Final-Recipient"], r["Action"], r["Status"]) for r in per_recipient] == [
        ("rfc822; bob@example.org", "failed", "5.1.1"),
        ("rfc822; carol@example.net", "failed", "4.4.7"),
    ]
    assert per_recipient[0]["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"
    assert per_recipient[1]["Remote-MTA"] == "dns; mx.example.net"

    assert headers.get_content_type() == "text/rfc822-headers"
    assert b"Subject: caf\xc3\xa9" in data
    assert b"SECRET BODY" not in data


def test_delayed_report() -> None:
    data = build_dsn(
        reporting_mta="gw.example.com",
        original_sender="alice@example.com",
        original_message=ORIGINAL,
        failures=[("bob@example.org", "4.2.1", "450 mailbox busy")],
        arrival_date=ARRIVAL,
        delayed=True,
        will_retry_until=datetime(2030, 1, 6, tzinfo=UTC),
    )
    report = parse(data)
    assert "Delayed" in report["Subject"]
    [recipient] = parts(parts(report)[1])[1:]
    assert recipient["Action"] == "delayed"
    assert recipient["Will-Retry-Until"] == "Sun, 06 Jan 2030 00:00:00 +0000"


def test_hostile_diagnostic_cannot_inject_fields() -> None:
    data = build_dsn(
        reporting_mta="gw.example.com",
        original_sender="alice@example.com",
        original_message=ORIGINAL,
        failures=[("bob@example.org", "5.0.0", "550 no\r\nAction: delivered\r\n\r\nX: y")],
        arrival_date=ARRIVAL,
    )
    [recipient] = parts(parts(parse(data))[1])[1:]
    assert recipient["Action"] == "failed"
    assert recipient["Diagnostic-Code"] == "smtp; 550 no Action: delivered X: y"


@pytest.mark.parametrize(
    ("status", "delayed"), [("2.0.0", False), ("5.1", False), ("5.1.1", True), ("x", False)]
)
def test_bad_status_rejected(status: str, delayed: bool) -> None:
    with pytest.raises(ValueError):
        build_dsn(
            reporting_mta="gw.example.com",
            original_sender="a@example.com",
            original_message=ORIGINAL,
            failures=[("b@example.org", status, "x")],
            arrival_date=ARRIVAL,
            delayed=delayed,
        )


def test_huge_original_header_is_truncated() -> None:
    big = b"".join(b"X-Filler-%05d: %s\r\n" % (i, b"v" * 60) for i in range(5000))
    data = build_dsn(
        reporting_mta="gw.example.com",
        original_sender="a@example.com",
        original_message=big + b"\r\nbody\r\n",
        failures=[("b@example.org", "5.0.0", "no")],
        arrival_date=ARRIVAL,
    )
    assert len(data) < 70 * 1024
    assert b"X-Cgpop-Note: original header block truncated" in data
    assert parts(parse(data))[2].get_content_type() == "text/rfc822-headers"
