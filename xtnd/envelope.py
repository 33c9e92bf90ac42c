"""Derive the SMTP envelope of an XTND XMIT submission and the message that is actually sent.

Pure: bytes and strings in, a frozen `Envelope` out, `SubmissionError` for anything refused (the
engine turns its text into `-ERR text`; Eudora shows it, so it names the offending address).

Rules (issue 5):

* The envelope sender is the authenticated account's address, never taken from the message.
* Every originator field the message carries must name an address the account may use: every
  `From:` address, and `Sender:` and the newest `Resent-From:` / `Resent-Sender:` when present.
  This gateway is where an open relay would hide, so resending someone else's message with their
  `From:` kept is refused too.
* An originator field must be one that every reader reads alike (issue 10): one parsed with a
  defect (`alice@example.com <bob@example.com>`: Python reads alice, other parsers bob) is
  refused, as is a group or a name or comment holding `<` or `>` (`alice@example.com
  (<bob@example.com>)`: naive readers take the bracketed address). `Sender:` and
  `Resent-Sender:` hold exactly one mailbox; `From:` (or `Resent-From:`) may list several only
  when a `Sender:` (`Resent-Sender:`) says who sent it (RFC 5322 sections 3.6.2 and 3.6.6).
* Recipients come from `To`, `Cc`, `Bcc`; when the message carries `Resent-*` fields they come from
  the newest resent block's `Resent-To`, `Resent-Cc`, `Resent-Bcc` only (RFC 5322 section 3.6.6:
  the original destination fields describe the original delivery). Each is checked for syntax with
  `email_validator` (no DNS at submission), deduplicated case-insensitively, and counted against
  `max_recipients`.
* The header block is edited as bytes; the body and every kept field go out octet for octet.
  `Bcc:` and `Resent-Bcc:` fields are removed (RFC 5322 section 3.6.3, "the Bcc line is removed");
  `Date:` and `Message-ID:` are appended when missing (RFC 5322 section 3.6: Date is required,
  Message-ID SHOULD be present), `Resent-Date:` likewise for a resent block that lacks it (RFC 5322
  section 3.6.6); a `Received:` trace field (RFC 5321 section 4.4) is prepended.

The input is the output of `cgpop.pop3.body.BodyReader` (the engine reads the body), so lines
end in CRLF and the size is bounded.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from email import errors, policy
from email._header_value_parser import get_address_list
from email.headerregistry import Address, AddressHeader, BaseHeader
from email.utils import format_datetime, make_msgid

from email_validator import EmailNotValidError, validate_email

from cgpop.spool import Octets

__all__ = ["MAX_FIELD_SIZE", "Envelope", "SubmissionError", "derive_envelope"]

# RFC 5322 section 2.2: a field name is printable US-ASCII except ":".
_FIELD_START = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")
_RECIPIENT_FIELDS = ("to", "cc", "bcc")
_RESENT_RECIPIENT_FIELDS = ("resent-to", "resent-cc", "resent-bcc")
_STRIPPED_FIELDS = frozenset({"bcc", "resent-bcc"})
_ADDRESS_FIELDS = frozenset(
    {"from", "sender", "to", "cc", "bcc", "resent-from", "resent-sender"}
    | set(_RESENT_RECIPIENT_FIELDS)
)
# Bound on one address field, folded lines included. RFC 5322 sets none; the `email` address
# parser is superlinear (measured: 16 KiB of "Name <addr>" in 0.15 s, 32 KiB in 0.35 s,
# 140 KiB in 3 s), so 32 KiB, room for about a thousand addresses, keeps one submission cheap.
# Postfix's header_size_limit (100 KiB) is the same idea.
MAX_FIELD_SIZE = 32 * 1024
# Bounds: an error names at most this much of a hostile value.
_MAX_SHOWN = 200
# The parser defects that leave no doubt about an address: RFC 5322 section 4's obsolete syntax,
# which a reader MUST accept (an unquoted "A. Smith <a@example.com>" is the common one).
_UNAMBIGUOUS_DEFECTS = (errors.ObsoleteHeaderDefect,)


class SubmissionError(Exception):
    """The submission is refused; `text` is fit for `-ERR text` (no CR/LF, bounded).
    `temporary`: the client may try again later (the shell answers `-ERR [SYS/TEMP]`)."""

    def __init__(self, text: str, *, temporary: bool = False) -> None:
        text = _printable(text)
        super().__init__(text)
        self.text = text
        self.temporary = temporary


@dataclass(frozen=True, slots=True)
class Envelope:
    """What to deliver: envelope sender, envelope recipients in order, the message to send."""

    sender: str
    recipients: tuple[str, ...]
    message: Octets  # bytes here; the submitter may put the spooled body back behind it


@dataclass(frozen=True, slots=True)
class _Field:
    name: str  # lower case
    raw: bytes  # the whole field, continuation lines and final CRLF included


def derive_envelope(
    message: bytes,
    *,
    account: str,
    allowed_from: Iterable[str],
    hostname: str,
    peer: str,
    max_recipients: int,
    submission_id: str | None = None,
    now: datetime | None = None,
    max_field_size: int = MAX_FIELD_SIZE,
    test_environment: bool = False,
) -> Envelope:
    """Check a submitted message and return its envelope and the message to deliver.

    `account` is the authenticated address (the envelope sender); `allowed_from` the addresses the
    account may put in originator fields (the caller computes it: own address, aliases, configured
    extras; compared case-insensitively). `hostname` names this server in `Received:` and
    `Message-ID:`; `peer` is the client's IP address (or host name) for `Received:`.
    `submission_id` is the `id` clause of `Received:` (the queue id if the caller has one).

    `test_environment` lets recipients use the reserved `.test` TLD (RFC 2606; email_validator's
    flag of that name), for test set-ups only.

    CPU cost: the `email` address parser is superlinear; with the default `max_field_size` the
    worst case is a few tenths of a second, so an asyncio caller may prefer `asyncio.to_thread`.
    """
    if max_recipients < 1:
        raise ValueError("max_recipients must be at least 1")
    allowed = {a.lower() for a in allowed_from}
    allowed.add(account.lower())
    moment = now if now is not None else datetime.now(UTC)

    header_bytes, body = _split(message)
    fields = _fields(header_bytes)
    values = [_parse(f, max_field_size) if f.name in _ADDRESS_FIELDS else None for f in fields]

    block = _resent_block(fields)
    _check_originators(fields, values, block, allowed)

    wanted = _RESENT_RECIPIENT_FIELDS if block else _RECIPIENT_FIELDS
    scope = block if block else range(len(fields))
    recipients: list[str] = []
    seen: set[str] = set()
    visible: list[str] = []
    for i in scope:
        if fields[i].name not in wanted:
            continue
        for j, addr in enumerate(_addresses(fields[i], values[i])):
            normal = _validate(addr, fields[i], j, test_environment)
            key = normal.lower()
            if fields[i].name not in _STRIPPED_FIELDS:
                visible.append(key)
            if key in seen:
                continue
            seen.add(key)
            recipients.append(normal)
            if len(recipients) > max_recipients:
                raise SubmissionError(f"Too many recipients (at most {max_recipients})")
    if not recipients:
        raise SubmissionError("No recipients in To, Cc or Bcc")

    names = {f.name for f in fields}
    needs_resent_date = bool(block) and not any(fields[i].name == "resent-date" for i in block)
    kept: list[bytes] = []
    for i, field in enumerate(fields):
        if needs_resent_date and i == block[0]:
            # At the top of the block, so that it stays one block (RFC 5322 section 3.6.6).
            kept.append(_header("Resent-Date", format_datetime(moment)))
        if field.name not in _STRIPPED_FIELDS:
            kept.append(field.raw)
    if "date" not in names:
        kept.append(_header("Date", format_datetime(moment)))
    if "message-id" not in names:
        kept.append(_header("Message-ID", make_msgid(domain=hostname)))

    # "for" names the one recipient only when there is exactly one and it is not a Bcc one, so
    # the trace field never reveals a blind copy (RFC 5321 section 4.4 allows one path here).
    only = recipients[0] if len(recipients) == 1 and recipients[0].lower() in visible else None
    received = _received(
        peer=peer,
        account=account,
        hostname=hostname,
        submission_id=submission_id or secrets.token_hex(8),
        recipient=only,
        moment=moment,
    )
    return Envelope(
        sender=account,
        recipients=tuple(recipients),
        message=received + b"".join(kept) + body,
    )


def _split(message: bytes) -> tuple[bytes, bytes]:
    """Header block (each field with its CRLF) and the rest, from the empty line on."""
    if message.startswith(b"\r\n"):
        return b"", message
    cut = message.find(b"\r\n\r\n")
    if cut < 0:
        # Header only (RFC 5322 section 3.5: the body is optional).
        return (message if message.endswith(b"\r\n") else message + b"\r\n"), b""
    return message[: cut + 2], message[cut + 2 :]


def _fields(header: bytes) -> list[_Field]:
    """Split the header block into fields; anything that is not a field is refused outright."""
    fields: list[_Field] = []
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not fields:
                raise SubmissionError("Malformed header: continuation line first")
            last = fields[-1]
            fields[-1] = _Field(last.name, last.raw + line)  # RFC 5322 section 2.2.3 folding
            continue
        match = _FIELD_START.match(line)
        if match is None:
            shown = line.rstrip(b"\r\n").decode("ascii", "replace")
            raise SubmissionError(f"Malformed header line: {shown}")
        name = match.group()[:-1].decode("ascii").lower()
        fields.append(_Field(name, line))
    return fields


def _resent_block(fields: list[_Field]) -> list[int]:
    """Indices of the newest resent block: the first run of Resent-* fields (RFC 5322 3.6.6).

    Blocks are prepended, so the first one in the header is the newest; a run ends at the first
    field that is not Resent-*, or where a second Resent-Date shows the next block starting.
    """
    start = next((i for i, f in enumerate(fields) if f.name.startswith("resent-")), None)
    if start is None:
        return []
    block: list[int] = []
    dates = 0
    for i in range(start, len(fields)):
        name = fields[i].name
        if not name.startswith("resent-"):
            break
        if name == "resent-date":
            dates += 1
            if dates > 1:
                break
        block.append(i)
    return block


def _check_originators(
    fields: list[_Field], values: list[object | None], block: list[int], allowed: set[str]
) -> None:
    from_fields = [i for i, f in enumerate(fields) if f.name == "from"]
    if len(from_fields) != 1:
        raise SubmissionError("The message must have exactly one From field")
    sender_fields = [i for i, f in enumerate(fields) if f.name == "sender"]
    if len(sender_fields) > 1:
        raise SubmissionError("The message may have at most one Sender field")
    checked: list[tuple[str, Address]] = []
    for author, sender, indices in (
        ("from", "sender", [from_fields[0], *sender_fields]),
        ("resent-from", "resent-sender", block),
    ):
        authors = [
            a
            for i in indices
            if fields[i].name == author
            for a in _originator(fields[i], values[i])
        ]
        senders = [
            a
            for i in indices
            if fields[i].name == sender
            for a in _originator(fields[i], values[i])
        ]
        if len(authors) > 1 and not senders:
            raise SubmissionError(
                f"{_label(author)} lists several addresses: a {_label(sender)} field must name"
                " the one who sends (RFC 5322 section 3.6.2)"
            )
        checked += [(author, a) for a in authors] + [(sender, a) for a in senders]
    for name, addr in checked:
        if addr.addr_spec.lower() not in allowed:
            shown = addr.addr_spec[:_MAX_SHOWN] or "<>"
            raise SubmissionError(f"{_label(name)} address {shown} is not yours")


def _parse(field: _Field, max_field_size: int) -> object:
    """Parse one address field with the `email` package (only those: it is the costly part)."""
    if len(field.raw) > max_field_size:
        raise SubmissionError(f"{_label(field.name)} field too long (over {max_field_size} octets)")
    # The same decoding BytesParser uses: undecodable octets survive as surrogates.
    lines = field.raw.decode("ascii", "surrogateescape").splitlines(keepends=True)
    try:
        return policy.SMTP.header_fetch_parse(*policy.SMTP.header_source_parse(lines))
    except (RecursionError, ValueError, IndexError) as exc:
        # Deeply nested comments exhaust the parser's recursion; treat as unparseable.
        raise SubmissionError(f"Malformed {_label(field.name)} field") from exc


def _originator(field: _Field, value: object) -> list[Address]:
    """The mailboxes of an originator field, refused unless every reader would read the same:
    no parser defect but obsolete syntax, no group, at least one address, and exactly one for
    Sender and Resent-Sender (RFC 5322 section 3.6.2: sender = "Sender:" mailbox)."""
    label = _label(field.name)
    # The registry maps these names to address headers (BaseHeaders, which carry the defects).
    if not (isinstance(value, AddressHeader) and isinstance(value, BaseHeader)):
        raise SubmissionError(f"Malformed {label} field")  # pragma: no cover
    doubtful = [d for d in value.defects if not isinstance(d, _UNAMBIGUOUS_DEFECTS)]
    if doubtful:
        raise SubmissionError(
            f"Malformed {label} field ({doubtful[0]}): refused, as mail readers would not agree"
            " on its address"
        )
    names = [a.display_name for a in value.addresses]
    if _bracket_in_text(field.raw.partition(b":")[2]) or any("<" in n or ">" in n for n in names):
        raise SubmissionError(
            f"{label} field has '<' or '>' in a name or comment: refused, as some mail readers"
            " would take what it brackets for the address"
        )
    if any(group.display_name is not None for group in value.groups):
        raise SubmissionError(f"{label} must list mailboxes, not a group (RFC 5322 section 3.6.2)")
    addresses = list(value.addresses)
    if not addresses:
        raise SubmissionError(f"{label} holds no address")
    if field.name in ("sender", "resent-sender") and len(addresses) != 1:
        raise SubmissionError(f"{label} must hold exactly one address (RFC 5322 section 3.6.2)")
    return addresses


def _bracket_in_text(body: bytes) -> bool:
    """Whether `<` or `>` appears inside a quoted string or a comment (RFC 5322 section 3.2.4,
    3.2.2: comments nest, a backslash quotes the next character) of a field body."""
    depth, quoted, escaped = 0, False, False
    for ch in body.decode("ascii", "surrogateescape"):
        inside = quoted or depth > 0
        if escaped:
            escaped = False
        elif inside and ch == "\\":
            escaped = True
            continue
        elif quoted and ch == '"':
            quoted = False
        elif depth and ch in "()":
            depth += 1 if ch == "(" else -1
        elif not inside and ch == '"':
            quoted = True
        elif not inside and ch == "(":
            depth = 1
        if inside and ch in "<>":
            return True
    return False


def _addresses(field: _Field, value: object) -> list[Address]:
    if not isinstance(value, AddressHeader):  # pragma: no cover - the registry maps these names
        raise SubmissionError(f"Malformed {_label(field.name)} field")
    return list(value.addresses)


def _validate(addr: Address, field: _Field, index: int, test_environment: bool) -> str:
    """Syntax check only (issue 5: no DNS at submission); the ASCII form, for SMTP. `index`:
    the address's place in the field, to quote it as written when it is refused."""
    try:
        # SMTPUTF8 is refused: the relay speaks plain SMTP and cannot carry UTF-8 addresses.
        valid = validate_email(
            addr.addr_spec,
            check_deliverability=False,
            allow_smtputf8=False,
            test_environment=test_environment,
        )
    except EmailNotValidError as exc:
        shown = _as_written(field, index) or addr.addr_spec
        raise SubmissionError(
            f"Invalid recipient address {shown[:_MAX_SHOWN] or '<>'} in {_label(field.name)}: {exc}"
        ) from None
    return valid.ascii_email or valid.normalized


