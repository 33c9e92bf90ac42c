"""Routing-record grammar: patterns, targets, `route add` validation, wildcard helpers."""

from __future__ import annotations

import pytest

from router.table import (
    Pattern,
    Target,
    parse_pattern,
    parse_target,
    substitute,
    validate_route,
    wildcard_candidates,
)


def test_parse_patterns() -> None:
    assert parse_pattern("Info@Client1.COM") == Pattern("info", "client1.com", wildcard=False)
    assert parse_pattern("*@client1.com") == Pattern("", "client1.com", wildcard=True)
    assert parse_pattern("Sales-*@client1.com") == Pattern("sales-", "client1.com", wildcard=True)
    assert str(parse_pattern("Sales-*@Client1.com")) == "sales-*@client1.com"


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        ("info", "name@domain"),
        ("@client1.com", "empty name"),
        ("*a@client1.com", "end of the name"),
        ("a*b@client1.com", "end of the name"),
        ("**@client1.com", "only one"),
        ("info@", "empty"),
        ("in fo@client1.com", "space"),
        ("box#info@client1.com", "'#'"),
        ("info@bad_domain.com", "label"),
    ],
)
def test_bad_patterns(pattern: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_pattern(pattern)


def test_parse_targets() -> None:
    assert parse_target("CL1@client1.com") == Target("cl1", "client1.com")
    assert parse_target("Lists/Info#cl1@client1.com") == Target("cl1", "client1.com", "Lists/Info")
    assert parse_target("*@client1.com") == Target("*", "client1.com")
    assert str(parse_target("inbox/x#pre-*@Client1.com")) == "INBOX/x#pre-*@client1.com"


@pytest.mark.parametrize(
    "target",
    ["cl1", "a/../b#cl1@client1.com", "#cl1@client1.com", "*a*@client1.com", "cl1@", "a@b@c.com"],
)
def test_bad_targets(target: str) -> None:
    with pytest.raises(ValueError):
        parse_target(target)


def test_validate_route_returns_canonical_texts() -> None:
    assert validate_route("Info@Client1.com", "lists/info#CL1@client1.com") == (
        "info@client1.com",
        "lists/info#cl1@client1.com",
    )
    assert validate_route("*@client1.net", "*@client1.com") == ("*@client1.net", "*@client1.com")


def test_validate_route_refuses_star_without_wildcard_pattern() -> None:
    with pytest.raises(ValueError, match="no '\\*' to fill"):
        validate_route("info@client1.com", "*@client1.com")


def test_validate_route_refuses_self_loop() -> None:
    with pytest.raises(ValueError, match="loop"):
        validate_route("Info@client1.com", "info@CLIENT1.com")
    with pytest.raises(ValueError, match="loop"):
        validate_route("*@client1.com", "*@client1.com")


def test_wildcard_candidates_longest_prefix_first() -> None:
    assert list(wildcard_candidates("abc", "d.com")) == [
        ("ab*@d.com", "c"),
        ("a*@d.com", "bc"),
        ("*@d.com", "abc"),
    ]


def test_substitute() -> None:
    assert substitute(Target("pre-*", "d.com"), "bob") == (Target("pre-bob", "d.com"), True)
    assert substitute(Target("cl1", "d.com", "box"), "bob") == (
        Target("cl1", "d.com", "box"),
        False,
    )
    with pytest.raises(ValueError):
        substitute(Target("*", "d.com"), None)
