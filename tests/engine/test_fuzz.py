"""Property-based tests of the sans-IO POP3 engine: random and grammar-aware client input.

A hypothesis-generated client script (arbitrary byte lines, overlong lines, grammar-aware
commands with good and bad arguments, USER/PASS and APOP logins, SASL exchanges -- PLAIN, LOGIN,
CRAM-MD5, SCRAM-SHA-256 -- with correct, wrong or random continuations, STLS, pipelined
commands, XTND XMIT bodies with smuggling shapes) is cut into random chunks and pushed through
the same `LineBuffer` -> `Session` loop the asyncio shell runs (cgpop/server.py), with a fake
shell that answers every work event. For every line the engine takes it must give exactly one
well-formed reply (none for an XTND body line that does not end the body):

* a status line `+OK`, `-ERR` or -- only while a SASL exchange waits -- a `+ base64` continuation;
* multi-line replies (CAPA, bare AUTH, LIST, UIDL, RETR, TOP) dot-stuffed and ending in `.\\r\\n`;
* never an exception, never busy after the shell answered, and only legal state changes
  (AUTHORIZATION -> TRANSACTION on a successful login, TRANSACTION -> UPDATE on QUIT); a verb not
  legal in the state gets `-ERR` and changes nothing; STAT, LIST and QUIT's expunge agree with a
  model of the DELE/RSET commands that were answered `+OK`.

The same script pushed in whole flights (the client waits only where it must: after STLS and
before a SASL answer that depends on the challenge) must give the same transcript.

Nightly: the default run is quick (`CGPOP_FUZZ_EXAMPLES`, default 250 examples per property);
set e.g. `CGPOP_FUZZ_EXAMPLES=100000 python -m pytest tests/engine/test_fuzz.py` for a long run.
A failure prints the shrunk script; hypothesis keeps it in `.hypothesis/` and replays it first.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from accounts.credentials import Credentials, make_credentials, verify_password
from cgpop import sasl
from cgpop.errors import Pop3Error
from cgpop.pop3.events import (
    Close,
    Commit,
    Event,
    FailedLogin,
    Grant,
    LoginOutcome,
    PasswordLogin,
    SaslCredentials,
    SaslLogin,
    Send,
    SendMessage,
    StartTls,
    Submit,
)
from cgpop.pop3.lines import NEED_MORE, LineBuffer
from cgpop.pop3.session import Policy, Session
from cgpop.pop3.states import LEGAL, State
from cgpop.store.api import Snapshot
from cgpop.wire import TERMINATOR, dot_stuff, normalize_crlf, top_lines
from tests.engine.helpers import MAILBOX
from tests.sasl.test_support import ScramClient

EXAMPLES = int(os.environ.get("CGPOP_FUZZ_EXAMPLES", "250"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

SECRET = "s3cret"
BANNER = "<4711.feed.1700000000@test>"
# Low KDF cost keeps thousands of SCRAM exchanges cheap; the KDF itself is tested in accounts/.
ITERATIONS = 64
USERS: dict[str, Credentials] = {
    "joe": make_credentials(SECRET, shared_secret=True, iterations=ITERATIONS),
    "admin": make_credentials("adminpw", iterations=ITERATIONS),
}
ADMINS = frozenset({"admin"})
CRLF = b"\r\n"
# Replies that open a multi-line response when they are +OK (RFC 1939, RFC 2449, RFC 5034).
MULTI_ALWAYS = frozenset({"CAPA", "RETR", "TOP"})
MULTI_WITHOUT_ARGS = frozenset({"LIST", "UIDL", "AUTH"})


def b64(data: bytes) -> bytes:
    return base64.b64encode(data)


# --- the fake shell --------------------------------------------------------------------------


@dataclass
class Exchange:
    """One line the engine took (None: an overlong line) and everything it answered."""

    line: bytes | None
    state: State
    in_body: bool
    in_sasl: bool
    reply: bytes
    closed: bool


@dataclass
class Shell:
    """Runs the shell's read loop (server.py `_handle`) without sockets, checking each reply."""

    policy: Policy
    messages: list[bytes]
    limit: int
    body_limit: int
    session: Session = field(init=False)
    lines: LineBuffer = field(init=False)
    transcript: list[Exchange] = field(default_factory=list)
    submitted: list[bytes] = field(default_factory=list)
    commits: list[tuple[int, ...]] = field(default_factory=list)
    greeting: bytes = b""
    # The model: messages (0-based) whose DELE got +OK since login or the last RSET.
    deleted: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.session = Session(self.policy)
        self.lines = LineBuffer(self.limit, self.body_limit)
        self.greeting = self._run(self.session.greeting())

    @property
    def snapshot(self) -> Snapshot:
        sizes = [len(m) for m in self.messages]
        uids = array("q", [3 * i + 5 for i in range(len(sizes))])
        return Snapshot(MAILBOX, uids, array("q", sizes), 0.0, sum(sizes))

    @property
    def last_reply(self) -> bytes:
        return self.transcript[-1].reply if self.transcript else self.greeting

    def feed(self, data: bytes) -> None:
        if self.session.closed:
            return
        self.lines.push(data)
        while not self.session.closed:
            self.lines.body_mode = self.session.in_body
            line = self.lines.pop()
            if line == NEED_MORE:
                break
            s = self.session
            ex = Exchange(line, s.state, s.in_body, s.in_sasl, b"", False)
            events = s.handle_overlong() if line is None else s.handle_line(line)
            ex.reply = self._run(events)
            ex.closed = s.closed
            self.transcript.append(ex)
            check_exchange(self, ex)

    def _run(self, events: list[Event]) -> bytes:
        out = b""
        for ev in events:
            assert not self.session.closed or isinstance(ev, Send | Close), ev
            if isinstance(ev, Send):
                out += ev.data
            elif isinstance(ev, Close):
                assert self.session.closed, "Close from an open session"
            elif isinstance(ev, PasswordLogin):
                out += self._run(self.session.login_result(self._password_login(ev)))
            elif isinstance(ev, SaslCredentials):
                creds = USERS.get(ev.authcid)
                good = None
                if ev.password is not None:
                    good = creds is not None and verify_password(creds, ev.password)
                out += self._run(self.session.sasl_credentials(creds, good))
            elif isinstance(ev, SaslLogin):
                out += self._run(self.session.login_result(self._sasl_login(ev)))
            elif isinstance(ev, FailedLogin):
                out += self._run(self.session.login_result(ev.outcome))
            elif isinstance(ev, SendMessage):
                out += self._send_message(ev)
            elif isinstance(ev, Commit):
                self.commits.append(ev.uids)
                left = len(self.messages) - len(ev.uids)
                out += self._run(self.session.commit_result(True, left))
            elif isinstance(ev, StartTls):
                out += ev.reply
                # RFC 2595 section 4: whatever was pipelined behind STLS is dropped.
                self.lines.discard()
                policy = replace(self.session.policy, tls_active=True, plaintext_allowed=True)
                self.session.tls_started(policy)
            elif isinstance(ev, Submit):
                self.submitted.append(ev.message)
                error = Pop3Error("relay refused", "SYS/PERM") if b"REFUSE" in ev.message else None
                out += self._run(self.session.submit_result(error))
            else:  # pragma: no cover - a new event type the fake shell does not know
                raise AssertionError(f"unexpected event {ev!r}")
        assert not self.session.busy, "engine still busy after the shell answered"
        return out

    def _grant(self) -> LoginOutcome:
        return LoginOutcome(grant=Grant("joe@example.com", self.snapshot))

    def _password_login(self, ev: PasswordLogin) -> LoginOutcome:
        if ev.login == "joe":
            if ev.password == SECRET:
                return self._grant()
            if ev.apop_digest is not None and sasl.apop_digest_ok(BANNER, SECRET, ev.apop_digest):
                return self._grant()
        return LoginOutcome(error=Pop3Error("authentication failed", "AUTH"))

    def _sasl_login(self, ev: SaslLogin) -> LoginOutcome:
        if ev.proven_by is not None and ev.proven_by not in ADMINS:
            return LoginOutcome(error=Pop3Error("authentication failed", "AUTH"))
        if ev.login == "joe":
            return self._grant()
        return LoginOutcome(error=Pop3Error("no such mailbox", "AUTH"), counts_as_failure=False)

    def _send_message(self, ev: SendMessage) -> bytes:
        stored = dot_stuff(self.messages[ev.index])
        if ev.lines is None:
            return ev.status + stored + TERMINATOR
        return ev.status + b"".join(top_lines([stored], ev.lines)) + TERMINATOR


