"""The fake-salt key file (cgpop/saltkey.py): made once, kept across restarts."""

from __future__ import annotations

import dataclasses
import stat
from pathlib import Path

import pytest

from cgpop import config as configmod
from cgpop.saltkey import FAKE_SALT_KEY_FILE, fake_salt_key


def config_in(data_dir: Path, key: str = "") -> configmod.Config:
    base = configmod.Config()
    return dataclasses.replace(
        base,
        server=dataclasses.replace(base.server, data_dir=data_dir),
        pop3=dataclasses.replace(base.pop3, sasl_fake_salt_key=key),
    )


def test_made_once_in_a_data_dir_that_does_not_exist_yet(tmp_path: Path) -> None:
    """`serve` with workers on PostgreSQL makes the key before anything made data_dir."""
    data_dir = tmp_path / "not" / "yet"
    key = fake_salt_key(config_in(data_dir))
    path = data_dir / FAKE_SALT_KEY_FILE
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert fake_salt_key(config_in(data_dir)) == key  # the same after a restart


def test_the_configured_key_wins_and_no_file_is_made(tmp_path: Path) -> None:
    assert fake_salt_key(config_in(tmp_path, "x" * 20)) == b"x" * 20
    assert not (tmp_path / FAKE_SALT_KEY_FILE).exists()


def test_a_truncated_key_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / FAKE_SALT_KEY_FILE).write_bytes(b"short")
    with pytest.raises(OSError, match="too short"):
        fake_salt_key(config_in(tmp_path))
