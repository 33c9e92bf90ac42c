"""`cgpop serve` under a service manager: the sd_notify(3) messages it sends to a datagram socket
of the test's own (READY=1 only once every listener accepts, RELOADING=1/READY=1 around SIGHUP,
STOPPING=1, WATCHDOG=1), and what SIGHUP re-reads in a running server: limits, log level and
certificates change, sessions stay, and a key that needs a restart is named in the log."""

from __future__ import annotations

import io
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from accounts.credentials import make_credentials
from cgpop import certgen
from cgpop.store.sqlite import SqliteStore

CGPOP = [sys.executable, "-m", "cgpop"]
TIMEOUT = 15.0

BASE = """[server]
data_dir = "data"
default_domain = "example.com"
shutdown_grace = 3
log_level = "{log_level}"
[pop3]
listen = [{listen}]
max_channels = {max_channels}
max_per_account = {max_per_account}
[lmtp]
listen = ["127.0.0.1:0"]
"""


def config_text(
    *,
    log_level: str = "INFO",
    listen: str = '"127.0.0.1:0"',
    max_channels: int = 1000,
    max_per_account: int = 50,
    tls: str = "",
) -> str:
    return (
        BASE.format(
            log_level=log_level,
            listen=listen,
            max_channels=max_channels,
            max_per_account=max_per_account,
        )
        + tls
    )


class Service:
    """`cgpop serve` as systemd runs it, with $NOTIFY_SOCKET pointing at our socket."""

    def __init__(self, directory: Path, env: dict[str, str] | None = None) -> None:
        self.dir = directory
        self.conf = directory / "cgpop.toml"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(directory / "notify.sock"))
        self.notify.settimeout(TIMEOUT)
        # Only what the test sets: the test runner may itself run under systemd.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("WATCHDOG_")}
        self.env = {
            **inherited,
            "CGPOP_CONFIG": str(self.conf),
            "NOTIFY_SOCKET": str(directory / "notify.sock"),
            **(env or {}),
        }
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.sockets: list[socket.socket] = []
        self.files: list[io.BufferedReader] = []

    def add_account(self, address: str, password: str) -> None:
        name, _, domain = address.partition("@")
        store = SqliteStore(self.dir / "data")
        try:
            if not store.domain_exists(domain):
                store.add_domain(domain)
            store.add_account(domain, name, make_credentials(password))
        finally:
            store.close()

    def start(self) -> None:
        self.proc = subprocess.Popen([*CGPOP, "serve"], env=self.env, stderr=subprocess.PIPE)
        threading.Thread(target=self._read_log, daemon=True).start()

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.log.append(line)
            self.lines.put(line)

    def message(self) -> str:
        return self.notify.recv(4096).decode()

    def wait_log(self, pattern: str) -> re.Match[str]:
        """The first log line from now on that matches `pattern`."""
        while True:
            line = self.lines.get(timeout=TIMEOUT)
            found = re.search(pattern, line)
            if found:
                return found

    def ports(self) -> dict[str, int]:
        """The bound ports, from the log lines written before READY=1."""
        text = "".join(self.log)
        return {
            kind: int(port)
            for kind, port in re.findall(r"(POP3S?|LMTP) listening on 127\.0\.0\.1:(\d+)", text)
        }

    def ready(self) -> dict[str, int]:
        assert self.message() == "READY=1"
        # The listeners' log lines were written before READY=1, but the pipe and the notify
        # socket are not ordered with each other: wait for the reader thread to have them.
        while not {"POP3", "LMTP"} <= set(self.ports()):
            self.wait_log(r"listening on")
        ports = self.ports()
        assert {"POP3", "LMTP"} <= set(ports)
        return ports

    def connect(self, port: int) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
        self.sockets.append(sock)
        return sock

    def pop(self, sock: socket.socket, *, greet: bool = True) -> Pop:
        """A POP3 reader on `sock`, its file closed with the service (a socket's descriptor
        stays open while a file made from it does)."""
        pop = Pop(sock, greet=greet)
        self.files.append(pop.file)
        return pop

    def reload(self) -> list[str]:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)
        reloading = self.message().split("\n")
        assert self.message() == "READY=1"
        return reloading

    def close(self) -> None:
        for file in self.files:
            file.close()
        for sock in self.sockets:
            sock.close()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)
            assert self.proc.stderr is not None
            self.proc.stderr.close()
        self.notify.close()


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path)
    svc.conf.write_text(config_text())
    svc.add_account("joe@example.com", "secret")
    yield svc
    svc.close()


