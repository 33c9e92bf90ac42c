"""Test doubles for driving SASL mechanisms the way the engine will: a credential map and a
resolver that answers `NeedCredentials` with `verify_password`, plus a tiny SCRAM client."""

from __future__ import annotations

import base64
import hashlib
import hmac

from accounts.credentials import (
    DUMMY_CREDENTIALS,
    Credentials,
    make_credentials,
    salted_password,
    verify_password,
)
from cgpop.sasl import Mechanism, NeedCredentials, Step

# Low iteration count keeps the suite fast; the KDF itself is tested with accounts/.
ITERATIONS = 64

USERS: dict[str, Credentials] = {
    "alice": make_credentials("wonderland", iterations=ITERATIONS),
    "bob": make_credentials("builder", shared_secret=True, iterations=ITERATIONS),
    "admin": make_credentials("root-pw", iterations=ITERATIONS),
}


def resolve(mech: Mechanism, step: Step, users: dict[str, Credentials] = USERS) -> Step:
    """Answer a `NeedCredentials` step as the engine does; other steps pass through."""
    if not isinstance(step, NeedCredentials):
        return step
    creds = users.get(step.authcid)
    ok: bool | None = None
    if step.password is not None:
        ok = verify_password(creds or DUMMY_CREDENTIALS, step.password)
        if creds is None:
            ok = False
    return mech.credentials(creds, ok)


class ScramClient:
    """Client side of RFC 5802 section 3, enough to exercise the server."""

    def __init__(self, user: str, password: str, nonce: str = "clientnonce123") -> None:
        self.user = user
        self.password = password
        self.nonce = nonce
        self.gs2 = "n,,"
        self.first_bare = f"n={user.replace('=', '=3D').replace(',', '=2C')},r={nonce}"
        self.auth_message = b""
        self.server_key = b""

    def first(self) -> bytes:
        return (self.gs2 + self.first_bare).encode()

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(a.split("=", 1) for a in server_first.decode().split(","))
        salt = base64.b64decode(attrs["s"])
        salted = salted_password(self.password, salt, int(attrs["i"]))
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        self.server_key = hmac.digest(salted, b"Server Key", "sha256")
        cbind = base64.b64encode(self.gs2.encode()).decode()
        without_proof = f"c={cbind},r={attrs['r']}"
        self.auth_message = f"{self.first_bare},{server_first.decode()},{without_proof}".encode()
        signature = hmac.digest(stored_key, self.auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def expected_server_final(self) -> bytes:
        sig = hmac.digest(self.server_key, self.auth_message, "sha256")
        return b"v=" + base64.b64encode(sig)


# RFC 7677 section 3: user "user", password "pencil".
RFC7677_CLIENT_NONCE = "rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_NONCE = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
RFC7677_SALT_B64 = "W22ZaJ0SNY7soEsUEjb6gQ=="
RFC7677_CLIENT_FIRST = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
RFC7677_SERVER_FIRST = (
    b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
)
RFC7677_CLIENT_FINAL = (
    b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
    b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
)
RFC7677_SERVER_FINAL = b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="


def test_scram_test_client_reproduces_rfc7677_vector() -> None:
    client = ScramClient("user", "pencil", nonce=RFC7677_CLIENT_NONCE)
    assert client.first() == RFC7677_CLIENT_FIRST
    assert client.final(RFC7677_SERVER_FIRST) == RFC7677_CLIENT_FINAL
    assert client.expected_server_final() == RFC7677_SERVER_FINAL
