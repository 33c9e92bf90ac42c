"""SASL LOGIN (draft-murchison-sasl-login-00): `Username:` then `Password:` challenges.

Obsolete but still what Outlook and many phones send. Like PLAIN it carries the password in the
clear, so it is offered only over TLS or loopback. A non-empty initial response is taken as the
user name (the draft's section 2.1 and what curl's `--sasl-ir` sends).
"""

from __future__ import annotations

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

USERNAME_CHALLENGE = b"Username:"
PASSWORD_CHALLENGE = b"Password:"


class Login(MechanismBase):
    name: ClassVar[str] = "LOGIN"

    def __init__(self, config: SaslConfig | None = None) -> None:
        super().__init__()
        self._authcid = ""

    def start(self, initial_response: bytes | None) -> Step:
        self._expect(Phase.INITIAL)
        # `AUTH LOGIN =` (empty initial response) is treated like no initial response: an empty
        # user name could never succeed, and some clients send `=` meaning "ask me".
        if not initial_response:
            self._phase = Phase.AWAIT_RESPONSE
            return Challenge(USERNAME_CHALLENGE)
        return self._username(initial_response)

    def respond(self, data: bytes) -> Step:
        self._expect(Phase.AWAIT_RESPONSE, Phase.AWAIT_PASSWORD)
        if self._phase is Phase.AWAIT_RESPONSE:
            return self._username(data)
        return self._password(data)

    def _username(self, data: bytes) -> Step:
        name = self._decode(data, MAX_FIELD_BYTES, "LOGIN user name")
        if isinstance(name, Failure):
            return name
        if not name or has_controls(name):
            return self._fail("LOGIN user name empty or has controls", credentials_bad=False)
        self._authcid = name
        self._phase = Phase.AWAIT_PASSWORD
        return Challenge(PASSWORD_CHALLENGE)

    def _password(self, data: bytes) -> Step:
        password = self._decode(data, MAX_FIELD_BYTES, "LOGIN password")
        if isinstance(password, Failure):
            return password
        if not password or "\x00" in password:
            return self._fail("LOGIN password empty or has NUL", credentials_bad=False)
        self._phase = Phase.AWAIT_CREDENTIALS
        return NeedCredentials(self._authcid, None, password)

    def credentials(self, creds: Credentials | None, password_ok: bool | None) -> Step:
        self._expect(Phase.AWAIT_CREDENTIALS)
        if creds is None or password_ok is not True:
            return self._fail("LOGIN bad credentials", credentials_bad=True)
        return self._succeed(self._authcid, None)
