"""What the workloads need to know about a running server, and small process helpers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

HOST = "127.0.0.1"


@dataclass(slots=True)
class Endpoints:
    pop3: int
    pop3s: int | None  # implicit TLS port, None when the server has none yet
    lmtp: int | None


@dataclass(slots=True)
class RunningServer:
    """A started server: its label, the pid at the root of its process tree, its ports."""

    label: str
    proc: subprocess.Popen[bytes]
    ports: Endpoints
    log: Path
    info: dict[str, object] = field(default_factory=dict)
    # Starts a fresh server process on the same data (cgpop only), None when not supported.
    restart_fn: Callable[..., None] | None = None
    # Further process trees measured as part of this server (cgpop on PostgreSQL: the
    # postmaster and its backends; behind HAProxy: the nodes), see pgcluster.py.
    extra_roots: list[int] = field(default_factory=list)
    # Objects a workload needs about this server, not reported (cluster.py: the database).
    attached: dict[str, object] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def free_port() -> int:
    """A port the kernel considers free now (bind to :0, read it, close)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_for_greeting(
    port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0
) -> None:
    """Block until the port answers with a line, or fail with the server's log tail."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{tail(log)}")
        try:
            with socket.create_connection((HOST, port), timeout=2) as s:
                if s.recv(512):
                    return
        except OSError:
            pass
        time.sleep(0.05)  # an external process: nothing to wait on but the port itself
    raise RuntimeError(f"no greeting on port {port} within {timeout}s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


# Debian's maintainer scripts start a package's system service unless policy-rc.d says no
# (101): the bench starts its own instances and must not leave a system one running.
POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


def apt_install(packages: tuple[str, ...] | list[str]) -> None:
    """Install Debian packages non-interactively, starting none of their services."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    ours = not POLICY_RC_D.exists()
    if ours:
        POLICY_RC_D.write_text("#!/bin/sh\n# written by cgpop's bench while installing\nexit 101\n")
        POLICY_RC_D.chmod(0o755)
    try:
        subprocess.run(["apt-get", "update"], check=True, env=env)
        subprocess.run(["apt-get", "install", "-y", *packages], check=True, env=env)
    finally:
        if ours:
            POLICY_RC_D.unlink()
