"""APOP (RFC 1939 section 7): the greeting's timestamp banner and the MD5 digest check.

Not SASL, but the same kind of secret (the plaintext-equivalent `shared_secret`), so it lives
here. The engine puts `make_apop_banner()` at the end of its greeting only when APOP is enabled,
and on `APOP name digest` loads the account and calls `apop_digest_ok()`; an account without a
shared secret must fail exactly like a wrong digest (pass a random secret, then fail anyway).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from collections.abc import Callable

# RFC 1939 section 7: the digest is 16 octets of MD5 as 32 lowercase hex digits.
APOP_DIGEST_HEX_LEN = 32


def make_apop_banner(hostname: str, clock: Callable[[], float] = time.time) -> str:
    """`<pid.random.time@hostname>`: RFC 1939 section 7 asks for a msg-id that differs on every
    greeting; the random part makes it unpredictable too, so digests cannot be precomputed."""
    return f"<{os.getpid()}.{secrets.token_hex(8)}.{int(clock())}@{hostname}>"


def apop_digest_ok(timestamp_banner: str, shared_secret: str, digest_hex: str) -> bool:
    """True when `digest_hex` is MD5(banner + secret) (RFC 1939 section 7), compared in constant
    time. Upper-case hex is accepted; anything but 32 hex digits is False."""
    digest = digest_hex.lower()
    if len(digest) != APOP_DIGEST_HEX_LEN or any(c not in "0123456789abcdef" for c in digest):
        return False
    expected = hashlib.md5(
        (timestamp_banner + shared_secret).encode("utf-8"), usedforsecurity=False
    ).hexdigest()
    return hmac.compare_digest(expected, digest)
