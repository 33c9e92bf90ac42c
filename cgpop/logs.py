"""Logging setup and per-connection adapters (STYLE rule 11): every record names its protocol
tag (POP, LMTP), session id and peer. Secrets never reach a log call: see `redact`."""

from __future__ import annotations

import logging
import logging.handlers
import socket
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
    are SASL continuation lines (the caller passes those as "*").

    The verb is recognised by its first four characters after any leading white space, whatever
    follows it (a tab, several spaces, nothing at all): such a line is refused by the engine, but
    its argument is still a secret the client meant to send."""
    stripped = line.lstrip()
    verb = stripped[:4]
    if verb.upper() in _SECRET_VERBS and stripped[4:].strip():
        return f"{verb} <redacted>"
    return line[:200]


def syslog_unreachable(path: str) -> str | None:
    """Why no record could be sent to the syslog socket at `path`, or None if one can. Tried as
    SysLogHandler does: a datagram socket, then a stream one."""
    reason = "cannot connect"
    for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
        try:
            with socket.socket(socket.AF_UNIX, kind) as sock:
                sock.connect(path)
            return None
        except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
            reason = f"cannot connect to {path}: {getattr(exc, 'strerror', None) or exc}"
    return reason


class _SyslogHandler(logging.handlers.SysLogHandler):
    """SysLogHandler that, when the daemon goes away, says so in one line on stderr until a
    record gets through again, instead of a traceback per record."""

    _failing = False
    _failed_now = False

    def emit(self, record: logging.LogRecord) -> None:
        self._failed_now = False
        super().emit(record)  # reports a failure through handleError
        if not self._failed_now:
            self._failing = False

    def handleError(self, record: logging.LogRecord) -> None:
        self._failed_now = True
        if not self._failing:
            self._failing = True
            exc = sys.exc_info()[1]
            print(f"cgpop: syslog {self.address}: cannot send records: {exc}", file=sys.stderr)


def setup(
    level: str = "INFO",
    syslog: bool = False,
    syslog_socket: str = "/dev/log",
    *,
    with_pid: bool = False,
) -> None:
    """`with_pid`: stderr lines carry the process id (`[server] workers`: one log, several
    processes; syslog lines always do)."""
    root = logging.getLogger()
    root.handlers.clear()
    if syslog:
        handler: logging.Handler = _SyslogHandler(
            address=syslog_socket, facility=logging.handlers.SysLogHandler.LOG_MAIL
        )
        handler.setFormatter(logging.Formatter("cgpop[%(process)d]: %(levelname)s %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        pid = " [%(process)d]" if with_pid else ""
        handler.setFormatter(logging.Formatter(f"%(asctime)s{pid} %(levelname)s %(message)s"))
    root.addHandler(handler)
    set_level(level)


def set_level(level: str) -> None:
    """The level of every cgpop record (at start, and again on SIGHUP)."""
    logging.getLogger().setLevel(level)
    # aiosmtpd traces every LMTP command on "mail.log" at INFO, untagged; our own LMTP
    # records carry the tag, session and peer, so its trace is kept for DEBUG only.
    logging.getLogger("mail.log").setLevel(logging.NOTSET if level == "DEBUG" else logging.WARNING)
