"""The snapshot store: its interface (api), the embedded SQLite backend, and message bodies."""
