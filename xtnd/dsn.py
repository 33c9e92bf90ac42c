"""Build a delivery status notification (RFC 3464) for the sender of a relayed message.

Pure: returns the bytes of a complete message, ready for the sender's INBOX (the queue delivers
it through the store; if it is ever sent by SMTP instead, the reverse-path must be null, RFC 3464
section 2 and RFC 5321 section 4.5.5). The message is RFC 6522 multipart/report with
report-type=delivery-status and three parts: a human-readable explanation, the
message/delivery-status fields (RFC 3464 section 2.2 per-message, section 2.3 per-recipient) and
the original header block as text/rfc822-headers (RFC 6522 section 4: headers only, so a bounce
never carries a large body back).

Everything interpolated into header fields is reduced to one printable line and bounded, so a
hostile diagnostic from a remote server cannot inject fields.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, make_msgid

__all__ = ["Failure", "build_dsn", "is_failure_status"]

# RFC 3463 section 2: class.subject.detail; subject and detail 1 to 3 digits.
_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")


def is_failure_status(text: str) -> bool:
    """4.x.x or 5.x.x (RFC 3463 section 2): a status a DSN may report."""
    return _STATUS.fullmatch(text) is not None and text[0] != "2"


# RFC 5322 section 2.1.1: lines of at most 998 octets; leave room for the field name.
_MAX_TEXT = 900
# Original headers larger than this are cut (at a line end) with a note.
_MAX_HEADERS = 64 * 1024


@dataclass(frozen=True, slots=True)
class Failure:
    """One recipient's outcome: RFC 3463 `status`, the remote server's text, which server."""

    recipient: str
    status: str
    diagnostic: str
    remote_mta: str | None = None


def build_dsn(
    *,
    reporting_mta: str,
    original_sender: str,
    original_message: bytes,
    failures: Sequence[Failure | tuple[str, str, str]],
    arrival_date: datetime,
    delayed: bool = False,
    now: datetime | None = None,
    from_address: str | None = None,
    will_retry_until: datetime | None = None,
) -> bytes:
    """The DSN as bytes with CRLF line ends.

    `failures` are `Failure`s or (recipient, status, diagnostic) tuples. With `delayed`, the
    Action is "delayed" and each status must be 4.x.x (RFC 3464 section 2.3.3); otherwise
    "failed", with a 5.x.x status or a 4.x.x one for a message that expired in the queue
    (e.g. 4.4.7, RFC 3463 section 3.5).
    """
    items = [f if isinstance(f, Failure) else Failure(*f) for f in failures]
    if not items:
        raise ValueError("a DSN needs at least one recipient")
    for item in items:
        if not is_failure_status(item.status):
            raise ValueError(f"not a failure status: {item.status!r}")
        if delayed and item.status[0] != "4":
            raise ValueError("a delayed DSN carries 4.x.x statuses")
    moment = now if now is not None else datetime.now(UTC)
    mta = _line(reporting_mta)
    boundary = f"=_dsn_{secrets.token_hex(12)}"
    action = "delayed" if delayed else "failed"

    top = [
        f"From: Mail Delivery System <{_line(from_address or f'MAILER-DAEMON@{mta}')}>",
        f"To: <{_line(original_sender)}>",
        "Subject: "
        + (
            "Delayed Mail (still being retried)"
            if delayed
            else "Undelivered Mail Returned to Sender"
        ),
        f"Date: {format_datetime(moment)}",
        f"Message-ID: {make_msgid(domain=mta)}",
        # RFC 3834 section 5: keeps vacation responders from answering the bounce.
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
    ]

    human = [
        f"This is the mail system at host {mta}.",
        "",
        (
            "Your message could not be delivered yet to the recipients below."
            " Delivery will be retried; you do not need to send it again."
            if delayed
            else "Your message could not be delivered to the recipients below."
            " It will not be retried."
        ),
        "",
    ]
    for item in items:
        human.append(f"<{_line(item.recipient)}>: {_line(item.diagnostic)}")

    # RFC 3464 section 2.2: per-message fields, then per-recipient groups after a blank line.
    status = [f"Reporting-MTA: dns; {mta}", f"Arrival-Date: {format_datetime(arrival_date)}"]
    for item in items:
        status += [
            "",
            f"Final-Recipient: rfc822; {_line(item.recipient)}",
            f"Action: {action}",
            f"Status: {item.status}",
        ]
        if item.remote_mta:
            status.append(f"Remote-MTA: dns; {_line(item.remote_mta)}")
        status.append(f"Diagnostic-Code: smtp; {_line(item.diagnostic)}")
        status.append(f"Last-Attempt-Date: {format_datetime(moment)}")
        if will_retry_until is not None and delayed:
            status.append(f"Will-Retry-Until: {format_datetime(will_retry_until)}")

    headers = _header_block(original_message)
    eight_bit = any(b > 0x7F for b in headers)
    parts = [
        "\r\n".join(top).encode("utf-8") + b"\r\n\r\n",
        b"This is a MIME-encapsulated message.\r\n\r\n",
        _part(boundary, "text/plain; charset=utf-8", "\r\n".join(human).encode("utf-8"), True),
        _part(boundary, "message/delivery-status", "\r\n".join(status).encode("utf-8"), True),
        _part(boundary, "text/rfc822-headers", headers, eight_bit),
        f"--{boundary}--\r\n".encode("ascii"),
    ]
    return b"".join(parts)


def _part(boundary: str, content_type: str, body: bytes, eight_bit: bool) -> bytes:
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n"
    if eight_bit and any(b > 0x7F for b in body):
        head += "Content-Transfer-Encoding: 8bit\r\n"
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    return head.encode("ascii") + b"\r\n" + body + b"\r\n"


def _header_block(message: bytes) -> bytes:
    """The original header block (through its last CRLF), bounded to `_MAX_HEADERS`."""
    message = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if message.startswith(b"\r\n"):
        return b""
    cut = message.find(b"\r\n\r\n")
    headers = message if cut < 0 else message[: cut + 2]
    if len(headers) > _MAX_HEADERS:
        end = headers.rfind(b"\r\n", 0, _MAX_HEADERS)
        # A continuation line must not lose its field; cut before a field start.
        while end > 0 and headers[end + 2 : end + 3] in (b" ", b"\t"):
            end = headers.rfind(b"\r\n", 0, end)
        headers = headers[: end + 2] if end > 0 else b""
        headers += b"X-Cgpop-Note: original header block truncated\r\n"
    return headers


def _line(text: str) -> str:
    """One printable line, bounded (RFC 5322 section 2.1.1), nothing that could end a field."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", text).strip()
    return text[:_MAX_TEXT]
