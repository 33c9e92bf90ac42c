"""The steps a SASL mechanism returns, the interface every mechanism implements, and the limits.

A mechanism is a small state machine driven by the POP3 engine with *decoded* client data
(RFC 5034 section 4: the engine does the base64 and the `*` cancel). It never touches the network
or the account store: when it needs an account's keys it returns `NeedCredentials` and waits to be
resumed through `credentials()`. See `cgpop.sasl` for the driving loop.
"""

from __future__ import annotations

import enum
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, Protocol

from accounts.credentials import DEFAULT_ITERATIONS, Credentials

# Largest decoded client response any mechanism accepts. RFC 4616 section 2 asks servers to take
# identities and passwords of at least 255 octets each; SCRAM's client-final carries a 44-character
# proof plus the nonces. 4096 octets is far above every honest exchange and keeps the engine's
# base64 line bound at 4 * ceil(4096 / 3) = 5464 characters plus CRLF.
MAX_RESPONSE_BYTES = 4096

# Per-field bound for identities and passwords inside a response (RFC 4616 section 2: at least
# 255 octets must be accepted; we take four times that so long pass-phrases still work).
MAX_FIELD_BYTES = 1024


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send `+ base64(data)` and feed the client's next line (decoded) to `respond()`."""

    data: bytes


@dataclass(frozen=True, slots=True)
class NeedCredentials:
    """Resolve `authcid`, load its `Credentials` (None when unknown) and call `credentials()`.

    When `password` is set (PLAIN, LOGIN) the engine also checks it, off the event loop, with
    `verify_password(creds or DUMMY_CREDENTIALS, password)` so an unknown account costs the same
    KDF work as a wrong password, and passes the result as `password_ok`. Otherwise it passes None.
    `authzid` is informational here; the decision about it is taken on `Success`.
    """

    authcid: str
    authzid: str | None
    # Never in a repr, so a stray log call cannot leak it (STYLE rule 11).
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class Success:
    """The credentials are proven for `authcid`.

    `authzid` is None when the client asked for no other identity (or repeated `authcid`);
    otherwise the engine must allow it only if the configured `is_admin(authcid)` says so, and
    then log in as `authzid`. `final` is SASL "additional data with success" (the SCRAM
    server-final message): RFC 5034 section 4 has the engine send it as one more `+ base64(final)`
    challenge, read the client's (empty) reply, then answer `+OK`.
    """

    authcid: str
    authzid: str | None
    final: bytes | None = None


@dataclass(frozen=True, slots=True)
class Failure:
    """The exchange is over and failed.

    `credentials_bad` is True for a wrong password, an unknown account or a failed proof (the
    engine answers `-ERR [AUTH] ...`, RFC 3206 section 4, and records a penalty); False for a
    malformed exchange (a plain `-ERR`). `reason` is for the log: it never contains client data
    or secrets, and the wire text for credential failures should be uniform so accounts cannot
    be probed.
    """

    reason: str
    credentials_bad: bool


Step = Challenge | NeedCredentials | Success | Failure


class SaslStateError(RuntimeError):
    """The engine drove a mechanism out of order (a programming error, never a client error)."""


@dataclass(frozen=True, slots=True)
class SaslConfig:
    """What the mechanisms need from the server configuration.

    `fake_salt_key` keys the HMAC that derives a stable fake SCRAM salt for unknown accounts. A
    random per-process default works, but a configured value keeps the fake salt stable across
    restarts too (otherwise a prober could notice that only unknown names change salt).
    """

    hostname: str
    fake_salt_key: bytes = field(default_factory=lambda: secrets.token_bytes(32), repr=False)
    fake_iterations: int = DEFAULT_ITERATIONS


class Mechanism(Protocol):
    """One SASL exchange. Every method returns the next `Step`; after `Success` or `Failure`
    the object is spent and any further call raises `SaslStateError`."""

    name: ClassVar[str]

    def start(self, initial_response: bytes | None) -> Step:
        """Begin. `initial_response` is None when the client sent none and b"" for `=`
        (RFC 5034 section 4)."""
        ...

    def respond(self, data: bytes) -> Step:
        """The client's decoded answer to the last `Challenge`."""
        ...

    def credentials(self, creds: Credentials | None, password_ok: bool | None) -> Step:
        """The answer to `NeedCredentials`."""
        ...


class Phase(enum.Enum):
    """Where a mechanism is; each mechanism uses the subset it needs."""

    INITIAL = "initial"
    AWAIT_RESPONSE = "await-response"
    AWAIT_PASSWORD = "await-password"  # LOGIN only
    AWAIT_CREDENTIALS = "await-credentials"
    AWAIT_FINAL = "await-final"  # SCRAM client-final
    DONE = "done"


class MechanismBase:
    """Shared state guard: the engine calling a method in the wrong phase is a bug, not input."""

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self._phase = Phase.INITIAL

    def _expect(self, *phases: Phase) -> None:
        if self._phase not in phases:
            raise SaslStateError(f"{self.name}: call not allowed in phase {self._phase.value}")

    def _fail(self, reason: str, *, credentials_bad: bool) -> Failure:
        self._phase = Phase.DONE
        return Failure(reason, credentials_bad)

    def _decode(self, data: bytes, limit: int, what: str) -> str | Failure:
        """`data` as strict UTF-8 within `limit` octets, or the malformed-exchange Failure."""
        if len(data) > limit:
            return self._fail(f"{what} too long", credentials_bad=False)
        text = decode_utf8(data)
        if text is None:
            return self._fail(f"{what} is not UTF-8", credentials_bad=False)
        return text

    def _start_client_first(
        self, initial_response: bytes | None, first: Callable[[bytes], Step]
    ) -> Step:
        """Client-first mechanisms (PLAIN, SCRAM): without an initial response send an empty
        challenge, and the client answers with its first message (RFC 4422 section 5,
        RFC 5034 section 4)."""
        self._expect(Phase.INITIAL)
        if initial_response is None:
            self._phase = Phase.AWAIT_RESPONSE
            return Challenge(b"")
        return first(initial_response)

    def _succeed(self, authcid: str, authzid: str | None, final: bytes | None = None) -> Success:
        self._phase = Phase.DONE
        if authzid == authcid:
            authzid = None
        return Success(authcid, authzid, final)

    def start(self, initial_response: bytes | None) -> Step:
        raise NotImplementedError

    def respond(self, data: bytes) -> Step:
        raise NotImplementedError

    def credentials(self, creds: Credentials | None, password_ok: bool | None) -> Step:
        raise NotImplementedError


def decode_utf8(data: bytes) -> str | None:
    """Strict UTF-8 (RFC 3629), or None. Overlong forms and surrogates are refused by Python."""
    try:
        return data.decode("utf-8", "strict")
    except UnicodeDecodeError:
        return None


def has_controls(text: str) -> bool:
    """True if an identity holds C0 controls or DEL (NUL and CR/LF in particular): such names
    cannot be valid accounts and must not reach logs unescaped."""
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)
