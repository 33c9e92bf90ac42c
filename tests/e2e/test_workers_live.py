"""`cgpop serve` with `[server] workers = 2` from the outside (issue 14): connections reach both
workers, systemd hears READY=1 once from the parent, the whole-server limits hold across
workers, a session in one worker still reads a message that another worker expunged and
collected, alerts and password changes are seen by both, a killed worker is replaced, and
SIGTERM drains every worker.

Which worker holds a connection is read from /proc (the server side of the TCP connection is a
socket inode in exactly one worker's file table), never from the wire."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cgpop import alerts
from cgpop.store.sqlite import SqliteStore
from tests.conftest import message
from tests.e2e.test_systemd import CGPOP, TIMEOUT, Pop, Service

BASE = """[server]
data_dir = "data"
default_domain = "example.com"
shutdown_grace = 3
workers = 2
[pop3]
listen = ["127.0.0.1:0"]
max_channels = {max_channels}
max_per_ip = {max_per_ip}
max_per_account = {max_per_account}
[lmtp]
listen = ["127.0.0.1:0"]
"""
USER, PASSWORD = "joe@example.com", "secret"
TOO_MANY = "-ERR [SYS/TEMP] too many connections, try later"


def until(predicate: Callable[[], bool], what: str) -> None:
    # Process starts and exits give no other signal to a test outside them: poll, bounded.
    deadline = time.monotonic() + TIMEOUT
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Workers(Service):
    def start(self) -> None:
        self.proc = subprocess.Popen([*CGPOP, "serve"], env=self.env, stderr=subprocess.PIPE)
        self.reader = threading.Thread(target=self._read_log, daemon=True)
        self.reader.start()

    def close(self) -> None:
        """SIGTERM, so the parent drains its workers; the log ends when the last one exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(TIMEOUT)
        if self.proc is not None:
            self.reader.join(TIMEOUT)
        super().close()

    def workers(self) -> list[int]:
        """The worker pids: the parent's children."""
        assert self.proc is not None
        pid = self.proc.pid
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        return sorted(int(p) for p in text.split())

    def holder(self, client: socket.socket) -> int:
        """The worker whose file table holds the server side of `client`'s connection."""
        server_port = client.getpeername()[1]
        client_port = client.getsockname()[1]
        inode = None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.split(":")[1], 16) == server_port and (
                int(remote.split(":")[1], 16) == client_port
            ):
                inode = fields[9]
        assert inode is not None, "no server side for this connection"
        for pid in self.workers():
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if fd.readlink() == Path(f"socket:[{inode}]"):
                        return pid
                except FileNotFoundError:
                    continue
        raise AssertionError("no worker holds the connection")

    def pop(self, port: int) -> Pop:
        return Pop(self.connect(port))

    def on_each_worker(self, port: int, make: Callable[[], Pop] | None = None) -> dict[int, Pop]:
        """Open connections (kept open) until each worker holds one; the first of each."""
        found: dict[int, Pop] = {}
        for _ in range(200):
            pop = make() if make is not None else self.pop(port)
            found.setdefault(self.holder(pop.sock), pop)
            if len(found) == 2:
                return found
        raise AssertionError("200 connections all went to one worker")


@pytest.fixture
def make_service(tmp_path: Path) -> Iterator[Callable[..., Workers]]:
    made: list[Workers] = []

    def make(
        max_channels: int = 1000,
        max_per_ip: int = 1000,
        max_per_account: int = 50,
        metrics: bool = False,
        env: dict[str, str] | None = None,
    ) -> Workers:
        svc = Workers(tmp_path, env)
        svc.conf.write_text(
            BASE.format(
                max_channels=max_channels, max_per_ip=max_per_ip, max_per_account=max_per_account
            )
            + ('[metrics]\nlisten = "127.0.0.1:0"\n' if metrics else "")
        )
        svc.add_account(USER, PASSWORD)
        made.append(svc)
        svc.start()
        return svc

    yield make
    for svc in made:
        svc.close()


def lmtp_deliver(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), TIMEOUT) as sock, sock.makefile("rb") as f:

        def say(line: bytes) -> bytes:
            sock.sendall(line + b"\r\n")
            return f.readline()

        assert f.readline().startswith(b"220")
        say(b"LHLO test")
        while not f.readline().startswith(b"250 "):
            pass
        assert say(b"MAIL FROM:<a@b.example>").startswith(b"250")
        assert say(b"RCPT TO:<" + USER.encode() + b">").startswith(b"250")
        assert say(b"DATA").startswith(b"354")
        assert say(data.replace(b"\n", b"\r\n") + b".").startswith(b"250")


