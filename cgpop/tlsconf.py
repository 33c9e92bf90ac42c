"""Server-side TLS contexts for STLS (RFC 2595) and implicit TLS (RFC 8314), and their reload.

`server_context()` builds one context from PEM files with TLS 1.2 as the floor (RFC 8996 retires
1.0 and 1.1; RFC 8314 section 4.1). `ReloadableContext` holds the current one and swaps in a fresh
object on SIGHUP: connections already up keep the context they were made with, new handshakes
take the new one. A failed reload keeps the old context, so a bad file never stops service.

For implicit-TLS listeners, whose context is fixed when the listener starts, pass
`holder.listener_context()`: its SNI callback, called on every ClientHello, hands the handshake to
the current context.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

StrPath = str | Path


class TlsFileError(ValueError):
    """A certificate or key file that cannot be used; `key` names the [tls] key at fault
    ("cert" or "key") and the text says why."""

    def __init__(self, text: str, key: str) -> None:
        super().__init__(text)
        self.key = key


def _check_readable(path: Path, what: str, key: str) -> None:
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise TlsFileError(f"TLS {what} file {path}: {exc.strerror or exc}", key) from exc


def server_context(cert_path: StrPath, key_path: StrPath) -> ssl.SSLContext:
    """A server context for the PEM certificate chain and private key.

    Raises TlsFileError (a ValueError) naming the file at fault (missing, unreadable, not PEM,
    or a key that does not match the certificate). Never asks for a pass-phrase: an encrypted
    key is an error.
    """
    cert, key = Path(cert_path), Path(key_path)
    _check_readable(cert, "certificate", "cert")
    _check_readable(key, "key", "key")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # CRIME (no compression), no client-initiated renegotiation (a DoS lever), a fresh ECDH key
    # per handshake, and the server's cipher order, which keeps Python's strong defaults first.
    ctx.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_SINGLE_ECDH_USE
    )

    def no_passphrase() -> str:
        # Called by OpenSSL only for an encrypted key; never block on a terminal prompt.
        raise ValueError("encrypted key")

    try:
        ctx.load_cert_chain(cert, key, password=no_passphrase)
    except (ssl.SSLError, ValueError) as exc:
        raise TlsFileError(*_which_file(cert, key)) from exc
    return ctx


def _is_private_key(path: Path) -> bool:
    try:
        serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (TypeError, ValueError, OSError, UnsupportedAlgorithm):
        return False
    return True


def _which_file(cert: Path, key: Path) -> tuple[str, str]:
    """Tell the operator which file is wrong, and its [tls] key: parse each on its own."""
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        probe.load_verify_locations(cafile=cert)
    except (ssl.SSLError, ValueError):
        if _is_private_key(cert):
            return (
                f"TLS certificate file {cert}: holds a private key, not a certificate"
                " (are cert and key swapped?)",
                "cert",
            )
        return f"TLS certificate file {cert}: not a PEM certificate", "cert"
    try:
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    except TypeError:
        return f"TLS key file {key}: the key is encrypted (pass-phrases are not supported)", "key"
    except (ValueError, OSError, UnsupportedAlgorithm):
        return f"TLS key file {key}: not a PEM private key", "key"
    return f"TLS key file {key} does not match certificate file {cert}", "key"


class ReloadableContext:
    """The current server context for a cert/key pair, replaced as a whole by `reload()`."""

    def __init__(self, cert_path: StrPath, key_path: StrPath) -> None:
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self._context = server_context(self.cert_path, self.key_path)
        self._listener: ssl.SSLContext | None = None

    @property
    def context(self) -> ssl.SSLContext:
        """The context for the next handshake (use it for each STLS `start_tls`)."""
        return self._context

    def reload(self) -> ssl.SSLContext:
        """Re-read the files into a new context and make it current. On error the old context
        stays in place and ValueError (naming the file) propagates for the log."""
        self._context = server_context(self.cert_path, self.key_path)
        return self._context

    def listener_context(self) -> ssl.SSLContext:
        """A stable context to give a listener once; each handshake is moved to the current
        context from its SNI callback (OpenSSL runs it for every ClientHello, SNI or not)."""
        if self._listener is None:
            front = server_context(self.cert_path, self.key_path)

            def pick(
                sslobj: ssl.SSLObject | ssl.SSLSocket, _name: str | None, _ctx: object
            ) -> None:
                sslobj.context = self._context

            front.sni_callback = pick
            self._listener = front
        return self._listener
