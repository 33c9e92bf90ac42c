"""The login-name and recipient grammar, parsed without looking anything up.

    name     = [ foreign / mailbox "#" ] address
    foreign  = "~" owner "/" mailbox          ; another account's mailbox
    owner    = account [ "@" domain ]         ; no domain: the login's own domain
    address  = account [ "@" domain ]         ; no domain: the default domain
             / account "%" domain             ; legacy form, only when the name has no "@"

This is CommuniGate Pro's POP login syntax ("mailbox#account", "~owner/mailbox#account").
The names' own rules live in accounts/names.py; this module only splits and delegates.
"""

from __future__ import annotations

from dataclasses import dataclass

from accounts.names import (
    MAX_ACCOUNT_LENGTH,
    MAX_DOMAIN_LENGTH,
    MAX_MAILBOX_LENGTH,
    normalize_account,
    normalize_domain,
    validate_mailbox,
)
from router.route import RouteError

# "~" owner "@" domain "/" mailbox "#" account "@" domain, each part at its own maximum.
MAX_NAME_LENGTH = (
    1
    + MAX_ACCOUNT_LENGTH
    + 1
    + MAX_DOMAIN_LENGTH
    + 1
    + MAX_MAILBOX_LENGTH
    + 1
    + MAX_ACCOUNT_LENGTH
    + 1
    + MAX_DOMAIN_LENGTH
)


@dataclass(frozen=True, slots=True)
class ParsedName:
    """A name split into canonical parts; nothing is known yet to exist.

    `domain` is None when the name carries none (the caller supplies the default); `mailbox`
    is None when the name picks none; `owner` is the `~owner` account, or None, and
    `owner_domain` the domain written after it (`~owner@domain/...`), or None.
    """

    account: str
    domain: str | None = None
    mailbox: str | None = None
    owner: str | None = None
    owner_domain: str | None = None


def parse_name(text: str) -> ParsedName:
    """Split a login name or recipient address; raise RouteError when it does not parse."""
    try:
        return _parse(text)
    except ValueError as exc:
        raise RouteError(f"bad name: {exc}") from exc


def _parse(text: str) -> ParsedName:
    if len(text) > MAX_NAME_LENGTH:
        raise ValueError(f"longer than {MAX_NAME_LENGTH} characters")
    # Neither mailbox names nor account names may hold "#", so one "#" at most separates them.
    if text.count("#") > 1:
        raise ValueError("more than one '#'")
    box, hash_, address = text.rpartition("#")
    if text.startswith("~") and not hash_:
        raise ValueError("'~owner/mailbox' needs '#account' after it")
    owner: str | None = None
    owner_domain: str | None = None
    mailbox: str | None = None
    if hash_:
        if box.startswith("~"):
            owner_text, slash, box = box[1:].partition("/")
            if not slash:
                raise ValueError("'~owner' needs '/mailbox' after it")
            owner_local, at, owner_domain_text = owner_text.rpartition("@")
            if at:
                owner_domain = normalize_domain(owner_domain_text)
                owner_text = owner_local
            owner = normalize_account(owner_text)
        mailbox = validate_mailbox(box)
    if "@" in address:
        local, sep, domain_text = address.rpartition("@")
    else:
        # Legacy "%" form for mailers that cannot send "@"; the first "%" splits.
        local, sep, domain_text = address.partition("%")
    domain = normalize_domain(domain_text) if sep else None
    return ParsedName(normalize_account(local), domain, mailbox, owner, owner_domain)
