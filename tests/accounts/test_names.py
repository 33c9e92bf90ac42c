"""Canonical forms and refusals for domain, account and mailbox names."""

from __future__ import annotations

import pytest

from accounts.names import normalize_account, normalize_domain, validate_mailbox


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("Client1.COM", "client1.com"),
        ("localhost", "localhost"),
        ("B\u00fccher.Example", "xn--bcher-kva.example"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("123.example", "123.example"),
        ("a-b.example", "a-b.example"),
    ],
)
def test_normalize_domain(given: str, canonical: str) -> None:
    assert normalize_domain(given) == canonical


@pytest.mark.parametrize(
    "bad",
    [
        "",
        ".",
        "a..b",
        ".a.com",
        "a.com.",
        "-a.com",
        "a-.com",
        "a_b.com",
        "a b.com",
        "a\tb.com",
        "a\x00.com",
        "a@b.com",
        "a/b.com",
        "x" * 64 + ".com",
        ".".join(["a" * 60] * 5),
    ],
)
def test_normalize_domain_refuses(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_domain(bad)


def test_domain_length_limit_is_253() -> None:
    name = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name) == 253
    assert normalize_domain(name) == name
    with pytest.raises(ValueError, match="253"):
        normalize_domain(name + "b")


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("JSmith", "jsmith"),
        ("j.smith", "j.smith"),
        ("j_smith+tag", "j_smith+tag"),
        ("o'brien", "o'brien"),
        ("a" * 64, "a" * 64),
    ],
)
def test_normalize_account(given: str, canonical: str) -> None:
    assert normalize_account(given) == canonical


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "empty"),
        ("a" * 65, "64"),
        (".a", "empty dot"),
        ("a.", "empty dot"),
        ("a..b", "empty dot"),
        ("a@b", "'@'"),
        ("a#b", "'#'"),
        ("a%b", "'%'"),
        ("~a", "'~'"),
        ("a/b", "'/'"),
        ("a*b", r"'\*'"),
        ("a b", "space"),
        ("a\x01b", "control"),
        ("j\u00fcrgen", "ASCII"),
    ],
)
def test_normalize_account_refuses(bad: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalize_account(bad)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("INBOX", "INBOX"),
        ("inbox", "INBOX"),
        ("InBoX/Sub", "INBOX/Sub"),
        ("Lists/Info", "Lists/Info"),
        ("inboxes/x", "inboxes/x"),
        ("Archive/inbox", "Archive/inbox"),
        ("Sent Items", "Sent Items"),
        ("a.b/..c/d..", "a.b/..c/d.."),
        ("\u00c9t\u00e9", "\u00c9t\u00e9"),
        ("x" * 200, "x" * 200),
    ],
)
def test_validate_mailbox(given: str, canonical: str) -> None:
    assert validate_mailbox(given) == canonical


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("", "empty"),
        ("a//b", "empty segment"),
        ("/a", "starts or ends"),
        ("a/", "starts or ends"),
        ("/", "starts or ends"),
        (".", r"'\.'"),
        ("..", r"'\.\.'"),
        ("a/../b", r"'\.\.'"),
        ("a/./b", r"'\.'"),
        ("a\x00b", "control"),
        ("a\x1fb", "control"),
        ("a\x7fb", "control"),
        ("a\nb", "control"),
        ("a\u0085b", "control"),
        ("a#b", "'#'"),
        ("a~b", "'~'"),
        ("a%b", "'%'"),
        ("a*b", r"'\*'"),
        (" a", "space"),
        ("a/b ", "space"),
        ("x" * 201, "200"),
    ],
)
def test_validate_mailbox_refuses(bad: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        validate_mailbox(bad)
