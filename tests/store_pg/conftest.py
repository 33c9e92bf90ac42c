"""The PostgreSQL store's tests: one real PostgreSQL server for the session (tests/pg.py, its
fixtures in tests/conftest.py), an empty schema per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from cgpop.store.postgres import PostgresStore

DOMAIN = "example.com"


@pytest.fixture
def open_store(pg_dsn: str) -> Iterator[Callable[..., PostgresStore]]:
    """Opens PostgresStores on the test's schema (each a "node"), closing them afterwards."""
    opened: list[PostgresStore] = []

    def make(node: str = "node-a", **kwargs: object) -> PostgresStore:
        kwargs.setdefault("duplicate_window", 3600.0)
        kwargs.setdefault("pool_size", 4)
        store = PostgresStore(pg_dsn, node=node, **kwargs)  # type: ignore[arg-type]
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def store(open_store: Callable[..., PostgresStore]) -> PostgresStore:
    return open_store()
