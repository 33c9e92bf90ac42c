"""Crash durability: kill -9 rounds over concurrent LMTP deliveries, CLI deliver and import runs,
POP expunges and server restarts (issue 10, "the proof kept in the suite").

`cgpop serve` runs as a real process on 127.0.0.1:0 (ports read back from its log). Each round
starts LMTP clients that deliver small and large (over 128 KiB, stored as body files) messages to
one or two recipients each, and in some rounds a `cgpop deliver`, a `cgpop mailbox import` of a
small Maildir and a POP session that DELEs a few messages and QUITs. The server is killed with
SIGKILL (every eleventh round SIGTERM) at a random point of that traffic -- after a random number of
LMTP acknowledgements, or just after the POP client sent QUIT -- and started again at once, while
the CLI processes may still be running (sometimes they are killed too). After the restart:

* every acknowledged message (an LMTP 250 for its recipient, a CLI exit 0) is there, byte for
  byte (RETR with poplib, less the Return-Path/X-Real-To lines delivery adds);
* nothing is half-written: every listed message is one that was sent, complete, with the size
  LIST gave; one that was never acknowledged is absent or complete, and never there twice;
* a UIDL, once seen, keeps naming the same message across every restart;
* a QUIT's expunge is all or nothing, and all when the client saw `+OK`.

`CGPOP_CRASH_ROUNDS` (default 22) and `CGPOP_CRASH_SEED` repeat or lengthen a run; a failure
message names the seed.
"""

from __future__ import annotations

import os
import poplib
import random
import re
import signal
import smtplib
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

CGPOP = [sys.executable, "-m", "cgpop"]
# 22 rounds: 20 end in SIGKILL, two (the 11th and the 22nd) in a SIGTERM restart.
ROUNDS = int(os.environ.get("CGPOP_CRASH_ROUNDS", "22"))
SEED = int(os.environ.get("CGPOP_CRASH_SEED", str(random.randrange(2**32))))
TIMEOUT = 60.0  # generous: the suite runs on two loaded cores
DOMAIN = "example.com"
ACCOUNTS = ("joe", "ann", "del")
PASSWORD = "secret"
SENDER = "sender@remote.test"
# Bodies above the store's 128 KiB inline limit go to files (cgpop/store/sqlite.py INLINE_MAX).
LARGE = (140 * 1024, 260 * 1024)
LINE = re.compile(rb"(POP3|LMTP) listening on 127\.0\.0\.1:(\d+)")


def address(name: str) -> str:
    return f"{name}@{DOMAIN}"


# --- the messages ------------------------------------------------------------------------------


@dataclass
class Ledger:
    """What was sent, and which (token, recipient) pairs were acknowledged."""

    messages: dict[str, bytes] = field(default_factory=dict)
    sent_to: dict[str, set[str]] = field(default_factory=dict)
    acked: set[tuple[str, str]] = field(default_factory=set)
    imported: set[str] = field(default_factory=set)  # tokens stored without a delivery prefix
    expunged: set[tuple[str, str]] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)
    acks: threading.Condition = field(init=False)
    ack_count: int = 0

    def __post_init__(self) -> None:
        self.acks = threading.Condition(self.lock)

    def make(self, rng: random.Random, token: str, large: bool, rcpts: list[str]) -> bytes:
        size = rng.randint(*LARGE) if large else rng.randint(50, 3000)
        lines = [
            f"From: Sender <{SENDER}>",
            f"To: {', '.join(rcpts)}",
            f"Subject: crash round {token}",
            f"Message-ID: <{token}@crash.test>",
            f"X-Token: {token}",
            "",
        ]
        body: list[str] = []
        total = 0
        while total < size:
            # Short lines (poplib refuses lines over 2048 octets), some needing dot-stuffing.
            line = ("." if rng.random() < 0.1 else "") + rng.choice("abcdefgh") * rng.randint(0, 76)
            body.append(line)
            total += len(line) + 2
        data = ("\r\n".join(lines + body) + "\r\n").encode()
        with self.lock:
            self.messages[token] = data
            self.sent_to[token] = set(rcpts)
        return data

    def ack(self, token: str, rcpt: str) -> None:
        with self.acks:
            self.acked.add((token, rcpt))
            self.ack_count += 1
            self.acks.notify_all()

    def wait_acks(self, count: int, timeout: float) -> None:
        with self.acks:
            self.acks.wait_for(lambda: self.ack_count >= count, timeout)


# --- the server process ------------------------------------------------------------------------


