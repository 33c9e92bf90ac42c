"""The benchmark's data: users, passwords and deterministic messages, the same on both servers.

Messages are CRLF byte strings exactly as a POP3 client sees them after un-dot-stuffing. Dovecot
gets them as Maildir files written here (LF line ends with `,S=<file size>,W=<CRLF size>` in the
name, which is what Dovecot's own LMTP writes); cgpop gets the same bytes through its LMTP
listener (see cgpop_side.py).
"""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from accounts.credentials import make_credentials

DOMAIN = "bench.local"
# cgpop's filtered workload: `*@FILTER_DOMAIN` routes to fbig@DOMAIN, keeping the local part as
# the message's individual name.
FILTER_DOMAIN = "filter.local"
# Mail processes may not run as root; nobody/nogroup exist on every Debian system.
MAIL_UID = 65534
MAIL_GID = 65534

_WORD_TEXT = (
    "mail account gateway maildrop server client message header body retrieve delete list "
    "stat uidl quit user password domain route relay queue snapshot listener session octet "
    "the of and to in is that for it as was with be by on not he this are or his from at"
)
_WORDS = _WORD_TEXT.split()


@dataclass(frozen=True, slots=True)
class User:
    name: str  # full login and delivery address, local@DOMAIN
    password: str

    @property
    def local(self) -> str:
        return self.name.split("@", 1)[0]


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A user and the messages the server must hold for it before the run."""

    user: User
    count: int
    size: int  # approximate message size in bytes (CRLF form)
    seed: str


@dataclass(frozen=True, slots=True)
class Dataset:
    seed: int
    sessions_users: int = 20
    sessions_messages: int = 50
    message_size: int = 4096
    bigbox_messages: int = 100_000
    bigbox_size: int = 1024
    bigmsg_bytes: int = 50 * 1024 * 1024
    idle_users: int = 10_000
    delivery_sinks: int = 10
    _pw_cache: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def user(self, local: str) -> User:
        return User(f"{local}@{DOMAIN}", f"pw-{self.seed}-{local}")

    def session_users(self) -> list[User]:
        return [self.user(f"u{i:02d}") for i in range(self.sessions_users)]

    def idle(self) -> list[User]:
        return [self.user(f"idle{i:05d}") for i in range(self.idle_users)]

    def sinks(self) -> list[User]:
        return [self.user(f"sink{i}") for i in range(self.delivery_sinks)]

    def bigbox(self) -> User:
        return self.user("bigbox")

    def bigmsg(self) -> User:
        return self.user("bigmsg")

    def filtered_owner(self) -> User:
        """The account behind the filtered maildrop: a copy of bigbox plus 1% more messages."""
        return self.user("fbig")

    def filtered_login(self) -> User:
        """The individual name (through the wildcard route) that sees only its 1%."""
        return User(f"one@{FILTER_DOMAIN}", self.filtered_owner().password)

    def filtered_messages(self) -> int:
        return max(1, self.bigbox_messages // 100)

    def mailboxes(self, workloads: set[str]) -> list[Mailbox]:
        out: list[Mailbox] = []
        if workloads & {"sessions", "pipelined", "tls", "tls-resume"}:
            out += [
                Mailbox(u, self.sessions_messages, self.message_size, f"{self.seed}:{u.local}")
                for u in self.session_users()
            ]
        if workloads & {"bigbox", "filtered"}:
            out.append(
                Mailbox(
                    self.bigbox(), self.bigbox_messages, self.bigbox_size, f"{self.seed}:bigbox"
                )
            )
        if "bigmsg" in workloads:
            out.append(Mailbox(self.bigmsg(), 1, self.bigmsg_bytes, f"{self.seed}:bigmsg"))
        return out

    def all_users(self, workloads: set[str]) -> list[User]:
        users = [m.user for m in self.mailboxes(workloads)]
        if "idle" in workloads:
            users += self.idle()
        if "delivery" in workloads:
            users += self.sinks()
        if "filtered" in workloads:
            users.append(self.filtered_owner())
        return users

    def dovecot_password(self, user: User) -> str:
        """`{SCRAM-SHA-256}` passwd-file field; salt derived from the seed so files repeat."""
        cached = self._pw_cache.get(user.name)
        if cached is None:
            salt = hashlib.sha256(f"{self.seed}:{user.name}".encode()).digest()[:16]
            cached = make_credentials(user.password, salt=salt).to_dovecot()
            self._pw_cache[user.name] = cached
        return cached


def _line_pool(rng: random.Random, n: int = 256) -> list[bytes]:
    lines = []
    for i in range(n):
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 12)))
        # Every 16th line starts with a dot so both servers' dot-stuffing is exercised.
        lines.append((("." if i % 16 == 0 else "") + words).encode())
    return lines


_POOL = _line_pool(random.Random(1939))


def message(seed: str, index: int, size: int) -> bytes:
    """One deterministic RFC 5322 message of about `size` bytes, CRLF line ends."""
    rng = random.Random(f"{seed}:{index}")
    head = (
        f"Return-Path: <sender{index % 7}@example.net>\r\n"
        f"From: Sender {index % 7} <sender{index % 7}@example.net>\r\n"
        f"To: <{seed.split(':')[-1]}@{DOMAIN}>\r\n"
        f"Subject: bench message {index} {rng.randrange(10**9)}\r\n"
        f"Date: Mon, 01 Jan 2024 {index // 3600 % 24:02d}:{index // 60 % 60:02d}:"
        f"{index % 60:02d} +0000\r\n"
        f"Message-ID: <{seed.replace(':', '.')}.{index}@bench.example>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    ).encode()
    parts = [head]
    total = len(head)
    pool = _POOL
    while total < size:
        line = pool[rng.randrange(len(pool))] + b"\r\n"
        parts.append(line)
        total += len(line)
    return b"".join(parts)


def big_message(seed: str, size: int) -> bytes:
    """A message of `size` bytes: a header and 76-character base64-looking lines."""
    head = message(seed, 0, 0)
    rng = random.Random(seed)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    block = b"".join(bytes(rng.choices(alphabet, k=76)) + b"\r\n" for _ in range(1024))
    body_len = max(0, size - len(head))
    reps, rest = divmod(body_len, len(block))
    tail = block[: rest - rest % 78]
    return head + block * reps + tail


def messages(box: Mailbox) -> Iterator[bytes]:
    if box.count == 1 and box.size > 1024 * 1024:
        yield big_message(box.seed, box.size)
        return
    for i in range(box.count):
        yield message(box.seed, i, box.size)


def write_maildir(home: Path, box: Mailbox) -> None:
    """Messages as Dovecot stores them: LF lines, S= and W= sizes in the name, in cur/."""
    maildir = home / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    cur = maildir / "cur"
    for i, msg in enumerate(messages(box)):
        lf = msg.replace(b"\r\n", b"\n")
        name = f"{1_700_000_000 + i}.M{i}P1.bench,S={len(lf)},W={len(msg)}:2,"
        fd = os.open(cur / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, lf)
        finally:
            os.close(fd)


def chown_tree(path: Path, uid: int, gid: int) -> None:
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, gid)
