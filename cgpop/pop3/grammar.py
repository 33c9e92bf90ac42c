"""Argument grammar for each verb, checked before any handler runs (STYLE rule 3).

A bad argument count or a malformed number is a clean -ERR, never an exception in a handler.
RFC 1939 section 3: keywords and arguments are separated by a single space; we also accept
trailing spaces (Outlook sends `AUTH `) but nothing else after the last argument.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from cgpop.errors import Pop3Error


class Arg(Enum):
    MSG = "message number"  # 1..999999999, digits only: no sign, no spaces (RFC 1939 "msg")
    COUNT = "non-negative number"
    WORD = "word"
    REST = "text"  # everything to the end of the line, spaces included (PASS, XTND)


@dataclass(frozen=True, slots=True)
class Syntax:
    required: tuple[Arg, ...] = ()
    optional: tuple[Arg, ...] = ()
    usage: str = ""


_MSG = re.compile(r"[0-9]{1,9}")
_COUNT = re.compile(r"[0-9]{1,12}")
# Counts above this are treated as "everything": TOP n 99999999 sends the whole message.
COUNT_CAP = 10**9

GRAMMAR: dict[str, Syntax] = {
    "USER": Syntax((Arg.WORD,), usage="USER name"),
    "PASS": Syntax((Arg.REST,), usage="PASS password"),
    "APOP": Syntax((Arg.WORD, Arg.WORD), usage="APOP name digest"),
    "AUTH": Syntax((), (Arg.WORD, Arg.WORD), usage="AUTH [mechanism [initial-response]]"),
    "STLS": Syntax(usage="STLS"),
    "CAPA": Syntax(usage="CAPA"),
    "QUIT": Syntax(usage="QUIT"),
    "NOOP": Syntax(usage="NOOP"),
    "STAT": Syntax(usage="STAT"),
    "LIST": Syntax((), (Arg.MSG,), usage="LIST [msg]"),
    "UIDL": Syntax((), (Arg.MSG,), usage="UIDL [msg]"),
    "RETR": Syntax((Arg.MSG,), usage="RETR msg"),
    "TOP": Syntax((Arg.MSG, Arg.COUNT), usage="TOP msg lines"),
    "DELE": Syntax((Arg.MSG,), usage="DELE msg"),
    "RSET": Syntax(usage="RSET"),
    "XTND": Syntax((Arg.REST,), usage="XTND XMIT"),
}

Value = int | str


def parse_args(verb: str, rest: str) -> tuple[Value, ...]:
    """Split and check `rest` (the text after the verb and its space) against the grammar."""
    syntax = GRAMMAR[verb]
    shape = syntax.required + syntax.optional
    rest = rest.rstrip(" ")
    if shape and shape[-1] is Arg.REST and len(shape) == 1:
        if not rest:
            raise Pop3Error(f"usage: {syntax.usage}")
        return (rest,)
    words = rest.split(" ") if rest else []
    if len(words) < len(syntax.required) or len(words) > len(shape):
        raise Pop3Error(f"usage: {syntax.usage}")
    values: list[Value] = []
    for arg, word in zip(shape, words, strict=False):
        if arg is Arg.MSG:
            if not _MSG.fullmatch(word):
                raise Pop3Error(f"invalid message number: {word[:20]}")
            values.append(int(word))
        elif arg is Arg.COUNT:
            if not _COUNT.fullmatch(word):
                raise Pop3Error(f"invalid number: {word[:20]}")
            values.append(min(int(word), COUNT_CAP))
        else:
            if not word:
                raise Pop3Error(f"usage: {syntax.usage}")
            values.append(word)
    return tuple(values)
