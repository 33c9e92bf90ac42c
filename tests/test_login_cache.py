"""The verified-login cache: faster repeat logins that never weaken a failure."""

from __future__ import annotations

import pytest

from accounts.credentials import make_credentials
from cgpop import auth


def test_hit_only_for_the_same_password_and_keys() -> None:
    cache = auth.VerifiedCache(60)
    creds = make_credentials("secret")
    assert not cache.hit(creds, "secret")
    cache.remember(creds, "secret")
    assert cache.hit(creds, "secret")
    assert not cache.hit(creds, "Secret")
    # A password change gives new keys: the old entry no longer matches.
    assert not cache.hit(make_credentials("secret"), "secret")


def test_expiry_and_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(auth.time, "monotonic", lambda: now[0])
    cache = auth.VerifiedCache(10)
    creds = make_credentials("pw")
    cache.remember(creds, "pw")
    now[0] += 9
    assert cache.hit(creds, "pw")
    now[0] += 2
    assert not cache.hit(creds, "pw")
    off = auth.VerifiedCache(0)
    off.remember(creds, "pw")
    assert not off.hit(creds, "pw")


def test_failures_always_pay_the_kdf(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = auth.verify_password

    def counting(creds: object, password: str) -> bool:
        calls.append(password)
        return real(creds, password)  # type: ignore[arg-type]

    monkeypatch.setattr(auth, "verify_password", counting)
    a = auth.Authenticator(store=None, login_cache_ttl=60)  # type: ignore[arg-type]
    creds = make_credentials("pw")
    assert a.check_password(creds, "pw", known=True)
    assert a.check_password(creds, "pw", known=True)
    assert calls == ["pw"]  # the second success came from the cache
    assert not a.check_password(creds, "bad", known=True)
    assert not a.check_password(creds, "bad", known=True)
    assert calls == ["pw", "bad", "bad"]
    # Unknown accounts (dummy keys) are never cached.
    assert a.check_password(creds, "pw", known=False)
    assert calls[-1] == "pw" and len(calls) == 4


def test_bounded() -> None:
    cache = auth.VerifiedCache(60)
    cache.MAX_ENTRIES = 5
    creds = [make_credentials("x", iterations=1) for _ in range(12)]
    for c in creds:
        cache.remember(c, "x")
    assert len(cache._entries) <= 5
    assert cache.hit(creds[-1], "x")
