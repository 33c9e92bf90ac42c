"""What the engine hands the asyncio shell: bytes to send, or a piece of work to carry out.

After a work event the engine is busy; the shell performs the work and calls the matching
result method on the session before it feeds another line (STYLE rule 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cgpop.errors import Pop3Error
from cgpop.spool import Octets
from cgpop.store.api import Snapshot


@dataclass(frozen=True, slots=True)
class Send:
    data: bytes


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection after everything before it was written."""


@dataclass(frozen=True, slots=True)
class PasswordLogin:
    """Resolve `login`, check the password (or the APOP digest), open the maildrop.
    Result: `Session.login_result`."""

    login: str
    password: str | None = None
    apop_digest: str | None = None


@dataclass(frozen=True, slots=True)
class SendMessage:
    """Write `status`, then the stored octets of message `index` (0-based) -- all of it, or
    for TOP the header and `lines` body lines -- then ".\\r\\n". Mark it \\Seen if asked."""

    status: bytes
    index: int
    lines: int | None
    mark_seen: bool


@dataclass(frozen=True, slots=True)
class Commit:
    """QUIT in TRANSACTION: expunge these UIDs. Result: `Session.commit_result`."""

    uids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class StartTls:
    """Write `reply`, then start TLS on the connection, discarding any buffered input
    (RFC 2595 section 4: no plaintext command injection). Result: `Session.tls_started`."""

    reply: bytes


@dataclass(frozen=True, slots=True)
class SaslCredentials:
    """A SASL mechanism needs the stored keys of `authcid` (and, with `password`, whether it is
    right). Result: `Session.sasl_credentials`."""

    authcid: str
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class SaslLogin:
    """SASL proved the credentials: open the maildrop of `login`. When `proven_by` is set the
    proven identity is `proven_by`'s, allowed only for admins (RFC 4616 authzid).
    Result: `Session.login_result`."""

    login: str
    proven_by: str | None = None


@dataclass(frozen=True, slots=True)
class FailedLogin:
    """A SASL exchange failed on the credentials of `login` ("" when the name never came):
    apply the failed-login penalty, then hand `outcome` to `Session.login_result`."""

    login: str
    outcome: LoginOutcome


@dataclass(frozen=True, slots=True)
class Submit:
    """XTND XMIT: a complete, unstuffed message (CRLF) to submit for the logged-in account.
    Result: `Session.submit_result`."""

    message: Octets = field(repr=False)
    # The address part of the login name: always an allowed From (issue 13).
    login_address: str = ""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a successful login opened and what its rights allow (Cyrus ACL letters)."""

    account: str  # authenticated address
    snapshot: Snapshot
    may_seen: bool = True  # `s`
    may_delete: bool = True  # `t`
    may_expunge: bool = True  # `e`
    # Issue 13: the address part of the login name (routes to `account`), and whether the
    # account's XTND XMIT service is enabled.
    login_address: str = ""
    may_submit: bool = True


@dataclass(frozen=True, slots=True)
class LoginOutcome:
    grant: Grant | None = None
    error: Pop3Error | None = None
    # True when the failure counts against the failed-login budget (bad credentials).
    counts_as_failure: bool = True


Event = (
    Send
    | Close
    | PasswordLogin
    | SendMessage
    | Commit
    | StartTls
    | SaslCredentials
    | SaslLogin
    | FailedLogin
    | Submit
)
