"""The sans-IO POP3 engine (RFC 1939, 2449, 3206): no sockets, no asyncio in this package."""
