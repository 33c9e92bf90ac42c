"""Server TLS context: defaults, errors that name the file, and reload without dropping
established connections."""

from __future__ import annotations

import re
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from cgpop.certgen import write_self_signed
from cgpop.tlsconf import ReloadableContext, server_context


def trusting_client(cert: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def peer_cert_serial(server: ssl.SSLContext, client: ssl.SSLContext, hostname: str) -> int:
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)

    def serve() -> None:
        try:
            with server.wrap_socket(a, server_side=True) as tls:
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(b, server_hostname=hostname) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None
            tls.sendall(b"x")
            return x509.load_der_x509_certificate(der).serial_number
    finally:
        thread.join(10)


def serial(cert: Path) -> int:
    return x509.load_pem_x509_certificate(cert.read_bytes()).serial_number


def test_defaults(tmp_path: Path) -> None:
    ctx = server_context(*write_self_signed("localhost", tmp_path))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.options & ssl.OP_NO_COMPRESSION
    assert ctx.options & ssl.OP_NO_RENEGOTIATION


def test_missing_files_named(tmp_path: Path) -> None:
    cert, key = write_self_signed("localhost", tmp_path)
    with pytest.raises(ValueError, match=r"certificate file .*nope\.pem"):
        server_context(tmp_path / "nope.pem", key)
    with pytest.raises(ValueError, match=r"key file .*gone\.pem"):
        server_context(cert, tmp_path / "gone.pem")


def test_garbage_cert_named(tmp_path: Path) -> None:
    _, key = write_self_signed("localhost", tmp_path)
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate\n")
    with pytest.raises(ValueError, match=re.escape(f"certificate file {bad}")):
        server_context(bad, key)


def test_garbage_key_named(tmp_path: Path) -> None:
    cert, _ = write_self_signed("localhost", tmp_path)
    bad = tmp_path / "badkey.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ValueError, match=re.escape(f"key file {bad}: not a PEM private key")):
        server_context(cert, bad)


def test_mismatched_key_named(tmp_path: Path) -> None:
    cert, _ = write_self_signed("localhost", tmp_path / "a")
    _, other_key = write_self_signed("localhost", tmp_path / "b")
    with pytest.raises(ValueError, match="does not match certificate file"):
        server_context(cert, other_key)


def test_encrypted_key_refused_without_prompt(tmp_path: Path) -> None:
    cert, key = write_self_signed("localhost", tmp_path)
    loaded = serialization.load_pem_private_key(key.read_bytes(), None)
    enc = tmp_path / "enc.pem"
    enc.write_bytes(
        loaded.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ValueError, match="encrypted"):
        server_context(cert, enc)


def test_combined_pem_file(tmp_path: Path) -> None:
    cert, key = write_self_signed("localhost", tmp_path)
    both = tmp_path / "both.pem"
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    assert peer_cert_serial(server_context(both, both), trusting_client(cert), "localhost")


def test_reload_swaps_context_and_keeps_established_connection(tmp_path: Path) -> None:
    cert, key = write_self_signed("localhost", tmp_path)
    first_serial = serial(cert)
    holder = ReloadableContext(cert, key)
    old = holder.context
    old_client = trusting_client(cert)

    # An established connection on the old context.
    a, b = socket.socketpair()
    a.settimeout(10)
    b.settimeout(10)
    server_side: list[ssl.SSLSocket] = []
    thread = threading.Thread(
        target=lambda: server_side.append(old.wrap_socket(a, server_side=True))
    )
    thread.start()
    client_tls = old_client.wrap_socket(b, server_hostname="localhost")
    thread.join(10)

    write_self_signed("localhost", tmp_path)  # new pair over the same paths
    assert holder.reload() is holder.context
    assert holder.context is not old

    # The old connection still works both ways.
    server_side[0].sendall(b"+OK still here\r\n")
    assert client_tls.recv(100) == b"+OK still here\r\n"
    client_tls.sendall(b"QUIT\r\n")
    assert server_side[0].recv(100) == b"QUIT\r\n"
    client_tls.close()
    server_side[0].close()

    # New handshakes present the new certificate.
    new_client = trusting_client(cert)
    assert peer_cert_serial(holder.context, new_client, "localhost") == serial(cert)
    assert serial(cert) != first_serial


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])  # with and without SNI
def test_listener_context_follows_reload(tmp_path: Path, hostname: str) -> None:
    cert, key = write_self_signed(hostname, tmp_path)
    holder = ReloadableContext(cert, key)
    listener = holder.listener_context()
    assert peer_cert_serial(listener, trusting_client(cert), hostname) == serial(cert)
    write_self_signed(hostname, tmp_path)
    holder.reload()
    assert holder.listener_context() is listener
    assert peer_cert_serial(listener, trusting_client(cert), hostname) == serial(cert)


def test_failed_reload_keeps_old_context(tmp_path: Path) -> None:
    cert, key = write_self_signed("localhost", tmp_path)
    holder = ReloadableContext(cert, key)
    old = holder.context
    key.write_text("garbage\n")
    with pytest.raises(ValueError, match=re.escape(str(key))):
        holder.reload()
    assert holder.context is old
