"""POP3 session states (RFC 1939 section 3) and which verbs each one allows: the one table."""

from __future__ import annotations

from enum import Enum


class State(Enum):
    AUTHORIZATION = "AUTHORIZATION"
    TRANSACTION = "TRANSACTION"
    # Entered by QUIT from TRANSACTION while deletions are committed; nothing is legal there.
    UPDATE = "UPDATE"


A = frozenset({State.AUTHORIZATION})
T = frozenset({State.TRANSACTION})
AT = frozenset({State.AUTHORIZATION, State.TRANSACTION})

# Verb -> states in which it is legal. A verb missing here is unknown; a verb used in a state
# not listed gets -ERR and changes nothing (STYLE rule 2).
LEGAL: dict[str, frozenset[State]] = {
    "USER": A,
    "PASS": A,
    "APOP": A,
    "AUTH": A,
    "STLS": A,
    "CAPA": AT,
    "QUIT": AT,
    "NOOP": T,
    "STAT": T,
    "LIST": T,
    "UIDL": T,
    "RETR": T,
    "TOP": T,
    "DELE": T,
    "RSET": T,
    "XTND": T,
}
