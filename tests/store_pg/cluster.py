"""Real `cgpop serve` processes on one PostgreSQL database, the `cgpop` CLI run against the same
configuration, and a real HAProxy in front (issue 11): helpers for tests/store_pg/test_cluster*.

Addresses: every test client binds a loopback source address of its own, so a node's log says
who it saw. HAProxy reaches the nodes from 127.0.0.1, the only address the nodes trust for the
PROXY protocol (`proxy_from`); clients through HAProxy come from CLIENT_IP, direct ones from
DIRECT_IP (Linux answers on all of 127.0.0.0/8).
"""

from __future__ import annotations

import poplib
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

CGPOP = [sys.executable, "-m", "cgpop"]
TIMEOUT = 30.0  # generous: 2 cores shared by many test runs
CLIENT_IP = "127.0.0.2"  # a client behind HAProxy
DIRECT_IP = "127.0.0.5"  # a client talking to a node directly
USER, PASSWORD = "joe@example.com", "secret"


def node_config(
    name: str, dsn: str, *, proxy: bool = False, max_per_ip: int = 20, extra: str = ""
) -> str:
    """A node's cgpop.toml; `extra`: more sections, appended as they are."""
    proxy_from = '\nproxy_from = ["127.0.0.1/32"]' if proxy else ""
    return f"""[server]
data_dir = "data-{name}"
hostname = "{name}.test"
default_domain = "example.com"
shutdown_grace = 2
log_level = "INFO"
[pop3]
listen = ["127.0.0.1:0"]
max_per_ip = {max_per_ip}{proxy_from}
[lmtp]
listen = ["127.0.0.1:0"]
[store]
backend = "postgresql"
dsn = "{dsn}"
node = "{name}"
pool_size = 4
node_timeout = 3
{extra}"""


class Node:
    """One `cgpop serve` process: its configuration file, its log (stderr), its ports."""

    def __init__(self, directory: Path, name: str, dsn: str, **options: object) -> None:
        self.name = name
        self.dir = directory
        self.conf = directory / f"{name}.toml"
        self.conf.write_text(node_config(name, dsn, **options))  # type: ignore[arg-type]
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        self.proc = subprocess.Popen(
            [*CGPOP, "-c", str(self.conf), "serve"], cwd=directory, stderr=subprocess.PIPE
        )
        threading.Thread(target=self._read_log, daemon=True).start()
        self.ports = self._wait_ports()

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace")
            self.log.append(line)
            self.lines.put(line)
        self.lines.put("")  # end of the log: the process is gone

    def wait_log(self, pattern: str) -> re.Match[str]:
        """The first log line from now on that matches `pattern`."""
        while True:
            line = self.lines.get(timeout=TIMEOUT)
            if not line:
                raise AssertionError(f"{self.name} exited:\n{''.join(self.log)}")
            found = re.search(pattern, line)
            if found:
                return found

    def _wait_ports(self) -> dict[str, int]:
        ports: dict[str, int] = {}
        while {"POP3", "LMTP"} - set(ports):
            found = self.wait_log(r"(POP3|LMTP) listening on 127\.0\.0\.1:(\d+)")
            ports[found[1]] = int(found[2])
        return ports

    def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        """`cgpop -c NODE.toml ARGS...`: an operator's command on this node."""
        return subprocess.run(
            [*CGPOP, "-c", str(self.conf), *args],
            cwd=self.dir,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def kill(self) -> None:
        """kill -9: no shutdown, no goodbye to the database."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(TIMEOUT)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


class Pop(poplib.POP3):
    """poplib from a chosen source address."""

    def __init__(self, port: int, source: str) -> None:
        self.source = source
        super().__init__("127.0.0.1", port, timeout=TIMEOUT)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection((self.host, self.port), timeout, (self.source, 0))


def pop(port: int, source: str = DIRECT_IP, user: str = USER) -> Pop:
    client = Pop(port, source)
    client.user(user)
    client.pass_(PASSWORD)
    return client


HAPROXY_CFG = """global
    maxconn 200
defaults
    mode tcp
    timeout connect 2s
    timeout client 10m
    timeout server 10m
    retries 3
    option redispatch
frontend pop3
    bind fd@{fd}
    default_backend nodes
backend nodes
    balance roundrobin
{servers}
"""


class HaProxy:
    """Debian's haproxy in the foreground with a configuration of the test's own."""

    def __init__(self, directory: Path, nodes: list[Node]) -> None:
        servers = "\n".join(
            f"    server {n.name} 127.0.0.1:{n.ports['POP3']} send-proxy-v2"
            " check check-send-proxy inter 200ms fall 1 rise 1"
            for n in nodes
        )
        # The test binds and listens itself and hands haproxy the socket (`bind fd@N`): the
        # port is known at once and connections wait in the backlog until haproxy accepts.
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = int(self.sock.getsockname()[1])
        cfg = directory / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(fd=self.sock.fileno(), servers=servers))
        self.proc = subprocess.Popen(
            [shutil.which("haproxy") or "/usr/sbin/haproxy", "-db", "-f", str(cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=[self.sock.fileno()],
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(TIMEOUT)
        self.sock.close()