# --- the checks --------------------------------------------------------------------------------


def multi_on_ok(ex: Exchange) -> bool:
    """Whether a +OK answer to this line opens a multi-line response."""
    if ex.in_body or ex.in_sasl or ex.line is None:
        return False
    verb, _, rest = ex.line.rstrip(CRLF).decode("utf-8", "replace").partition(" ")
    verb = verb.upper()
    return verb in MULTI_ALWAYS or (verb in MULTI_WITHOUT_ARGS and not rest.strip(" "))


def status_kind(line: bytes) -> str:
    for kind in ("+OK", "-ERR"):
        if line == kind.encode() or line.startswith(kind.encode() + b" "):
            return kind
    if line.startswith(b"+ "):
        return "+"
    raise AssertionError(f"not a POP3 status line: {line!r}")


def split_multiline(rest: bytes) -> list[bytes]:
    """The lines of a multi-line response after its status line, unstuffed (RFC 1939 section 3)."""
    assert rest.endswith(CRLF + TERMINATOR) or rest == TERMINATOR, f"unterminated: {rest[-40:]!r}"
    lines = rest.split(CRLF)
    assert lines[-2:] == [b".", b""]
    out = []
    for line in lines[:-2]:
        assert b"\r" not in line and b"\n" not in line, f"bare CR/LF in {line!r}"
        if line.startswith(b"."):
            assert line.startswith(b".."), f"unstuffed dot line {line!r}"
            line = line[1:]
        out.append(line)
    return out


