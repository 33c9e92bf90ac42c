"""The spool (issue 10, defect 6): memory up to a threshold then a file, chunked reads, header
split, and the streaming stuffer that must give exactly the octets of the in-memory path."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from cgpop import spool
from cgpop.spool import Spool, SpooledMessage, StreamStuffer
from cgpop.wire import dot_stuff, normalize_crlf


def stream(data: bytes, cuts: list[int]) -> tuple[bytes, int]:
    s = StreamStuffer()
    out, pos = [], 0
    for cut in [*cuts, len(data)]:
        out.append(s.feed(data[pos:cut]))
        pos = cut
    out.append(s.finish())
    return b"".join(out), s.size


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b".",
        b".\r\n",
        b"a\r",
        b"\r\n.\r\n..x\n.y\r.z",
        b"From: a\r\n\r\n.leading\r\nmid.dot\r\n",
        b"x" * 200_000 + b"\r" + b"\n." * 5,  # a long run without LF, a CR at its end
        b"\r" * 100_000 + b"." + b"\r",
    ],
)
def test_stream_stuffer_matches_the_in_memory_path(data: bytes) -> None:
    want = dot_stuff(normalize_crlf(data))
    for cuts in ([], [1], list(range(1, len(data), 7))[:5000], [len(data) // 2]):
        got, size = stream(data, [c for c in cuts if c <= len(data)])
        assert got == want
        assert size == len(normalize_crlf(data))


def test_stream_stuffer_random_chunkings() -> None:
    rng = random.Random(1066)
    alphabet = b"\r\n.ab"
    for _ in range(300):
        data = bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 300)))
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randrange(0, 8))))
        got, size = stream(data, cuts)
        assert got == dot_stuff(normalize_crlf(data)), (data, cuts)
        assert size == len(normalize_crlf(data))


def test_spool_goes_to_disk_past_the_threshold(tmp_path: Path) -> None:
    s = Spool(tmp_path, threshold=1000)
    s.write(b"x" * 999)
    assert not s.on_disk
    s.write(b"yy")
    assert s.on_disk and s.size == 1001
    assert list(tmp_path.iterdir()) == []  # an unnamed file: nothing left behind
    m = SpooledMessage(b"head:", s, offset=990)
    assert b"".join(m.chunks(size=4)) == b"head:" + b"x" * 9 + b"yy"
    assert m.size == 16 and m.start(7) == b"head:xx"
    s.close()


def test_split_head_and_join(tmp_path: Path) -> None:
    s = Spool(tmp_path, threshold=10)
    s.write(b"From: a@b\r\nTo: c@d\r\n\r\nbody\r\n.line\r\n")
    head, rest = spool.split_head(SpooledMessage(b"", s))
    assert head == b"From: a@b\r\nTo: c@d\r\n\r\n"
    assert rest is not None
    joined = spool.join(b"Received: x\r\n" + head, rest)
    assert spool.to_bytes(joined) == b"Received: x\r\n" + head + b"body\r\n.line\r\n"
    assert spool.split_head(b"in memory") == (b"in memory", None)


def test_split_head_refuses_an_endless_header(tmp_path: Path) -> None:
    s = Spool(tmp_path, threshold=10)
    s.write(b"X-Long: " + b"y" * (spool.HEADER_MAX + 10))
    assert spool.split_head(SpooledMessage(b"", s)) == (None, None)
