"""One POP3 session as a pure state machine: a line in, events out (STYLE rules 1-5).

The maildrop snapshot taken at login lives here, so STAT, LIST, UIDL, DELE and RSET are pure
functions of it; RETR/TOP/QUIT and logins are handed to the shell as work events.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from accounts.credentials import Credentials
from cgpop import sasl
from cgpop.errors import Pop3Error, Pop3Fatal
from cgpop.pop3.body import BodyReader
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
from cgpop.pop3.grammar import Value, parse_args
from cgpop.pop3.states import LEGAL, State
from cgpop.store.api import Snapshot

IMPLEMENTATION = "cgpop"


@dataclass(frozen=True, slots=True)
class Policy:
    """What this connection allows right now; the shell rebuilds it when TLS starts."""

    hostname: str
    # "<...@host>" timestamp of RFC 1939 section 7, shown in the greeting; "" when APOP is off.
    apop_banner: str = ""
    plaintext_allowed: bool = True
    stls_available: bool = False
    tls_active: bool = False
    sasl_mechanisms: tuple[str, ...] = ()
    xtnd_enabled: bool = False
    xtnd_max_size: int = 25 * 1024 * 1024
    # Where an XTND XMIT body past the spool threshold goes (cgpop/spool.py); None: memory.
    spool_dir: Path | None = None
    max_bad_commands: int = 20
    max_auth_failures: int = 3
    # One per server, so the fake SCRAM salt of an unknown name is the same on every
    # connection (and, with a stable key, across restarts); None: a per-session default.
    sasl_config: sasl.SaslConfig | None = None


def ok(text: str) -> bytes:
    return f"+OK {text}\r\n".encode("utf-8", "replace")


def multiline(status: str, lines: list[str]) -> bytes:
    """A multi-line reply whose lines are known not to start with "." (numbers, keywords)."""
    body = "".join(f"{line}\r\n" for line in lines)
    return f"+OK {status}\r\n{body}.\r\n".encode("ascii", "replace")


def _b64(text: str) -> bytes | None:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


Handler = Callable[["Session", tuple[Value, ...]], list[Event]]


def keyword(word: str) -> str:
    """A keyword (verb, SASL mechanism, XTND subcommand) in upper case. Keywords are ASCII
    (RFC 1939 section 3, RFC 4422 section 3.1); Unicode case mapping would otherwise turn "user"
    spelt with a long s (U+017F) into USER, or the "st" ligature (U+FB06) + "ls" into STLS,
    which a filtering proxy in front would not expect. A non-ASCII word maps to "", which no
    table holds."""
    return word.upper() if word.isascii() else ""


class Session:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.state = State.AUTHORIZATION
        self.user: str | None = None
        self.grant: Grant | None = None
        self.deleted: set[int] = set()
        self.bad_commands = 0
        self.auth_failures = 0
        self.busy = False
        self.closed = False
        # A SASL exchange in progress, and whether the next line is its response.
        self.sasl: sasl.Mechanism | None = None
        self.sasl_awaiting = False
        self.sasl_success: sasl.Success | None = None
        # The name the running exchange asked credentials for: the failed-login penalty's key.
        self.sasl_authcid = ""
        # An XTND XMIT body being read.
        self.body: BodyReader | None = None
        self.sasl_config = policy.sasl_config or sasl.SaslConfig(hostname=policy.hostname)

    @property
    def in_body(self) -> bool:
        return self.body is not None

    @property
    def in_sasl(self) -> bool:
        return self.sasl_awaiting

    # --- entry points used by the shell ---
    def greeting(self) -> list[Event]:
        banner = f" {self.policy.apop_banner}" if self.policy.apop_banner else ""
        return [Send(ok(f"{self.policy.hostname} cgpop POP3 ready{banner}"))]

    def handle_overlong(self) -> list[Event]:
        """A command line past the limit: the shell read to its end; answer once. In a SASL
        exchange the overlong line was its response: the exchange ends (RFC 5034 section 4)."""
        if self.sasl_awaiting:
            self._sasl_end()
            return self._bad(Pop3Error("authentication response too long"))
        return self._bad(Pop3Error("line too long"))

    def handle_line(self, raw: bytes) -> list[Event]:
        if self.closed or self.busy:
            raise RuntimeError("handle_line while busy or closed")
        if self.body is not None:
            return self._body_line(raw)
        if self.sasl_awaiting:
            return self._sasl_line(raw)
        line = raw.rstrip(b"\r\n")
        if b"\x00" in line or b"\r" in line or b"\n" in line:
            return self._bad(Pop3Error("invalid characters in command"))
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            return self._bad(Pop3Error("command is not valid UTF-8"))
        verb, _, rest = text.partition(" ")
        verb = keyword(verb)
        states = LEGAL.get(verb)
        if states is None:
            return self._bad(Pop3Error("unknown command"))
        if self.state not in states:
            return self._bad(Pop3Error(f"{verb} is not allowed in the {self.state.value} state"))
        try:
            args = parse_args(verb, rest)
        except Pop3Error as exc:
            return self._bad(exc)
        try:
            return _HANDLERS[verb](self, args)
        except Pop3Fatal as exc:
            self.closed = True
            return [Send(exc.reply()), Close()]
        except Pop3Error as exc:
            return [Send(exc.reply())]

    def login_result(self, outcome: LoginOutcome) -> list[Event]:
        self.busy = False
        self.user = None
        if outcome.grant is not None:
            self.grant = outcome.grant
            self.state = State.TRANSACTION
            snap = outcome.grant.snapshot
            return [
                Send(
                    ok(
                        f"{outcome.grant.account} has {len(snap)} messages "
                        f"({snap.total_size} octets)"
                    )
                )
            ]
        error = outcome.error or Pop3Error("authentication failed", "AUTH")
        events: list[Event] = [Send(error.reply())]
        if outcome.counts_as_failure:
            self.auth_failures += 1
            if self.auth_failures >= self.policy.max_auth_failures:
                self.closed = True
                events = [Send(Pop3Error("too many failed logins, closing", "AUTH").reply())]
                events.append(Close())
        return events

    def login_unavailable(self, error: Pop3Error) -> list[Event]:
        """The answer to a login request (PasswordLogin, SaslCredentials, SaslLogin,
        FailedLogin) the shell could not carry out because the store cannot be used now: the
        exchange ends with `error`, not counted as a failed login; the client may try again."""
        self._sasl_end()
        return self.login_result(LoginOutcome(error=error, counts_as_failure=False))

    def sasl_credentials(self, creds: Credentials | None, password_ok: bool | None) -> list[Event]:
        """The answer to SaslCredentials."""
        self.busy = False
        assert self.sasl is not None
        return self._sasl_step(self.sasl.credentials(creds, password_ok))

    def submit_result(self, error: Pop3Error | None) -> list[Event]:
        self.busy = False
        if error is not None:
            return [Send(error.reply())]
        return [Send(b"+OK Message sent successfully\r\n")]

    def commit_result(self, ok_: bool, remaining: int) -> list[Event]:
        self.busy = False
        self.closed = True
        if ok_:
            return [
                Send(ok(f"{self.policy.hostname} cgpop signing off ({remaining} messages left)")),
                Close(),
            ]
        # RFC 1939 section 6: "-ERR some deleted messages not removed".
        return [Send(Pop3Error("some deleted messages not removed", "SYS/TEMP").reply()), Close()]

    def tls_started(self, policy: Policy) -> None:
        """RFC 2595 section 4: after STLS the session restarts in AUTHORIZATION, forgetting
        anything learnt before (a USER name included)."""
        self.busy = False
        self.policy = policy
        self.user = None

    @property
    def snapshot(self) -> Snapshot:
        assert self.grant is not None
        return self.grant.snapshot

    # --- helpers ---
    def _bad(self, error: Pop3Error) -> list[Event]:
        self.bad_commands += 1
        if self.bad_commands >= self.policy.max_bad_commands:
            self.closed = True
            return [Send(error.reply()), Send(Pop3Error("too many bad commands").reply()), Close()]
        return [Send(error.reply())]

    def _message(self, number: Value) -> int:
        assert isinstance(number, int)
        if not 1 <= number <= len(self.snapshot):
            raise Pop3Error("no such message")
        if number - 1 in self.deleted:
            raise Pop3Error(f"message {number} already deleted")
        return number - 1

    def _live(self) -> tuple[int, int]:
        snap = self.snapshot
        count = len(snap) - len(self.deleted)
        size = snap.total_size - sum(snap.sizes[i] for i in self.deleted)
        return count, size

    # --- AUTHORIZATION ---
    def _user(self, args: tuple[Value, ...]) -> list[Event]:
        if not self.policy.plaintext_allowed:
            raise Pop3Error(
                "plaintext authentication is disabled on this connection; use STLS first"
            )
        self.user = str(args[0])
        return [Send(ok("send your password"))]

    def _pass(self, args: tuple[Value, ...]) -> list[Event]:
        if self.user is None:
            raise Pop3Error("send USER first")
        self.busy = True
        return [PasswordLogin(self.user, password=str(args[0]))]

    def _apop(self, args: tuple[Value, ...]) -> list[Event]:
        if not self.policy.apop_banner:
            raise Pop3Error("APOP is not enabled on this server")
        name, digest = str(args[0]), str(args[1]).lower()
        self.busy = True
        return [PasswordLogin(name, apop_digest=digest)]

    def _auth(self, args: tuple[Value, ...]) -> list[Event]:
        mechs = self.policy.sasl_mechanisms
        if not args:
            # The bare AUTH listing (CommuniGate, Dovecot; draft-myers-sasl-pop3).
            return [Send(multiline("available mechanisms", list(mechs)))]
        name = keyword(str(args[0]))
        mech = sasl.create(name, self.sasl_config) if name in mechs else None
        if mech is None:
            if name in sasl.PLAINTEXT_MECHANISMS:
                raise Pop3Error(f"{name} is disabled on this connection; use STLS first")
            raise Pop3Error(f"unsupported authentication mechanism {name[:40]}")
        initial: bytes | None = None
        if len(args) == 2:
            # RFC 5034 section 4: "=" is an empty initial response.
            initial = b"" if args[1] == "=" else _b64(str(args[1]))
            if initial is None:
                return self.login_result(
                    LoginOutcome(
                        error=Pop3Error("invalid base64 in initial response"),
                        counts_as_failure=False,
                    )
                )
        self.sasl = mech
        return self._sasl_step(mech.start(initial))

    def _sasl_line(self, raw: bytes) -> list[Event]:
        self.sasl_awaiting = False
        line = raw.rstrip(b"\r\n").strip(b" ")
        if line == b"*":
            self._sasl_end()
            return [Send(Pop3Error("authentication cancelled").reply())]
        data = _b64(line.decode("ascii", "replace"))
        if data is None:
            self._sasl_end()
            return self.login_result(
                LoginOutcome(error=Pop3Error("invalid base64 in response"), counts_as_failure=False)
            )
        if self.sasl_success is not None:
            # The client's (empty) answer to the server-final challenge (RFC 5034 section 4).
            success, self.sasl_success = self.sasl_success, None
            return self._sasl_login(success)
        assert self.sasl is not None
        return self._sasl_step(self.sasl.respond(data))

    def _sasl_step(self, step: sasl.Step) -> list[Event]:
        if isinstance(step, sasl.Challenge):
            self.sasl_awaiting = True
            return [Send(b"+ " + base64.b64encode(step.data) + b"\r\n")]
        if isinstance(step, sasl.NeedCredentials):
            self.busy = True
            self.sasl_authcid = step.authcid
            return [SaslCredentials(step.authcid, step.password)]
        if isinstance(step, sasl.Success):
            if step.final is not None:
                self.sasl_success = step
                self.sasl_awaiting = True
                return [Send(b"+ " + base64.b64encode(step.final) + b"\r\n")]
            return self._sasl_login(step)
        login = self.sasl_authcid
        self._sasl_end()
        if step.credentials_bad:
            # The shell applies the same penalty as for a wrong PASS before the reply goes out.
            self.busy = True
            return [
                FailedLogin(login, LoginOutcome(error=Pop3Error("authentication failed", "AUTH")))
            ]
        return self.login_result(
            LoginOutcome(error=Pop3Error("authentication exchange failed"), counts_as_failure=False)
        )

    def _sasl_login(self, success: sasl.Success) -> list[Event]:
        self._sasl_end()
        self.busy = True
        if success.authzid is not None:
            return [SaslLogin(success.authzid, proven_by=success.authcid)]
        return [SaslLogin(success.authcid)]

    def _sasl_end(self) -> None:
        self.sasl = None
        self.sasl_awaiting = False
        self.sasl_success = None
        self.sasl_authcid = ""

    def _stls(self, args: tuple[Value, ...]) -> list[Event]:
        if self.policy.tls_active:
            raise Pop3Error("TLS is already active")
        if not self.policy.stls_available:
            raise Pop3Error("STLS is not available")
        self.busy = True
        return [StartTls(ok("begin TLS negotiation"))]

    def _capa(self, args: tuple[Value, ...]) -> list[Event]:
        p = self.policy
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if p.plaintext_allowed:
            caps.insert(1, "USER")
        if p.sasl_mechanisms:
            caps.append("SASL " + " ".join(p.sasl_mechanisms))
        if p.stls_available and not p.tls_active and self.state is State.AUTHORIZATION:
            caps.append("STLS")
        if p.xtnd_enabled:
            caps.append("XTND")
        caps.append(f"IMPLEMENTATION {IMPLEMENTATION}")
        return [Send(multiline("capability list follows", caps))]

    def _quit(self, args: tuple[Value, ...]) -> list[Event]:
        if self.state is State.AUTHORIZATION:
            self.closed = True
            return [Send(ok(f"{self.policy.hostname} cgpop signing off")), Close()]
        self.state = State.UPDATE
        uids = tuple(self.snapshot.uids[i] for i in sorted(self.deleted))
        if not uids:
            return self.commit_result(True, len(self.snapshot))
        self.busy = True
        return [Commit(uids)]

    # --- TRANSACTION ---
    def _noop(self, args: tuple[Value, ...]) -> list[Event]:
        return [Send(ok(""))]

    def _stat(self, args: tuple[Value, ...]) -> list[Event]:
        count, size = self._live()
        return [Send(ok(f"{count} {size}"))]

    def _list(self, args: tuple[Value, ...]) -> list[Event]:
        snap = self.snapshot
        if args:
            i = self._message(args[0])
            return [Send(ok(f"{i + 1} {snap.sizes[i]}"))]
        count, size = self._live()
        deleted = self.deleted
        sizes = snap.sizes
        lines = [f"{i + 1} {sizes[i]}" for i in range(len(snap)) if i not in deleted]
        return [Send(multiline(f"{count} messages ({size} octets)", lines))]

    def _uidl(self, args: tuple[Value, ...]) -> list[Event]:
        snap = self.snapshot
        if args:
            i = self._message(args[0])
            return [Send(ok(f"{i + 1} {snap.uidl(i)}"))]
        prefix = f"{snap.mailbox.uidvalidity:x}."
        deleted = self.deleted
        uids = snap.uids
        lines = [f"{i + 1} {prefix}{uids[i]}" for i in range(len(snap)) if i not in deleted]
        return [Send(multiline("unique-id listing follows", lines))]

    def _retr(self, args: tuple[Value, ...]) -> list[Event]:
        i = self._message(args[0])
        assert self.grant is not None
        status = ok(f"{self.snapshot.sizes[i]} octets")
        return [SendMessage(status, i, None, self.grant.may_seen)]

    def _top(self, args: tuple[Value, ...]) -> list[Event]:
        i = self._message(args[0])
        lines = args[1]
        assert isinstance(lines, int)
        return [SendMessage(ok("top of message follows"), i, lines, False)]

    def _dele(self, args: tuple[Value, ...]) -> list[Event]:
        i = self._message(args[0])
        assert self.grant is not None
        if not (self.grant.may_delete and self.grant.may_expunge):
            missing = "t (delete)" if not self.grant.may_delete else "e (expunge)"
            raise Pop3Error(f"you lack the {missing} right on this mailbox", "SYS/PERM")
        self.deleted.add(i)
        return [Send(ok(f"message {i + 1} deleted"))]

    def _xtnd(self, args: tuple[Value, ...]) -> list[Event]:
        sub = keyword(str(args[0]).strip())
        if sub != "XMIT" or not self.policy.xtnd_enabled:
            raise Pop3Error("unknown XTND command")
        assert self.grant is not None
        if not self.grant.may_submit:
            # Issue 13: refused before the body is read, so nothing of it is kept.
            raise Pop3Error("XTND XMIT is disabled for this account", "SYS/PERM")
        self.body = BodyReader(self.policy.xtnd_max_size, self.policy.spool_dir)
        return [Send(b"+OK Start sending message.\r\n")]

    def _body_line(self, raw: bytes) -> list[Event]:
        assert self.body is not None
        if not self.body.feed_line(raw):
            return []
        result = self.body.result()
        self.body = None
        if result.overflow:
            limit = self.policy.xtnd_max_size
            return [Send(Pop3Error(f"message too large (limit {limit} octets)").reply())]
        self.busy = True
        assert self.grant is not None
        return [Submit(result.message, self.grant.login_address)]

    def _rset(self, args: tuple[Value, ...]) -> list[Event]:
        self.deleted.clear()
        count, size = self._live()
        return [Send(ok(f"maildrop has {count} messages ({size} octets)"))]


_HANDLERS: dict[str, Handler] = {
    "USER": Session._user,
    "PASS": Session._pass,
    "APOP": Session._apop,
    "AUTH": Session._auth,
    "STLS": Session._stls,
    "CAPA": Session._capa,
    "QUIT": Session._quit,
    "NOOP": Session._noop,
    "STAT": Session._stat,
    "LIST": Session._list,
    "UIDL": Session._uidl,
    "RETR": Session._retr,
    "TOP": Session._top,
    "DELE": Session._dele,
    "RSET": Session._rset,
    "XTND": Session._xtnd,
}
assert set(_HANDLERS) == set(LEGAL), "state table and handler table must name the same verbs"

__all__ = ["Policy", "Session", "replace"]
