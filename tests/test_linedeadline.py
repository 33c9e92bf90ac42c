"""The per-line deadline (slowloris bound): when it starts, keeps running and stops, with an
injected clock; and its configuration key."""

from __future__ import annotations

import pytest

from cgpop import config
from cgpop.linedeadline import LineDeadline
from cgpop.pop3.lines import LineBuffer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def drain(lines: LineBuffer, data: bytes) -> None:
    lines.feed(data)


def test_no_deadline_between_lines() -> None:
    clock, lines = Clock(), LineBuffer(1024)
    d = LineDeadline(60, clock)
    drain(lines, b"NOOP\r\n")
    d.after_input(lines)
    assert d.remaining() is None


def test_a_dribbled_line_keeps_its_first_deadline() -> None:
    clock, lines = Clock(), LineBuffer(1024)
    d = LineDeadline(60, clock)
    drain(lines, b"U")
    d.after_input(lines)
    assert d.remaining() == 60
    for _ in range(3):  # one byte every 30 s: the clock is not reset by each byte
        clock.now += 30
        drain(lines, b"S")
        d.after_input(lines)
    assert d.remaining() == 0


def test_a_new_line_restarts_the_clock() -> None:
    clock, lines = Clock(), LineBuffer(1024)
    d = LineDeadline(60, clock)
    drain(lines, b"NO")
    d.after_input(lines)
    clock.now += 50
    drain(lines, b"OP\r\nST")  # the first line ended; a second began now
    d.after_input(lines)
    assert d.remaining() == 60


def test_skipping_an_overlong_line_is_still_a_line_in_progress() -> None:
    clock, lines = Clock(), LineBuffer(255)
    d = LineDeadline(60, clock)
    drain(lines, b"x" * 300)
    d.after_input(lines)
    assert lines.pending == 0 and d.remaining() == 60


def test_body_fragments_count_as_progress() -> None:
    clock, lines = Clock(), LineBuffer(255, body_limit=10)
    lines.body_mode = True
    d = LineDeadline(60, clock)
    drain(lines, b"abc")
    d.after_input(lines)
    clock.now += 59
    drain(lines, b"x" * 20)  # handed on as a fragment: a long body line is moving
    d.after_input(lines)
    assert d.remaining() is None


def test_config_default() -> None:
    assert config.Config().pop3.line_timeout == 60.0
    assert config.from_dict({"pop3": {"line_timeout": 5}}).pop3.line_timeout == 5.0


@pytest.mark.parametrize("value", [0, -1, "x", float("nan"), float("inf"), 601])
def test_config_refuses_bad_line_timeout(value: object) -> None:
    with pytest.raises(config.ConfigError, match=r"pop3\.line_timeout"):
        config.from_dict({"pop3": {"line_timeout": value}}, source="<t>")
