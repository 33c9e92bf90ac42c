"""A re-created mailbox never gives its first message an old UIDL (issue 10, defect 4): a
leave-mail-on-server client that saw `6b0c08cb.1` once would never fetch a new message under
that UIDL. The clock is frozen so "within the same second" is certain, not likely."""

from __future__ import annotations

import poplib
from collections.abc import Callable

import pytest

import cgpop.store.sqlite
from cgpop.store.api import Copy
from tests.conftest import LiveServer, message


def uidls(srv: LiveServer, user: str, password: str) -> list[bytes]:
    pop = poplib.POP3(srv.host, srv.port(), timeout=5)
    pop.user(user)
    pop.pass_(password)
    listing = pop.uidl()[1]
    pop.quit()
    return [line.split()[1] for line in listing]


def test_account_removed_and_added_back_gets_new_uidls(
    server_factory: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgpop.store.sqlite, "_now", lambda: 1_800_000_000.0)
    srv = server_factory()
    srv.add_account("joe@example.com", "pw")
    srv.deliver("joe@example.com", message("old"))
    before = uidls(srv, "joe@example.com", "pw")
    srv.call(srv.store.remove_account, "example.com", "joe")
    srv.add_account("joe@example.com", "pw")
    srv.deliver("joe@example.com", message("new"))
    after = uidls(srv, "joe@example.com", "pw")
    assert len(before) == len(after) == 1
    assert before != after


def test_mailbox_removed_and_recreated_gets_new_uidls(
    server_factory: Callable[..., LiveServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cgpop.store.sqlite, "_now", lambda: 1_800_000_000.0)
    srv = server_factory()
    srv.add_account("joe@example.com", "pw")
    seen: list[bytes] = []
    for subject in ("first", "second", "third"):
        box = srv.call(srv.store.add_mailbox, "example.com", "joe", "Work")
        assert srv.call(srv.store.deliver, message(subject), [Copy(box.id, b"", None, None)])
        got = uidls(srv, "Work#joe@example.com", "pw")
        assert len(got) == 1 and got[0] not in seen
        seen += got
        srv.call(srv.store.remove_mailbox, "example.com", "joe", "Work")
