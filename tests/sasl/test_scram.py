"""SASL SCRAM-SHA-256 (RFC 5802/7677) from stored keys: the RFC vector, full exchanges,
unknown users that look like real ones, and malformed messages."""

from __future__ import annotations

import base64

import pytest

from accounts.credentials import make_credentials
from cgpop.sasl import (
    Challenge,
    Failure,
    NeedCredentials,
    SaslConfig,
    SaslStateError,
    ScramSha256,
    Step,
    Success,
)

from .test_support import (
    RFC7677_CLIENT_FINAL,
    RFC7677_CLIENT_FIRST,
    RFC7677_SALT_B64,
    RFC7677_SERVER_FINAL,
    RFC7677_SERVER_FIRST,
    RFC7677_SERVER_NONCE,
    USERS,
    ScramClient,
    resolve,
)

CONFIG = SaslConfig("pop.example.test", fake_salt_key=b"k" * 32)


def exchange(
    user: str, password: str, *, initial: bool = True, config: SaslConfig = CONFIG
) -> tuple[Step, ScramClient]:
    client = ScramClient(user, password)
    mech = ScramSha256(config)
    if initial:
        step = mech.start(client.first())
    else:
        assert mech.start(None) == Challenge(b"")
        step = mech.respond(client.first())
    assert isinstance(step, NeedCredentials)
    assert step.password is None
    server_first = resolve(mech, step)
    assert isinstance(server_first, Challenge)
    return mech.respond(client.final(server_first.data)), client


def start_to_final(client_first: bytes) -> tuple[ScramSha256, bytes]:
    mech = ScramSha256(CONFIG, nonce_factory=lambda: "SERVERNONCE")
    server_first = resolve(mech, mech.start(client_first))
    assert isinstance(server_first, Challenge)
    return mech, server_first.data


def test_rfc7677_vector_end_to_end() -> None:
    salt = base64.b64decode(RFC7677_SALT_B64)
    users = {"user": make_credentials("pencil", salt=salt, iterations=4096)}
    mech = ScramSha256(CONFIG, nonce_factory=lambda: RFC7677_SERVER_NONCE)
    step = mech.start(RFC7677_CLIENT_FIRST)
    assert step == NeedCredentials("user", None, None)
    assert resolve(mech, step, users) == Challenge(RFC7677_SERVER_FIRST)
    assert mech.respond(RFC7677_CLIENT_FINAL) == Success("user", None, RFC7677_SERVER_FINAL)


@pytest.mark.parametrize("initial", [True, False])
def test_full_exchange(initial: bool) -> None:
    step, client = exchange("alice", "wonderland", initial=initial)
    assert step == Success("alice", None, client.expected_server_final())


def test_wrong_password_is_a_credential_failure() -> None:
    step, _ = exchange("alice", "wrong")
    assert step == Failure("SCRAM bad credentials", True)


def test_unknown_user_gets_plausible_stable_server_first_then_fails() -> None:
    firsts = []
    for _ in range(2):
        mech = ScramSha256(CONFIG)
        need = mech.start(ScramClient("mallory", "x").first())
        first = resolve(mech, need)
        assert isinstance(first, Challenge)
        firsts.append(dict(a.split("=", 1) for a in first.data.decode().split(",")))
        client = ScramClient("mallory", "x")
        assert mech.respond(client.final(first.data)) == Failure("SCRAM bad credentials", True)
    # Same salt shape and iteration count as a real account, stable across attempts.
    real = USERS["alice"]
    assert len(base64.b64decode(firsts[0]["s"])) == len(real.salt)
    assert firsts[0]["s"] == firsts[1]["s"]
    assert firsts[0]["i"] == "4096"
    assert firsts[0]["r"] != firsts[1]["r"]
    # A different name gets a different fake salt; a different key too.
    mech = ScramSha256(CONFIG)
    other = resolve(mech, mech.start(ScramClient("trudy", "x").first()))
    assert isinstance(other, Challenge)
    assert f"s={firsts[0]['s']}" not in other.data.decode()