def check_exchange(shell: Shell, ex: Exchange) -> None:
    s = shell.session
    if ex.in_body and s.in_body:
        assert ex.reply == b"", f"reply to a body line: {ex.reply!r}"
        return
    assert ex.reply.endswith(CRLF), f"reply not CRLF-terminated: {ex.reply!r}"
    first, _, rest = ex.reply.partition(CRLF)
    assert b"\r" not in first and b"\n" not in first
    kind = status_kind(first)
    # A continuation exactly when the SASL exchange waits for the client's answer (RFC 5034).
    assert (kind == "+") == s.in_sasl, (ex, s.in_sasl)
    if kind == "+":
        base64.b64decode(first[2:], validate=True)
        assert rest == b""
    elif kind == "+OK" and multi_on_ok(ex):
        body = split_multiline(rest)
        check_multiline(shell, ex, body)
    elif kind == "-ERR" and rest:
        # The only second line allowed: the closing notice of an exhausted budget.
        assert ex.closed and rest.startswith(b"-ERR ") and rest.count(CRLF) == 1, ex
    else:
        assert rest == b"", f"more than one reply: {ex.reply!r}"
    assert s.in_body == (kind == "+OK" and first == b"+OK Start sending message."), ex
    check_state(shell, ex, kind)


def check_state(shell: Shell, ex: Exchange, kind: str) -> None:
    s = shell.session
    verb = b""
    if ex.line is not None and not (ex.in_body or ex.in_sasl):
        # Upper-cased as the engine does it (str.upper, after UTF-8 decoding).
        text = ex.line.rstrip(CRLF).decode("utf-8", "replace")
        verb = text.partition(" ")[0].upper().encode()
    if ex.state is not s.state:
        if ex.state is State.AUTHORIZATION:
            assert s.state is State.TRANSACTION and kind == "+OK", ex
            assert ex.in_sasl or verb in (b"PASS", b"APOP", b"AUTH"), ex
            event(f"logged in by {'a SASL answer' if ex.in_sasl else verb.decode()}")
            shell.deleted.clear()
        else:
            assert ex.state is State.TRANSACTION and s.state is State.UPDATE, ex
            assert verb == b"QUIT" and ex.closed and s.closed
    if verb and ex.state is not State.UPDATE:
        legal = LEGAL.get(verb.decode("utf-8", "replace"))
        if legal is None or ex.state not in legal:
            assert kind == "-ERR" and s.state is ex.state, ex
    if s.state is State.UPDATE:
        expected = tuple(sorted(shell.snapshot.uids[i] for i in shell.deleted))
        assert shell.commits[-1:] == ([expected] if expected else []), (shell.commits, expected)
        assert kind == "+OK"
    if ex.state is not State.TRANSACTION or s.state is not State.TRANSACTION:
        return
    count = len(shell.messages) - len(shell.deleted)
    size = sum(len(m) for i, m in enumerate(shell.messages) if i not in shell.deleted)
    if verb == b"DELE" and kind == "+OK":
        number = int(ex.line.split(b" ")[1]) if ex.line else 0
        assert number - 1 not in shell.deleted
        shell.deleted.add(number - 1)
    elif verb == b"RSET" and kind == "+OK":
        shell.deleted.clear()
    elif verb == b"STAT" and kind == "+OK":
        assert ex.reply == f"+OK {count} {size}\r\n".encode()


