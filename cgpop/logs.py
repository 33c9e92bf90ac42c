"""Logging setup and per-connection adapters (STYLE rule 11): every record names its protocol
tag (POP, LMTP), session id and peer. Secrets never reach a log call: see `redact`."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from collections.abc import MutableMapping
from typing import Any

_SECRET_VERBS = ("PASS", "APOP", "AUTH")


class SessionLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def __init__(self, logger: logging.Logger, tag: str, session: str, peer: str) -> None:
        super().__init__(logger, {"tag": tag, "session": session, "peer": peer})

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = self.extra or {}
        return f"{extra['tag']} [{extra['session']}] {extra['peer']}: {msg}", kwargs


def redact(line: str) -> str:
    """A command line as it may be logged: arguments of PASS, APOP and AUTH are hidden, and so
    are SASL continuation lines (the caller passes those as "*")."""
    verb, sep, _ = line.partition(" ")
    if verb.upper() in _SECRET_VERBS and sep:
        return f"{verb} <redacted>"
    return line[:200]


def setup(level: str = "INFO", syslog: bool = False, syslog_socket: str = "/dev/log") -> None:
    root = logging.getLogger()
    root.handlers.clear()
    if syslog:
        handler: logging.Handler = logging.handlers.SysLogHandler(
            address=syslog_socket, facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(logging.Formatter("cgpop[%(process)d]: %(levelname)s %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    """The level of every cgpop record (at start, and again on SIGHUP)."""
    logging.getLogger().setLevel(level)
    # aiosmtpd traces every LMTP command on "mail.log" at INFO, untagged; our own LMTP
    # records carry the tag, session and peer, so its trace is kept for DEBUG only.
    logging.getLogger("mail.log").setLevel(logging.NOTSET if level == "DEBUG" else logging.WARNING)
