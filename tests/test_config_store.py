"""[store] configuration (issue 11): backend, dsn, node, pool_size, node_timeout."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cgpop import config

SAMPLE = Path(__file__).resolve().parent.parent / "conf" / "cgpop.toml"


def load(tmp_path: Path, text: str) -> config.Config:
    f = tmp_path / "c.toml"
    f.write_text(text)
    return config.load(f)


def test_defaults_are_the_embedded_store() -> None:
    store = config.load(None).store
    assert store == config.StoreConfig()
    assert (store.backend, store.pool_size, store.node_timeout) == ("sqlite", 10, 30.0)
    assert store.node_name() == socket.gethostname()
    assert config.load(SAMPLE).store == config.StoreConfig()


def test_postgresql_keys(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[store]\nbackend = "postgresql"\n'
        'dsn = "postgresql://cgpop@127.0.0.1:5432/cgpop"\n'
        'node = "pop-a"\npool_size = 4\nnode_timeout = 12\n',
    )
    assert cfg.store == config.StoreConfig(
        "postgresql", "postgresql://cgpop@127.0.0.1:5432/cgpop", "pop-a", 4, 12.0
    )
    assert cfg.store.node_name() == "pop-a"
    kv = load(tmp_path, '[store]\nbackend = "postgresql"\ndsn = "host=db dbname=cgpop"\n')
    assert kv.store.dsn == "host=db dbname=cgpop"


@pytest.mark.parametrize(
    "text, fragment",
    [
        (
            'backend = "mysql"\n',
            'store.backend: unknown store backend \'mysql\'; expected "sqlite", "postgresql"',
        ),
        ('backend = "postgresql"\n', 'store.dsn: backend "postgresql" needs a dsn'),
        ('dsn = "host=db"\n', 'store.dsn: only the "postgresql" backend'),
        ('backend = "postgresql"\ndsn = "host"\n', "store.dsn: not a libpq URI"),
        ('node = "pop a"\n', "store.node: expected up to 253 printable"),
        ("pool_size = 0\n", "store.pool_size: must be positive"),
        ("pool_size = 5000\n", "store.pool_size: must be at most 1000"),
        ('pool_size = "10"\n', "store.pool_size: expected int"),
        ("node_timeout = 1\n", "store.node_timeout: must be at least 3 seconds"),
        ("bogus = 1\n", "store.bogus: unknown key"),
    ],
)
def test_errors_name_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, "[store]\n" + text)
    assert str(tmp_path / "c.toml") in str(info.value)
    assert fragment in str(info.value)