def check_multiline(shell: Shell, ex: Exchange, body: list[bytes]) -> None:
    assert ex.line is not None
    verb, _, rest = ex.line.rstrip(CRLF).partition(b" ")
    verb = verb.upper()
    live = [i for i in range(len(shell.messages)) if i not in shell.deleted]
    if verb == b"LIST":
        assert body == [f"{i + 1} {len(shell.messages[i])}".encode() for i in live]
    elif verb == b"UIDL":
        assert [line.split(b" ")[0] for line in body] == [str(i + 1).encode() for i in live]
    elif verb == b"RETR":
        index = int(rest.strip(b" ")) - 1
        assert index in live
        assert b"".join(line + CRLF for line in body) == shell.messages[index]


# --- the client --------------------------------------------------------------------------------

# A step is a line to send, or a function of the last reply that makes it (a SASL answer).
Adaptive = Callable[[bytes], bytes]
Step = bytes | Adaptive


def challenge_of(reply: bytes) -> bytes | None:
    if not reply.startswith(b"+ "):
        return None
    try:
        return base64.b64decode(reply[2:].strip(), validate=True)
    except ValueError:
        return None


def cram_answer(user: str, secret: str) -> Adaptive:
    def answer(reply: bytes) -> bytes:
        challenge = challenge_of(reply)
        if challenge is None:
            return b"NOOP\r\n"  # the exchange is over: a client would go on
        digest = hmac.new(secret.encode(), challenge, "md5").hexdigest()
        return b64(f"{user} {digest}".encode()) + CRLF

    return answer


def scram_final(client: ScramClient) -> Adaptive:
    def answer(reply: bytes) -> bytes:
        server_first = challenge_of(reply)
        if server_first is None:
            return b"NOOP\r\n"
        try:
            return b64(client.final(server_first)) + CRLF
        except (ValueError, KeyError, UnicodeDecodeError):
            return b"*\r\n"

    return answer


USER_NAMES = st.sampled_from(["joe", "admin", "nobody", "JOE", "joe@example.com", "j\u00f6"])
PASSWORDS = st.sampled_from([SECRET, "adminpw", "wrong", ""])


@st.composite
def sasl_exchange(draw: st.DrawFn) -> list[Step]:
    mech = draw(st.sampled_from(["PLAIN", "LOGIN", "CRAM-MD5", "SCRAM-SHA-256", "XOAUTH2"]))
    user, password = draw(USER_NAMES), draw(PASSWORDS)
    ir = draw(st.booleans())
    name = draw(st.sampled_from([mech, mech.lower()]))
    steps: list[Step]
    if mech == "PLAIN":
        authzid = draw(st.sampled_from(["", "joe", "other"]))
        message = f"{authzid}\0{user}\0{password}".encode()
        steps = [f"AUTH {name}".encode() + (b" " + b64(message) if ir else b"") + CRLF]
        if not ir:
            steps.append(b64(message) + CRLF)
    elif mech == "LOGIN":
        steps = [f"AUTH {name}\r\n".encode(), b64(user.encode()) + CRLF]
        steps.append(b64(password.encode()) + CRLF)
    elif mech == "CRAM-MD5":
        steps = [f"AUTH {name}\r\n".encode(), cram_answer(user, password)]
    elif mech == "SCRAM-SHA-256":
        client = ScramClient(user.replace("=", "=3D"), password, nonce="fuzznonce")
        first = b64(client.first())
        if ir:
            steps = [f"AUTH {name} ".encode() + first + CRLF]
        else:
            steps = [f"AUTH {name}\r\n".encode(), first + CRLF]
        steps += [scram_final(client), CRLF]  # the empty answer to the server-final message
    else:
        steps = [f"AUTH {name}\r\n".encode(), b64(b"x") + CRLF]
    # Random continuations: replace or cut one step after the AUTH line.
    if len(steps) > 1 and draw(st.booleans()):
        at = draw(st.integers(1, len(steps) - 1))
        junk = draw(
            st.one_of(
                st.sampled_from([b"*", b"=", b"", b"  ", b"!!!", b"AAA", b"QUIT", b"+OK"]),
                st.binary(max_size=40).map(b64),
                st.binary(max_size=30).filter(lambda b: b"\n" not in b),
            )
        )
        steps = [*steps[:at], junk + draw(st.sampled_from([CRLF, b"\n"]))]
    return steps