def test_ready_once_and_connections_reach_both_workers(
    make_service: Callable[..., Workers],
) -> None:
    svc = make_service()
    ports = svc.ready()
    assert len(svc.workers()) == 2
    held = svc.on_each_worker(ports["POP3"])
    assert set(held) == set(svc.workers())
    for pop in held.values():
        assert pop.login().startswith("+OK")
        assert pop.cmd("STAT").startswith("+OK 0 ")
    assert svc.proc is not None
    svc.proc.send_signal(signal.SIGTERM)
    # The next message after the one READY=1: no worker told systemd anything itself.
    assert svc.message() == "STOPPING=1"
    assert svc.proc.wait(TIMEOUT) == 0


@pytest.mark.parametrize("limit", ["max_channels", "max_per_ip"])
def test_connection_limits_hold_for_the_whole_server(
    make_service: Callable[..., Workers], limit: str
) -> None:
    svc = make_service(**{limit: 6})
    port = svc.ready()["POP3"]
    # The kernel picks the worker: repeat until the six accepted are spread over both (a
    # per-worker count would then have let twelve in).
    for _ in range(10):
        accepted: list[Pop] = []
        refused = 0
        for _ in range(12):
            pop = svc.pop(port)
            if pop.greeting.startswith("+OK"):
                accepted.append(pop)
            else:
                assert pop.greeting.rstrip("\r\n") == TOO_MANY
                refused += 1
        assert len(accepted) == 6 and refused == 6
        if len({svc.holder(p.sock) for p in accepted}) == 2:
            break
        for pop in accepted:
            close(pop)
        for _ in accepted:
            svc.wait_log("disconnected")
    else:
        raise AssertionError("ten rounds of six connections all went to one worker")
    # A closed one frees its slot for a connection to either worker.
    close(accepted[0])
    svc.wait_log("disconnected")
    assert svc.pop(port).greeting.startswith("+OK")


def close(pop: Pop) -> None:
    pop.file.close()
    pop.sock.close()


def test_max_per_account_holds_across_workers(make_service: Callable[..., Workers]) -> None:
    svc = make_service(max_per_account=1)
    port = svc.ready()["POP3"]
    held = svc.on_each_worker(port)
    first, second = held.values()
    assert first.login().startswith("+OK")
    assert second.login() == "-ERR [SYS/TEMP] too many sessions for this account, try later"
    assert first.cmd("QUIT").startswith("+OK")
    svc.wait_log("disconnected")
    # The slot is free again, for either worker; still one at a time.
    logged = [p.login() for p in svc.on_each_worker(port).values()]
    assert sorted(r.startswith("+OK") for r in logged) == [False, True]


def test_a_session_in_one_worker_reads_what_another_expunged_and_collected(
    make_service: Callable[..., Workers],
) -> None:
    svc = make_service()
    ports = svc.ready()
    lmtp_deliver(ports["LMTP"], message("held", ("x" * 999 + "\n") * 200))
    held = svc.on_each_worker(ports["POP3"])
    (_, holder), (other_pid, other) = held.items()
    assert holder.login().startswith("+OK")  # its snapshot has message 1
    assert other.login().startswith("+OK")
    assert other.cmd("DELE 1").startswith("+OK")
    assert other.cmd("QUIT").startswith("+OK")  # expunged
    # The other worker drains: its collector runs at stop, and its replacement's at start.
    svc.wait_log(r"disconnected")
    os.kill(other_pid, signal.SIGTERM)
    svc.wait_log(rf"\(pid {other_pid}\) ended")
    svc.wait_log(r"POP3 listening on")  # the replacement collected, then serves
    reply = holder.cmd("RETR 1")
    assert reply.startswith("+OK"), reply
    body = b""
    while not body.endswith(b"\r\n.\r\n"):
        body += holder.file.readline()
    assert b"Subject: held" in body and body.count(b"x" * 999) == 200
    assert holder.cmd("QUIT").startswith("+OK")


def test_an_alert_is_shown_once_whichever_worker(make_service: Callable[..., Workers]) -> None:
    svc = make_service()
    port = svc.ready()["POP3"]
    store = SqliteStore(svc.dir / "data")
    try:
        store.add_alert("account", USER, alerts.check_text("Maintenance at noon"))
    finally:
        store.close()
    held = svc.on_each_worker(port)
    replies = [p.login() for p in held.values()]
    assert replies.count("-ERR [SYS/TEMP] Maintenance at noon") == 1
    assert sum(r.startswith("+OK") for r in replies) == 1


def test_a_password_change_reaches_both_workers_caches(
    make_service: Callable[..., Workers],
) -> None:
    from accounts.credentials import make_credentials

    svc = make_service()
    port = svc.ready()["POP3"]
    for pop in svc.on_each_worker(port).values():  # both workers remember the proof
        assert pop.login().startswith("+OK")
        assert pop.cmd("QUIT").startswith("+OK")
    store = SqliteStore(svc.dir / "data")
    try:
        store.set_credentials("example.com", "joe", make_credentials("changed"))
    finally:
        store.close()
    for pop in svc.on_each_worker(port).values():
        assert pop.login() == "-ERR [AUTH] authentication failed"
    for pop in svc.on_each_worker(port).values():
        assert pop.login(password="changed").startswith("+OK")


