"""CommuniGate alerts at login against a live server: each pending alert fails one login with
correct credentials as `-ERR [SYS/TEMP] <text>`; wrong credentials never see one."""

from __future__ import annotations

import poplib

import pytest

from cgpop import alerts
from tests.conftest import LiveServer

from .secure import (  # noqa: F401 (close_clients is an autouse fixture)
    PASSWORD,
    USER,
    Client,
    b64,
    close_clients,
    login,
)


def post(server: LiveServer, scope: str, target: str, text: str) -> int:
    return int(server.call(server.store.add_alert, scope, target, alerts.check_text(text)))


def test_two_alerts_then_login(server: LiveServer) -> None:
    post(server, "account", USER, "Your quota is almost full")
    post(server, "account", USER, "Maintenance tonight at 22:00")
    c = Client(server.port())
    assert login(c) == "-ERR [SYS/TEMP] Your quota is almost full"
    # Not a credential failure: the session stays usable, the next attempt shows the next alert.
    assert login(c) == "-ERR [SYS/TEMP] Maintenance tonight at 22:00"
    assert login(c).startswith("+OK joe@example.com has 0 messages")
    c.cmd("QUIT")
    assert login(Client(server.port())).startswith("+OK")


def test_poplib_sees_the_alert_text(server: LiveServer) -> None:
    post(server, "account", USER, "Please read the new terms")
    client = poplib.POP3(server.host, server.port(), timeout=5)
    client.user(USER)
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\] Please read the new terms"):
        client.pass_(PASSWORD)
    client.user(USER)
    assert client.pass_(PASSWORD).startswith(b"+OK")
    client.quit()


def test_wrong_credentials_never_reveal_an_alert(server: LiveServer) -> None:
    post(server, "account", USER, "secret text")
    c = Client(server.port())
    assert login(c, password="wrong") == "-ERR [AUTH] authentication failed"
    assert login(c) == "-ERR [SYS/TEMP] secret text"


def test_domain_and_server_alerts_reach_each_account_once(server: LiveServer) -> None:
    server.add_account("ann@example.com", "ann-pw")
    server.add_account("bob@other.org", "bob-pw")
    post(server, "domain", "example.com", "example.com moves to a new server")
    post(server, "server", "", "Everyone: upgrade your client")
    c = Client(server.port())
    assert login(c) == "-ERR [SYS/TEMP] example.com moves to a new server"
    assert login(c) == "-ERR [SYS/TEMP] Everyone: upgrade your client"
    assert login(c).startswith("+OK")
    ann = Client(server.port())
    assert login(ann, "ann@example.com", "ann-pw").endswith("moves to a new server")
    bob = Client(server.port())
    assert login(bob, "bob@other.org", "bob-pw") == "-ERR [SYS/TEMP] Everyone: upgrade your client"
    assert login(bob, "bob@other.org", "bob-pw").startswith("+OK")


def test_alert_over_sasl_and_snapshot_released(server: LiveServer) -> None:
    post(server, "account", USER, "sasl alert")
    c = Client(server.port())
    ir = b64(f"\0{USER}\0{PASSWORD}")
    assert c.cmd(f"AUTH PLAIN {ir}") == "-ERR [SYS/TEMP] sasl alert"
    assert c.cmd(f"AUTH PLAIN {ir}").startswith("+OK")
    # The refused login released its maildrop snapshot: only this session's remains open.
    assert sum(server.store._open.values()) == 1


def test_removed_alert_is_not_shown(server: LiveServer) -> None:
    alert_id = post(server, "account", USER, "gone")
    assert server.call(server.store.remove_alert, alert_id)
    assert login(Client(server.port())).startswith("+OK")