NUMBERS = st.one_of(
    st.integers(0, 7).map(str),
    st.sampled_from(["-1", "+1", "1x", "01", "999999999", "1234567890123", "", "1 2"]),
)
VERB_NAMES = st.sampled_from([*LEGAL, "XYZZY", "UIDL1", "LIS", "\u00c4RGER"])


@st.composite
def command(draw: st.DrawFn) -> list[Step]:
    verb = draw(VERB_NAMES)
    verb = draw(st.sampled_from([verb, verb.lower(), verb.capitalize()]))
    args = draw(st.lists(st.one_of(NUMBERS, USER_NAMES, PASSWORDS), max_size=3))
    trailing = draw(st.sampled_from(["", " ", "  ", "\t"]))
    ending = draw(st.sampled_from([CRLF, b"\n", b"\r\r\n"]))
    return [" ".join([verb, *args]).encode() + trailing.encode() + ending]


TRANSACTION_VERBS = st.sampled_from(["STAT", "LIST", "UIDL", "RETR", "TOP", "DELE", "RSET", "NOOP"])


@st.composite
def transaction_command(draw: st.DrawFn) -> list[Step]:
    """A well-formed TRANSACTION command on a message that may or may not exist."""
    verb = draw(TRANSACTION_VERBS)
    args = [str(draw(st.integers(1, 6)))] if draw(st.booleans()) or verb == "DELE" else []
    if verb == "TOP":
        args = [str(draw(st.integers(1, 6))), str(draw(st.integers(0, 3)))]
    return [" ".join([verb, *args]).encode() + CRLF]


def login_steps() -> st.SearchStrategy[list[Step]]:
    apop_digest = hashlib.md5((BANNER + SECRET).encode(), usedforsecurity=False).hexdigest()
    return st.sampled_from(
        [
            [b"USER joe\r\n", f"PASS {SECRET}\r\n".encode()],
            [f"APOP joe {apop_digest}\r\n".encode()],
            [b"AUTH PLAIN " + b64(f"\0joe\0{SECRET}".encode()) + CRLF],
            [b"AUTH CRAM-MD5\r\n", cram_answer("joe", SECRET)],
        ]
    )


@st.composite
def xtnd_body(draw: st.DrawFn) -> list[Step]:
    lines = draw(
        st.lists(
            st.one_of(
                st.sampled_from(
                    [b".", b"..", b".\n", b".\r", b"\n.\r\n", b"\r.\r\n", b"From: joe", b""]
                ),
                st.binary(max_size=90),
            ),
            max_size=8,
        )
    )
    ending = draw(st.sampled_from([CRLF, b"\n"]))
    body = b"".join(line + ending for line in lines)
    # After bare-LF lines ".\r\n" alone is data (the smuggling rule): a CRLF first ends it.
    return [b"XTND XMIT\r\n", body + b"\r\n.\r\n"]


RAW_LINE = st.binary(max_size=120).map(lambda b: [b + b"\r\n"])
OVERLONG = st.integers(0, 2000).map(lambda n: [b"A" * (600 + n) + b"\r\n"])
STEPS = st.one_of(
    transaction_command(),
    transaction_command(),
    command(),
    command(),
    command(),
    RAW_LINE,
    OVERLONG,
    sasl_exchange(),
    sasl_exchange(),
    login_steps(),
    xtnd_body(),
    st.just([b"STLS\r\n"]),
    st.just([b"QUIT\r\n"]),
)


