"""Cyrus ACL arithmetic: rights strings, identifiers, negative entries, owner and admin rights."""

from __future__ import annotations

import pytest

from accounts.acl import (
    ALL_RIGHTS,
    DEFAULT_PUBLIC_ACL,
    AclEntry,
    Rights,
    effective_rights,
    normalize_identifier,
    parse_acl,
    parse_acl_entry,
)


def r(text: str) -> Rights:
    return Rights.parse(text)


# --- rights strings --------------------------------------------------------------------------


def test_rights_round_trip_in_canonical_order() -> None:
    assert str(r("aetxkpiwsrl")) == "lrswipkxtea"
    assert str(r("nl")) == "ln"
    assert str(r("")) == ""
    assert str(ALL_RIGHTS) == "lrswipkxtean"


def test_d_is_a_macro_for_te() -> None:
    assert r("d") == r("te")
    assert str(r("lrd")) == "lrte"


def test_legacy_c_is_a_macro_for_kx() -> None:
    assert r("c") == r("kx")


def test_named_rights() -> None:
    assert r("all") == ALL_RIGHTS
    assert r("NONE") == Rights()


@pytest.mark.parametrize("bad", ["lrz", "L", "0", "lr s", "-l"])
def test_unknown_rights_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not supported"):
        r(bad)


def test_rights_set_operations() -> None:
    assert r("lrs") | r("wi") == r("lrswi")
    assert r("lrswi") - r("sw") == r("lri")
    assert "r" in r("lr")
    assert "t" not in r("lr")
    assert not Rights()
    with pytest.raises(ValueError):
        Rights(frozenset("lz"))


# --- identifiers and entries -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("anyone", "anyone"),
        ("ANONYMOUS", "anonymous"),
        ("Group:Staff", "group:staff"),
        ("Fred@Client1.COM", "fred@client1.com"),
        ("fred", "fred"),
    ],
)
def test_normalize_identifier(given: str, canonical: str) -> None:
    assert normalize_identifier(given) == canonical


def test_bare_identifier_takes_the_default_domain() -> None:
    assert normalize_identifier("Fred", default_domain="Client1.com") == "fred@client1.com"
    assert normalize_identifier("anyone", default_domain="client1.com") == "anyone"


@pytest.mark.parametrize("bad", ["", "group:", "fr ed", "fred@", "a#b@c.com"])
def test_bad_identifiers(bad: str) -> None:
    with pytest.raises(ValueError):
        normalize_identifier(bad)


def test_parse_acl_entry_negative() -> None:
    entry = parse_acl_entry("-Anonymous", "s")
    assert entry == AclEntry("anonymous", r("s"), negative=True)
    assert str(entry) == "-anonymous s"
    assert entry.key == "-anonymous"


def test_parse_acl_text() -> None:
    assert parse_acl("anyone lrsp  fred lwi\t-anonymous s") == (
        AclEntry("anyone", r("lrsp")),
        AclEntry("fred", r("lwi")),
        AclEntry("anonymous", r("s"), negative=True),
    )
    with pytest.raises(ValueError, match="pairs"):
        parse_acl("anyone lrs fred")


def test_default_public_acl_is_anyone_lrs() -> None:
    assert (AclEntry("anyone", r("lrs")),) == DEFAULT_PUBLIC_ACL


# --- effective rights ------------------------------------------------------------------------

CYRUS_EXAMPLE = parse_acl("anyone lrsp fred lwi -anonymous s")


def test_cyrus_example_fred() -> None:
    assert str(effective_rights(CYRUS_EXAMPLE, user="fred")) == "lrswip"


def test_cyrus_example_anonymous() -> None:
    assert str(effective_rights(CYRUS_EXAMPLE, user=None)) == "lrp"


def test_cyrus_example_someone_else() -> None:
    assert str(effective_rights(CYRUS_EXAMPLE, user="joe")) == "lrsp"


def test_cyrus_example_with_qualified_names() -> None:
    acl = parse_acl("anyone lrsp fred lwi -anonymous s", default_domain="client1.com")
    assert str(effective_rights(acl, user="Fred@Client1.com")) == "lrswip"
    # fred of another domain is a different user.
    assert str(effective_rights(acl, user="fred@client2.com")) == "lrsp"


def test_anonymous_entry_does_not_match_users() -> None:
    acl = parse_acl("anonymous lr")
    assert effective_rights(acl, user="fred") == Rights()
    assert effective_rights(acl, user=None) == r("lr")


def test_groups_match_and_negatives_apply_across_identifiers() -> None:
    acl = parse_acl("group:staff lrswite -fred@c.com te anyone l")
    fred = effective_rights(acl, user="fred@c.com", groups=frozenset({"Staff"}))
    assert str(fred) == "lrswi"
    joe = effective_rights(acl, user="joe@c.com", groups=frozenset({"staff"}))
    assert str(joe) == "lrswite"
    outsider = effective_rights(acl, user="eve@c.com", groups=frozenset({"other"}))
    assert str(outsider) == "l"


def test_negative_entry_beats_positive_in_any_order() -> None:
    acl = parse_acl("-anyone w fred@c.com lrsw")
    assert str(effective_rights(acl, user="fred@c.com")) == "lrs"


def test_groups_do_not_apply_to_anonymous() -> None:
    acl = parse_acl("group:staff lr")
    assert effective_rights(acl, user=None, groups=frozenset({"staff"})) == Rights()


def test_owner_has_full_rights_on_own_mailboxes() -> None:
    assert effective_rights((), user="fred@c.com", is_owner=True) == ALL_RIGHTS


def test_owner_keeps_lkxa_whatever_the_acl_says() -> None:
    acl = parse_acl("-fred@c.com all")
    assert str(effective_rights(acl, user="fred@c.com", is_owner=True)) == "lkxa"
    acl = parse_acl("-fred@c.com te")
    assert str(effective_rights(acl, user="fred@c.com", is_owner=True)) == "lrswipkxan"


def test_admin_has_la_everywhere() -> None:
    assert str(effective_rights((), user="root@c.com", is_admin=True)) == "la"
    acl = parse_acl("-root@c.com all anyone r")
    assert str(effective_rights(acl, user="root@c.com", is_admin=True)) == "la"


def test_anonymous_is_never_owner_or_admin() -> None:
    assert effective_rights((), user=None, is_owner=True, is_admin=True) == Rights()


def test_pop_rights_on_foreign_inbox() -> None:
    # The case: reading boss's INBOX with and without t/e.
    read_only = effective_rights(parse_acl("jsmith@c.com lrs"), user="jsmith@c.com")
    assert ("r" in read_only, "t" in read_only, "e" in read_only) == (True, False, False)
    full = effective_rights(parse_acl("jsmith@c.com lrsd"), user="jsmith@c.com")
    assert ("t" in full, "e" in full) == (True, True)
