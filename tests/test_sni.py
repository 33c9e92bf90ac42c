"""Per-domain certificates chosen by SNI (RFC 6066 section 3): the name rules, which certificate
a real TLS client is shown, the entry's login domain, reload, and configuration errors that name
the file, the key and the reason."""

from __future__ import annotations

import socket
import ssl
import threading
from pathlib import Path

import pytest

from cgpop import config
from cgpop.certgen import write_self_signed
from cgpop.config import TlsCertificate
from cgpop.tlsconf import ReloadableContext, from_config, match_server_name

PATTERNS = {"pop.client2.com": 0, "*.client2.com": 0, "mail.client3.org": 1}


@pytest.mark.parametrize(
    "name, expected",
    [
        ("pop.client2.com", 0),
        ("POP.Client2.COM", 0),
        ("imap.client2.com", 0),
        ("pop.client2.com.", 0),
        ("a.b.client2.com", None),  # the wildcard stands for one label only
        ("client2.com", None),  # ... and for exactly one
        ("mail.client3.org", 1),
        ("x.mail.client3.org", None),
        ("*.client2.com", None),  # a client naming a wildcard names no host
        ("other.example", None),
        ("", None),
        (None, None),
    ],
)
def test_name_rules(name: str | None, expected: int | None) -> None:
    assert match_server_name(PATTERNS, name) == expected


def handshake(
    server: ssl.SSLContext, server_name: str | None, holder: ReloadableContext | None = None
) -> tuple[bytes, str]:
    """The certificate (DER) a client sending `server_name` as SNI is shown (None: no SNI),
    and, with `holder`, the login domain the server side then has ("example.com" by default)."""
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE  # we compare the certificate ourselves
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    domain: list[str] = []

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as tls:
                if holder is not None:
                    domain.append(holder.session_domain(tls, "example.com"))
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(b, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            tls.sendall(b"x")
    finally:
        thread.join(10)
        a.close()
    return der, domain[0] if domain else ""


def der(cert: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(cert.read_text())


@pytest.fixture
def pairs(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    return {
        "default": write_self_signed("mail.example.com", tmp_path / "default"),
        "client2": write_self_signed("pop.client2.com", tmp_path / "client2"),
    }


def holder_for(pairs: dict[str, tuple[Path, Path]]) -> ReloadableContext:
    cert, key = pairs["client2"]
    entry = TlsCertificate(("pop.client2.com", "*.client2.com"), cert, key, "client2.com")
    return ReloadableContext(*pairs["default"], [entry])


@pytest.mark.parametrize(
    "server_name, chosen",
    [
        ("pop.client2.com", "client2"),
        ("IMAP.CLIENT2.COM", "client2"),
        ("a.b.client2.com", "default"),
        ("client2.com", "default"),
        ("mail.example.com", "default"),
        (None, "default"),
    ],
)
def test_sni_selects_the_certificate(
    pairs: dict[str, tuple[Path, Path]], server_name: str | None, chosen: str
) -> None:
    holder = holder_for(pairs)
    seen, domain = handshake(holder.context, server_name, holder)
    assert seen == der(pairs[chosen][0])
    assert domain == ("client2.com" if chosen == "client2" else "example.com")


def test_listener_context_selects_too(pairs: dict[str, tuple[Path, Path]]) -> None:
    holder = holder_for(pairs)
    listener = holder.listener_context()
    assert handshake(listener, "pop.client2.com")[0] == der(pairs["client2"][0])
    assert handshake(listener, "other.example")[0] == der(pairs["default"][0])


def test_verifying_client_accepts_the_domain_certificate(
    pairs: dict[str, tuple[Path, Path]],
) -> None:
    """A client that trusts only client2's certificate and checks the host name succeeds."""
    holder = holder_for(pairs)
    client = ssl.create_default_context(cafile=str(pairs["client2"][0]))
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)

    def serve() -> None:
        with holder.context.wrap_socket(a, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=serve)
    thread.start()
    with client.wrap_socket(b, server_hostname="pop.client2.com") as tls:
        tls.sendall(b"x")
    thread.join(10)


def test_reload_picks_up_a_replaced_entry_file(pairs: dict[str, tuple[Path, Path]]) -> None:
    holder = holder_for(pairs)
    before = der(pairs["client2"][0])
    assert handshake(holder.context, "pop.client2.com")[0] == before
    write_self_signed("pop.client2.com", pairs["client2"][0].parent)  # same paths, new pair
    holder.reload()
    after = handshake(holder.context, "pop.client2.com")[0]
    assert after == der(pairs["client2"][0]) != before
    assert handshake(holder.context, None)[0] == der(pairs["default"][0])


def test_failed_reload_keeps_every_old_context(pairs: dict[str, tuple[Path, Path]]) -> None:
    holder = holder_for(pairs)
    old = holder.context
    pairs["client2"][1].write_text("garbage\n")
    with pytest.raises(ValueError, match=r"tls\.certificates\[0\]\.key: .*not a PEM private key"):
        holder.reload()
    assert holder.context is old
    assert handshake(holder.context, "pop.client2.com")[0] == der(pairs["client2"][0])


def load(tmp_path: Path, text: str) -> config.Config:
    f = tmp_path / "cgpop.toml"
    f.write_text(text)
    return config.load(f)


def entry_toml(names: str = '["pop.client2.com"]', extra: str = "") -> str:
    return (
        '[tls]\ncert = "default/cert.pem"\nkey = "default/key.pem"\n'
        f'[[tls.certificates]]\nnames = {names}\ncert = "client2/cert.pem"\n'
        f'key = "client2/key.pem"\n{extra}'
    )


def test_entries_loaded_with_paths_relative_to_the_file(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]]
) -> None:
    cfg = load(
        tmp_path, entry_toml('["POP.Client2.com", "*.client2.com"]', 'domain = "Client2.COM"')
    )
    (entry,) = cfg.tls.certificates
    assert entry.names == ("pop.client2.com", "*.client2.com")
    assert entry.cert == tmp_path / "client2/cert.pem"
    assert entry.domain == "client2.com"
    holder = from_config(cfg)
    assert holder is not None
    assert handshake(holder.context, "pop.client2.com")[0] == der(pairs["client2"][0])


