"""The store contract suite runs against every backend: a backend is one entry of BACKENDS and
one factory that opens a fresh store (and reopens it, for the rules that span restarts)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from accounts.credentials import make_credentials
from cgpop import config as configmod
from cgpop.store.api import Store
from cgpop.store.factory import open_store
from tests.pg import PgServer, drop_schema, new_schema_dsn

# The window the contract's duplicate-suppression rules are checked with (one hour).
DUPLICATE_WINDOW = 3600.0


def _sqlite_config(tmp_path: Path) -> configmod.Config:
    return configmod.from_dict(
        {
            "server": {"data_dir": str(tmp_path / "data")},
            "delivery": {"duplicate_window": DUPLICATE_WINDOW},
            "store": {"backend": "sqlite"},
        },
        source="<store contract>",
    )


def _postgresql_config(dsn: str) -> configmod.Config:
    return configmod.from_dict(
        {
            "delivery": {"duplicate_window": DUPLICATE_WINDOW},
            "store": {"backend": "postgresql", "dsn": dsn, "node": "contract", "pool_size": 4},
        },
        source="<store contract>",
    )


# backend name -> (tmp_path -> the configuration that opens a fresh store of that backend)
CONFIGS: dict[str, Callable[[Path], configmod.Config]] = {"sqlite": _sqlite_config}
# Backends on a database server: (server -> the configuration of a fresh, empty store there).
SERVER_CONFIGS: dict[str, Callable[[str], configmod.Config]] = {"postgresql": _postgresql_config}
BACKENDS = [*CONFIGS, *SERVER_CONFIGS]


class Opener:
    """Opens the store under test; `reopen` closes it and opens it again on the same data,
    as a restart does."""

    def __init__(self, config: configmod.Config) -> None:
        self.config = config
        self.opened: list[Store] = []

    def open(self) -> Store:
        store = open_store(self.config)
        self.opened.append(store)
        return store

    def reopen(self, store: Store) -> Store:
        store.close()
        return self.open()

    def close_all(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=BACKENDS)
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    if request.param in SERVER_CONFIGS:
        # One PostgreSQL for the test session (tests/pg.py), an empty schema per test.
        server: PgServer = request.getfixturevalue("postgres")
        dsn = new_schema_dsn(server)
        opener = Opener(SERVER_CONFIGS[request.param](dsn))
        yield opener
        opener.close_all()
        drop_schema(server, dsn)
        return
    opener = Opener(CONFIGS[request.param](tmp_path))
    yield opener
    opener.close_all()


@pytest.fixture
def store(opener: Opener) -> Store:
    """A fresh store with domain example.com and accounts joe and ann (each with an INBOX)."""
    st = opener.open()
    st.add_domain("example.com")
    creds = make_credentials("secret")
    st.add_accounts([("example.com", "joe", creds), ("example.com", "ann", creds)])
    return st
