"""A counting TCP relay between cgpop and PostgreSQL: database round trips, measured on the wire.

A round trip is a wait: the client sends, then has nothing more to say until the server has
answered everything outstanding. The relay reads PostgreSQL's frontend/backend protocol (v3:
a type byte and a length per message; the startup packet and SSLRequest without the type
byte) in both directions and counts a turn when the client sends its first message after the
server caught up: every Sync and simple Query answered by a ReadyForQuery, or (no Sync
outstanding, e.g. after a Flush) the server having sent anything at all. A pipeline (many
statements and Syncs sent before the first answer is read) is one turn; statements that each
wait for their answer are one turn each. A client that waits for a non-final answer inside an
outstanding Sync (COPY FROM STDIN waiting for CopyInResponse) is counted once, not twice: the
bench's session and delivery paths do not do that.

Each turn is logged with the statements it carried (the SQL of each Parse or simple Query,
and for a Bind of a prepared statement the SQL its Parse named), so a window of time can be
told apart into the work a client waited for and the background writers' work (cluster.py).

The relay runs its own event loop in a thread of the harness. Only the bench's probe node
(cluster.py) talks through it, outside the timed runs: nothing timed pays for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import threading

HOST = "127.0.0.1"
BUFFER = 256 * 1024  # one read per burst in practice: statements are small, bodies <= 256 KiB
# Startup-phase request codes (PostgreSQL protocol, "Message Formats").
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


class Turns:
    """Round trips of one connection, from the bytes each side sends (in relay order)."""

    def __init__(self, log: list[list[str]] | None = None) -> None:
        self.turns = 0
        # One entry per turn, filled with its statements' SQL as they pass.
        self.log: list[list[str]] = [] if log is None else log
        self._current: list[str] = []
        self._prepared: dict[bytes, str] = {}  # statement name -> SQL (Parse), per connection
        self._idle = True  # the server has answered everything: the client's next send waits
        self._outstanding = 0  # Syncs, Queries and startup requests not answered yet
        self._client = bytearray()
        self._server = bytearray()
        self._client_startup = True  # the client's first messages carry no type byte
        self._server_bytes_raw = 0  # single-byte answers to SSLRequest/GSSENCRequest

    def client(self, data: bytes) -> None:
        self._client += data
        while True:
            if self._client_startup:
                if len(self._client) < 8:
                    return
                length, code = struct.unpack("!II", self._client[:8])
                if len(self._client) < length:
                    return
                del self._client[:length]
                self._sent()
                self._outstanding += 1
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    self._server_bytes_raw += 1  # answered by one byte, 'N' or 'S'/'G'
                else:
                    self._client_startup = False  # the startup packet: typed from now on
                continue
            if len(self._client) < 5:
                return
            kind = self._client[0]
            (length,) = struct.unpack("!I", self._client[1:5])
            if len(self._client) < 1 + length:
                return
            body = bytes(self._client[5 : 1 + length])
            del self._client[: 1 + length]
            self._sent()
            self._label(kind, body)
            if kind in (ord("S"), ord("Q")):  # Sync, simple Query: each ends in ReadyForQuery
                self._outstanding += 1

    def _sent(self) -> None:
        if self._idle:
            self.turns += 1
            self._idle = False
            self._current = []
            self.log.append(self._current)

    def _label(self, kind: int, body: bytes) -> None:
        """Note the SQL a Parse, Bind or Query message carries in the current turn."""
        parts = body.split(b"\0")
        if kind == ord("Q"):
            self._current.append(parts[0].decode(errors="replace"))
        elif kind == ord("P") and len(parts) > 1:
            sql = parts[1].decode(errors="replace")
            if parts[0]:  # a named statement: labelled by the Binds that run it
                self._prepared[parts[0]] = sql
            else:
                self._current.append(sql)
        elif kind == ord("B") and len(parts) > 1 and parts[1]:
            self._current.append(self._prepared.get(parts[1], "?"))

    def server(self, data: bytes) -> None:
        self._server += data
        while True:
            if self._server_bytes_raw:
                if not self._server:
                    return
                del self._server[:1]
                self._server_bytes_raw -= 1
                self._answered()
                continue
            if len(self._server) < 5:
                return
            kind = self._server[0]
            (length,) = struct.unpack("!I", self._server[1:5])
            if len(self._server) < 1 + length:
                return
            del self._server[: 1 + length]
            if kind == ord("Z"):  # ReadyForQuery: a Sync, Query or the startup answered
                self._answered()
            elif self._outstanding == 0:
                self._idle = True  # an answer to unsynced messages (Flush): a wait

    def _answered(self) -> None:
        self._outstanding = max(0, self._outstanding - 1)
        if self._outstanding == 0:
            self._idle = True


class Relay:
    """Listens on HOST and an ephemeral port, forwards each connection to `target_port`."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.turns = 0  # client turns, all connections (written by the relay's thread only)
        self.log: list[list[str]] = []  # every turn's statements, all connections, in order
        self.connections = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()  # both ends of every open connection
        self._thread = threading.Thread(target=self._run, name="pgwire-relay", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("pgwire relay did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, HOST, 0, limit=BUFFER)
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._shutdown())
            self._loop.close()

    async def _shutdown(self) -> None:
        """Close the listener and every connection, and let their tasks end."""
        assert self._server is not None
        self._server.close()
        for w in list(self._writers):
            w.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        await asyncio.gather(*others, return_exceptions=True)
        await self._server.wait_closed()

    def counts(self) -> tuple[int, int]:
        """(turns, connections opened) so far; differences of two readings are what counts."""
        return self.turns, self.connections

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(HOST, self.target_port, limit=BUFFER)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_w))
        self.connections += 1
        turns = Turns(self.log)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, client: bool) -> None:
            try:
                while data := await src.read(BUFFER):
                    before = turns.turns
                    if client:
                        turns.client(data)
                    else:
                        turns.server(data)
                    self.turns += turns.turns - before
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_w, True), pump(up_r, writer, False))
        for w in (writer, up_w):
            with contextlib.suppress(OSError):
                await w.wait_closed()
            self._writers.discard(w)

    def stop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(30)
