"""SASL LOGIN: Username:/Password: challenges, with and without initial response."""

from __future__ import annotations

import pytest

from cgpop.sasl import Challenge, Failure, Login, NeedCredentials, Success

from .test_support import resolve


def test_full_exchange() -> None:
    mech = Login()
    assert mech.start(None) == Challenge(b"Username:")
    assert mech.respond(b"alice") == Challenge(b"Password:")
    step = mech.respond(b"wonderland")
    assert isinstance(step, NeedCredentials)
    assert step.password == "wonderland"
    assert resolve(mech, step) == Success("alice", None)


def test_initial_response_is_the_user_name() -> None:
    mech = Login()
    assert mech.start(b"alice") == Challenge(b"Password:")
    assert resolve(mech, mech.respond(b"wonderland")) == Success("alice", None)


def test_empty_initial_response_asks_for_user_name() -> None:
    assert Login().start(b"") == Challenge(b"Username:")


@pytest.mark.parametrize(("user", "password"), [("alice", "x"), ("nobody", "wonderland")])
def test_bad_credentials(user: str, password: str) -> None:
    mech = Login()
    mech.start(user.encode())
    step = resolve(mech, mech.respond(password.encode()))
    assert step == Failure("LOGIN bad credentials", True)


@pytest.mark.parametrize(
    ("user", "password"),
    [(b"\xff", b"pw"), (b"alice", b"\xfe"), (b"alice", b""), (b"a\nb", b"pw"), (b"x" * 2000, b"p")],
)
def test_malformed(user: bytes, password: bytes) -> None:
    mech = Login()
    step = mech.start(user)
    if isinstance(step, Challenge):
        step = mech.respond(password)
    assert isinstance(step, Failure)
    assert not step.credentials_bad