@st.composite
def policies(draw: st.DrawFn) -> Policy:
    plaintext = draw(st.sampled_from([True, True, False]))
    mechanisms = draw(
        st.one_of(
            st.just(list(sasl.MECHANISMS)),
            st.lists(st.sampled_from(list(sasl.MECHANISMS)), unique=True),
        )
    )
    return Policy(
        hostname="test",
        apop_banner=draw(st.sampled_from(["", BANNER])),
        plaintext_allowed=plaintext,
        stls_available=draw(st.booleans()),
        sasl_mechanisms=tuple(mechanisms),
        xtnd_enabled=draw(st.booleans()),
        xtnd_max_size=draw(st.sampled_from([0, 50, 4096])),
        max_bad_commands=draw(st.sampled_from([2, 20, 1000])),
        max_auth_failures=draw(st.sampled_from([1, 3, 100])),
        sasl_config=sasl.SaslConfig("test", fake_salt_key=b"k" * 32, fake_iterations=ITERATIONS),
    )


MESSAGE_LINES = st.one_of(
    st.sampled_from([b".", b"..", b". x", b"", b"Subject: hi"]),
    st.binary(max_size=40).filter(lambda b: b"\r" not in b and b"\n" not in b),
)
MESSAGES = st.lists(
    st.lists(MESSAGE_LINES, max_size=6).map(
        lambda lines: normalize_crlf(b"".join(x + CRLF for x in [*lines, b"", b"body", b"."]))
    ),
    max_size=5,
)


def flights(steps: list[Step]) -> list[list[Step]]:
    """Group steps into what a pipelining client sends before it must wait for a reply: it
    waits before a SASL answer computed from the challenge, and after STLS."""
    out: list[list[Step]] = [[]]
    for step in steps:
        if callable(step) and out[-1]:
            out.append([])
        out[-1].append(step)
        if isinstance(step, bytes) and step.rstrip(CRLF).rstrip(b" ").upper() == b"STLS":
            out.append([])
    return [f for f in out if f]


def play(shell: Shell, steps: list[Step], cuts: list[int] | None) -> None:
    """Send the script flight by flight; within a flight, in chunks of the sizes in `cuts`
    (cycled), or whole when `cuts` is None."""
    turn = 0
    for flight in flights(steps):
        data = b"".join(s if isinstance(s, bytes) else s(shell.last_reply) for s in flight)
        if cuts is None:
            shell.feed(data)
            continue
        pos = 0
        while pos < len(data):
            size = cuts[turn % len(cuts)]
            turn += 1
            shell.feed(data[pos : pos + size])
            pos += size


def normalized(shell: Shell) -> list[tuple[bytes | None, bytes]]:
    """The transcript as the client sees it: body lines (which chunking may fragment) and SASL
    answers and challenges (random nonces) blanked."""
    out: list[tuple[bytes | None, bytes]] = []
    for ex in shell.transcript:
        if ex.in_body and not ex.reply:
            continue
        line = b"<body end>" if ex.in_body else b"<sasl>" if ex.in_sasl else ex.line
        out.append((line, b"+ <challenge>" if ex.reply[:2] == b"+ " else ex.reply))
    return out


@FUZZ
@given(
    policy=policies(),
    messages=MESSAGES,
    login=st.one_of(st.just([]), login_steps()),
    script=st.lists(STEPS, max_size=25),
    cuts=st.lists(st.integers(1, 200), min_size=1, max_size=12),
    body_limit=st.sampled_from([4, 17, 64 * 1024]),
)
def test_one_well_formed_reply_per_line(
    policy: Policy,
    messages: list[bytes],
    login: list[Step],
    script: list[list[Step]],
    cuts: list[int],
    body_limit: int,
) -> None:
    steps = login + [step for group in script for step in group]
    chunked = Shell(policy, messages, limit=512, body_limit=body_limit)
    play(chunked, steps, cuts)
    whole = Shell(policy, messages, limit=512, body_limit=body_limit)
    play(whole, steps, None)
    event(f"final state {chunked.session.state.value}, closed={chunked.session.closed}")
    if chunked.submitted:
        event("XTND body submitted")
    if any(ex.in_sasl and ex.state is State.AUTHORIZATION for ex in chunked.transcript):
        event("SASL continuation answered")
    assert normalized(chunked) == normalized(whole)
    assert chunked.submitted == whole.submitted
    assert chunked.commits == whole.commits


