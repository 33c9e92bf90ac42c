"""The mechanism registry and the per-connection list for CAPA and bare AUTH."""

from __future__ import annotations

from cgpop.sasl import MECHANISMS, CramMd5, Plain, SaslConfig, ScramSha256, available, create


def test_available_hides_plaintext_mechanisms_on_unprotected_channels() -> None:
    assert available(secure=False, plaintext_allowed=False) == ["SCRAM-SHA-256", "CRAM-MD5"]
    full = ["SCRAM-SHA-256", "CRAM-MD5", "PLAIN", "LOGIN"]
    assert available(secure=True, plaintext_allowed=False) == full
    assert available(secure=False, plaintext_allowed=True) == full


def test_create_is_case_insensitive_and_fresh() -> None:
    config = SaslConfig("h.test")
    a, b = create("scram-sha-256", config), create("SCRAM-SHA-256", config)
    assert isinstance(a, ScramSha256) and isinstance(b, ScramSha256)
    assert a is not b
    assert isinstance(create("plain", config), Plain)
    assert isinstance(create("Cram-MD5", config), CramMd5)
    assert create("GSSAPI", config) is None
    assert create("", config) is None


def test_every_registered_name_matches_its_class() -> None:
    config = SaslConfig("h.test")
    for name, factory in MECHANISMS.items():
        assert factory(config).name == name
