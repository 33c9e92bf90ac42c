"""Pure address work: login-name grammar, routing table, resolve() -> Route. No I/O here."""