def greeting(sock: socket.socket) -> bytes:
    with sock.makefile("rb") as f:
        return f.readline()


class Pop:
    def __init__(self, sock: socket.socket, *, greet: bool = True) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")
        self.greeting = self.file.readline().decode() if greet else ""

    def cmd(self, text: str) -> str:
        self.sock.sendall(text.encode() + b"\r\n")
        return self.file.readline().decode().rstrip("\r\n")

    def login(self, user: str = "joe@example.com", password: str = "secret") -> str:
        assert self.cmd(f"USER {user}").startswith("+OK")
        return self.cmd(f"PASS {password}")


def test_ready_only_once_every_listener_accepts(service: Service) -> None:
    service.start()
    ports = service.ready()  # the first message systemd gets
    # Right after READY=1 every listener answers, with no retry.
    assert greeting(service.connect(ports["POP3"])).startswith(b"+OK")
    assert greeting(service.connect(ports["LMTP"])).startswith(b"220 ")


def test_no_ready_when_a_listener_cannot_open(service: Service) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        port = taken.getsockname()[1]
        service.conf.write_text(config_text(listen=f'"127.0.0.1:{port}"'))
        service.start()
        assert service.proc is not None
        assert service.proc.wait(TIMEOUT) == 1
    finally:
        taken.close()
    service.notify.setblocking(False)
    with pytest.raises(BlockingIOError):
        service.notify.recv(4096)
    log = "".join(service.log)
    assert f"cannot listen on 127.0.0.1:{port} for pop3" in log
    assert "Traceback" not in log


def test_sighup_sends_reloading_then_ready_and_sessions_stay(service: Service) -> None:
    service.start()
    ports = service.ready()
    pop = service.pop(service.connect(ports["POP3"]))
    assert pop.login().startswith("+OK")
    reloading = service.reload()
    assert reloading[0] == "RELOADING=1"
    assert re.fullmatch(r"MONOTONIC_USEC=\d+", reloading[1])
    usec = int(reloading[1].partition("=")[2])
    # CLOCK_MONOTONIC, the clock systemd reads it with (time.monotonic on Linux).
    assert abs(usec - time.monotonic() * 1e6) < 60e6
    service.wait_log("reload done")
    assert pop.cmd("STAT").startswith("+OK")
    assert service.pop(service.connect(ports["POP3"])).login().startswith("+OK")


def test_sigterm_sends_stopping(service: Service) -> None:
    service.start()
    service.ready()
    assert service.proc is not None
    service.proc.send_signal(signal.SIGTERM)
    assert service.message() == "STOPPING=1"
    assert service.proc.wait(TIMEOUT) == 0


def test_watchdog_pings(tmp_path: Path) -> None:
    svc = Service(tmp_path, env={"WATCHDOG_USEC": "200000"})  # ping every 0.1 s
    svc.conf.write_text(config_text())
    try:
        svc.start()
        svc.ready()
        assert [svc.message() for _ in range(3)] == ["WATCHDOG=1"] * 3
    finally:
        svc.close()


