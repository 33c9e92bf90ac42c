"""Transcript tests of the sans-IO engine: (client line, expected reply) pairs, no sockets."""

from __future__ import annotations

import pytest

from tests.engine.helpers import Driver


def test_greeting_and_login() -> None:
    d = Driver()
    assert d.greeting == "+OK test cgpop POP3 ready\r\n"
    assert d("USER joe") == "+OK send your password\r\n"
    assert d("PASS secret") == "+OK joe@example.com has 3 messages (600 octets)\r\n"


def test_password_with_spaces_is_the_rest_of_the_line() -> None:
    d = Driver(password="two words ")
    d("USER joe")
    assert d("PASS two words ").startswith("-ERR")  # trailing spaces are not part of it
    d2 = Driver(password="two words")
    d2("USER joe")
    assert d2("PASS two words").startswith("+OK")


def test_bad_password_is_auth_failure_and_budget_closes() -> None:
    d = Driver(max_auth_failures=2)
    d("USER joe")
    assert d("PASS nope") == "-ERR [AUTH] authentication failed\r\n"
    assert not d.closed
    d("USER joe")
    assert d("PASS nope") == "-ERR [AUTH] too many failed logins, closing\r\n"
    assert d.closed


def test_pass_before_user() -> None:
    d = Driver()
    assert d("PASS secret") == "-ERR send USER first\r\n"


def test_stat_list_uidl() -> None:
    d = Driver()
    d.login()
    assert d("STAT") == "+OK 3 600\r\n"
    assert d("LIST") == "+OK 3 messages (600 octets)\r\n1 100\r\n2 200\r\n3 300\r\n.\r\n"
    assert d("LIST 2") == "+OK 2 200\r\n"
    assert (
        d("UIDL") == "+OK unique-id listing follows\r\n1 1234.10\r\n2 1234.20\r\n3 1234.30\r\n.\r\n"
    )
    assert d("UIDL 3") == "+OK 3 1234.30\r\n"


@pytest.mark.parametrize(
    "line, reply",
    [
        ("RETR 0", "-ERR no such message\r\n"),
        ("RETR 4", "-ERR no such message\r\n"),
        ("RETR -1", "-ERR invalid message number: -1\r\n"),
        ("RETR +1", "-ERR invalid message number: +1\r\n"),
        ("RETR 1x", "-ERR invalid message number: 1x\r\n"),
        ("RETR 1 2", "-ERR usage: RETR msg\r\n"),
        ("RETR", "-ERR usage: RETR msg\r\n"),
        ("RETR 99999999999", "-ERR invalid message number: 99999999999\r\n"),
        ("TOP 1", "-ERR usage: TOP msg lines\r\n"),
        ("TOP 1 -1", "-ERR invalid number: -1\r\n"),
        ("LIST 1 2", "-ERR usage: LIST [msg]\r\n"),
        ("STAT 1", "-ERR usage: STAT\r\n"),
        ("LAST", "-ERR unknown command\r\n"),
        ("XYZZY", "-ERR unknown command\r\n"),
        ("", "-ERR unknown command\r\n"),
    ],
)
def test_bad_arguments_get_clean_errors(line: str, reply: str) -> None:
    d = Driver()
    d.login()
    assert d(line) == reply
    assert d("STAT") == "+OK 3 600\r\n"  # the session goes on


def test_retr_and_top_are_work_for_the_shell() -> None:
    d = Driver()
    d.login()
    assert d("RETR 2") == "<SendMessage:1:None:True>"
    assert d("TOP 1 0") == "<SendMessage:0:0:False>"
    assert d("TOP 1 99999999") == "<SendMessage:0:99999999:False>"
    assert d("TOP 1 999999999999") == "<SendMessage:0:1000000000:False>"


def test_retr_without_seen_right_does_not_mark() -> None:
    d = Driver(grant_kwargs={"may_seen": False})
    d.login()
    assert d("RETR 1") == "<SendMessage:0:None:False>"


def test_dele_rset_quit_commits_only_marked_uids() -> None:
    d = Driver()
    d.login()
    assert d("DELE 2") == "+OK message 2 deleted\r\n"
    assert d("DELE 2") == "-ERR message 2 already deleted\r\n"
    assert d("RETR 2") == "-ERR message 2 already deleted\r\n"
    assert d("LIST 2") == "-ERR message 2 already deleted\r\n"
    assert d("TOP 2 1") == "-ERR message 2 already deleted\r\n"
    assert d("STAT") == "+OK 2 400\r\n"
    assert d("LIST") == "+OK 2 messages (400 octets)\r\n1 100\r\n3 300\r\n.\r\n"
    assert d("RSET") == "+OK maildrop has 3 messages (600 octets)\r\n"
    assert d("DELE 3") == "+OK message 3 deleted\r\n"
    assert d("DELE 1") == "+OK message 1 deleted\r\n"
    assert d("QUIT").startswith("+OK test cgpop signing off")
    assert d.commits == [(10, 30)]
    assert d.closed


