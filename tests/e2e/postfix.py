"""A real Postfix for the end-to-end tests: Debian's `postfix`, started by the test as root with
a configuration directory, queue and data directory of its own under a fresh /tmp directory,
listening on loopback only. The system's /etc/postfix is never read or written and the system
service is never started: every command gets `-c DIR`.

Postfix needs root to start (the master binds its ports and runs its daemons as `mail_owner`,
the `postfix` user), so the tests using it are skipped elsewhere; `.ci/run` installs the package
where it is missing.
"""

from __future__ import annotations

import grp
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

POSTFIX = Path("/usr/sbin/postfix")
DAEMONS = Path("/usr/lib/postfix/sbin")


def skip_unless_possible() -> None:
    if not POSTFIX.exists():
        pytest.skip("Postfix is not installed (.ci/run installs it)")
    if os.geteuid() != 0:
        pytest.skip("Postfix's master must start as root")


def free_port() -> int:
    """A loopback port for Postfix's smtpd (master.cf needs the number before the start)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# Only the services these tests use; chroot off (column 5 "n"): the queue is in a temp dir.
MASTER_CF = """\
127.0.0.1:{smtp_port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class Postfix:
    """One Postfix instance: `base/etc` (main.cf, master.cf), `base/queue`, `base/data`,
    `base/maillog`, and `base/run`, a directory for cgpop's LMTP socket.

    `base/run` is owned by group `postfix` with the setgid bit (mode 2750), so the socket cgpop
    creates there (mode 0660) belongs to group postfix and Postfix's lmtp client, which runs as
    user postfix with only its primary group, may connect: what README's Postfix section tells
    the operator to do with /run/cgpop."""

    def __init__(self) -> None:
        # Not pytest's tmp_path: that is under a 0700 directory the postfix user cannot cross,
        # and its length can exceed the 107 bytes of a unix socket path.
        self.base = Path(tempfile.mkdtemp(prefix="cgpop-pf-", dir="/tmp"))
        self.base.chmod(0o755)
        self.etc, self.queue, self.data = self.base / "etc", self.base / "queue", self.base / "data"
        self.run_dir = self.base / "run"
        self.maillog = self.base / "maillog"
        for d in (self.etc, self.queue, self.data, self.run_dir):
            d.mkdir()
        postfix_gid = grp.getgrnam("postfix").gr_gid
        # Postfix's master takes its lock in data_directory as mail_owner.
        shutil.chown(self.data, "postfix", "postfix")
        os.chown(self.run_dir, 0, postfix_gid)
        self.run_dir.chmod(0o2750)
        self.smtp_port = free_port()
        self.started = False

    @property
    def lmtp_socket(self) -> Path:
        return self.run_dir / "lmtp.sock"

    def configure(self, **main: str) -> None:
        """Write main.cf (the instance's paths, loopback only, plus `main`) and master.cf."""
        lines = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "command_directory": "/usr/sbin",
            "daemon_directory": str(DAEMONS),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mx.test.local",
            "mydomain": "test.local",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.base),
            # Retry deferred mail soon: a test waits for it, not for Postfix's 5 minutes.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            **main,
        }
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in lines.items()))
        (self.etc / "master.cf").write_text(MASTER_CF.format(smtp_port=self.smtp_port))

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(POSTFIX), "-c", str(self.etc), *args], capture_output=True, text=True, timeout=60
        )

    def start(self) -> None:
        """`postfix start` returns once the master runs (it waits for the master's startup
        report), so the smtpd port accepts connections from then on."""
        result = self.command("start")
        self.started = True
        assert result.returncode == 0, f"postfix start failed:\n{self.log()}{result.stderr}"

    def stop(self) -> None:
        """`postfix stop` waits until the master has exited (it kills it after 5 s); then the
        instance's directory goes."""
        try:
            if self.started:
                self.command("stop")
                self._kill_leftover_master()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)

    def _kill_leftover_master(self) -> None:
        pid_file = self.queue / "pid" / "master.pid"
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        if _alive(pid) and _cmdline(pid).startswith(str(DAEMONS / "master")):
            os.killpg(pid, signal.SIGKILL)  # the master leads its daemons' process group

    def log(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return "(no maillog)\n"

    def queue_json(self) -> str:
        result = subprocess.run(
            ["/usr/sbin/postqueue", "-c", str(self.etc), "-j"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.stdout

    def wait_for(self, what: Callable[[], Any], why: str, timeout: float = 60.0) -> Any:
        """Poll a condition (mail moves on Postfix's schedule, in other processes); on timeout
        the failure shows Postfix's log and queue."""
        deadline = time.monotonic() + timeout
        while True:
            got = what()
            if got:
                return got
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"timed out waiting for {why}\n--- maillog:\n{self.log()}"
                    f"--- queue:\n{self.queue_json()}"
                )
            time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
