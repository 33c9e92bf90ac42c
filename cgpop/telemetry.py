"""Per-account session transcripts (issue 12, section 3; Cyrus's telemetry log).

While `cgpop telemetry on NAME@DOMAIN` is in force, each POP session of that account writes
`data_dir/telemetry/NAME@DOMAIN/<start time>-<session id>.log`: one `<time> C: ...` line per
client line and `<time> S: ...` lines per reply. Secrets never reach the file: the argument of
PASS, the digest of APOP, an AUTH initial response and every SASL continuation line are `***`.
A multi-line reply keeps its first MAX_REPLY_LINES lines (status line included), then one line
with the octet count of the rest, so a RETR of a large message costs a few lines.

Lines are collected in memory and handed to one writer thread per process, in order, once per
chunk of client input: the event loop never waits for the disk.
"""

from __future__ import annotations

import contextlib
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger("cgpop.telemetry")

# The lines of a multi-line reply kept in the transcript (the number).
MAX_REPLY_LINES = 20
# Lines kept before the login is known; a session that does not log in as a traced account
# throws them away. Bounds the memory of a client that never logs in.
MAX_PENDING_LINES = 64
_SAFE = re.compile(r"[^A-Za-z0-9@._+-]")


def stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def redact_client(line: str, in_sasl: bool) -> str:
    """A client line as the transcript shows it."""
    if in_sasl:
        return "***"
    words = line.split()
    if not words:
        return line
    verb = words[0].upper()
    if verb == "PASS" and len(words) > 1:
        return f"{words[0]} ***"
    if verb == "APOP" and len(words) > 2:
        return f"{words[0]} {words[1]} ***"
    if verb == "AUTH" and len(words) > 2:
        return f"{words[0]} {words[1]} ***"
    return line


class TelemetryWriter:
    """Appends transcript text to files on one thread of its own, in submission order."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cgpop-telemetry")

    def path_for(self, account: str, started: datetime, session_id: str) -> Path:
        name = f"{started.strftime('%Y%m%dT%H%M%S')}Z-{_SAFE.sub('_', session_id)}.log"
        return self.root / _SAFE.sub("_", account) / name

    def append(self, path: Path, text: str) -> None:
        try:
            self._thread.submit(_append, path, text)
        except RuntimeError:  # shut down: the server is past its sessions
            log.warning("telemetry: %s not written after shutdown", path)

    def drain(self) -> None:
        """Wait until everything appended so far is written."""
        self._thread.submit(lambda: None).result()

    def shutdown(self) -> None:
        self._thread.shutdown(wait=True)


def _append(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", encoding="utf-8") as f:
            f.write(text)
    except OSError as exc:
        log.warning("telemetry: cannot write %s: %s", path, exc)


class Transcript:
    """One session's transcript: lines are collected (before login, up to MAX_PENDING_LINES)
    until `start` names the file; `flush` hands what was collected to the writer."""

    def __init__(self, started: datetime) -> None:
        self.started = started
        self.lines: list[str] = []
        self.writer: TelemetryWriter | None = None
        self.path: Path | None = None
        # The reply being sent: lines kept so far, octets past the cut, a partial last line.
        self._reply_lines = 0
        self._cut_octets = 0
        self._partial = b""

    def _add(self, line: str) -> None:
        if self.writer is None and len(self.lines) >= MAX_PENDING_LINES:
            return
        self.lines.append(f"{stamp()} {line}\n")

    def start(self, writer: TelemetryWriter, path: Path) -> None:
        self.writer, self.path = writer, path

    def client(self, line: bytes, in_sasl: bool) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r\n")
        self._add(f"C: {redact_client(text, in_sasl)}")

    def reply(self, *parts: bytes) -> None:
        for part in parts:
            self.reply_part(part)
        self.reply_end()

    def reply_part(self, data: bytes) -> None:
        if self._reply_lines >= MAX_REPLY_LINES:
            self._cut_octets += len(data)
            return
        data = self._partial + data
        self._partial = b""
        start = 0
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                self._partial = data[start:]
                return
            if self._reply_lines >= MAX_REPLY_LINES:
                self._cut_octets += len(data) - start
                return
            text = data[start:end].decode("utf-8", "replace").rstrip("\r")
            self._add(f"S: {text}")
            self._reply_lines += 1
            start = end + 1

    def reply_end(self) -> None:
        if self._partial:
            if self._reply_lines < MAX_REPLY_LINES:
                self._add(f"S: {self._partial.decode('utf-8', 'replace')}")
            else:
                self._cut_octets += len(self._partial)
        if self._cut_octets:
            self._add(f"S: [... {self._cut_octets} more octets]")
        self._reply_lines = self._cut_octets = 0
        self._partial = b""

    def flush(self) -> None:
        if self.writer is not None and self.path is not None and self.lines:
            self.writer.append(self.path, "".join(self.lines))
            self.lines.clear()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.flush()