@pytest.mark.parametrize(
    "text, fragment",
    [
        (entry_toml("[]"), "tls.certificates[0].names: expected a non-empty list"),
        (entry_toml('"pop.client2.com"'), "tls.certificates[0].names: expected list"),
        (entry_toml('["p*.client2.com"]'), "names: 'p*.client2.com': a wildcard must be"),
        (entry_toml('["*.*.client2.com"]'), "a wildcard must be the whole first label"),
        (entry_toml('["pop..client2.com"]'), "names: 'pop..client2.com': domain name has an"),
        (entry_toml('["pop_x.client2.com"]'), "names: 'pop_x.client2.com': bad domain label"),
        (entry_toml('["a.com", "A.com"]'), "names: 'A.com' is already in tls.certificates[0]"),
        (entry_toml(extra='domain = "bad domain"'), "tls.certificates[0].domain:"),
        (entry_toml(extra="colour = 1"), "tls.certificates[0].colour: unknown key"),
        (
            '[[tls.certificates]]\nnames = ["a.com"]\ncert = "c.pem"\nkey = "k.pem"\n',
            "tls.certificates: needs [tls] cert and key",
        ),
        (
            '[tls]\ncert = "c.pem"\nkey = "k.pem"\n[[tls.certificates]]\nnames = ["a.com"]\n'
            'cert = "c.pem"\n',
            "tls.certificates[0].key: required",
        ),
    ],
)
def test_entry_errors_name_file_and_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        load(tmp_path, text)
    assert str(tmp_path / "cgpop.toml") in str(info.value)
    assert fragment in str(info.value)


def test_duplicate_name_across_entries(tmp_path: Path) -> None:
    text = entry_toml('["pop.client2.com"]') + (
        '[[tls.certificates]]\nnames = ["POP.client2.com"]\ncert = "x.pem"\nkey = "y.pem"\n'
    )
    with pytest.raises(config.ConfigError, match=r"tls\.certificates\[1\]\.names: .*\[0\]"):
        load(tmp_path, text)


@pytest.mark.parametrize(
    "damage, fragment",
    [
        ("missing-cert", "tls.certificates[0].cert: TLS certificate file {cert}: No such file"),
        ("garbage-cert", "tls.certificates[0].cert: TLS certificate file {cert}: not a PEM"),
        ("garbage-key", "tls.certificates[0].key: TLS key file {key}: not a PEM private key"),
        ("other-key", "tls.certificates[0].key: TLS key file {key} does not match"),
        ("default-key", "tls.key: TLS key file {dkey}: not a PEM private key"),
    ],
)
def test_unusable_files_name_file_key_and_reason(
    tmp_path: Path, pairs: dict[str, tuple[Path, Path]], damage: str, fragment: str
) -> None:
    cert, key = pairs["client2"]
    dkey = pairs["default"][1]
    if damage == "missing-cert":
        cert.unlink()
    elif damage == "garbage-cert":
        cert.write_text("hello\n")
    elif damage == "garbage-key":
        key.write_text("hello\n")
    elif damage == "other-key":
        key.write_bytes(pairs["default"][1].read_bytes())
    else:
        dkey.write_text("hello\n")
    cfg = load(tmp_path, entry_toml())
    with pytest.raises(config.ConfigError) as info:
        from_config(cfg)
    text = str(info.value)
    assert text.startswith(f"{tmp_path / 'cgpop.toml'}: ")
    assert fragment.format(cert=cert, key=key, dkey=dkey) in text
