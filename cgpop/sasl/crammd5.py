"""SASL CRAM-MD5 (RFC 2195): challenge `<random.timestamp@host>`, response `user SP hexdigest`.

The digest is HMAC-MD5 keyed with the plaintext-equivalent `shared_secret`, so it works only
for accounts that opted in; any other account fails exactly like a wrong password (same work,
same `Failure`), so the mechanism cannot be used to learn which accounts opted in.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Callable
from typing import ClassVar

from accounts.credentials import Credentials

from .common import (
    MAX_FIELD_BYTES,
    Challenge,
    Failure,
    MechanismBase,
    NeedCredentials,
    Phase,
    SaslConfig,
    Step,
    has_controls,
)

# RFC 2195 section 2: the digest is 16 octets as 32 lowercase hex digits.
DIGEST_HEX_LEN = 32


def make_challenge(hostname: str, clock: Callable[[], float] = time.time) -> str:
    """RFC 2195 section 2: a msg-id style `<random.timestamp@hostname>`, unique per exchange."""
    return f"<{secrets.randbits(63)}.{int(clock())}@{hostname}>"


class CramMd5(MechanismBase):
    name: ClassVar[str] = "CRAM-MD5"

    def __init__(self, config: SaslConfig, *, challenge: str | None = None) -> None:
        super().__init__()
        self._challenge = challenge if challenge is not None else make_challenge(config.hostname)
        self._authcid = ""
        self._digest = ""

    def start(self, initial_response: bytes | None) -> Step:
        self._expect(Phase.INITIAL)
        # Server-first mechanism: a client must not send an initial response (RFC 4422
        # section 3.3). `=` (empty) is tolerated as "none".
        if initial_response:
            return self._fail("CRAM-MD5 takes no initial response", credentials_bad=False)
        self._phase = Phase.AWAIT_RESPONSE
        return Challenge(self._challenge.encode("utf-8"))

    def respond(self, data: bytes) -> Step:
        self._expect(Phase.AWAIT_RESPONSE)
        text = self._decode(data, MAX_FIELD_BYTES + 1 + DIGEST_HEX_LEN, "CRAM-MD5 response")
        if isinstance(text, Failure):
            return text
        # The user name may itself hold spaces; the digest is after the last one.
        user, sep, digest = text.rpartition(" ")
        if not sep or not user or has_controls(user):
            return self._fail("CRAM-MD5 response needs `user digest`", credentials_bad=False)
        digest = digest.lower()
        if len(digest) != DIGEST_HEX_LEN or any(c not in "0123456789abcdef" for c in digest):
            return self._fail("CRAM-MD5 digest is not 32 hex digits", credentials_bad=False)
        self._authcid = user
        self._digest = digest
        self._phase = Phase.AWAIT_CREDENTIALS
        return NeedCredentials(user, None, None)

    def credentials(self, creds: Credentials | None, password_ok: bool | None) -> Step:
        self._expect(Phase.AWAIT_CREDENTIALS)
        secret = creds.shared_secret if creds is not None else None
        # Same HMAC work whether or not the account has a shared secret.
        key = (secret if secret is not None else secrets.token_hex(16)).encode("utf-8")
        expected = hmac.new(key, self._challenge.encode("utf-8"), "md5").hexdigest()
        ok = hmac.compare_digest(expected, self._digest)
        if secret is None or not ok:
            return self._fail("CRAM-MD5 bad credentials", credentials_bad=True)
        return self._succeed(self._authcid, None)
