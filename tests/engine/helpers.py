"""A scripted maildrop and login for transcript tests of the sans-IO engine."""

from __future__ import annotations

from array import array

from cgpop.errors import Pop3Error
from cgpop.pop3.events import Close, Commit, Event, Grant, LoginOutcome, PasswordLogin, Send
from cgpop.pop3.session import Policy, Session
from cgpop.store.api import Mailbox, Snapshot

MAILBOX = Mailbox(7, 1, "joe@example.com", "INBOX", 0x1234)


def snapshot(sizes: list[int]) -> Snapshot:
    uids = array("q", [10 * (i + 1) for i in range(len(sizes))])
    return Snapshot(MAILBOX, uids, array("q", sizes), 0.0, sum(sizes))


class Driver:
    """Feeds lines, answers work events like the shell would, collects the wire text."""

    def __init__(
        self,
        sizes: list[int] | None = None,
        *,
        password: str = "secret",
        grant_kwargs: dict[str, bool] | None = None,
        **policy: object,
    ) -> None:
        self.session = Session(Policy(hostname="test", **policy))  # type: ignore[arg-type]
        self.sizes = sizes if sizes is not None else [100, 200, 300]
        self.password = password
        self.grant_kwargs = grant_kwargs or {}
        self.closed = False
        self.commits: list[tuple[int, ...]] = []
        self.greeting = self._run(self.session.greeting())

    def _run(self, events: list[Event]) -> str:
        text = ""
        for ev in events:
            if isinstance(ev, Send):
                text += ev.data.decode()
            elif isinstance(ev, Close):
                self.closed = True
            elif isinstance(ev, PasswordLogin):
                if ev.login == "joe" and ev.password == self.password:
                    grant = Grant("joe@example.com", snapshot(self.sizes), **self.grant_kwargs)
                    outcome = LoginOutcome(grant=grant)
                else:
                    outcome = LoginOutcome(error=Pop3Error("authentication failed", "AUTH"))
                text += self._run(self.session.login_result(outcome))
            elif isinstance(ev, Commit):
                self.commits.append(ev.uids)
                text += self._run(self.session.commit_result(True, len(self.sizes)))
            else:
                text += f"<{type(ev).__name__}:{getattr(ev, 'index', '')}:"
                text += f"{getattr(ev, 'lines', '')}:{getattr(ev, 'mark_seen', '')}>"
        return text

    def __call__(self, line: str | bytes) -> str:
        raw = line if isinstance(line, bytes) else line.encode() + b"\r\n"
        return self._run(self.session.handle_line(raw))

    def login(self) -> None:
        assert self("USER joe").startswith("+OK")
        assert self(f"PASS {self.password}").startswith("+OK")