def test_a_killed_worker_is_replaced_and_service_goes_on(
    make_service: Callable[..., Workers],
) -> None:
    svc = make_service()
    port = svc.ready()["POP3"]
    first = svc.workers()
    victim = first[0]
    os.kill(victim, signal.SIGKILL)
    svc.wait_log(rf"\(pid {victim}\) ended: killed by SIGKILL")
    until(lambda: len(svc.workers()) == 2 and victim not in svc.workers(), "a replacement")
    replacement = (set(svc.workers()) - set(first)).pop()
    svc.wait_log(rf"\[{replacement}\] INFO POP3 listening on")
    held = svc.on_each_worker(port)
    assert replacement in held
    for pop in held.values():
        assert pop.login().startswith("+OK")


def test_sigterm_drains_every_worker(make_service: Callable[..., Workers]) -> None:
    svc = make_service()
    port = svc.ready()["POP3"]
    held = svc.on_each_worker(port)
    for pop in held.values():
        assert pop.login().startswith("+OK")
    assert svc.proc is not None
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.message() == "STOPPING=1"
    for pop in held.values():  # idle sessions are told, in each worker
        assert pop.file.readline() == b"-ERR [SYS/TEMP] server shutting down\r\n"
    assert svc.proc.wait(TIMEOUT) == 0
    assert re.search(r"all workers stopped", "".join(svc.log))


def test_sighup_reaches_every_worker(make_service: Callable[..., Workers]) -> None:
    svc = make_service(max_channels=1000)
    port = svc.ready()["POP3"]
    svc.conf.write_text(BASE.format(max_channels=2, max_per_ip=1000, max_per_account=50))
    assert svc.reload()[0] == "RELOADING=1"  # then READY=1, from the parent alone
    reloaded = {int(svc.wait_log(r"\[(\d+)\] INFO reload done").group(1)) for _ in range(2)}
    assert reloaded == set(svc.workers())
    # The new cap, for the whole server.
    greetings = [svc.pop(port).greeting.rstrip("\r\n") for _ in range(3)]
    assert greetings[:2] == ["+OK localhost cgpop POP3 ready"] * 2
    assert greetings[2] == TOO_MANY


def test_watchdog_pinged_by_the_parent_while_every_worker_loop_runs(tmp_path: Path) -> None:
    """With WatchdogSec= (WATCHDOG_USEC) the parent pings every WATCHDOG_USEC/2 once every
    worker serves; a worker whose event loop stops (SIGSTOP stands in for a stuck loop) stops
    the pings, so systemd would restart the service; they resume when it runs again."""
    svc = Workers(tmp_path, env={"WATCHDOG_USEC": "200000"})  # pings every 0.1 s
    svc.conf.write_text(BASE.format(max_channels=1000, max_per_ip=1000, max_per_account=50))
    stopped: int | None = None
    try:
        svc.start()
        svc.ready()
        assert [svc.message() for _ in range(3)] == ["WATCHDOG=1"] * 3
        stopped = svc.workers()[0]
        os.kill(stopped, signal.SIGSTOP)
        # Its last beat goes stale within two intervals (0.2 s): a few pings may still come,
        # then a silence far longer than the 0.1 s between pings.
        svc.notify.settimeout(1.0)
        for _ in range(20):
            try:
                assert svc.message() == "WATCHDOG=1"
            except TimeoutError:
                break
        else:
            raise AssertionError("pings went on while a worker's loop was stopped")
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        svc.notify.settimeout(TIMEOUT)
        assert [svc.message() for _ in range(2)] == ["WATCHDOG=1"] * 2
    finally:
        if stopped is not None:
            os.kill(stopped, signal.SIGCONT)
        svc.close()


SPELLINGS = ("joe", "joe@example.com", "INBOX#joe", "joe%example.com", "~joe/INBOX#joe", "JOE")


