"""SASL CRAM-MD5 (RFC 2195): needs the account's shared secret; fails like bad credentials
when it has none."""

from __future__ import annotations

import hmac
import re

import pytest

from accounts.credentials import make_credentials
from cgpop.sasl import Challenge, CramMd5, Failure, NeedCredentials, SaslConfig, Success
from cgpop.sasl.crammd5 import make_challenge

from .test_support import resolve

CONFIG = SaslConfig("pop.example.test")


def answer(challenge: bytes, user: str, secret: str) -> bytes:
    digest = hmac.new(secret.encode(), challenge, "md5").hexdigest()
    return f"{user} {digest}".encode()


def test_rfc2195_example() -> None:
    # RFC 2195 section 2: tim / tanstaaftanstaaf.
    challenge = "<1896.697170952@postoffice.reston.mci.net>"
    mech = CramMd5(CONFIG, challenge=challenge)
    assert mech.start(None) == Challenge(challenge.encode())
    step = mech.respond(b"tim b913a602c7eda7a495b4e6e7334d3890")
    assert step == NeedCredentials("tim", None, None)
    users = {"tim": make_credentials("tanstaaftanstaaf", shared_secret=True, iterations=1)}
    assert resolve(mech, step, users) == Success("tim", None)


def test_challenge_shape_and_uniqueness() -> None:
    a, b = make_challenge("host.test"), make_challenge("host.test")
    assert re.fullmatch(r"<\d+\.\d+@host\.test>", a)
    assert a != b


@pytest.mark.parametrize("ir", [None, b""])
def test_full_exchange(ir: bytes | None) -> None:
    mech = CramMd5(CONFIG)
    ch = mech.start(ir)
    assert isinstance(ch, Challenge)
    assert resolve(mech, mech.respond(answer(ch.data, "bob", "builder"))) == Success("bob", None)


@pytest.mark.parametrize(
    ("user", "secret"),
    [("bob", "wrong"), ("alice", "wonderland"), ("nobody", "x")],  # alice has no shared secret
)
def test_credential_failures_look_the_same(user: str, secret: str) -> None:
    mech = CramMd5(CONFIG)
    ch = mech.start(None)
    assert isinstance(ch, Challenge)
    step = resolve(mech, mech.respond(answer(ch.data, user, secret)))
    assert step == Failure("CRAM-MD5 bad credentials", True)


@pytest.mark.parametrize(
    "response",
    [b"bob", b" " + b"a" * 32, b"bob xyz", b"bob " + b"g" * 32, b"\xff " + b"a" * 32, b"x" * 2000],
)
def test_malformed(response: bytes) -> None:
    mech = CramMd5(CONFIG)
    mech.start(None)
    step = mech.respond(response)
    assert isinstance(step, Failure)
    assert not step.credentials_bad


def test_initial_response_refused() -> None:
    step = CramMd5(CONFIG).start(b"bob 0123")
    assert isinstance(step, Failure)
    assert not step.credentials_bad
