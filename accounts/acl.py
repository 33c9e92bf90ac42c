"""Mailbox access-control lists with Cyrus IMAP semantics (RFC 4314).

An ACL is a list of (identifier, rights) entries. Identifiers are accounts (`name@domain`),
groups (`group:NAME`), `anyone` (everybody, anonymous included) and `anonymous`; a leading `-`
makes a negative entry. Rights are the union of the positive entries that match the user or one
of its groups, minus the union of the matching negative entries (Cyrus "Access Control Lists",
RFC 4314 section 2). The owner and the server admins then get their implicit rights on top.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from accounts.names import normalize_account, normalize_domain

# RFC 4314 section 2.1 rights, in Cyrus's canonical output order (lib/acl.c masktostr), plus
# `n` (RFC 5257 section 3.3, annotate).
RIGHT_LETTERS = "lrswipkxtean"
# RFC 4314 section 2.1.1: the obsolete RFC 2086 rights are macros for their member rights,
# always expanded on input. `c` -> `kx` follows Cyrus's default `deleteright: c`.
MACROS = {"d": "te", "c": "kx"}
# cyradm's shorthand for every right and for none.
_NAMED = {"all": RIGHT_LETTERS, "none": ""}

ANYONE = "anyone"
ANONYMOUS = "anonymous"
GROUP_PREFIX = "group:"
NEGATIVE_PREFIX = "-"


@dataclass(frozen=True, slots=True)
class Rights:
    """A set of right letters; `str()` lists them in canonical order (`lrswipkxtean`)."""

    letters: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        extra = self.letters - frozenset(RIGHT_LETTERS)
        if extra:
            raise ValueError(f"unknown rights {''.join(sorted(extra))!r}")

    @classmethod
    def parse(cls, text: str) -> Rights:
        """Parse a rights string; `d` and `c` expand, `all`/`none` are accepted; ValueError."""
        text = _NAMED.get(text.lower(), text)
        letters: set[str] = set()
        for ch in text:
            if ch in MACROS:
                letters.update(MACROS[ch])
            elif ch in RIGHT_LETTERS:
                letters.add(ch)
            else:
                raise ValueError(f"the {ch!r} right is not supported")
        return cls(frozenset(letters))

    def __str__(self) -> str:
        return "".join(ch for ch in RIGHT_LETTERS if ch in self.letters)

    def __contains__(self, letter: object) -> bool:
        return letter in self.letters

    def __or__(self, other: Rights) -> Rights:
        return Rights(self.letters | other.letters)

    def __sub__(self, other: Rights) -> Rights:
        return Rights(self.letters - other.letters)

    def __bool__(self) -> bool:
        return bool(self.letters)


NO_RIGHTS = Rights()
ALL_RIGHTS = Rights(frozenset(RIGHT_LETTERS))
# Cyrus `implicit_owner_rights` ("lkxa"): the owner can always see, restructure and fix the
# ACL of its own mailboxes, whatever the ACL says.
OWNER_IMPLICIT_RIGHTS = Rights.parse("lkxa")
# Cyrus admins get `la` everywhere: they can find any mailbox and repair its ACL.
ADMIN_IMPLICIT_RIGHTS = Rights.parse("la")


@dataclass(frozen=True, slots=True)
class AclEntry:
    """One ACL entry; `identifier` is canonical (see normalize_identifier)."""

    identifier: str
    rights: Rights
    negative: bool = False

    @property
    def key(self) -> str:
        """The identifier as written in an ACL, `-` first for a negative entry."""
        return f"{NEGATIVE_PREFIX if self.negative else ''}{self.identifier}"

    def __str__(self) -> str:
        return f"{self.key} {self.rights}"


def normalize_identifier(text: str, *, default_domain: str | None = None) -> str:
    """Canonical identifier: `anyone`, `anonymous`, `group:name`, `name@domain` or `name`.

    A bare name gets `@default_domain` when one is given; Cyrus does the same with virtual
    domains. Raise ValueError when the identifier does not parse.
    """
    lowered = text.lower()
    if lowered in (ANYONE, ANONYMOUS):
        return lowered
    if lowered.startswith(GROUP_PREFIX):
        return GROUP_PREFIX + normalize_account(text[len(GROUP_PREFIX) :])
    local, at, domain = text.rpartition("@")
    if at:
        return f"{normalize_account(local)}@{normalize_domain(domain)}"
    name = normalize_account(text)
    return f"{name}@{normalize_domain(default_domain)}" if default_domain else name


def parse_acl_entry(identifier: str, rights: str, *, default_domain: str | None = None) -> AclEntry:
    """Parse `[-]IDENTIFIER` and RIGHTS as given to `cgpop acl set`; raise ValueError."""
    negative = identifier.startswith(NEGATIVE_PREFIX)
    if negative:
        identifier = identifier[len(NEGATIVE_PREFIX) :]
    ident = normalize_identifier(identifier, default_domain=default_domain)
    return AclEntry(ident, Rights.parse(rights), negative)


def parse_acl(text: str, *, default_domain: str | None = None) -> tuple[AclEntry, ...]:
    """Parse whitespace-separated `IDENTIFIER RIGHTS` pairs, e.g. `anyone lrs -fred s`."""
    words = text.split()
    if len(words) % 2:
        raise ValueError("an ACL is a list of IDENTIFIER RIGHTS pairs")
    pairs = zip(words[::2], words[1::2], strict=True)
    return tuple(parse_acl_entry(i, r, default_domain=default_domain) for i, r in pairs)


DEFAULT_PUBLIC_ACL: tuple[AclEntry, ...] = parse_acl("anyone lrs")


def _matches(identifier: str, user: str | None, groups: frozenset[str]) -> bool:
    if identifier == ANYONE:
        return True
    if user is None:
        return identifier == ANONYMOUS
    if identifier.startswith(GROUP_PREFIX):
        return identifier[len(GROUP_PREFIX) :] in groups
    return identifier == user


def effective_rights(
    entries: Iterable[AclEntry],
    *,
    user: str | None,
    groups: frozenset[str] = frozenset(),
    is_owner: bool = False,
    is_admin: bool = False,
) -> Rights:
    """The rights `user` (None: anonymous) holds under `entries`.

    `user` is compared with account identifiers as given (lower-cased), `groups` holds the
    user's group names without the `group:` prefix. The owner of a mailbox (every mailbox of
    an account is in its own hierarchy) starts from full rights, which its own negative
    entries may reduce, but never below OWNER_IMPLICIT_RIGHTS; admins always have `la`.
    """
    if user is not None:
        user = user.lower()
    lowered_groups = frozenset(g.lower() for g in groups)
    positive = ALL_RIGHTS if is_owner and user is not None else NO_RIGHTS
    negative = NO_RIGHTS
    for entry in entries:
        if _matches(entry.identifier, user, lowered_groups):
            if entry.negative:
                negative = negative | entry.rights
            else:
                positive = positive | entry.rights
    rights = positive - negative
    if is_owner and user is not None:
        rights = rights | OWNER_IMPLICIT_RIGHTS
    if is_admin and user is not None:
        rights = rights | ADMIN_IMPLICIT_RIGHTS
    return rights
