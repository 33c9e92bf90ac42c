"""The telemetry transcript (cgpop/telemetry.py): redaction of secrets and the cut of long
multi-line replies, fed as the runner feeds it, also a byte at a time."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from cgpop.telemetry import MAX_REPLY_LINES, TelemetryWriter, Transcript, redact_client


@pytest.mark.parametrize(
    ("line", "in_sasl", "shown"),
    [
        ("PASS hunter2", False, "PASS ***"),
        ("pass two words", False, "pass ***"),
        ("APOP joe c4c9334bac560ecc979e58001b3e22fb", False, "APOP joe ***"),
        ("AUTH PLAIN AGpvZQBzZWNyZXQ=", False, "AUTH PLAIN ***"),
        ("AUTH PLAIN", False, "AUTH PLAIN"),
        ("dGVzdA==", True, "***"),
        ("USER joe@example.com", False, "USER joe@example.com"),
        ("RETR 1", False, "RETR 1"),
    ],
)
def test_secrets_are_replaced(line: str, in_sasl: bool, shown: str) -> None:
    assert redact_client(line, in_sasl) == shown


def _shown(t: Transcript) -> list[str]:
    return [line.split(" ", 1)[1].rstrip("\n") for line in t.lines]


def _reply(lines: int) -> bytes:
    return b"+OK\r\n" + b"".join(b"line %d\r\n" % i for i in range(lines)) + b".\r\n"


@pytest.mark.parametrize("piece", [1, 7, 100_000])
def test_a_long_reply_is_cut_after_twenty_lines_with_the_rest_counted(piece: int) -> None:
    t = Transcript(datetime.now(UTC))
    data = _reply(40)
    for i in range(0, len(data), piece):
        t.reply_part(data[i : i + piece])
    t.reply_end()
    kept = data.split(b"\r\n")[:MAX_REPLY_LINES]
    rest = len(data) - sum(len(k) + 2 for k in kept)
    assert _shown(t) == [f"S: {k.decode()}" for k in kept] + [f"S: [... {rest} more octets]"]


def test_a_short_reply_is_whole_and_replies_are_cut_separately() -> None:
    t = Transcript(datetime.now(UTC))
    t.reply(_reply(18))  # 20 lines with status and terminator: nothing cut
    t.reply(_reply(19))
    shown = _shown(t)
    assert shown[:20] == ["S: +OK", *(f"S: line {i}" for i in range(18)), "S: ."]
    assert shown[20:] == ["S: +OK", *(f"S: line {i}" for i in range(19)), "S: [... 3 more octets]"]


def test_lines_go_to_the_file_only_once_started(tmp_path: Path) -> None:
    writer = TelemetryWriter(tmp_path)
    t = Transcript(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    t.reply(b"+OK ready\r\n")
    t.client(b"PASS secret\r\n", False)
    t.flush()  # not started: kept
    path = writer.path_for("joe@example.com", t.started, "ab-1")
    assert path == tmp_path / "joe@example.com" / "20260102T030405Z-ab-1.log"
    t.start(writer, path)
    t.client(b"STAT\r\n", False)
    t.close()
    writer.drain()
    written = [line.split(" ", 1)[1] for line in path.read_text().splitlines()]
    assert written == ["S: +OK ready", "C: PASS ***", "C: STAT"]
    writer.shutdown()