class Served:
    """`cgpop serve` in a process; stderr drained by a thread (a full pipe would block it)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [*CGPOP, "serve"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
        )
        self.ports: dict[str, int] = {}
        self.log: list[bytes] = []
        self._ready = threading.Event()
        self._drain = threading.Thread(target=self._read, daemon=True)
        self._drain.start()
        self._ready.wait(TIMEOUT)
        if len(self.ports) < 2:
            self.kill()
            raise AssertionError(b"server did not start:\n" + b"".join(self.log[-20:]))

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            found = LINE.search(line)
            if found:
                self.ports[found.group(1).decode()] = int(found.group(2))
                if len(self.ports) == 2:
                    self._ready.set()
        self._ready.set()

    def stop(self, sig: int) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        self.proc.wait(TIMEOUT)
        self._drain.join(TIMEOUT)
        assert self.proc.stderr is not None
        self.proc.stderr.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def pop(self, name: str) -> poplib.POP3:
        client = poplib.POP3("127.0.0.1", self.ports["POP3"], timeout=TIMEOUT)
        try:
            client.user(address(name))
            client.pass_(PASSWORD)
        except BaseException:
            client.close()
            raise
        return client


# --- the clients -------------------------------------------------------------------------------


def lmtp_client(port: int, ledger: Ledger, plan: list[tuple[str, bytes, list[str]]]) -> None:
    """Deliver `plan` on one LMTP connection until done or the server dies. RFC 2033 section
    4.2: after DATA one reply per accepted recipient, in RCPT order."""
    try:
        with smtplib.LMTP("127.0.0.1", port, timeout=TIMEOUT) as lmtp:
            lmtp.ehlo()  # smtplib.LMTP sends LHLO here (RFC 2033 section 4.1)
            for token, data, rcpts in plan:
                lmtp.mail(SENDER)
                accepted = [r for r in rcpts if lmtp.rcpt(r)[0] == 250]
                if not accepted:
                    lmtp.rset()
                    continue
                code, _ = lmtp.data(data)
                for i, rcpt in enumerate(accepted):
                    if i:
                        code, _ = lmtp.getreply()
                    if code == 250:
                        ledger.ack(token, rcpt)
    except (OSError, smtplib.SMTPException):
        pass  # the server was killed: what was not acknowledged may or may not be stored


@dataclass
class Expunge:
    """A POP session that DELEs messages and QUITs while the server is being killed."""

    uidls: dict[str, str] = field(default_factory=dict)  # UIDL -> token of the DELE'd messages
    quitting: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    quit_ok: bool = False

    def run(self, served: Served, rng: random.Random) -> None:
        client: poplib.POP3 | None = None
        try:
            client = poplib.POP3("127.0.0.1", served.ports["POP3"], timeout=TIMEOUT)
            client.user(address("del"))
            client.pass_(PASSWORD)
            listing = [line.split() for line in client.uidl()[1]]
            chosen = rng.sample(listing, min(len(listing), rng.randint(2, 4)))
            for number, uidl in chosen:
                self.uidls[uidl.decode()] = token_of(b"\r\n".join(client.top(int(number), 0)[1]))
            for number, _ in chosen:
                client.dele(int(number))
            self.quitting.set()
            self.quit_ok = client.quit().startswith(b"+OK")
        except (OSError, poplib.error_proto, EOFError):
            pass
        finally:
            self.quitting.set()
            self.done.set()
            if client is not None:
                client.close()


def token_of(head: bytes) -> str:
    found = re.search(rb"^X-Token: (\S+)\r?$", head, re.MULTILINE)
    assert found is not None, f"no X-Token header in {head[:300]!r}"
    return found.group(1).decode()


def cli(env: dict[str, str], args: list[str], data: bytes | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*CGPOP, *args],
        env=env,
        stdin=subprocess.PIPE if data is not None else subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish_cli(proc: subprocess.Popen[bytes], data: bytes | None) -> tuple[int, bytes]:
    try:
        _, err = proc.communicate(data, timeout=TIMEOUT)
    except BrokenPipeError:  # killed before it read its input
        proc.wait(TIMEOUT)
        err = b""
    return proc.returncode, err


def cli_deliver(
    env: dict[str, str], ledger: Ledger, rng: random.Random, token: str, large: bool = False
) -> tuple[str, subprocess.Popen[bytes], bytes | None, list[str]]:
    rcpt = address(rng.choice(ACCOUNTS))
    data = ledger.make(rng, token, large or rng.random() < 0.5, [rcpt])
    args = ["deliver", "--from", SENDER, rcpt]
    return "deliver", cli(env, args, data), data, [token]


# --- the checks --------------------------------------------------------------------------------


def listing(served: Served, name: str) -> dict[str, int]:
    """UIDL -> message number of one account's maildrop."""
    client = served.pop(name)
    try:
        return {uidl.decode(): int(n) for n, uidl in (x.split() for x in client.uidl()[1])}
    finally:
        client.quit()


