"""The snapshot store: its backend-neutral interface (`api`), the factory that opens the
configured backend (`factory`), and the embedded SQLite backend (`sqlite` with `sqlite_base`,
`sqlite_alerts`, `sqlite_queue`, and its `schema`)."""
