"""Self-signed pair: names, key file mode, and a real TLS handshake with a client trusting it."""

from __future__ import annotations

import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509

from cgpop.certgen import write_self_signed
from cgpop.tlsconf import server_context


def handshake(server: ssl.SSLContext, client: ssl.SSLContext, server_hostname: str) -> bytes:
    """Run a TLS handshake over a socketpair and pass one message through; returns it."""
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as tls:
                tls.sendall(b"+OK hello\r\n")
        except (OSError, ssl.SSLError):
            pass  # the client side reports the failure

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(b, server_hostname=server_hostname) as tls:
            return tls.recv(100)
    finally:
        thread.join(10)


def trusting_client(cert: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cert))
    # What Python 3.13 turns on by default; the generated certificate must pass it.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_pair_handshakes_with_a_trusting_client(tmp_path: Path, host: str) -> None:
    cert, key = write_self_signed(host, tmp_path / "tls")
    assert handshake(server_context(cert, key), trusting_client(cert), host) == b"+OK hello\r\n"


def test_untrusting_client_rejects_it(tmp_path: Path) -> None:
    cert, key = write_self_signed("localhost", tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_context(cert, key), ssl.create_default_context(), "localhost")


def test_wrong_name_rejected(tmp_path: Path) -> None:
    cert, key = write_self_signed("pop.example.test", tmp_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server_context(cert, key), trusting_client(cert), "other.example.test")


def test_key_mode_and_names(tmp_path: Path) -> None:
    cert_path, key_path = write_self_signed("::1", tmp_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("::1")]


def test_existing_key_file_is_tightened(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_bytes(b"old")
    (tmp_path / "key.pem").chmod(0o644)
    _, key_path = write_self_signed("localhost", tmp_path)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600


def test_dns_name_san(tmp_path: Path) -> None:
    cert_path, _ = write_self_signed("Mail.Example.TEST", tmp_path)
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["mail.example.test"]


@pytest.mark.parametrize("host", ["", "bad host", "a..b", "x" * 300, "under_score.test"])
def test_bad_host(tmp_path: Path, host: str) -> None:
    with pytest.raises(ValueError):
        write_self_signed(host, tmp_path)


def test_bad_days(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_self_signed("localhost", tmp_path, days=0)
