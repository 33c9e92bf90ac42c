"""SASL PLAIN (RFC 4616): one message `[authzid] NUL authcid NUL passwd`, UTF-8.

Offer it only over TLS or loopback (RFC 4616 section 6; `cgpop.sasl.available` does that).
"""

from __future__ import annotations

from typing import ClassVar

from accounts.credentials import Credentials

from .common import (
    MAX_FIELD_BYTES,
    MAX_RESPONSE_BYTES,
    MechanismBase,
    NeedCredentials,
    Phase,
    SaslConfig,
    Step,
    decode_utf8,
    has_controls,
)


class Plain(MechanismBase):
    name: ClassVar[str] = "PLAIN"

    def __init__(self, config: SaslConfig | None = None) -> None:
        super().__init__()
        self._authcid = ""
        self._authzid: str | None = None

    def start(self, initial_response: bytes | None) -> Step:
        return self._start_client_first(initial_response, self._message)

    def respond(self, data: bytes) -> Step:
        self._expect(Phase.AWAIT_RESPONSE)
        return self._message(data)

    def _message(self, data: bytes) -> Step:
        if len(data) > MAX_RESPONSE_BYTES:
            return self._fail("PLAIN message too long", credentials_bad=False)
        # RFC 4616 section 2: message = [authzid] UTF8NUL authcid UTF8NUL passwd; exactly two NULs
        # because SAFE excludes NUL.
        parts = data.split(b"\x00")
        if len(parts) != 3:
            return self._fail("PLAIN message needs exactly two NULs", credentials_bad=False)
        if any(len(p) > MAX_FIELD_BYTES for p in parts):
            return self._fail("PLAIN field too long", credentials_bad=False)
        texts = [decode_utf8(p) for p in parts]
        authzid, authcid, password = texts
        if authzid is None or authcid is None or password is None:
            return self._fail("PLAIN message is not UTF-8", credentials_bad=False)
        # authcid and passwd are 1*SAFE: both must be non-empty.
        if not authcid or not password:
            return self._fail("PLAIN authcid or password empty", credentials_bad=False)
        if has_controls(authcid) or has_controls(authzid):
            return self._fail("PLAIN identity holds control characters", credentials_bad=False)
        self._authcid = authcid
        self._authzid = authzid or None
        self._phase = Phase.AWAIT_CREDENTIALS
        return NeedCredentials(authcid, self._authzid, password)

    def credentials(self, creds: Credentials | None, password_ok: bool | None) -> Step:
        self._expect(Phase.AWAIT_CREDENTIALS)
        if creds is None or password_ok is not True:
            return self._fail("PLAIN bad credentials", credentials_bad=True)
        return self._succeed(self._authcid, self._authzid)
