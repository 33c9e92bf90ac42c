"""Login names and recipients resolved through an in-memory directory (issue 3 login table)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from router.resolve import Directory, resolve_login, resolve_recipient
from router.route import LoginTarget, Route, RouteError
from router.table import MAX_ROUTE_DEPTH

DEFAULT = "example.com"


@dataclass
class FakeDirectory:
    """Domains, domain aliases, accounts and routing records held in plain containers."""

    domains: set[str] = field(default_factory=set)
    domain_aliases: dict[str, str] = field(default_factory=dict)
    accounts: set[tuple[str, str]] = field(default_factory=set)
    routes: dict[str, str] = field(default_factory=dict)

    def canonical_domain(self, name: str) -> str | None:
        if name in self.domains:
            return name
        return self.domain_aliases.get(name)

    def account_exists(self, domain: str, account: str) -> bool:
        return (domain, account) in self.accounts

    def route_target(self, pattern: str) -> str | None:
        return self.routes.get(pattern)


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory(
        domains={"example.com", "client1.com", "client2.com"},
        domain_aliases={"client1.org": "client1.com"},
        accounts={
            ("example.com", "jsmith"),
            ("example.com", "boss"),
            ("example.com", "public"),
            ("client1.com", "jsmith"),
            ("client1.com", "cl1"),
            ("client1.com", "sales"),
            ("client2.com", "info"),
        },
    )


def login(name: str, d: Directory) -> LoginTarget:
    return resolve_login(name, default_domain=DEFAULT, directory=d)


def rcpt(address: str, d: Directory) -> Route:
    return resolve_recipient(address, default_domain=DEFAULT, directory=d)


def test_protocol_is_satisfied_by_fake(directory: FakeDirectory) -> None:
    d: Directory = directory
    assert d.canonical_domain("client1.org") == "client1.com"


# --- the login table, one row per test -------------------------------------------------------


def test_bare_account_opens_inbox_in_default_domain(directory: FakeDirectory) -> None:
    assert login("jsmith", directory) == LoginTarget(
        "example.com", "jsmith", Route("example.com", "jsmith", "INBOX", None)
    )


def test_account_at_domain(directory: FakeDirectory) -> None:
    assert login("jsmith@client1.com", directory) == LoginTarget(
        "client1.com", "jsmith", Route("client1.com", "jsmith")
    )


def test_mailbox_hash_account(directory: FakeDirectory) -> None:
    assert login("private#jsmith", directory) == LoginTarget(
        "example.com", "jsmith", Route("example.com", "jsmith", "private")
    )


def test_nested_mailbox_hash_account_at_domain(directory: FakeDirectory) -> None:
    assert login("lists/info#jsmith@client1.com", directory) == LoginTarget(
        "client1.com", "jsmith", Route("client1.com", "jsmith", "lists/info")
    )


def test_foreign_public_mailbox(directory: FakeDirectory) -> None:
    assert login("~public/announces#jsmith", directory) == LoginTarget(
        "example.com", "jsmith", Route("example.com", "public", "announces")
    )


def test_foreign_inbox(directory: FakeDirectory) -> None:
    target = login("~boss/INBOX#jsmith", directory)
    assert target.auth_address == "jsmith@example.com"
    assert target.route == Route("example.com", "boss", "INBOX")


def test_foreign_owner_is_looked_up_in_the_users_domain(directory: FakeDirectory) -> None:
    # boss exists in example.com only; jsmith@client1.com cannot reach it.
    with pytest.raises(RouteError):
        login("~boss/INBOX#jsmith@client1.com", directory)


def test_legacy_percent_form(directory: FakeDirectory) -> None:
    assert login("info%client2.com", directory) == LoginTarget(
        "client2.com", "info", Route("client2.com", "info")
    )


def test_percent_is_not_a_separator_when_at_is_present(directory: FakeDirectory) -> None:
    with pytest.raises(RouteError):
        login("info%client2.com@example.com", directory)


def test_wildcard_record_gives_individual_name(directory: FakeDirectory) -> None:
    directory.routes["*@client1.com"] = "cl1@client1.com"
    assert login("abcdef@client1.com", directory) == LoginTarget(
        "client1.com", "cl1", Route("client1.com", "cl1", "INBOX", "abcdef")
    )


def test_login_as_the_account_itself_has_no_individual(directory: FakeDirectory) -> None:
    directory.routes["*@client1.com"] = "cl1@client1.com"
    assert login("cl1@client1.com", directory).route.individual is None


# --- case rules ------------------------------------------------------------------------------


def test_accounts_and_domains_fold_case_mailboxes_keep_it(directory: FakeDirectory) -> None:
    target = login("Lists/Info#JSmith@Client1.COM", directory)
    assert target.auth_address == "jsmith@client1.com"
    assert target.route.mailbox == "Lists/Info"


def test_inbox_in_any_case_is_canonical(directory: FakeDirectory) -> None:
    assert login("inbox/Sub#jsmith", directory).route.mailbox == "INBOX/Sub"
    assert login("~boss/Inbox#jsmith", directory).route.mailbox == "INBOX"


def test_default_domain_is_normalised(directory: FakeDirectory) -> None:
    target = resolve_login("jsmith", default_domain="Example.COM", directory=directory)
    assert target.auth_domain == "example.com"


# --- aliases and domain aliases --------------------------------------------------------------


def test_account_alias(directory: FakeDirectory) -> None:
    directory.routes["info@client1.com"] = "cl1@client1.com"
    assert login("info@client1.com", directory) == LoginTarget(
        "client1.com", "cl1", Route("client1.com", "cl1")
    )


def test_alias_target_with_mailbox(directory: FakeDirectory) -> None:
    directory.routes["info@client1.com"] = "lists/info#cl1@client1.com"
    assert login("info@client1.com", directory).route == Route("client1.com", "cl1", "lists/info")


def test_mailbox_in_name_wins_over_record_mailbox(directory: FakeDirectory) -> None:
    directory.routes["info@client1.com"] = "lists/info#cl1@client1.com"
    assert login("private#info@client1.com", directory).route.mailbox == "private"


def test_domain_alias_is_made_canonical(directory: FakeDirectory) -> None:
    assert login("jsmith@client1.org", directory) == LoginTarget(
        "client1.com", "jsmith", Route("client1.com", "jsmith")
    )


def test_records_are_looked_up_under_the_canonical_domain(directory: FakeDirectory) -> None:
    directory.routes["info@client1.com"] = "cl1@client1.com"
    assert login("info@client1.org", directory).auth_address == "cl1@client1.com"


def test_wildcard_target_carries_the_match_to_another_domain(directory: FakeDirectory) -> None:
    # client1.net is not a hosted domain; its records still apply.
    directory.routes["*@client1.net"] = "*@client1.com"
    directory.routes["*@client1.com"] = "cl1@client1.com"
    assert login("abcdef@client1.net", directory).route == Route(
        "client1.com", "cl1", "INBOX", "abcdef"
    )


def test_star_in_target_consumes_the_match(directory: FakeDirectory) -> None:
    directory.routes["*@client1.net"] = "*@client1.com"
    assert login("jsmith@client1.net", directory).route == Route("client1.com", "jsmith")


def test_alias_chain(directory: FakeDirectory) -> None:
    directory.routes["a@client1.com"] = "b@client1.com"
    directory.routes["b@client1.com"] = "c@client2.com"
    directory.routes["c@client2.com"] = "info@client2.com"
    assert login("a@client1.com", directory).auth_address == "info@client2.com"


def test_outermost_individual_wins(directory: FakeDirectory) -> None:
    directory.routes["*@client2.com"] = "zz@client1.com"
    directory.routes["*@client1.com"] = "cl1@client1.com"
    assert login("bob@client2.com", directory).route.individual == "bob"


# --- precedence ------------------------------------------------------------------------------


def test_exact_record_beats_existing_account(directory: FakeDirectory) -> None:
    directory.routes["sales@client1.com"] = "cl1@client1.com"
    assert login("sales@client1.com", directory).auth_account == "cl1"


def test_existing_account_beats_wildcard(directory: FakeDirectory) -> None:
    directory.routes["*@client1.com"] = "cl1@client1.com"
    directory.routes["sa*@client1.com"] = "cl1@client1.com"
    target = login("sales@client1.com", directory)
    assert (target.auth_account, target.route.individual) == ("sales", None)


def test_longest_prefix_wildcard_wins(directory: FakeDirectory) -> None:
    directory.routes["*@client1.com"] = "cl1@client1.com"
    directory.routes["sales-*@client1.com"] = "sales@client1.com"
    directory.routes["sales-eu-*@client1.com"] = "jsmith@client1.com"
    assert login("sales-eu-paris@client1.com", directory).route == Route(
        "client1.com", "jsmith", "INBOX", "paris"
    )
    assert login("sales-us@client1.com", directory).route == Route(
        "client1.com", "sales", "INBOX", "us"
    )
    assert login("other@client1.com", directory).route == Route(
        "client1.com", "cl1", "INBOX", "other"
    )


def test_prefix_wildcard_needs_a_nonempty_match(directory: FakeDirectory) -> None:
    directory.routes["sales-*@client1.com"] = "cl1@client1.com"
    with pytest.raises(RouteError, match="unknown account"):
        login("sales-@client1.com", directory)


# --- failures --------------------------------------------------------------------------------


def test_unknown_account(directory: FakeDirectory) -> None:
    with pytest.raises(RouteError, match="unknown account"):
        login("nobody@client1.com", directory)


def test_unknown_domain(directory: FakeDirectory) -> None:
    with pytest.raises(RouteError, match="unknown domain"):
        login("jsmith@nowhere.example", directory)


def test_alias_to_unknown_account(directory: FakeDirectory) -> None:
    directory.routes["info@client1.com"] = "ghost@client1.com"
    with pytest.raises(RouteError, match="unknown account"):
        login("info@client1.com", directory)


def test_unknown_foreign_owner(directory: FakeDirectory) -> None:
    with pytest.raises(RouteError):
        login("~ghost/INBOX#jsmith", directory)


def test_loop_is_reported(directory: FakeDirectory) -> None:
    directory.routes["a@client1.com"] = "b@client1.com"
    directory.routes["b@client1.com"] = "a@client1.com"
    with pytest.raises(RouteError, match="loop"):
        login("a@client1.com", directory)


def test_loop_through_domain_alias_is_reported(directory: FakeDirectory) -> None:
    directory.routes["a@client1.com"] = "a@client1.org"
    with pytest.raises(RouteError, match="loop"):
        login("a@client1.com", directory)


def test_chain_at_the_depth_limit_resolves(directory: FakeDirectory) -> None:
    for i in range(MAX_ROUTE_DEPTH - 1):
        directory.routes[f"hop{i}@client1.com"] = f"hop{i + 1}@client1.com"
    directory.routes[f"hop{MAX_ROUTE_DEPTH - 1}@client1.com"] = "cl1@client1.com"
    assert login("hop0@client1.com", directory).auth_account == "cl1"


def test_chain_beyond_the_depth_limit_is_a_loop(directory: FakeDirectory) -> None:
    for i in range(MAX_ROUTE_DEPTH):
        directory.routes[f"hop{i}@client1.com"] = f"hop{i + 1}@client1.com"
    directory.routes[f"hop{MAX_ROUTE_DEPTH}@client1.com"] = "cl1@client1.com"
    with pytest.raises(RouteError, match="loop"):
        login("hop0@client1.com", directory)


def test_bad_stored_record_is_a_route_error(directory: FakeDirectory) -> None:
    directory.routes["info@client1.com"] = "not an address"
    with pytest.raises(RouteError, match="bad routing record"):
        login("info@client1.com", directory)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "#jsmith",
        "box#",
        "jsmith@",
        "@client1.com",
        "a#b#jsmith",
        "../etc#jsmith",
        "a/../b#jsmith",
        "./x#jsmith",
        "a//b#jsmith",
        "/abs#jsmith",
        "trail/#jsmith",
        "bad\x00box#jsmith",
        "bad\x1bbox#jsmith",
        "bad\x7fbox#jsmith",
        "js\tmith",
        "js mith",
        "~public/announces",
        "~public#jsmith",
        "~/box#jsmith",
        "~pub lic/box#jsmith",
        "a*b#jsmith",
        "jsm*th",
        "jsmith@client1..com",
        "jsmith@-bad.com",
        "jsmith@@client1.com",
        "a" * 65,
        "x" * 201 + "#jsmith",
    ],
)
def test_bad_names_fail_like_a_bad_password(name: str, directory: FakeDirectory) -> None:
    with pytest.raises(RouteError):
        login(name, directory)


# --- recipients ------------------------------------------------------------------------------


def test_recipient_plain_and_with_mailbox(directory: FakeDirectory) -> None:
    assert rcpt("jsmith", directory) == Route("example.com", "jsmith")
    assert rcpt("lists/info#jsmith@client1.com", directory) == Route(
        "client1.com", "jsmith", "lists/info"
    )


def test_recipient_through_wildcard_keeps_individual(directory: FakeDirectory) -> None:
    directory.routes["*@client1.com"] = "cl1@client1.com"
    assert rcpt("abcdef@client1.com", directory) == Route("client1.com", "cl1", "INBOX", "abcdef")


def test_recipient_through_alias_with_mailbox(directory: FakeDirectory) -> None:
    directory.routes["info@client1.com"] = "lists/info#cl1@client1.com"
    assert rcpt("INFO@client1.org", directory) == Route("client1.com", "cl1", "lists/info")


def test_foreign_form_is_not_a_recipient(directory: FakeDirectory) -> None:
    with pytest.raises(RouteError, match="not a recipient"):
        rcpt("~public/announces#jsmith", directory)


def test_recipient_unknown(directory: FakeDirectory) -> None:
    with pytest.raises(RouteError):
        rcpt("nobody@client2.com", directory)


# --- issue 13: foreign mailboxes in other domains, and the login address ---------------------


def test_foreign_owner_in_another_domain(directory: FakeDirectory) -> None:
    target = login("~info@client2.com/INBOX#jsmith@client1.com", directory)
    assert target.auth_address == "jsmith@client1.com"
    assert target.route == Route("client2.com", "info", "INBOX")


def test_foreign_owner_domain_through_alias_and_default_user_domain(
    directory: FakeDirectory,
) -> None:
    target = login("~CL1@Client1.ORG/lists/info#jsmith", directory)
    assert target.auth_address == "jsmith@example.com"
    assert target.route == Route("client1.com", "cl1", "lists/info")


def test_foreign_owner_with_domain_is_routed(directory: FakeDirectory) -> None:
    # An exact routing record names the owner, as it would a recipient.
    directory.routes["boss@client2.com"] = "boss@example.com"
    target = login("~boss@client2.com/INBOX#info@client2.com", directory)
    assert target.route == Route("example.com", "boss", "INBOX")


@pytest.mark.parametrize(
    "name",
    [
        "~ghost@client2.com/INBOX#jsmith",  # no such account there
        "~info@nowhere.test/INBOX#jsmith",  # no such domain
        "~info@/INBOX#jsmith",  # empty domain
        "~@client2.com/INBOX#jsmith",  # empty owner
    ],
)
def test_foreign_owner_in_another_domain_that_does_not_resolve(
    directory: FakeDirectory, name: str
) -> None:
    with pytest.raises(RouteError):
        login(name, directory)


def test_login_address_is_the_address_part_as_given(directory: FakeDirectory) -> None:
    directory.routes["*@client1.com"] = "cl1@client1.com"
    assert login("AbcDef@Client1.com", directory).login_address == "abcdef@client1.com"
    assert login("private#jsmith", directory).login_address == "jsmith@example.com"
    assert login("~boss/INBOX#jsmith", directory).login_address == "jsmith@example.com"
    assert login("x@client1.org", directory).login_address == "x@client1.org"