def test_many_connections_over_both_workers_get_no_more_guesses(tmp_path: Path) -> None:
    """tests/e2e/test_resources.py's guessing flood, with the 24 connections of one address
    spread over both workers: the (address, account) pair's turn is the whole server's, so the
    address gets no more checked guesses by time t than one process gives (with a penalty per
    worker, each worker gave that many: about twice the bound). Counted by the time replies
    arrive, as there: what is bounded is the rate."""
    svc = Workers(tmp_path)
    pops: list[Pop] = []
    svc.conf.write_text(
        BASE.format(max_channels=1000, max_per_ip=30, max_per_account=50).replace(
            "[lmtp]", "auth_delay = 0.05\nauth_delay_max = 0.5\nmax_auth_failures = 1000\n[lmtp]"
        )
    )
    svc.add_account(USER, PASSWORD)
    try:
        svc.start()
        port = svc.ready()["POP3"]
        pops.extend(svc.pop(port) for _ in range(24))
        holders = {svc.holder(p.sock) for p in pops}
        while len(holders) < 2 and len(pops) < 29:  # the kernel picks: until both hold some
            pops.append(svc.pop(port))
            holders.add(svc.holder(pops[-1].sock))
        assert len(holders) == 2, "every connection went to one worker"
        window = 3.0
        start = time.monotonic()
        replies: list[tuple[float, str]] = []

        def guess(pop: Pop, spelling: str) -> None:
            while time.monotonic() < start + window:
                assert pop.cmd(f"USER {spelling}").startswith("+OK")
                reply = pop.cmd("PASS wrong-guess")
                replies.append((time.monotonic(), reply))  # when the reply arrived

        threads = [
            threading.Thread(target=guess, args=(pop, SPELLINGS[i % 6]))
            for i, pop in enumerate(pops)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        checked = [at for at, r in replies if r.startswith("-ERR [AUTH]")]
        refused = [r for _, r in replies if r.startswith("-ERR [SYS/TEMP]")]
        assert len(checked) + len(refused) == len(replies)
        assert checked
        # As in test_resources: at most 4 checks in the first 0.75 s (0.05, 0.1, 0.2, 0.4 s
        # spacing), then one per 0.5 s, +1 for the edge. With both workers checking a pair
        # before its first failure, the start admits one more, within the edge.
        for horizon in (window, window + 1.5):
            by_then = sum(1 for at in checked if at <= start + horizon)
            assert by_then <= 4 + horizon / 0.5 + 1, (horizon, by_then, len(checked))
        # The owner, from the same address, is checked at the pair's next turn and let in.
        ok = svc.pop(port)
        pops.append(ok)
        assert ok.login().startswith("+OK")
    finally:
        for pop in pops:
            close(pop)
        svc.close()


def scrape_workers(port: int, path: str = "/metrics") -> tuple[int, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


def sample(body: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(body):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name} {labels}")


def test_one_metrics_page_sums_both_workers(
    make_service: Callable[..., Workers], tmp_path: Path
) -> None:
    """`[metrics] listen` with workers = 2: one /metrics on the one configured address shows
    the whole server (issue 12's names): logins and commands counted over both workers, the
    sessions open in both, and the totals do not go back when a worker is replaced."""
    tmp = tmp_path / "tmp"  # where the server's private multiprocess directory goes
    tmp.mkdir()
    svc = make_service(metrics=True, env={"TMPDIR": str(tmp)})
    port = svc.ready()["POP3"]
    (private,) = tmp.iterdir()
    assert private.name.startswith("cgpop-metrics-") and private.stat().st_mode & 0o077 == 0
    found = re.search(r"METRICS listening on 127\.0\.0\.1:(\d+)", "".join(svc.log))
    metrics_port = int(found.group(1) if found else svc.wait_log(r"METRICS .*:(\d+)").group(1))
    assert scrape_workers(metrics_port, "/healthz") == (200, "ok\n")
    held = svc.on_each_worker(port)
    for pop in held.values():
        assert pop.login().startswith("+OK")
        assert pop.cmd("STAT").startswith("+OK")
    status, body = scrape_workers(metrics_port)
    assert status == 200
    assert sample(body, "cgpop_pop3_logins_total", result="ok") == 2
    assert sample(body, "cgpop_pop3_commands_total", verb="STAT") == 2
    assert sample(body, "cgpop_pop3_commands_total", verb="PASS") == 2
    # Every connection the test opened is still open, on one worker or the other.
    assert sample(body, "cgpop_pop3_sessions") == len(svc.sockets)
    (first_pid, first), (second_pid, _) = held.items()
    assert first.cmd("QUIT").startswith("+OK")
    svc.wait_log("disconnected")
    _, body = scrape_workers(metrics_port)
    assert sample(body, "cgpop_pop3_sessions") == len(svc.sockets) - 1
    assert sample(body, "cgpop_pop3_commands_total", verb="QUIT") == 1
    # A worker killed and replaced: what it counted stays in the totals.
    os.kill(first_pid, signal.SIGKILL)
    svc.wait_log(rf"\(pid {first_pid}\) ended")
    svc.wait_log(r"POP3 listening on")
    _, body = scrape_workers(metrics_port)
    assert sample(body, "cgpop_pop3_logins_total", result="ok") == 2
    assert sample(body, "cgpop_pop3_commands_total", verb="STAT") == 2
    assert second_pid in svc.workers()
    assert scrape_workers(metrics_port, "/healthz") == (200, "ok\n")
    svc.close()
    assert list(tmp.iterdir()) == []  # removed at stop
