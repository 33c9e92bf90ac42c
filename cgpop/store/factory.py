"""The one place that picks the store backend, by `[store] backend` (cgpop.config)."""

from __future__ import annotations

from cgpop.config import Config, ConfigError
from cgpop.store.api import HoldBoard, Store


def open_store(config: Config, *, holds: HoldBoard | None = None) -> Store:
    """Open the configured backend. The configuration was validated at load, so the backend
    is one of cgpop.config.STORE_BACKENDS. `holds`: the other workers' open snapshots, for a
    backend that keeps its collector horizon in the process (SQLite; PostgreSQL registers
    sessions in the database and needs none)."""
    delivery = config.delivery
    window = delivery.duplicate_window if delivery.duplicate_suppression else None
    backend = config.store.backend
    if backend == "sqlite":
        from cgpop.store.sqlite import SqliteStore

        return SqliteStore(config.server.data_dir, duplicate_window=window, holds=holds)
    if backend == "postgresql":
        from cgpop.store.postgres import PostgresStore

        return PostgresStore.from_config(config)
    raise ConfigError(f"{config.source}: store.backend: unknown store backend {backend!r}")
