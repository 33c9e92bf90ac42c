"""The two error levels of the POP3 engine (STYLE rule 5): the exception carries the reply."""

from __future__ import annotations


class Pop3Error(Exception):
    """A command failed; the session goes on. Becomes `-ERR [CODE] text` (RFC 2449 section 8)."""

    def __init__(self, text: str, code: str | None = None) -> None:
        super().__init__(text)
        self.text = text
        self.code = code

    def reply(self) -> bytes:
        code = f"[{self.code}] " if self.code else ""
        return f"-ERR {code}{self.text}\r\n".encode("utf-8", "replace")


class Pop3Fatal(Pop3Error):
    """The session must end: the reply is sent, then the connection is closed."""


# The store (its database) cannot be used now: a login, a RETR, an XTND XMIT that needs it.
# RFC 3206 section 4: SYS/TEMP, "the failure is temporary; try again later" (docs/cluster.md,
# "What happens when the database is down").
STORE_UNAVAILABLE = Pop3Error("mail store temporarily unavailable, try again later", "SYS/TEMP")
