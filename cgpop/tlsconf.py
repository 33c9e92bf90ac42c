"""Server-side TLS contexts for STLS (RFC 2595) and implicit TLS (RFC 8314), and their reload.

`server_context()` builds one context from PEM files with TLS 1.2 as the floor (RFC 8996 retires
1.0 and 1.1; RFC 8314 section 4.1). `ReloadableContext` holds the current one and swaps in a fresh
object on SIGHUP: connections already up keep the context they were made with, new handshakes
take the new one. A failed reload keeps the old context, so a bad file never stops service.

For implicit-TLS listeners, whose context is fixed when the listener starts, pass
`holder.listener_context()`: its SNI callback, called on every ClientHello, hands the handshake to
the current context.

Per-domain certificates (`[[tls.certificates]]`): the SNI server name a client sends (RFC 6066
section 3) selects the entry whose names match, exactly or by a "*." first label standing for
one label (RFC 6125 section 6.4.3); no match, or no SNI, keeps `[tls] cert`. The selection is
recorded per TLS object, so after the handshake the session learns the entry's login domain
(`session_domain`): the server side of an SSLObject has no `server_hostname` to read back.
"""

from __future__ import annotations

import logging
import ssl
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from cgpop.config import Config, ConfigError, TlsCertificate

_log = logging.getLogger("cgpop")

StrPath = str | Path


class TlsFileError(ValueError):
    """A certificate or key file that cannot be used; `which` is "cert" or "key"."""

    def __init__(self, text: str, which: str) -> None:
        super().__init__(text)
        self.which = which


