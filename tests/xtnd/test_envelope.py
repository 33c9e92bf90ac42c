"""derive_envelope: originator checks, recipients, Bcc removal, Resent-*, added fields."""

from __future__ import annotations

from datetime import UTC, datetime
from email import message_from_bytes, policy

import pytest

from xtnd.envelope import Envelope, SubmissionError, derive_envelope

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
ACCOUNT = "alice@example.com"


def derive(message: bytes, **kw: object) -> Envelope:
    options: dict[str, object] = {
        "account": ACCOUNT,
        "allowed_from": {"alias@example.com", "Alice.Work@Example.NET"},
        "hostname": "gw.example.com",
        "peer": "192.0.2.7",
        "max_recipients": 5,
        "submission_id": "Q123",
        "now": NOW,
    }
    options.update(kw)
    return derive_envelope(message, **options)  # type: ignore[arg-type]


def msg(*headers: str, body: bytes = b"Hello.\r\n") -> bytes:
    return "".join(h + "\r\n" for h in headers).encode() + b"\r\n" + body


def header_block(message: bytes) -> bytes:
    return message.split(b"\r\n\r\n", 1)[0] + b"\r\n"


def test_basic_envelope_and_added_fields() -> None:
    env = derive(msg("From: Alice <alice@example.com>", "To: Bob <bob@example.org>"))
    assert env.sender == ACCOUNT
    assert env.recipients == ("bob@example.org",)
    head = header_block(env.message)
    assert head.startswith(
        b"Received: from [192.0.2.7] (account alice@example.com)\r\n"
        b"\tby gw.example.com with XTND-XMIT (XTND XMIT over POP3) id Q123\r\n"
        b"\tfor <bob@example.org>;\r\n"
        b"\tWed, 02 Jan 2030 03:04:05 +0000\r\n"
    )
    parsed = message_from_bytes(env.message, policy=policy.SMTP)
    assert parsed["Date"] == "Wed, 02 Jan 2030 03:04:05 +0000"
    assert parsed["Message-ID"].endswith("@gw.example.com>")
    assert env.message.endswith(b"\r\n\r\nHello.\r\n")


def test_existing_date_and_message_id_kept_and_bytes_untouched() -> None:
    original = msg(
        "From: alice@example.com",
        "To: bob@example.org",
        "Date: Mon, 1 Jan 2029 00:00:00 -0500",
        "Message-ID: <x@client>",
        "Subject: =?utf-8?q?caf=C3=A9?=  odd   spacing",
        "X-Folded: one",
        "\ttwo",
        body=b"body with \xff raw octets\r\n..and a dot line\r\n",
    )
    env = derive(original)
    received_end = env.message.index(b"\r\nFrom:") + 2
    assert env.message[received_end:] == original  # nothing else changed, octet for octet
    assert env.message.count(b"Date:") == 1 and env.message.count(b"Message-ID:") == 1


def test_forged_from_refused() -> None:
    with pytest.raises(SubmissionError, match=r"^From address ceo@example.com is not yours$"):
        derive(msg("From: Alice <ceo@example.com>", "To: bob@example.org"))


def test_allowed_from_case_insensitive_and_aliases() -> None:
    assert derive(msg("From: ALIAS@example.com", "To: b@example.org")).sender == ACCOUNT
    assert derive(msg("From: alice.work@example.net", "To: b@example.org")).sender == ACCOUNT


@pytest.mark.parametrize(
    ("headers", "text"),
    [
        (("To: b@example.org",), "exactly one From field"),
        (("From: a@x.org", "From: alice@example.com", "To: b@example.org"), "exactly one From"),
        (("From: alice@example.com, alias@example.com", "To: b@example.org"), "a Sender field"),
        (("From: undisclosed:;", "To: b@example.org"), "not a group"),
        (("From: alice@example.com", "Sender: x@evil.org", "To: b@example.org"), "Sender address"),
    ],
)
def test_originator_rules(headers: tuple[str, ...], text: str) -> None:
    with pytest.raises(SubmissionError, match=text):
        derive(msg(*headers))