def test_no_watchdog_for_another_process(tmp_path: Path) -> None:
    """WATCHDOG_PID names the process the watchdog is for; here not cgpop's: no pings. The
    first ping would follow READY=1 at once, so STOPPING=1 being next shows there is none."""
    svc = Service(tmp_path, env={"WATCHDOG_USEC": "20000", "WATCHDOG_PID": "1"})
    svc.conf.write_text(config_text())
    try:
        svc.start()
        svc.ready()
        assert svc.proc is not None
        svc.proc.send_signal(signal.SIGTERM)
        assert svc.message() == "STOPPING=1"
    finally:
        svc.close()


def test_sighup_applies_limits_and_log_level_and_names_restart_keys(service: Service) -> None:
    service.start()
    ports = service.ready()
    first = service.pop(service.connect(ports["POP3"]))
    assert first.login().startswith("+OK")
    service.conf.write_text(
        config_text(
            log_level="DEBUG",
            max_channels=2,
            max_per_account=1,
            listen='"127.0.0.1:0", "127.0.0.1:1100"',
        )
    )
    service.reload()
    service.wait_log(r"reload: applied pop3.max_channels, pop3.max_per_account, server.log_level")
    restart = service.wait_log(r"reload: (.*) changed but needs a restart")
    assert restart.group(1) == "pop3.listen"
    # The open session is untouched.
    assert first.cmd("STAT").startswith("+OK")
    # A second session of the same account is now one too many.
    second = service.pop(service.connect(ports["POP3"]))
    assert second.login() == "-ERR [SYS/TEMP] too many sessions for this account, try later"
    # Two connections are open: a third is past max_channels.
    third = service.connect(ports["POP3"])
    assert greeting(third) == b"-ERR [SYS/TEMP] too many connections, try later\r\n"
    # DEBUG now: the second session's commands are traced (the first's USER never was).
    log = "".join(service.log)
    assert log.count("C: USER joe@example.com") == 1
    # The listener in force is still the first one only.
    assert "127.0.0.1:1100" not in log


def test_sighup_with_a_broken_file_changes_nothing(service: Service) -> None:
    service.start()
    ports = service.ready()
    service.conf.write_text("[pop3]\nmax_channels = 'many'\n")
    service.reload()
    found = service.wait_log(r"reload: configuration not re-read, nothing changed: (.*)")
    assert f"{service.conf}: pop3.max_channels: expected int" in found.group(1)
    assert service.pop(service.connect(ports["POP3"])).login().startswith("+OK")
    assert "Traceback" not in "".join(service.log)


def test_sighup_rereads_a_replaced_domain_certificate(service: Service, tmp_path: Path) -> None:
    certgen.write_self_signed("mail.example.com", tmp_path / "default")
    cert, _ = certgen.write_self_signed("pop.client2.com", tmp_path / "client2")
    tls = (
        '[tls]\ncert = "default/cert.pem"\nkey = "default/key.pem"\n'
        '[[tls.certificates]]\nnames = ["*.client2.com"]\n'
        'cert = "client2/cert.pem"\nkey = "client2/key.pem"\ndomain = "client2.com"\n'
    )
    service.conf.write_text(config_text(tls=tls))
    service.add_account("info@client2.com", "pw2")
    service.start()
    ports = service.ready()

    def presented() -> bytes:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        sock = service.connect(ports["POP3"])
        pop = service.pop(sock)
        assert pop.cmd("STLS").startswith("+OK")
        tls_sock = ctx.wrap_socket(sock, server_hostname="pop.client2.com")
        service.sockets.append(tls_sock)
        pop = service.pop(tls_sock, greet=False)
        assert pop.login("info", "pw2").startswith("+OK")
        der = tls_sock.getpeercert(binary_form=True)
        assert der is not None
        return der

    before = presented()
    assert before == ssl.PEM_cert_to_DER_cert(cert.read_text())
    certgen.write_self_signed("pop.client2.com", tmp_path / "client2")
    service.reload()
    service.wait_log(r"reload: TLS certificates re-read \(1 per-domain\)")
    after = presented()
    assert after == ssl.PEM_cert_to_DER_cert(cert.read_text()) != before
