"""The engine's answer when the shell cannot carry out a login because the store is
unavailable (its database down, docs/cluster.md): -ERR [SYS/TEMP], back to AUTHORIZATION, not
counted as a failed login, for USER/PASS and for a SASL exchange alike."""

from __future__ import annotations

import base64

from cgpop.errors import STORE_UNAVAILABLE
from cgpop.pop3.events import PasswordLogin, SaslCredentials, Send
from cgpop.pop3.session import Policy, Session

REPLY = b"-ERR [SYS/TEMP] mail store temporarily unavailable, try again later\r\n"


def test_password_login_the_store_cannot_check_is_a_temporary_failure() -> None:
    session = Session(Policy(hostname="test", max_auth_failures=2))
    session.greeting()
    for _ in range(5):  # more than max_auth_failures: none of them counts
        assert isinstance(session.handle_line(b"USER joe\r\n")[0], Send)
        [work] = session.handle_line(b"PASS secret\r\n")
        assert isinstance(work, PasswordLogin)
        assert session.login_unavailable(STORE_UNAVAILABLE) == [Send(REPLY)]
        assert not session.closed
    assert session.auth_failures == 0


def test_sasl_exchange_the_store_cannot_answer_ends_cleanly() -> None:
    session = Session(Policy(hostname="test", sasl_mechanisms=("PLAIN",)))
    session.greeting()
    token = base64.b64encode(b"\0joe\0secret").decode()
    [work] = session.handle_line(f"AUTH PLAIN {token}\r\n".encode())
    assert isinstance(work, SaslCredentials)
    assert session.login_unavailable(STORE_UNAVAILABLE) == [Send(REPLY)]
    assert not session.in_sasl and not session.closed and session.auth_failures == 0
    # A command again, not a SASL response; and a new exchange may start.
    [reply] = session.handle_line(b"USER joe\r\n")
    assert isinstance(reply, Send) and reply.data.startswith(b"+OK")
    assert session.handle_line(b"AUTH PLAIN\r\n") == [Send(b"+ \r\n")]
