"""The bench's round-trip counter (bench/pgwire.py): a turn is a send after the server caught
up, whatever the split of the bytes, so a pipeline is one round trip."""

from __future__ import annotations

import struct

import pytest

from bench.pgwire import SSL_REQUEST, Turns


def msg(kind: bytes, body: bytes = b"") -> bytes:
    return kind + struct.pack("!I", 4 + len(body)) + body


def startup(code: int, body: bytes = b"") -> bytes:
    return struct.pack("!II", 8 + len(body), code) + body


SYNC, READY = msg(b"S"), msg(b"Z", b"I")
STATEMENT = msg(b"P", b"\0SELECT 1\0\0\0") + msg(b"B", b"\0\0\0\0\0\0\0\0") + msg(b"E", b"\0" * 5)
RESULT = msg(b"1") + msg(b"2") + msg(b"D", b"\0\1\0\0\0\1" + b"1") + msg(b"C", b"SELECT 1\0")


def play(script: list[tuple[str, bytes]], step: int) -> int:
    turns = Turns()
    for side, data in script:
        feed = turns.client if side == "client" else turns.server
        for i in range(0, len(data), step):
            feed(data[i : i + step])
    return turns.turns


CONNECT = [
    ("client", startup(SSL_REQUEST)),
    ("server", b"N"),
    ("client", startup(196608, b"user\0cgpop\0\0")),
    ("server", msg(b"R", b"\0\0\0\0") + msg(b"S", b"a\0b\0") + READY),
]


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_a_pipeline_is_one_turn_and_waiting_statements_one_each(step: int) -> None:
    connect = CONNECT
    assert play(connect, step) == 2
    # Three statements, each Synced, all sent before the first answer is read.
    pipeline = [("client", (STATEMENT + SYNC) * 3), ("server", (RESULT + READY) * 3)]
    assert play(connect + pipeline, step) == 3
    # The server answering the first before the client has sent the rest changes nothing.
    interleaved = [
        ("client", STATEMENT + SYNC),
        ("server", RESULT + READY[:2]),
        ("client", (STATEMENT + SYNC) * 2),
        ("server", READY[2:] + (RESULT + READY) * 2),
    ]
    assert play(connect + interleaved, step) == 3
    # Waiting for each answer before the next: one turn each.
    waits = [("client", msg(b"Q", b"BEGIN\0")), ("server", msg(b"C", b"BEGIN\0") + READY)] * 3
    assert play(connect + waits, step) == 5


def test_each_turn_is_logged_with_its_statements() -> None:
    named = msg(b"P", b"_pg3_0\0SELECT v FROM directory_version\0\0\0")
    run_named = msg(b"B", b"\0_pg3_0\0\0\0\0\0\0\0") + msg(b"E", b"\0" * 5)
    script = [
        ("client", named + run_named + SYNC),
        ("server", RESULT + READY),
        ("client", msg(b"Q", b"BEGIN\0") + STATEMENT + SYNC + run_named + SYNC),
        ("server", msg(b"C", b"BEGIN\0") + READY + (RESULT + READY) * 2),
    ]
    turns = Turns()
    for side, data in CONNECT + script:
        (turns.client if side == "client" else turns.server)(data)
    assert turns.log[2:] == [
        ["SELECT v FROM directory_version"],
        ["BEGIN", "SELECT 1", "SELECT v FROM directory_version"],
    ]


def test_an_answer_to_a_flush_ends_a_turn() -> None:
    flushed = [
        ("client", STATEMENT + msg(b"H")),
        ("server", RESULT),
        ("client", STATEMENT + SYNC),
        ("server", RESULT + READY),
    ]
    assert play(CONNECT + flushed, 1000) == 4