def _as_written(field: _Field, index: int) -> str:
    """The `index`-th address of the field as the user wrote it (issue 13): the parsed
    `Address` of an invalid one is empty (`<>`), so the field is split again, in the order
    the `email` package lists its addresses, and the text between the angle brackets, or
    the whole mailbox, is taken. "" when it cannot be found."""
    lines = field.raw.decode("ascii", "surrogateescape").splitlines(keepends=True)
    _, value = policy.SMTP.header_source_parse(lines)
    try:
        address_list, _ = get_address_list("".join(value.splitlines()))
    except (RecursionError, ValueError, IndexError):
        return ""
    mailboxes = [str(mb).strip() for a in address_list.addresses for mb in a.all_mailboxes]
    if index >= len(mailboxes):
        return ""
    text = mailboxes[index]
    if text.endswith(">") and "<" in text:
        text = text[text.rindex("<") + 1 : -1].strip()
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _received(
    *,
    peer: str,
    account: str,
    hostname: str,
    submission_id: str,
    recipient: str | None,
    moment: datetime,
) -> bytes:
    """RFC 5321 section 4.4 Time-stamp-line.

    The protocol must be one Atom (`Attdl-Protocol`), so it is "XTND-XMIT" and the comment spells
    out "XTND XMIT"; the authenticated account sits in the comment after the From-domain, where
    Postfix puts "Authenticated sender".
    """
    parts = [
        f"from {_peer_literal(peer)} (account {_comment_safe(account)})",
        f"by {_comment_safe(hostname)} with XTND-XMIT (XTND XMIT over POP3)"
        f" id {_comment_safe(submission_id)}",
    ]
    if recipient is not None:
        parts.append(f"for <{recipient}>")
    fold = "\r\n\t"  # RFC 5322 section 2.2.3 folding keeps each line short
    return f"Received: {fold.join(parts)};{fold}{format_datetime(moment)}\r\n".encode()


def _peer_literal(peer: str) -> str:
    """RFC 5321 section 4.1.3 address literal for an IP, else the (cleaned) name."""
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return _comment_safe(peer) or "unknown"
    if ip.version == 6:
        return f"[IPv6:{ip.compressed}]"
    return f"[{ip}]"


def _comment_safe(text: str) -> str:
    return re.sub(r"[^\x21-\x7e]|[()\\]", "", text)[:_MAX_SHOWN]


def _header(name: str, value: str) -> bytes:
    return f"{name}: {value}\r\n".encode("ascii")


def _label(name: str) -> str:
    return "-".join(part.capitalize() for part in name.split("-"))


def _printable(text: str) -> str:
    """One line of printable text, bounded: it goes on the wire after `-ERR `."""
    return re.sub(r"[\x00-\x1f\x7f]+", " ", text)[:400]