class CertificateError(ValueError):
    """A TLS file named by configuration `key` (e.g. "tls.certificates[1].cert") is unusable."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key = key
        self.reason = reason


def _check_readable(path: Path, what: str, which: str) -> None:
    try:
        with path.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        raise TlsFileError(f"TLS {what} file {path}: {exc.strerror or exc}", which) from exc


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
    """Tell the operator which file is wrong: parse each on its own."""
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


def match_server_name(patterns: dict[str, int], server_name: str | None) -> int | None:
    """The entry whose pattern matches `server_name`: an exact name first, then "*." and the
    name without its first label (one label only: "*.b.com" covers "a.b.com", neither "b.com"
    nor "x.a.b.com"). Case-insensitive; patterns are lower-case. None: no SNI or no match."""
    if not server_name:
        return None
    name = server_name.lower().rstrip(".")
    if "*" in name:  # a client sending "*.b.com" names no host
        return None
    exact = patterns.get(name)
    if exact is not None:
        return exact
    first, dot, rest = name.partition(".")
    if not first or not dot or not rest:
        return None
    return patterns.get("*." + rest)


@dataclass(frozen=True, slots=True)
class SniMatch:
    """What a handshake's server name selected: the entry (its index in configuration order)
    and its login domain."""

    server_name: str
    entry: int
    domain: str | None


@dataclass(frozen=True, slots=True)
class _Certificates:
    """One reading of all the files: the fallback context, one context per entry, and the
    name index. Replaced as a whole on reload, never changed."""

    default: ssl.SSLContext
    entries: tuple[tuple[TlsCertificate, ssl.SSLContext], ...]
    patterns: dict[str, int]

    def select(self, server_name: str | None) -> tuple[ssl.SSLContext, SniMatch] | None:
        index = match_server_name(self.patterns, server_name)
        if index is None or server_name is None:
            return None
        entry, context = self.entries[index]
        return context, SniMatch(server_name.lower().rstrip("."), index, entry.domain)


def _load(key_name: str, cert: Path, key: Path) -> ssl.SSLContext:
    try:
        return server_context(cert, key)
    except TlsFileError as exc:
        raise CertificateError(f"{key_name}.{exc.which}", str(exc)) from exc


def _read_all(cert: Path, key: Path, certificates: Sequence[TlsCertificate]) -> _Certificates:
    """Read every file; CertificateError names the first unusable one and its key."""
    default = _load("tls", cert, key)
    entries = tuple(
        (entry, _load(f"tls.certificates[{i}]", entry.cert, entry.key))
        for i, entry in enumerate(certificates)
    )
    patterns: dict[str, int] = {}
    for i, entry in enumerate(certificates):
        for name in entry.names:
            patterns.setdefault(name, i)
    return _Certificates(default, entries, patterns)


SniCallback = Callable[[ssl.SSLObject | ssl.SSLSocket, str | None, ssl.SSLContext], None]


class ReloadableContext:
    """The current server contexts for the fallback cert/key pair and the per-domain entries,
    replaced as a whole by `reload()`."""

    def __init__(
        self,
        cert_path: StrPath,
        key_path: StrPath,
        certificates: Sequence[TlsCertificate] = (),
    ) -> None:
        self.cert_path = Path(cert_path)
        self.key_path = Path(key_path)
        self.certificates = tuple(certificates)
        # What each handshake's SNI selected, keyed by its TLS object (gone with it).
        self._matches: weakref.WeakKeyDictionary[object, SniMatch] = weakref.WeakKeyDictionary()
        self._certs = self._read(self.cert_path, self.key_path, self.certificates)
        self._listener: ssl.SSLContext | None = None

    @property
    def context(self) -> ssl.SSLContext:
        """The context for the next handshake (use it for each STLS `start_tls`): the fallback
        certificate, whose SNI callback moves the handshake to a matching entry's."""
        return self._certs.default

    def reload_logged(self) -> None:
        """Re-read the certificate files only (SIGHUP does this and more, cgpop/reload.py);
        sessions already in TLS keep theirs. A failure is logged; the old ones stay."""
        try:
            self.reload()
            _log.info("TLS certificate reloaded")
        except ValueError as exc:
            _log.error("TLS reload failed, keeping the old certificate: %s", exc)

    def reload(self) -> ssl.SSLContext:
        """Re-read the files into new contexts and make them current. On error the old ones stay
        in place and CertificateError (a ValueError naming the file and key) propagates."""
        return self.reconfigure(self.cert_path, self.key_path, self.certificates)

    def reconfigure(
        self, cert_path: StrPath, key_path: StrPath, certificates: Sequence[TlsCertificate]
    ) -> ssl.SSLContext:
        """Like `reload`, with the files and entries of a re-read configuration."""
        cert, key, entries = Path(cert_path), Path(key_path), tuple(certificates)
        self._certs = self._read(cert, key, entries)
        self.cert_path, self.key_path, self.certificates = cert, key, entries
        return self._certs.default

    def _read(
        self, cert: Path, key: Path, certificates: tuple[TlsCertificate, ...]
    ) -> _Certificates:
        certs = _read_all(cert, key, certificates)
        if certs.entries:
            certs.default.sni_callback = self._picker(lambda: certs)
        return certs

    def _picker(self, current: Callable[[], _Certificates]) -> SniCallback:
        """The SNI callback (OpenSSL runs it for every ClientHello, SNI or not): hand the
        handshake to the matching entry's context, or to the current fallback, and remember
        what was selected for `session_domain`."""

        def pick(
            sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _ctx: ssl.SSLContext
        ) -> None:
            certs = current()
            found = certs.select(server_name)
            if found is None:
                if sslobj.context is not certs.default:
                    sslobj.context = certs.default
                return
            context, match = found
            sslobj.context = context
            self._matches[sslobj] = match

        return pick

    def sni_match(self, ssl_object: object) -> SniMatch | None:
        """What the SNI of the handshake done on `ssl_object` selected (None: the fallback)."""
        if ssl_object is None:
            return None
        try:
            return self._matches.get(ssl_object)
        except TypeError:  # not weak-referenceable: not one of our TLS objects
            return None

    def session_domain(self, ssl_object: object, default: str) -> str:
        """The domain of a bare login name after the handshake on `ssl_object`: the selected
        entry's `domain` when it has one, else `default` (the listener's)."""
        match = self.sni_match(ssl_object)
        return match.domain if match is not None and match.domain else default

    def listener_context(self) -> ssl.SSLContext:
        """A stable context to give a listener once; each handshake is moved to the current
        context from its SNI callback (OpenSSL runs it for every ClientHello, SNI or not)."""
        if self._listener is None:
            front = server_context(self.cert_path, self.key_path)
            front.sni_callback = self._picker(lambda: self._certs)
            self._listener = front
        return self._listener


def from_config(config: Config) -> ReloadableContext | None:
    """The server's TLS contexts for `[tls]` (None when it has no certificate). Raises
    ConfigError naming the configuration file, the key and the reason."""
    tls = config.tls
    if tls.cert is None or tls.key is None:
        return None
    try:
        return ReloadableContext(tls.cert, tls.key, tls.certificates)
    except CertificateError as exc:
        raise ConfigError(f"{config.source}: {exc}") from None