def test_dele_without_rights_is_sys_perm() -> None:
    d = Driver(grant_kwargs={"may_delete": False})
    d.login()
    reply = d("DELE 1")
    assert reply.startswith("-ERR [SYS/PERM] ") and "t (delete)" in reply
    d2 = Driver(grant_kwargs={"may_expunge": False})
    d2.login()
    assert "e (expunge)" in d2("DELE 1")
    assert d2("STAT") == "+OK 3 600\r\n"


def test_quit_without_deletions_commits_nothing() -> None:
    d = Driver()
    d.login()
    assert d("QUIT") == "+OK test cgpop signing off (3 messages left)\r\n"
    assert d.commits == []


def test_quit_in_authorization() -> None:
    d = Driver()
    assert d("QUIT") == "+OK test cgpop signing off\r\n"
    assert d.closed


def test_verbs_are_case_insensitive() -> None:
    d = Driver()
    assert d("user joe").startswith("+OK")
    assert d("pAsS secret").startswith("+OK")
    assert d("stat") == "+OK 3 600\r\n"
    assert d("Retr 1") == "<SendMessage:0:None:True>"


def test_nul_and_bad_utf8_in_commands() -> None:
    d = Driver()
    assert d(b"USER jo\x00e\r\n") == "-ERR invalid characters in command\r\n"
    assert d(b"USER \xff\xfe\r\n") == "-ERR command is not valid UTF-8\r\n"
    assert d(b"USER a\rb\r\n") == "-ERR invalid characters in command\r\n"


def test_bad_command_budget_closes() -> None:
    d = Driver(max_bad_commands=3)
    d("FOO")
    d("BAR")
    assert not d.closed
    assert d("BAZ").endswith("-ERR too many bad commands\r\n")
    assert d.closed


def test_overlong_line_is_one_error() -> None:
    d = Driver()
    assert d._run(d.session.handle_overlong()) == "-ERR line too long\r\n"
    assert d("USER joe").startswith("+OK")


def test_capa_tells_the_truth() -> None:
    d = Driver()
    assert d("CAPA") == (
        "+OK capability list follows\r\nTOP\r\nUSER\r\nUIDL\r\nRESP-CODES\r\n"
        "AUTH-RESP-CODE\r\nPIPELINING\r\nIMPLEMENTATION cgpop\r\n.\r\n"
    )
    hidden = Driver(plaintext_allowed=False)
    assert "USER" not in hidden("CAPA")
    reply = hidden("USER joe")
    assert reply.startswith("-ERR ") and "STLS" in reply and "[AUTH]" not in reply


def test_apop_only_when_enabled() -> None:
    d = Driver()
    assert (
        d("APOP joe 0123456789abcdef0123456789abcdef")
        == "-ERR APOP is not enabled on this server\r\n"
    )
    d2 = Driver(apop_banner="<1.2@test>")
    assert d2.greeting == "+OK test cgpop POP3 ready <1.2@test>\r\n"


def test_overlong_sasl_response_ends_the_exchange() -> None:
    d = Driver(sasl_mechanisms=("PLAIN",))
    assert d("AUTH PLAIN") == "+ \r\n"
    reply = d._run(d.session.handle_overlong())
    assert reply == "-ERR authentication response too long\r\n"
    assert not d.session.in_sasl
    assert d("USER joe").startswith("+OK")  # a command again, not a SASL response


def test_xtnd_refused_before_the_body_when_the_service_is_disabled() -> None:
    # Issue 13: no "+OK Start sending", so no body is read; the session goes on.
    d = Driver(grant_kwargs={"may_submit": False}, xtnd_enabled=True)
    d.login()
    assert d("XTND XMIT") == "-ERR [SYS/PERM] XTND XMIT is disabled for this account\r\n"
    assert not d.session.in_body
    assert d("STAT") == "+OK 3 600\r\n"
    enabled = Driver(xtnd_enabled=True)
    enabled.login()
    assert enabled("XTND XMIT") == "+OK Start sending message.\r\n"


@pytest.mark.parametrize("line", ["u\u017fer joe", "\u017ftat", "\ufb06ls", "capa\u0131"])
def test_keywords_are_ascii_only(line: str) -> None:
    """Unicode case mapping must not turn a long s or the st ligature into a verb's letters."""
    d = Driver()
    assert d(line) == "-ERR unknown command\r\n"


def test_sasl_mechanism_name_is_ascii_only() -> None:
    d = Driver()
    assert d("AUTH PLA\u0131N").startswith("-ERR")
    assert d("AUTH \u017fcram-sha-256").startswith("-ERR")