def test_authzid_and_escaped_names() -> None:
    mech = ScramSha256(CONFIG)
    step = mech.start(b"n,a=bob=2Cjr,n=a=3Db,r=abc")
    assert step == NeedCredentials("a=b", "bob,jr", None)


def test_y_flag_accepted_without_channel_binding() -> None:
    client = ScramClient("alice", "wonderland")
    client.gs2 = "y,,"
    mech = ScramSha256(CONFIG)
    first = resolve(mech, mech.start(client.first()))
    assert isinstance(first, Challenge)
    assert isinstance(mech.respond(client.final(first.data)), Success)


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"p=tls-unique,,n=alice,r=abc",  # channel binding refused
        b"x,,n=alice,r=abc",  # bad flag
        b"n,,m=ext,n=alice,r=abc",  # mandatory extension
        b"n,,r=abc,n=alice",  # wrong order
        b"n,,n=alice",  # no nonce
        b"n,,n=al=2Xice,r=abc",  # bad escape
        b"n,,n=,r=abc",  # empty name
        b"n,,n=alice,r=a,b",  # comma cannot be in nonce; "b" is not an attribute
        b"n,,n=alice,r=",  # empty nonce
        b"n,b=x,n=alice,r=abc",  # authzid must be a=
        b"n,,n=\xffalice,r=abc",  # bad UTF-8
        b"n,,n=alice",
        b"n,,n=" + b"a" * 5000 + b",r=abc",  # too long
    ],
)
def test_malformed_client_first(message: bytes) -> None:
    step = ScramSha256(CONFIG).start(message)
    if isinstance(step, NeedCredentials):
        pytest.fail(f"accepted {message!r}")
    assert isinstance(step, Failure)
    assert not step.credentials_bad


def _final_with(server_first: bytes, client: ScramClient, **replace: str) -> bytes:
    good = client.final(server_first).decode()
    attrs = [a.split("=", 1) for a in good.split(",")]
    return ",".join(f"{k}={replace.get(k, v)}" for k, v in attrs).encode()


@pytest.mark.parametrize(
    "replace",
    [
        {"r": "clientnonce123OTHER"},  # wrong nonce
        {"r": "clientnonce123"},  # client nonce only
        {"c": base64.b64encode(b"y,,").decode()},  # gs2 header changed
        {"c": "!!!"},  # bad base64
        {"p": base64.b64encode(b"short").decode()},  # wrong proof length
        {"p": "not base64"},
    ],
)
def test_malformed_client_final(replace: dict[str, str]) -> None:
    client = ScramClient("alice", "wonderland")
    mech, server_first = start_to_final(client.first())
    step = mech.respond(_final_with(server_first, client, **replace))
    assert isinstance(step, Failure)
    assert not step.credentials_bad


@pytest.mark.parametrize(
    "final",
    [b"c=biws,r=clientnonce123SERVERNONCE", b"p=abc", b"r=x,c=biws,p=abc", b"\xff,p=x"],
)
def test_client_final_structure(final: bytes) -> None:
    mech, _ = start_to_final(ScramClient("alice", "wonderland").first())
    step = mech.respond(final)
    assert isinstance(step, Failure)
    assert not step.credentials_bad


def test_nonce_factory_used_and_server_nonce_random_by_default() -> None:
    client = ScramClient("alice", "wonderland")
    _, first = start_to_final(client.first())
    assert first.startswith(b"r=clientnonce123SERVERNONCE,")
    nonces = set()
    for _ in range(3):
        mech = ScramSha256(CONFIG)
        step = resolve(mech, mech.start(client.first()))
        assert isinstance(step, Challenge)
        nonces.add(step.data.split(b",")[0])
    assert len(nonces) == 3


def test_spent_after_failure() -> None:
    mech = ScramSha256(CONFIG)
    mech.start(b"p=x,,n=a,r=b")
    with pytest.raises(SaslStateError):
        mech.respond(b"anything")


def test_channel_binding_refused_with_its_own_reason() -> None:
    step = ScramSha256(CONFIG).start(b"p=tls-server-end-point,,n=alice,r=abc")
    assert step == Failure("SCRAM channel binding not supported", False)