@dataclass
class Seen:
    """Every UIDL observed, per account, and the message (token) it named."""

    uidl_token: dict[tuple[str, str], str] = field(default_factory=dict)

    def observe(self, served: Served) -> None:
        for name in ACCOUNTS:
            client = served.pop(name)
            try:
                uidls = {u.decode(): int(n) for n, u in (x.split() for x in client.uidl()[1])}
                for uidl, number in uidls.items():
                    if (name, uidl) not in self.uidl_token:
                        token = token_of(b"\r\n".join(client.top(number, 0)[1]))
                        self.uidl_token[(name, uidl)] = token
            finally:
                client.quit()


def strip_prefix(name: str, data: bytes) -> bytes:
    """The message as sent: delivery adds `Return-Path:` and `X-Real-To:` (cgpop/delivery.py)."""
    prefix = f"Return-Path: <{SENDER}>\r\nX-Real-To: <{address(name)}>\r\n".encode()
    return data[len(prefix) :] if data.startswith(prefix) else data


def final_check(served: Served, ledger: Ledger, seen: Seen, note: str) -> int:
    """RETR everything; compare with what was sent and acknowledged. Returns messages checked."""
    checked = 0
    for name in ACCOUNTS:
        rcpt = address(name)
        client = served.pop(name)
        try:
            sizes = {int(n): int(s) for n, s in (x.split() for x in client.list()[1])}
            uidls = {int(n): u.decode() for n, u in (x.split() for x in client.uidl()[1])}
            present: dict[str, int] = {}
            for number, size in sorted(sizes.items()):
                lines = client.retr(number)[1]
                octets = b"".join(line + b"\r\n" for line in lines)
                assert len(octets) == size, (
                    f"{note}: {rcpt} #{number}: LIST {size}, RETR {len(octets)}"
                )
                token = token_of(octets.split(b"\r\n\r\n", 1)[0])
                assert token in ledger.messages, f"{note}: {rcpt} #{number}: unknown {token}"
                assert rcpt in ledger.sent_to[token], f"{note}: {token} was not sent to {rcpt}"
                sent = ledger.messages[token]
                body = octets if token in ledger.imported else strip_prefix(name, octets)
                assert body == sent, f"{note}: {rcpt} {token}: stored octets differ (half-written?)"
                assert token not in present, f"{note}: {rcpt} {token} stored twice"
                present[token] = number
                first = seen.uidl_token.get((name, uidls[number]))
                assert first in (None, token), (
                    f"{note}: {rcpt} UIDL {uidls[number]} named {first}, now {token}"
                )
                checked += 1
        finally:
            client.quit()
        missing = sorted(
            token
            for token, r in ledger.acked
            if r == rcpt and (token, r) not in ledger.expunged and token not in present
        )
        assert not missing, f"{note}: acknowledged but lost for {rcpt}: {missing}"
        for (acct, uidl), token in seen.uidl_token.items():
            if acct == name and (token, rcpt) not in ledger.expunged:
                assert uidl in uidls.values(), f"{note}: {rcpt} {token} (UIDL {uidl}) vanished"
    return checked


# --- the test ----------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    conf = tmp_path / "cgpop.toml"
    conf.write_text(
        f'[server]\ndata_dir = "{tmp_path / "data"}"\ndefault_domain = "{DOMAIN}"\n'
        "shutdown_grace = 2\n"
        '[pop3]\nlisten = ["127.0.0.1:0"]\n[lmtp]\nlisten = ["127.0.0.1:0"]\n'
    )
    env = {**os.environ, "CGPOP_CONFIG": str(conf)}
    subprocess.run([*CGPOP, "domain", "add", DOMAIN], env=env, check=True, capture_output=True)
    for name in ACCOUNTS:
        subprocess.run(
            [*CGPOP, "account", "add", address(name), "--password-stdin"],
            input=f"{PASSWORD}\n".encode(),
            env=env,
            check=True,
            capture_output=True,
        )
    return env


