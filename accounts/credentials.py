"""Password storage: SCRAM-SHA-256 keys (RFC 5802/7677) derived with PBKDF2-HMAC-SHA256.

One salted KDF serves both USER/PASS (derive and compare StoredKey) and SASL SCRAM-SHA-256
(from the stored keys, no plaintext kept). Dovecot's `{SCRAM-SHA-256}` scheme stores the same
four values, which keeps the benchmark's password cost equal on both sides.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from dataclasses import dataclass

# RFC 7677 section 4: "iteration count ... at least 4096".
DEFAULT_ITERATIONS = 4096
SALT_BYTES = 16


@dataclass(frozen=True, slots=True)
class Credentials:
    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes
    # Plaintext-equivalent secret, kept only when the account opts in (APOP, CRAM-MD5 need it).
    shared_secret: str | None = None

    def to_dovecot(self) -> str:
        """The `{SCRAM-SHA-256}` string Dovecot's passwd-file understands (for the benchmark)."""
        b64 = base64.b64encode
        return (
            f"{{SCRAM-SHA-256}}{self.iterations},{b64(self.salt).decode()},"
            f"{b64(self.stored_key).decode()},{b64(self.server_key).decode()}"
        )


def salted_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def scram_keys(salted: bytes) -> tuple[bytes, bytes]:
    """(StoredKey, ServerKey) from a SaltedPassword, RFC 5802 section 3."""
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    return stored_key, server_key


def make_credentials(
    password: str,
    *,
    shared_secret: bool = False,
    iterations: int = DEFAULT_ITERATIONS,
    salt: bytes | None = None,
) -> Credentials:
    salt = salt if salt is not None else os.urandom(SALT_BYTES)
    stored, server = scram_keys(salted_password(password, salt, iterations))
    return Credentials(salt, iterations, stored, server, password if shared_secret else None)


def verify_password(creds: Credentials, password: str) -> bool:
    """Constant-time check of a plaintext password against the stored keys. CPU-bound: call it
    off the event loop."""
    stored, _ = scram_keys(salted_password(password, creds.salt, creds.iterations))
    return hmac.compare_digest(stored, creds.stored_key)


# A fixed dummy used when the account does not exist, so an unknown name costs the same KDF
# work as a wrong password (no timing oracle for account probing).
DUMMY_CREDENTIALS = make_credentials("unused-dummy-password", salt=b"\x00" * SALT_BYTES)
