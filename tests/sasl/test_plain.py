"""SASL PLAIN (RFC 4616) driven like the engine does, with and without initial response."""

from __future__ import annotations

import pytest

from cgpop.sasl import Challenge, Failure, NeedCredentials, Plain, SaslStateError, Success

from .test_support import resolve


def test_with_initial_response() -> None:
    mech = Plain()
    step = mech.start(b"\x00alice\x00wonderland")
    assert isinstance(step, NeedCredentials)
    assert (step.authcid, step.authzid, step.password) == ("alice", None, "wonderland")
    assert resolve(mech, step) == Success("alice", None, None)


def test_without_initial_response_sends_empty_challenge() -> None:
    mech = Plain()
    assert mech.start(None) == Challenge(b"")
    assert resolve(mech, mech.respond(b"\x00alice\x00wonderland")) == Success("alice", None)


def test_password_not_in_repr() -> None:
    step = Plain().start(b"\x00alice\x00wonderland")
    assert "wonderland" not in repr(step)


def test_wrong_password_and_unknown_user_fail_alike() -> None:
    wrong = Plain()
    a = resolve(wrong, wrong.start(b"\x00alice\x00nope"))
    unknown = Plain()
    b = resolve(unknown, unknown.start(b"\x00mallory\x00nope"))
    assert isinstance(a, Failure) and a.credentials_bad
    assert a == b


def test_authzid_is_returned_for_the_engine_to_check() -> None:
    mech = Plain()
    step = resolve(mech, mech.start(b"alice\x00admin\x00root-pw"))
    assert step == Success("admin", "alice", None)


def test_authzid_equal_to_authcid_is_dropped() -> None:
    mech = Plain()
    assert resolve(mech, mech.start(b"alice\x00alice\x00wonderland")) == Success("alice", None)


@pytest.mark.parametrize(
    "message",
    [
        b"",  # "=" empty initial response
        b"alice\x00wonderland",  # one NUL
        b"\x00alice\x00wonder\x00land",  # three NULs
        b"\x00\x00wonderland",  # empty authcid
        b"\x00alice\x00",  # empty password
        b"\x00al\xffice\x00wonderland",  # bad UTF-8
        b"\x00\xc0\xafx\x00pw",  # overlong UTF-8
        b"\x00ali\rce\x00pw",  # control in name
        b"\x00" + b"a" * 1025 + b"\x00pw",  # field too long
        b"\x00a\x00" + b"p" * 5000,  # message too long
    ],
)
def test_malformed_is_not_a_credential_failure(message: bytes) -> None:
    step = Plain().start(message)
    assert isinstance(step, Failure)
    assert not step.credentials_bad


def test_out_of_order_calls_raise() -> None:
    mech = Plain()
    with pytest.raises(SaslStateError):
        mech.respond(b"\x00alice\x00wonderland")
    step = resolve(mech, mech.start(b"\x00alice\x00wonderland"))
    assert isinstance(step, Success)
    with pytest.raises(SaslStateError):
        mech.credentials(None, True)