def test_acknowledged_mail_survives_kill_9_rounds(env: dict[str, str], tmp_path: Path) -> None:
    rng = random.Random(SEED)
    note = f"CGPOP_CRASH_SEED={SEED}"
    ledger = Ledger()
    seen = Seen()
    served = Served(env)
    logs: list[bytes] = []
    kills = 0
    cli_ok = {"deliver": 0, "import": 0}
    expunges = {"all": 0, "none": 0, "acked": 0}
    try:
        for rnd in range(ROUNDS):
            start_acks = ledger.ack_count
            # LMTP: two connections, each with a few messages to one or two recipients.
            plans: list[list[tuple[str, bytes, list[str]]]] = []
            for conn in range(2):
                plan = []
                for i in range(rng.randint(2, 4)):
                    token = f"r{rnd}-l{conn}-{i}"
                    rcpts = [address(n) for n in rng.sample(ACCOUNTS, rng.randint(1, 2))]
                    data = ledger.make(rng, token, rng.random() < 0.3, rcpts)
                    plan.append((token, data, rcpts))
                plans.append(plan)
            total = sum(len(rcpts) for plan in plans for _, _, rcpts in plan)
            threads = [
                threading.Thread(target=lmtp_client, args=(served.ports["LMTP"], ledger, plan))
                for plan in plans
            ]
            # CLI: `cgpop deliver` every other round (with the traffic, or with the restart
            # below), `cgpop mailbox import` every third.
            clis: list[tuple[str, subprocess.Popen[bytes], bytes | None, list[str]]] = []
            if rnd % 4 == 0:
                clis.append(cli_deliver(env, ledger, rng, f"r{rnd}-cli"))
            if rnd % 3 == 1:
                maildir = tmp_path / f"import-{rnd}"
                for sub in ("new", "cur", "tmp"):
                    (maildir / sub).mkdir(parents=True)
                tokens = []
                for i in range(2):
                    token = f"r{rnd}-imp-{i}"
                    data = ledger.make(rng, token, i == 1, [address("ann")])
                    (maildir / "new" / f"{1700000000 + i}.{rnd}.crash").write_bytes(data)
                    ledger.imported.add(token)
                    tokens.append(token)
                args = ["mailbox", "import", address("ann"), "INBOX", str(maildir)]
                clis.append(("import", cli(env, args, None), None, tokens))
            expunge: Expunge | None = None
            if rnd % 2 == 1:
                expunge = Expunge()
                threads.append(
                    threading.Thread(target=expunge.run, args=(served, random.Random(rng.random())))
                )
            for t in threads:
                t.start()
            # The fault: right after QUIT went out, or after a random number of LMTP acks.
            if expunge is not None:
                expunge.quitting.wait(TIMEOUT)
                # Jitter: the kill lands before, during or after the expunge's commit.
                expunge.done.wait(rng.choice([0, 0.002, 0.01, TIMEOUT]))
            else:
                ledger.wait_acks(start_acks + rng.randint(0, total - 1), TIMEOUT)
            graceful = rnd % 11 == 10
            served.stop(signal.SIGTERM if graceful else signal.SIGKILL)
            kills += not graceful
            logs += served.log
            if rng.random() < 0.3:
                for _, proc, _, _ in clis:
                    proc.kill()
            if rnd % 4 == 2:
                # A large delivery started with the restart: its body file is written while
                # the new server sweeps orphan files (issue 10, defect 1).
                clis.append(cli_deliver(env, ledger, rng, f"r{rnd}-cli", large=True))
            # Restart at once, racing the CLI writers still running.
            served = Served(env)
            for t in threads:
                t.join(TIMEOUT)
            for kind, proc, data, tokens in clis:
                code, err = finish_cli(proc, data)
                assert b"Traceback" not in err, f"{note}: {kind}: {err.decode()}"
                if code == 0:
                    cli_ok[kind] += 1
                    for token in tokens:
                        for rcpt in ledger.sent_to[token]:
                            ledger.ack(token, rcpt)
            if expunge is not None and expunge.uidls:
                now = listing(served, "del")
                still = {u for u in expunge.uidls if u in now}
                assert still in (set(), set(expunge.uidls)), (
                    f"{note}: round {rnd}: QUIT expunged {len(expunge.uidls) - len(still)} "
                    f"of {len(expunge.uidls)}"
                )
                assert not (expunge.quit_ok and still), f"{note}: +OK to QUIT, DELE'd kept"
                expunges["acked" if expunge.quit_ok else "all" if not still else "none"] += 1
                if not still:
                    ledger.expunged |= {(t, address("del")) for t in expunge.uidls.values()}
            seen.observe(served)
        checked = final_check(served, ledger, seen, note)
    finally:
        served.stop(signal.SIGTERM)
        logs += served.log
    acked = len(ledger.acked)
    large = sum(len(m) > 128 * 1024 for m in ledger.messages.values())
    print(
        f"\n{note}: {ROUNDS} rounds, {kills} SIGKILLs, {len(ledger.messages)} messages sent "
        f"({large} large), {acked} acknowledged copies, {checked} checked, CLI exits 0: "
        f"{cli_ok}, expunges: {expunges}"
    )
    assert ROUNDS < 22 or kills >= 20
    assert acked > 0 and checked >= acked - len(ledger.expunged)
    # A kill may cut a connection; it must never show the operator a traceback.
    at = [i for i, line in enumerate(logs) if b"Traceback" in line]
    context = b"".join(logs[at[0] - 3 : at[0] + 25]).decode(errors="replace") if at else ""
    assert not at, f"{note}: server logged {len(at)} tracebacks, the first:\n{context}"