@FUZZ
@given(
    messages=MESSAGES,
    script=st.lists(
        st.one_of(
            transaction_command(),
            transaction_command(),
            transaction_command(),
            command(),
            RAW_LINE,
            xtnd_body(),
        ),
        max_size=30,
    ),
    cuts=st.lists(st.integers(1, 64), min_size=1, max_size=8),
)
def test_pipelined_transaction_commands(
    messages: list[bytes], script: list[list[Step]], cuts: list[int]
) -> None:
    """Logged in, with DELE/RSET/LIST/RETR/TOP and XTND bodies pipelined in small chunks, then
    QUIT: every line gets its reply and the expunge names exactly the messages still DELE'd."""
    policy = Policy(hostname="test", xtnd_enabled=True, max_bad_commands=10**6)
    steps: list[Step] = [b"USER joe\r\n", f"PASS {SECRET}\r\n".encode()]
    steps += [step for group in script for step in group]
    steps.append(b"QUIT\r\n")
    shell = Shell(policy, messages, limit=512, body_limit=16)
    play(shell, steps, cuts)
    assert shell.session.closed
    assert shell.transcript[-1].reply.startswith(b"+OK")


@FUZZ
@given(
    lines=st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from([b".", b"..", b"\n.", b"\r.", b".\r", b"\n.\n", b"a\r", b"\r"]),
        ).filter(lambda b: CRLF not in b)
    ),
    cuts=st.lists(st.integers(1, 300), min_size=1, max_size=8),
    body_limit=st.integers(3, 100),
)
def test_xtnd_body_round_trip(lines: list[bytes], cuts: list[int], body_limit: int) -> None:
    """A body stuffed as smtplib does arrives unstuffed and whole, however it was chunked and
    fragmented; a bare CR or LF is data (repaired to CRLF) and a dot after it is neither a
    terminator nor unstuffed (the SMTP-smuggling shapes); the command after the body is
    answered in turn (no desynchronisation)."""
    policy = Policy(hostname="test", xtnd_enabled=True)
    stuffed = b"".join((b"." + x if x.startswith(b".") else x) + CRLF for x in lines)
    steps: list[Step] = [
        b"USER joe\r\n",
        f"PASS {SECRET}\r\n".encode(),
        b"XTND XMIT\r\n" + stuffed + b".\r\nNOOP\r\n",
    ]
    shell = Shell(policy, [], limit=512, body_limit=body_limit)
    play(shell, steps, cuts)
    expected = b"".join(x.replace(b"\r", b"\n").replace(b"\n", CRLF) + CRLF for x in lines)
    assert shell.submitted == [expected]
    replies = [ex.reply for ex in shell.transcript if ex.reply]
    assert replies[-2:] == [b"+OK Message sent successfully\r\n", b"+OK \r\n"]


@FUZZ
@given(behind=st.lists(st.one_of(command(), RAW_LINE), min_size=1, max_size=5))
def test_stls_drops_pipelined_commands(behind: list[list[Step]]) -> None:
    """RFC 2595 section 4: commands pipelined behind STLS in cleartext are never answered."""
    policy = Policy(hostname="test", stls_available=True)
    shell = Shell(policy, [], limit=512, body_limit=64)
    injected = b"".join(s for group in behind for s in group if isinstance(s, bytes))
    shell.feed(b"USER joe\r\nSTLS\r\n" + injected)
    assert [ex.reply for ex in shell.transcript][-1] == b"+OK begin TLS negotiation\r\n"
    assert shell.session.state is State.AUTHORIZATION and shell.session.user is None
    assert shell.session.policy.tls_active


@FUZZ
@given(
    data=st.lists(
        st.one_of(st.binary(max_size=50), st.sampled_from([b"\n", b"\r\n", b"x" * 300])),
        max_size=20,
    ).map(b"".join),
    cuts=st.lists(st.integers(1, 80), min_size=1, max_size=8),
    limit=st.integers(1, 120),
)
def test_line_buffer_chunking_is_invisible(data: bytes, cuts: list[int], limit: int) -> None:
    """Command mode: the same lines (and OVERLONG markers) however the bytes arrive, none past
    the limit, and never more than `limit` bytes held for an unfinished line."""
    whole = LineBuffer(limit).feed(data)
    buf = LineBuffer(limit)
    got: list[bytes | None] = []
    pos = turn = 0
    while pos < len(data):
        size = cuts[turn % len(cuts)]
        turn += 1
        got += buf.feed(data[pos : pos + size])
        assert buf.pending <= limit
        pos += size
    assert got == whole
    assert all(line is None or (len(line) <= limit and line.endswith(b"\n")) for line in got)
