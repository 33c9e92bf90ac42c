"""Every (state, verb) pair: a verb illegal in a state gets -ERR and changes nothing."""

from __future__ import annotations

import pytest

from cgpop.pop3.states import LEGAL, State
from tests.engine.helpers import Driver

# A well-formed invocation of each verb, so only legality decides the outcome.
SAMPLE = {
    "USER": "USER joe",
    "PASS": "PASS secret",
    "APOP": "APOP joe " + "0" * 32,
    "AUTH": "AUTH",
    "STLS": "STLS",
    "CAPA": "CAPA",
    "QUIT": "QUIT",
    "NOOP": "NOOP",
    "STAT": "STAT",
    "LIST": "LIST",
    "UIDL": "UIDL",
    "RETR": "RETR 1",
    "TOP": "TOP 1 0",
    "DELE": "DELE 1",
    "RSET": "RSET",
    "XTND": "XTND XMIT",
}


def test_sample_covers_every_verb() -> None:
    assert set(SAMPLE) == set(LEGAL)


def _in(state: State) -> Driver:
    d = Driver()
    if state is State.TRANSACTION:
        d.login()
    return d


@pytest.mark.parametrize("state", [State.AUTHORIZATION, State.TRANSACTION])
@pytest.mark.parametrize("verb", sorted(LEGAL))
def test_state_verb(state: State, verb: str) -> None:
    d = _in(state)
    before = (d.session.state, set(d.session.deleted), d.session.user)
    reply = d(SAMPLE[verb])
    if state in LEGAL[verb]:
        assert "is not allowed in the" not in reply
    else:
        assert reply == f"-ERR {verb} is not allowed in the {state.value} state\r\n"
        assert (d.session.state, set(d.session.deleted), d.session.user) == before
        assert not d.closed


def test_update_state_allows_nothing() -> None:
    assert all(State.UPDATE not in states for states in LEGAL.values())
