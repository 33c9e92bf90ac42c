"""APOP (RFC 1939 section 7): banner shape and digest check."""

from __future__ import annotations

import hashlib
import os
import re

from cgpop.sasl import apop_digest_ok, make_apop_banner

# RFC 1939 section 7 example.
BANNER = "<1896.697170952@dbc.mtview.ca.us>"
DIGEST = "c4c9334bac560ecc979e58001b3e22fb"


def test_rfc1939_example() -> None:
    assert apop_digest_ok(BANNER, "tanstaaf", DIGEST)
    assert apop_digest_ok(BANNER, "tanstaaf", DIGEST.upper())


def test_wrong_secret_or_digest() -> None:
    assert not apop_digest_ok(BANNER, "tanstaag", DIGEST)
    assert not apop_digest_ok(BANNER, "tanstaaf", DIGEST[:-1])
    assert not apop_digest_ok(BANNER, "tanstaaf", DIGEST[:-1] + "z")
    assert not apop_digest_ok(BANNER, "tanstaaf", "")


def test_banner_is_unique_msg_id() -> None:
    a = make_apop_banner("pop.example.test", clock=lambda: 1700000000.5)
    b = make_apop_banner("pop.example.test", clock=lambda: 1700000000.5)
    assert re.fullmatch(rf"<{os.getpid()}\.[0-9a-f]{{16}}\.1700000000@pop\.example\.test>", a)
    assert a != b
    digest = hashlib.md5((a + "s3cret").encode()).hexdigest()
    assert apop_digest_ok(a, "s3cret", digest)
    assert not apop_digest_ok(b, "s3cret", digest)
