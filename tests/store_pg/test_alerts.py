"""Alerts on PostgresStore: each shown once to every account it concerns, across nodes."""

from __future__ import annotations

import threading
from collections.abc import Callable

from cgpop.store.postgres import PostgresStore

Open = Callable[..., PostgresStore]


def test_scopes_order_and_once_each(store: PostgresStore) -> None:
    server = store.add_alert("server", "ignored", "maintenance tonight")
    domain = store.add_alert("domain", "Example.COM", "new webmail")
    mine = store.add_alert("account", "Joe@example.com", "password expires")
    store.add_alert("account", "ann@example.com", "not for joe")
    store.add_alert("domain", "other.test", "not for joe either")
    assert store.pending_alert("joe@example.com") == store.pending_alert("JOE@example.com")
    got = [store.take_alert("joe@example.com") for _ in range(4)]
    assert [a.id if a else None for a in got] == [server, domain, mine, None]
    assert got[0] is not None and got[0].text == "maintenance tonight" and got[0].target == ""
    assert store.pending_alert("joe@example.com") is None
    counts = {a.id: a.delivered for a in store.list_alerts()}
    assert counts[server] == counts[domain] == counts[mine] == 1
    assert store.remove_alert(server) is True
    assert store.remove_alert(server) is False
    assert server not in {a.id for a in store.list_alerts()}


def test_two_nodes_taking_at_once_show_each_alert_once(open_store: Open) -> None:
    nodes = [open_store("pop-a"), open_store("pop-b")]
    ids = [nodes[0].add_alert("server", "", f"notice {i}") for i in range(20)]
    taken: list[int] = []
    lock = threading.Lock()

    def login(node: PostgresStore) -> None:
        while (alert := node.take_alert("joe@example.com")) is not None:
            with lock:
                taken.append(alert.id)

    threads = [threading.Thread(target=login, args=(n,)) for n in nodes for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(taken) == ids  # never twice, never skipped