@pytest.mark.parametrize(
    ("headers", "text"),
    [
        # Python's parser reads alice in these (with a defect); other parsers read bob.
        (("From: alice@example.com <bob@example.org>",), "^Malformed From field \\(invalid"),
        (("From: alice@example.com", " <bob@example.org>"), "^Malformed From field"),
        (("From: alice@example.com\t<bob@example.org>",), "^Malformed From field"),
        (("From: alice@example.com)<bob@example.org>",), "^Malformed From field"),
        (("From: alice@example.com bob@example.org",), "^Malformed From field"),
        (("From: alice@example.com;",), "^Malformed From field"),
        (("From: alice",), "^Malformed From field"),
        (("From: Friends: alice@example.com;",), "^From must list mailboxes, not a group"),
        # Naive readers take the bracketed address in a comment or a name.
        (("From: alice@example.com (<bob@example.org>)",), "^From field has '<' or '>' in a"),
        (("From: alice@example.com (x (y) \\( <bob@example.org>)",), "^From field has '<'"),
        (('From: "Bob <bob@example.org>" <alice@example.com>',), "^From field has '<'"),
        (('From: "Bob \\" <bob@example.org>" <alice@example.com>',), "^From field has '<'"),
        (("From: =?utf-8?q?=3Cbob@example.org=3E?= <alice@example.com>",), "^From field has"),
        (
            ("From: alice@example.com", "Sender: alice@example.com <bob@example.org>"),
            "^Malformed Sender field",
        ),
        (
            ("From: alice@example.com", "Sender: alice@example.com, alias@example.com"),
            "^Sender must hold exactly one address",
        ),
        (
            ("From: alice@example.com", "Sender: alice@example.com", "Sender: alias@example.com"),
            "^The message may have at most one Sender field",
        ),
        (("From: alice@example.com, alias@example.com",), "a Sender field must name"),
        (
            ("From: alice@example.com, bob@example.org", "Sender: alice@example.com"),
            "^From address bob@example.org is not yours$",
        ),
        (
            ("Resent-From: alice@example.com <bob@example.org>", "From: alice@example.com"),
            "^Malformed Resent-From field",
        ),
        (
            ("Resent-From: alice@example.com, alias@example.com", "From: alice@example.com"),
            "a Resent-Sender field must name",
        ),
        (
            (
                "Resent-From: alice@example.com",
                "Resent-Sender: alice@example.com, alias@example.com",
                "From: alice@example.com",
            ),
            "^Resent-Sender must hold exactly one address",
        ),
    ],
)
def test_ambiguous_originator_refused(headers: tuple[str, ...], text: str) -> None:
    """Issue 10 defect 2: an originator field parsers read differently, or that lists more than
    RFC 5322 section 3.6.2 allows, is refused with a reason, whoever it seems to name."""
    with pytest.raises(SubmissionError, match=text):
        derive(msg(*headers, "To: b@example.org"))


@pytest.mark.parametrize(
    "headers",
    [
        ("From: A. Smith <alice@example.com>",),  # obsolete phrase syntax: read alike by all
        ('From: "bob@example.org" <alice@example.com>',),  # a quoted name is only a name
        ("From: alice@example.com (Alice)",),
        ('From: "Alice (home) \\"A\\"" <alice@example.com> (work: \\) "x")',),
        ("From: Alice <alice@example.com>, alias@example.com", "Sender: alice@example.com"),
        (
            "Resent-From: alice@example.com, Alias <alias@example.com>",
            "Resent-Sender: alias@example.com",
            "Resent-To: c@example.org",
            "From: alice@example.com",
        ),
    ],
)
def test_unambiguous_originators_accepted(headers: tuple[str, ...]) -> None:
    assert derive(msg(*headers, "To: b@example.org")).sender == ACCOUNT


def test_bcc_stripped_and_recipients_gathered() -> None:
    env = derive(
        msg(
            "From: alice@example.com",
            "To: Bob <bob@example.org>, team: carol@example.org, dave@example.org;",
            "Cc: BOB@EXAMPLE.ORG",
            "Bcc: secret@example.net,",
            " other@example.net",
            "Subject: s",
        )
    )
    assert env.recipients == (
        "bob@example.org",
        "carol@example.org",
        "dave@example.org",
        "secret@example.net",
        "other@example.net",
    )
    assert b"Bcc" not in env.message
    assert b"secret" not in env.message and b"other@" not in env.message
    assert b"\r\nSubject: s\r\n" in env.message
    assert b"for <" not in env.message  # more than one recipient: no "for" clause


def test_received_does_not_name_a_lone_bcc_recipient() -> None:
    env = derive(msg("From: alice@example.com", "Bcc: hidden@example.net"))
    assert env.recipients == ("hidden@example.net",)
    assert b"hidden" not in env.message


def test_invalid_recipient_is_named() -> None:
    with pytest.raises(SubmissionError, match=r"Invalid recipient address bob@nowhere in Cc"):
        derive(msg("From: alice@example.com", "To: a@example.org", "Cc: bob@nowhere"))
    with pytest.raises(SubmissionError, match=r"Invalid recipient address foo in To"):
        derive(msg("From: alice@example.com", "To: Bad <foo>"))


