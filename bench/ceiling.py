"""The bigmsg ceiling: a minimal POP3 server that answers RETR with `os.sendfile`.

`python -m bench.ceiling FILE` listens on 127.0.0.1:0, prints the port on stdout, and serves
one connection at a time (the workload reads one RETR at a time): a greeting, `+OK` to USER and
PASS whatever they carry, `+OK` and the file's octets through os.sendfile for RETR (the file
holds the dot-stuffed message and its ".\\r\\n", written by the harness), `+OK` to QUIT. It is
no POP3 server: it is the fastest way this kernel can move those octets to a socket, measured by
the same raw reader in the same run, so a server's MB/s can be put as a fraction of it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

MAX_LINE = 512  # RFC 2449 section 4; a longer line ends the connection


def serve_one(conn: socket.socket, path: Path) -> None:
    size = path.stat().st_size
    buf = b""
    conn.sendall(b"+OK ceiling ready\r\n")
    while True:
        while b"\r\n" not in buf:
            chunk = conn.recv(4096)
            if not chunk or len(buf) > MAX_LINE:
                return
            buf += chunk
        line, _, buf = buf.partition(b"\r\n")
        verb = line.split(b" ", 1)[0].upper()
        if verb == b"RETR":
            conn.sendall(b"+OK %d octets\r\n" % (size - 3))
            with path.open("rb") as f:
                offset = 0
                while offset < size:
                    sent = os.sendfile(conn.fileno(), f.fileno(), offset, size - offset)
                    if sent == 0:
                        return
                    offset += sent
        elif verb == b"QUIT":
            conn.sendall(b"+OK bye\r\n")
            return
        else:
            conn.sendall(b"+OK\r\n")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m bench.ceiling FILE", file=sys.stderr)
        return 2
    path = Path(argv[0])
    with socket.socket() as ls:
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", 0))
        ls.listen(16)
        print(ls.getsockname()[1], flush=True)
        while True:
            conn, _ = ls.accept()
            # As asyncio and uvloop do for every server transport: no Nagle delay on the reply's
            # last short segment behind the status line.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with conn, contextlib.suppress(OSError):  # a client gone mid-reply
                serve_one(conn, path)


def start(run_dir: Path, octets: bytes) -> tuple[subprocess.Popen[bytes], int]:
    """Write `octets` (stuffed message and ".\\r\\n") and start the ceiling server on it;
    returns the process and its port. The caller stops it (terminate, wait)."""
    path = run_dir / "ceiling-retr.bin"
    path.write_bytes(octets)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.ceiling", str(path)],
        stdout=subprocess.PIPE,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the port, printed once listening: no polling
    proc.stdout.close()  # nothing more is printed
    if not line.strip().isdigit():
        proc.kill()
        proc.wait()
        raise RuntimeError(f"ceiling server did not start: {line!r}")
    return proc, int(line)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
