"""SASL SCRAM-SHA-256 (RFC 5802, RFC 7677), server side, from stored keys only.

The server keeps StoredKey and ServerKey (accounts.credentials), never the password: it checks
the ClientProof against StoredKey and signs with ServerKey (RFC 5802 section 3). No channel
binding: the mechanism is advertised without `-PLUS`, so a `p=` gs2 flag is refused and `n` or
`y` are accepted (RFC 5802 section 6). An unknown account gets a plausible server-first message
whose salt is an HMAC of the name, so it is stable and looks like any other, and fails only at
the proof, exactly like a wrong password.

Not done: SASLprep (RFC 4013) of the user name; names are compared as sent, which is exact for
ASCII and what the account store expects.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Callable
from typing import ClassVar

from accounts.credentials import SALT_BYTES, Credentials

from .common import (
    MAX_FIELD_BYTES,
    MAX_RESPONSE_BYTES,
    Challenge,
    Failure,
    MechanismBase,
    NeedCredentials,
    Phase,
    SaslConfig,
    Step,
    has_controls,
)

# RFC 7677 section 3: SHA-256 output, so ClientProof and ServerSignature are 32 octets.
DIGEST_SIZE = 32
# 18 random octets give a 24-character base64 nonce with no "," (RFC 5802 section 5.1 asks only
# for a printable, non-repeating value; 144 bits is plenty).
NONCE_BYTES = 18


def _server_nonce() -> str:
    return base64.b64encode(secrets.token_bytes(NONCE_BYTES)).decode("ascii")


def _is_printable(text: str) -> bool:
    """RFC 5802 section 7: printable = %x21-2B / %x2D-7E (visible ASCII except ",")."""
    return bool(text) and all(0x21 <= ord(ch) <= 0x7E and ch != "," for ch in text)


def _decode_saslname(value: str) -> str | None:
    """RFC 5802 section 5.1: "," and "=" in names travel as "=2C" and "=3D"; any other "="
    is an error. Returns None on error."""
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "=":
            code = value[i + 1 : i + 3]
            if code == "2C":
                out.append(",")
            elif code == "3D":
                out.append("=")
            else:
                return None
            i += 3
        else:
            out.append(ch)
            i += 1
    name = "".join(out)
    if not name or has_controls(name):
        return None
    return name


def _extensions_ok(attrs: list[str]) -> bool:
    """RFC 5802 section 7: extensions = attr-val *("," attr-val), attr-val = ALPHA "=" value.
    Unknown optional extensions are ignored, but they must at least be well formed."""
    return all(len(a) >= 2 and a[0].isascii() and a[0].isalpha() and a[1] == "=" for a in attrs)


def _b64decode(text: str) -> bytes | None:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None


class ScramSha256(MechanismBase):
    name: ClassVar[str] = "SCRAM-SHA-256"

    def __init__(
        self, config: SaslConfig, *, nonce_factory: Callable[[], str] = _server_nonce
    ) -> None:
        super().__init__()
        self._config = config
        self._nonce_factory = nonce_factory
        self._gs2_header = ""
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._authcid = ""
        self._authzid: str | None = None
        self._creds: Credentials | None = None

    # -- client-first ------------------------------------------------------------------------

    def start(self, initial_response: bytes | None) -> Step:
        return self._start_client_first(initial_response, self._client_first)

    def respond(self, data: bytes) -> Step:
        self._expect(Phase.AWAIT_RESPONSE, Phase.AWAIT_FINAL)
        if self._phase is Phase.AWAIT_RESPONSE:
            return self._client_first(data)
        return self._client_final(data)

    def _client_first(self, data: bytes) -> Step:
        text = self._decode(data, MAX_RESPONSE_BYTES, "SCRAM client-first")
        if isinstance(text, Failure):
            return text
        # RFC 5802 section 7: gs2-header = gs2-cbind-flag "," [authzid] ","
        parts = text.split(",", 2)
        if len(parts) != 3:
            return self._fail("SCRAM client-first lacks a gs2 header", credentials_bad=False)
        cbind, authz, bare = parts
        if cbind.startswith("p="):
            return self._fail("SCRAM channel binding not supported", credentials_bad=False)
        if cbind not in ("n", "y"):
            return self._fail("SCRAM bad gs2 channel-binding flag", credentials_bad=False)
        authzid: str | None = None
        if authz:
            if not authz.startswith("a="):
                return self._fail("SCRAM bad gs2 authzid", credentials_bad=False)
            authzid = _decode_saslname(authz[2:])
            if authzid is None:
                return self._fail("SCRAM bad authzid encoding", credentials_bad=False)
        attrs = bare.split(",")
        # RFC 5802 section 5.1: "m" is reserved; a server that does not know it MUST fail.
        if attrs[0].startswith("m="):
            return self._fail("SCRAM mandatory extension not supported", credentials_bad=False)
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            return self._fail("SCRAM client-first needs n= then r=", credentials_bad=False)
        if len(attrs[0]) - 2 > MAX_FIELD_BYTES:
            return self._fail("SCRAM user name too long", credentials_bad=False)
        authcid = _decode_saslname(attrs[0][2:])
        if authcid is None:
            return self._fail("SCRAM bad user name encoding", credentials_bad=False)
        client_nonce = attrs[1][2:]
        if not _is_printable(client_nonce) or not _extensions_ok(attrs[2:]):
            return self._fail("SCRAM bad nonce or extension", credentials_bad=False)
        self._gs2_header = f"{cbind},{authz},"
        self._client_first_bare = bare
        self._nonce = client_nonce + self._nonce_factory()
        self._authcid = authcid
        self._authzid = authzid
        self._phase = Phase.AWAIT_CREDENTIALS
        return NeedCredentials(authcid, authzid, None)

    # -- server-first ------------------------------------------------------------------------

    def credentials(self, creds: Credentials | None, password_ok: bool | None) -> Step:
        self._expect(Phase.AWAIT_CREDENTIALS)
        self._creds = creds
        if creds is None:
            # Unknown account: a salt that is stable per name and indistinguishable from a real
            # one, so repeating the probe shows nothing (RFC 5802 section 9 mentions this leak).
            label = b"scram-fake-salt\x00" + self._authcid.encode("utf-8")
            mac = hmac.digest(self._config.fake_salt_key, label, "sha256")
            salt, iterations = mac[:SALT_BYTES], self._config.fake_iterations
        else:
            salt, iterations = creds.salt, creds.iterations
        # RFC 5802 section 7: server-first-message = nonce "," salt "," iteration-count
        self._server_first = (
            f"r={self._nonce},s={base64.b64encode(salt).decode('ascii')},i={iterations}"
        )
        self._phase = Phase.AWAIT_FINAL
        return Challenge(self._server_first.encode("utf-8"))

    # -- client-final ------------------------------------------------------------------------

    def _client_final(self, data: bytes) -> Step:
        text = self._decode(data, MAX_RESPONSE_BYTES, "SCRAM client-final")
        if isinstance(text, Failure):
            return text
        # RFC 5802 section 7: client-final-message = client-final-message-without-proof "," proof
        without_proof, sep, proof_attr = text.rpartition(",")
        if not sep or not proof_attr.startswith("p="):
            return self._fail("SCRAM client-final must end with p=", credentials_bad=False)
        attrs = without_proof.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            return self._fail("SCRAM client-final needs c= then r=", credentials_bad=False)
        if not _extensions_ok(attrs[2:]):
            return self._fail("SCRAM bad client-final extension", credentials_bad=False)
        # Without channel binding c= carries exactly the gs2 header of client-first
        # (RFC 5802 section 7, "cbind-input").
        cbind = _b64decode(attrs[0][2:])
        if cbind is None or not hmac.compare_digest(cbind, self._gs2_header.encode("utf-8")):
            return self._fail("SCRAM channel-binding data mismatch", credentials_bad=False)
        if not hmac.compare_digest(attrs[1][2:].encode("utf-8"), self._nonce.encode("utf-8")):
            return self._fail("SCRAM nonce mismatch", credentials_bad=False)
        proof = _b64decode(proof_attr[2:])
        if proof is None or len(proof) != DIGEST_SIZE:
            return self._fail("SCRAM bad proof encoding", credentials_bad=False)

        # RFC 5802 section 3: AuthMessage, ClientSignature, ClientKey = proof XOR signature,
        # and the check H(ClientKey) == StoredKey.
        auth_message = ",".join(
            (self._client_first_bare, self._server_first, without_proof)
        ).encode("utf-8")
        creds = self._creds
        # Unknown account: do the same work against random keys, then fail.
        stored_key = creds.stored_key if creds else secrets.token_bytes(DIGEST_SIZE)
        server_key = creds.server_key if creds else secrets.token_bytes(DIGEST_SIZE)
        client_signature = hmac.digest(stored_key, auth_message, "sha256")
        client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
        proof_ok = hmac.compare_digest(hashlib.sha256(client_key).digest(), stored_key)
        if creds is None or not proof_ok:
            return self._fail("SCRAM bad credentials", credentials_bad=True)
        server_signature = hmac.digest(server_key, auth_message, "sha256")
        final = b"v=" + base64.b64encode(server_signature)
        return self._succeed(self._authcid, self._authzid, final)