@pytest.mark.parametrize(
    ("field", "shown"),
    [
        ("To: someone@invalid..example", "someone@invalid..example"),
        ("To: Some One <someone@invalid..example>", "someone@invalid..example"),
        ("To: ok@example.org, Joe <joe@@example.org>", "joe@@example.org"),
        ("To: team: a@example.org, b@bad..example;", "b@bad..example"),
        ("To: x@-bad-.example", "x@-bad-.example"),
    ],
)
def test_invalid_recipient_is_quoted_as_written(field: str, shown: str) -> None:
    # Issue 13: the email parser empties an address it cannot parse; the reply must still
    # show the user what was refused, not `<>`.
    with pytest.raises(SubmissionError) as caught:
        derive(msg("From: alice@example.com", field))
    assert caught.value.text.startswith(f"Invalid recipient address {shown} in To: ")


def test_too_many_recipients() -> None:
    to = ", ".join(f"u{i}@example.org" for i in range(6))
    with pytest.raises(SubmissionError, match="at most 5"):
        derive(msg("From: alice@example.com", f"To: {to}"))
    # Duplicates count once.
    to = ", ".join(["u@example.org"] * 20)
    assert derive(msg("From: alice@example.com", f"To: {to}")).recipients == ("u@example.org",)


def test_no_recipients() -> None:
    with pytest.raises(SubmissionError, match="No recipients"):
        derive(msg("From: alice@example.com", "Subject: nobody"))


def test_resent_fields_define_the_recipients() -> None:
    env = derive(
        msg(
            "Resent-From: alice@example.com",
            "Resent-To: new@example.org",
            "Resent-Bcc: quiet@example.org",
            "Resent-Date: Tue, 1 Jan 2030 00:00:00 +0000",
            "Received: from old by old; Mon, 31 Dec 2029 00:00:00 +0000",
            "Resent-From: someone@else.org",
            "Resent-To: older@example.org",
            "Resent-Date: Mon, 31 Dec 2029 00:00:00 +0000",
            "From: alice@example.com",
            "To: original@example.org",
        )
    )
    assert env.recipients == ("new@example.org", "quiet@example.org")
    assert b"Resent-Bcc" not in env.message and b"quiet@" not in env.message


def test_resent_from_must_be_yours() -> None:
    with pytest.raises(SubmissionError, match=r"Resent-From address mallory@evil\.org"):
        derive(
            msg(
                "Resent-From: mallory@evil.org",
                "Resent-To: x@example.org",
                "From: alice@example.com",
                "To: y@example.org",
            )
        )


def test_resent_date_added_to_the_block() -> None:
    env = derive(
        msg("Resent-From: alice@example.com", "Resent-To: x@example.org", "From: alice@example.com")
    )
    head = header_block(env.message)
    lines = head.split(b"\r\n")
    names = [line.split(b":", 1)[0] for line in lines if line and line[:1] not in b" \t"]
    assert names == [b"Received", b"Resent-Date", b"Resent-From", b"Resent-To", b"From", b"Date",
                     b"Message-ID"]  # fmt: skip


@pytest.mark.parametrize(
    "header",
    [b"From alice@example.com Mon Jan  1 00:00:00 2030\r\n", b" leading continuation\r\n"],
)
def test_malformed_header_refused(header: bytes) -> None:
    with pytest.raises(SubmissionError, match="Malformed header"):
        derive(header + msg("From: alice@example.com", "To: b@example.org"))


def test_hostile_address_fields_are_bounded() -> None:
    with pytest.raises(SubmissionError, match="To field too long"):
        derive(msg("From: alice@example.com", "To: " + "x@example.org, " * 3000))
    with pytest.raises(SubmissionError, match="Malformed To field"):
        derive(msg("From: alice@example.com", "To: " + "(" * 5000))


def test_smtputf8_address_refused_and_test_domains_optional() -> None:
    with pytest.raises(SubmissionError, match="Invalid recipient"):
        derive(msg("From: alice@example.com", "To: jörg@example.org"))
    with pytest.raises(SubmissionError, match="Invalid recipient"):
        derive(msg("From: alice@example.com", "To: b@example.test"))
    env = derive(msg("From: alice@example.com", "To: b@example.test"), test_environment=True)
    assert env.recipients == ("b@example.test",)


def test_ipv6_peer_and_message_without_body() -> None:
    env = derive(b"From: alice@example.com\r\nTo: b@example.org\r\n", peer="2001:db8::1")
    assert env.message.startswith(b"Received: from [IPv6:2001:db8::1] (account alice@example.com)")
    assert b"\r\n\r\n" not in env.message and env.message.endswith(b">\r\n")


def test_error_text_is_one_line() -> None:
    with pytest.raises(SubmissionError) as info:
        derive(b"Bad\x00line\r\n" + msg("From: alice@example.com"))
    assert (
        "\r" not in info.value.text
        and "\n" not in info.value.text
        and "\x00" not in info.value.text
    )
