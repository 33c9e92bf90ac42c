"""Validation and canonical forms of domain names, account names and mailbox names.

Every name that reaches the store or the router passes through here first, so the rest of the
code can compare names as plain strings. Mailbox names are data, never file paths.
"""

from __future__ import annotations

import re
import unicodedata

# RFC 1035 section 2.3.4: a label is at most 63 octets; RFC 1123 section 2.1 lets a label start
# with a digit. The whole name is at most 253 characters in text form (255 octets on the wire).
MAX_DOMAIN_LENGTH = 253
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")

# RFC 5321 section 4.5.3.1.1: a local part is at most 64 octets.
MAX_ACCOUNT_LENGTH = 64
# RFC 5322 section 3.2.3 atext, minus the characters our own grammar gives a meaning to:
# `@` (domain), `#` (mailbox), `%` (legacy domain separator), `~` (foreign mailbox),
# `/` (mailbox hierarchy) and `*` (routing wildcard).
_ATOM = re.compile(r"[a-z0-9!$&'+\-=?^_`{|}]+")

# Our own bound: long enough for any folder tree a person builds, short enough that a login
# name (mailbox + account + domain) stays well under the POP3 command-line limit.
MAX_MAILBOX_LENGTH = 200
MAILBOX_SEPARATOR = "/"
INBOX = "INBOX"
# `#` and `~` belong to the login-name grammar, `%` and `*` are IMAP LIST wildcards
# (RFC 3501 section 6.3.8), NUL and other control characters are never data.
_MAILBOX_FORBIDDEN = frozenset("#~%*")


def _check_printable(s: str, what: str) -> None:
    for ch in s:
        if unicodedata.category(ch) in ("Cc", "Cs") or ch.isspace():
            raise ValueError(f"{what} contains a control or space character")


def normalize_domain(s: str) -> str:
    """Return the canonical (lower-case, IDNA A-label) form of a domain name."""
    if not s:
        raise ValueError("empty domain name")
    _check_printable(s, "domain name")
    if s.startswith(".") or s.endswith(".") or ".." in s:
        raise ValueError("domain name has an empty label")
    if not s.isascii():
        try:
            # The stdlib codec implements IDNA 2003 (RFC 3490 ToASCII, with nameprep).
            s = s.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ValueError("domain name is not valid IDNA") from exc
    s = s.lower()
    if len(s) > MAX_DOMAIN_LENGTH:
        raise ValueError(f"domain name longer than {MAX_DOMAIN_LENGTH} characters")
    for label in s.split("."):
        if not _LABEL.fullmatch(label):
            raise ValueError(f"bad domain label {label!r}")
    return s


def normalize_account(s: str) -> str:
    """Return the canonical (lower-case) form of an account name, a dot-atom local part."""
    if not s:
        raise ValueError("empty account name")
    _check_printable(s, "account name")
    if not s.isascii():
        raise ValueError("account name must be ASCII")
    s = s.lower()
    if len(s) > MAX_ACCOUNT_LENGTH:
        raise ValueError(f"account name longer than {MAX_ACCOUNT_LENGTH} characters")
    # RFC 5321 section 4.1.2 Dot-string: atoms joined by single dots, none at either end.
    for atom in s.split("."):
        if not atom:
            raise ValueError("account name has an empty dot-separated part")
        if not _ATOM.fullmatch(atom):
            bad = next(ch for ch in atom if not _ATOM.fullmatch(ch))
            raise ValueError(f"account name contains {bad!r}")
    return s


def validate_mailbox(s: str) -> str:
    """Return a mailbox name in canonical form (case kept, first `inbox` segment as `INBOX`)."""
    if not s:
        raise ValueError("empty mailbox name")
    if len(s) > MAX_MAILBOX_LENGTH:
        raise ValueError(f"mailbox name longer than {MAX_MAILBOX_LENGTH} characters")
    for ch in s:
        if unicodedata.category(ch) in ("Cc", "Cs"):
            raise ValueError("mailbox name contains a control character")
        if ch in _MAILBOX_FORBIDDEN:
            raise ValueError(f"mailbox name contains {ch!r}")
    if s.startswith(MAILBOX_SEPARATOR) or s.endswith(MAILBOX_SEPARATOR):
        raise ValueError("mailbox name starts or ends with '/'")
    segments = s.split(MAILBOX_SEPARATOR)
    for seg in segments:
        if not seg:
            raise ValueError("mailbox name has an empty segment")
        if seg in (".", ".."):
            raise ValueError("mailbox name has a '.' or '..' segment")
        if seg != seg.strip():
            raise ValueError("mailbox name segment starts or ends with a space")
    # RFC 3501 section 5.1: INBOX is case-insensitive; the rest of the name keeps its case.
    if segments[0].upper() == INBOX:
        segments[0] = INBOX
    return MAILBOX_SEPARATOR.join(segments)
