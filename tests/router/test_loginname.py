"""The login-name grammar on its own, before any lookup."""

from __future__ import annotations

import pytest

from router.loginname import MAX_NAME_LENGTH, ParsedName, parse_name
from router.route import RouteError


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("jsmith", ParsedName("jsmith")),
        ("JSmith@Client1.com", ParsedName("jsmith", "client1.com")),
        ("private#jsmith", ParsedName("jsmith", None, "private")),
        ("lists/info#jsmith@client1.com", ParsedName("jsmith", "client1.com", "lists/info")),
        ("~public/announces#jsmith", ParsedName("jsmith", None, "announces", "public")),
        ("~Boss/inbox#jsmith", ParsedName("jsmith", None, "INBOX", "boss")),
        ("~boss/a/b#jsmith@x.org", ParsedName("jsmith", "x.org", "a/b", "boss")),
        ("info%client2.com", ParsedName("info", "client2.com")),
        ("Sent Items#jsmith", ParsedName("jsmith", None, "Sent Items")),
        (
            "b\u00fccher#j.smith+tag@B\u00fccher.example",
            ParsedName("j.smith+tag", "xn--bcher-kva.example", "b\u00fccher"),
        ),
    ],
)
def test_parse(text: str, parsed: ParsedName) -> None:
    assert parse_name(text) == parsed


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("~public/announces", "needs '#account'"),
        ("~public#jsmith", "needs '/mailbox'"),
        ("a#b#c", "more than one"),
        ("a//b#jsmith", "empty segment"),
        ("..#jsmith", r"'\.\.'"),
        ("box%x#jsmith", "'%'"),
        ("j..smith", "empty dot-separated"),
        (".jsmith", "empty dot-separated"),
        ("js/mith", "'/'"),
        ("a\r\nb", "control"),
        ("a%b%c.com", "label"),
    ],
)
def test_parse_errors_say_why(text: str, reason: str) -> None:
    with pytest.raises(RouteError, match=reason):
        parse_name(text)


def test_overlong_name_is_refused_before_parsing() -> None:
    with pytest.raises(RouteError, match="longer than"):
        parse_name("a" * (MAX_NAME_LENGTH + 1))
