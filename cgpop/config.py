"""Configuration: one TOML file loaded once into frozen dataclasses (STYLE rule 10).

Every key is validated here; an error names the file, the key and the reason, before any
listener opens. `conf/cgpop.toml` documents every key with its default.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import socket
import stat
import tomllib  # Python >= 3.11 (pyproject): tomli is never needed
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from accounts.names import normalize_domain


class ConfigError(Exception):
    """A bad configuration file or key. The text is meant for the operator."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# `[server] workers`: each worker is a process with its own store connections; more than this
# is a typo, not a machine.
MAX_WORKERS = 256


@dataclass(frozen=True, slots=True)
class UnixSocket:
    """A listening unix-domain socket (`unix:/path` in `[lmtp] listen`), as Postfix's
    `lmtp:unix:` delivers to."""

    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"


# The prefix of a unix-socket entry in `[lmtp] listen` (Postfix writes `lmtp:unix:/path`).
UNIX_PREFIX = "unix:"
# sun_path holds 108 bytes on Linux, the terminating NUL included (unix(7)); a longer path
# cannot be bound at all.
MAX_UNIX_PATH = 107


@dataclass(frozen=True, slots=True)
class ServerConfig:
    hostname: str = "localhost"
    data_dir: Path = Path("cgpop-data")
    default_domain: str = "example.com"
    # Accounts allowed to act for others (SASL PLAIN authzid) and with `la` on every mailbox.
    admins: tuple[str, ...] = ()
    # Bound on how long sessions get to finish at SIGTERM before they are cancelled.
    shutdown_grace: float = 10.0
    log_level: str = "INFO"
    syslog: bool = False
    syslog_socket: str = "/dev/log"
    # Seconds a proved password is remembered (auth.VerifiedCache); 0 turns the cache off.
    login_cache_ttl: float = 60.0
    # "auto": uvloop when installed, else the standard asyncio loop.
    event_loop: str = "auto"
    # Worker processes sharing the listeners (cgpop/workers.py, issue 14): a count, or "auto"
    # for one per CPU the process may use. 1: one process, no supervisor.
    workers: int | str = 1


@dataclass(frozen=True, slots=True)
class Pop3Config:
    listen: tuple[Endpoint, ...] = (Endpoint("127.0.0.1", 1100),)
    tls_listen: tuple[Endpoint, ...] = ()
    # RFC 1939 section 3: the autologout timer "MUST be of at least 10 minutes".
    idle_timeout: float = 600.0
    # A command line that has begun must end within this many seconds (cgpop/linedeadline.py:
    # the slowloris bound; RFC 1939's 10 minutes is idle time between commands, not this).
    line_timeout: float = 60.0
    # RFC 2449 section 4 limits command lines to 255 octets; we accept up to this many and then
    # answer one -ERR for the whole overlong line.
    max_line: int = 1024
    max_bad_commands: int = 20
    max_auth_failures: int = 3
    plaintext_auth: str = "tls"
    # Show the APOP timestamp in the greeting. Off by default: clients such as curl switch to
    # APOP whenever they see it, and only accounts with --shared-secret can use APOP.
    apop: bool = False
    # Offer SASL CRAM-MD5, for the same reason off by default: curl and Thunderbird pick it
    # whenever it is listed, and it works only for accounts with --shared-secret.
    cram_md5: bool = False
    max_channels: int = 1000
    # 20, not 100: with max_channels 1000, ten addresses could take every channel; 50 are needed
    # now (issue 10). Clients behind one NAT rarely hold more; raise it for a big one.
    max_per_ip: int = 20
    max_per_account: int = 50
    # Peers (addresses or CIDR networks) that must open with a PROXY v1/v2 header naming the real
    # client; from anyone else a PROXY header is just an unknown command.
    proxy_from: tuple[str, ...] = ()
    # Failed-login delay (cgpop/penalty.py): the wait after the first recent failure from a peer
    # or against an account, doubling up to the maximum. Seconds.
    auth_delay: float = 0.25
    auth_delay_max: float = 5.0
    # Key of the HMAC that derives the fake SCRAM salt of unknown names (cgpop/sasl/common.py).
    # Empty: a random key kept in data_dir/sasl-fake-salt.key (mode 0600), made on first start,
    # so the fake salt stays the same across restarts.
    sasl_fake_salt_key: str = ""
    # Header whose value selects messages for an individual-name login.
    real_to_header: str = "X-Real-To"
    # Domain bound to a listener address ("127.0.0.2:110" = "client1.com").
    listener_domains: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LmtpConfig:
    listen: tuple[Endpoint | UnixSocket, ...] = (Endpoint("127.0.0.1", 2400),)
    max_message_size: int = 50 * 1024 * 1024
    max_recipients: int = 1000
    # Concurrent LMTP sessions; past it 421 4.3.2 and close (as max_channels for POP). An MTA
    # opens a few (Postfix: 20 per destination by default); each holds at most the spool
    # threshold (1 MiB) of a message in memory.
    max_connections: int = 100
    # TCP peers allowed to deliver; others get 421 and a log line. LMTP has no authentication,
    # so an LMTP port anyone can reach lets anyone inject mail. Unix sockets are guarded by
    # their file mode (0660) instead.
    allow_from: tuple[str, ...] = ("127.0.0.0/8", "::1/128")


@dataclass(frozen=True, slots=True)
class DeliveryConfig:
    # Cyrus-style duplicate suppression: same Message-ID to the same recipient within the window.
    duplicate_suppression: bool = True
    duplicate_window: float = 3 * 24 * 3600.0


# What `[quota] over_quota` may say a delivery over quota gets (issue 12).
OVER_QUOTA_ACTIONS = ("tempfail", "reject")


@dataclass(frozen=True, slots=True)
class QuotaConfig:
    # "tempfail": LMTP 452 4.2.2 and `deliver` exit 75, the MTA keeps the message and retries
    # (Cyrus's default: the user may make room); "reject": 552 5.2.2, exit 73, it bounces.
    over_quota: str = "tempfail"
    # An account alert is queued when a delivery takes usage of a limit across this share.
    warn_percent: int = 90


@dataclass(frozen=True, slots=True)
class TlsCertificate:
    """One `[[tls.certificates]]` entry: the certificate for clients whose SNI server name
    matches `names` (lower-case A-labels; "*.example.com" covers exactly one more label), and
    the domain of a bare login name on such a session (None: the listener's)."""

    names: tuple[str, ...]
    cert: Path
    key: Path
    domain: str | None = None


@dataclass(frozen=True, slots=True)
class TlsConfig:
    cert: Path | None = None
    key: Path | None = None
    # Per-domain certificates chosen by SNI (RFC 6066 section 3); `cert`/`key` are the fallback.
    certificates: tuple[TlsCertificate, ...] = ()


@dataclass(frozen=True, slots=True)
class XtndConfig:
    enabled: bool = True
    max_message_size: int = 25 * 1024 * 1024
    max_recipients: int = 100
    relay: Endpoint | None = None  # smarthost, parsed from "host:port"; None: MX delivery
    relay_starttls: bool = False
    relay_user: str = ""
    relay_password: str = ""
    max_queue_age: float = 5 * 24 * 3600.0
    allowed_from: tuple[str, ...] = ()
    rate_messages_per_hour: int = 200
    rate_recipients_per_hour: int = 1000
    dns_servers: tuple[str, ...] = ()
    # Port of `dns_servers` (tests run a DNS server on loopback) and of the MX hosts' SMTP
    # (RFC 5321 section 4.5.4: port 25; tests point it at a sink on loopback).
    dns_port: int = 53
    smtp_port: int = 25
    # Waits in seconds after the 1st, 2nd, ... failed attempt; the last repeats (xtnd/retry.py).
    retry_schedule: tuple[float, ...] = (60.0, 300.0, 900.0, 1800.0, 3600.0)
    # How often the relay worker looks for due entries it was not woken for (`cgpop queue
    # flush` runs in another process): the bound on how long a flush takes to be noticed.
    queue_poll_interval: float = 5.0
    # Bound on each SMTP socket operation (RFC 5321 section 4.5.3.2 suggests minutes).
    relay_timeout: float = 300.0


# The store backends `[store] backend` may name (cgpop/store/factory.py opens them).
STORE_BACKENDS = ("sqlite", "postgresql")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    # "sqlite": the embedded store under [server] data_dir. "postgresql": several gateway
    # nodes on one database (issue 11); the keys below are for it alone.
    backend: str = "sqlite"
    dsn: str = ""  # libpq URI or key=value string
    # This node's name in the session registry; empty means the host name (node_name()).
    node: str = ""
    pool_size: int = 10  # connections this node keeps
    node_timeout: float = 30.0  # seconds: a node silent this long is dead, its sessions released

    def node_name(self) -> str:
        return self.node or socket.gethostname()


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    # Where GET /metrics (Prometheus text format) and GET /healthz are served; None: off.
    # Nothing there is authenticated: keep it on loopback or a management network.
    listen: Endpoint | None = None


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    pop3: Pop3Config = field(default_factory=Pop3Config)
    lmtp: LmtpConfig = field(default_factory=LmtpConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    xtnd: XtndConfig = field(default_factory=XtndConfig)
    source: str = "<built-in defaults>"
    store: StoreConfig = field(default_factory=StoreConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)


def parse_endpoint(text: str) -> Endpoint:
    """`host:port` or `[v6]:port`."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected host:port, got {text!r}")
    return Endpoint(host, int(port))


# Every float key is a number of seconds. Ten years is far beyond any sensible wait and keeps
# clear of the overflows of datetime/timedelta arithmetic and of event-loop timers (uvloop keeps
# them in milliseconds); TOML's inf and nan are refused outright.
MAX_SECONDS = 10 * 365 * 24 * 3600.0

# No configured text may hold a line break or NUL: several values go on the wire (the greeting,
# SMTP HELO, a header name), where a CR or LF would inject a line of the configuration's making.
_FORBIDDEN_CHARS = re.compile(r"[\r\n\x00]")

# RFC 1123 section 2.1 host name labels (the underscore tolerated, as many MTAs do), or an
# address literal (RFC 5321 section 4.1.3); at most 253 octets (RFC 1035 section 2.3.4).
_HOSTNAME = re.compile(
    r"(?:[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?|\[[0-9A-Fa-f:.]+\]"
)

# RFC 5322 section 3.6.8: a field name is one or more printable US-ASCII characters but colon.
_FIELD_NAME = re.compile(r"[\x21-\x39\x3b-\x7e]{1,76}")


class _Section:
    """Typed reads from one TOML table, each error naming file and key."""

    def __init__(self, source: str, name: str, data: Any) -> None:
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: [{name}] must be a table")
        self.source, self.name, self.data = source, name, dict(data)

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.source}: {self.name}.{key}: {reason}")

    def get(self, key: str, kind: type, default: Any) -> Any:
        if key not in self.data:
            return default
        value = self.data.pop(key)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(key, f"expected {kind.__name__}, got {type(value).__name__}")
        if isinstance(value, float):
            self.check_seconds(key, value)
        if isinstance(value, str):
            self.check_text(key, value)
        return value

    def check_seconds(self, key: str, value: float) -> None:
        if not math.isfinite(value):
            raise self.fail(key, f"must be a finite number of seconds, got {value}")
        if value > MAX_SECONDS:
            raise self.fail(key, f"at most {MAX_SECONDS:.0f} seconds (ten years)")

    def check_text(self, key: str, value: str) -> None:
        if _FORBIDDEN_CHARS.search(value):
            raise self.fail(key, "must not contain CR, LF or NUL characters")

    def positive(self, key: str, kind: type, default: Any) -> Any:
        value = self.get(key, kind, default)
        if value <= 0:
            raise self.fail(key, "must be positive")
        return value

    def strings(self, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
        value = self.get(key, list, None)
        if value is None:
            return default
        if not all(isinstance(v, str) for v in value):
            raise self.fail(key, "expected a list of strings")
        for v in value:
            self.check_text(key, v)
        return tuple(value)

    def endpoints(self, key: str, default: tuple[Endpoint, ...]) -> tuple[Endpoint, ...]:
        try:
            return tuple(parse_endpoint(v) for v in self.strings(key, ()))
        except ValueError as exc:
            raise self.fail(key, str(exc)) from None

    def done(self) -> None:
        if self.data:
            raise self.fail(sorted(self.data)[0], "unknown key")


def _retry_schedule(s: _Section, default: tuple[float, ...]) -> tuple[float, ...]:
    value = s.get("retry_schedule", list, None)
    if value is None:
        return default
    if not value or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise s.fail("retry_schedule", "expected a non-empty list of positive seconds")
    for v in value:
        s.check_seconds("retry_schedule", float(v))
    return tuple(float(v) for v in value)


def _workers_setting(s: _Section) -> int | str:
    """`[server] workers`: a positive count or "auto" (one per CPU this process may use)."""
    value = s.data.pop("workers", 1)
    if value == "auto":
        return "auto"
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise s.fail("workers", 'expected a positive number or "auto"')
    # A bound on forks per start: far above any core count, below an accidental 10**6.
    if value > MAX_WORKERS:
        raise s.fail("workers", f"at most {MAX_WORKERS}")
    return value


def _dns_servers(x: _Section, default: tuple[str, ...]) -> tuple[str, ...]:
    servers = x.strings("dns_servers", default)
    for server in servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise x.fail("dns_servers", f"not an IP address: {server!r}") from None
    return servers


def _relay(x: _Section) -> Endpoint | None:
    text = x.get("relay", str, "")
    if not text:
        return None
    try:
        return parse_endpoint(text)
    except ValueError as exc:
        raise x.fail("relay", str(exc)) from None


def _lmtp_listen(m: _Section, base: Path) -> tuple[Endpoint | UnixSocket, ...]:
    """`[lmtp] listen`: `host:port`, `[v6]:port` or `unix:/path` (a relative path is taken
    from the configuration file's directory, as other paths are)."""
    out: list[Endpoint | UnixSocket] = []
    for text in m.strings("listen", ()):
        if not text.startswith(UNIX_PREFIX):
            try:
                out.append(parse_endpoint(text))
            except ValueError as exc:
                raise m.fail("listen", f"{exc} or unix:/path") from None
            continue
        raw = text[len(UNIX_PREFIX) :]
        if not raw:
            raise m.fail("listen", f"{text!r}: expected unix:/path/to/socket")
        path = Path(raw).expanduser()
        path = path if path.is_absolute() else base / path
        if len(os.fsencode(path)) > MAX_UNIX_PATH:
            raise m.fail(
                "listen",
                f"{text!r}: a unix socket path holds at most {MAX_UNIX_PATH} bytes (sun_path)",
            )
        why = unix_socket_path_problem(path)
        if why is not None:
            raise m.fail("listen", f"{text!r}: {why}")
        if UnixSocket(path) in out:
            raise m.fail("listen", f"{text!r} is listed twice")
        out.append(UnixSocket(path))
    return tuple(out)


def unix_socket_path_problem(path: Path) -> str | None:
    """Why a unix socket cannot be created at `path`, or None. An existing socket is fine
    (a stale one from a crash is replaced at start); anything else there is refused rather
    than deleted."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot inspect: {exc.strerror}"
    if stat.S_ISSOCK(mode):
        return None
    return "exists and is not a socket (refusing to replace it)"


def _allow_from(m: _Section, default: tuple[str, ...]) -> tuple[str, ...]:
    """`[lmtp] allow_from`: addresses or CIDR networks, in canonical form."""
    out: list[str] = []
    for text in m.strings("allow_from", default):
        try:
            out.append(str(ipaddress.ip_network(text, strict=True)))
        except ValueError as exc:
            raise m.fail("allow_from", f"not an address or CIDR network: {exc}") from None
    return tuple(out)


def server_name_pattern(text: str) -> str:
    """A `[[tls.certificates]] names` entry in canonical form: a host name, or "*." and a host
    name (RFC 6125 section 6.4.3: the wildcard is the whole left-most label and stands for
    exactly one label). Raises ValueError with the reason."""
    wildcard = text.startswith("*.")
    host = text[2:] if wildcard else text
    if "*" in host:
        raise ValueError(f"{text!r}: a wildcard must be the whole first label, as in *.example.com")
    try:
        name = normalize_domain(host)
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None
    return "*." + name if wildcard else name


def _certificates(t: _Section, base: Path) -> tuple[TlsCertificate, ...]:
    """`[[tls.certificates]]`: each entry checked on its own, each error naming the entry."""
    entries = t.get("certificates", list, [])
    seen: dict[str, int] = {}
    out: list[TlsCertificate] = []
    for i, raw in enumerate(entries):
        e = _Section(t.source, f"tls.certificates[{i}]", raw)
        names = e.strings("names", ())
        if not names:
            raise e.fail("names", "expected a non-empty list of server names")
        canonical: list[str] = []
        for text in names:
            try:
                name = server_name_pattern(text)
            except ValueError as exc:
                raise e.fail("names", str(exc)) from None
            if name in seen:
                raise e.fail("names", f"{text!r} is already in tls.certificates[{seen[name]}]")
            seen[name] = i
            canonical.append(name)
        files: dict[str, Path] = {}
        for key in ("cert", "key"):
            value = e.get(key, str, "")
            if not value:
                raise e.fail(key, "required (a PEM file)")
            p = Path(value).expanduser()
            files[key] = p if p.is_absolute() else base / p
        domain_text = e.get("domain", str, None)
        domain = None
        if domain_text is not None:
            try:
                domain = normalize_domain(domain_text)
            except ValueError as exc:
                raise e.fail("domain", str(exc)) from None
        e.done()
        out.append(TlsCertificate(tuple(canonical), files["cert"], files["key"], domain))
    return tuple(out)


# A node name goes into logs and `cgpop sessions`: a host name's length (RFC 1035 section 2.3.4).
_MAX_NODE = 253
# Connections per node: PostgreSQL's max_connections defaults to 100 for the whole cluster.
_MAX_POOL = 1000
# Heartbeats go every node_timeout / 3: below 3 s a busy database would declare live nodes dead.
_MIN_NODE_TIMEOUT = 3.0


def _store(st: _Section) -> StoreConfig:
    """[store], validated (issue 11's exact keys)."""
    d = StoreConfig()
    store = StoreConfig(
        backend=st.get("backend", str, d.backend),
        dsn=st.get("dsn", str, d.dsn),
        node=st.get("node", str, d.node),
        pool_size=st.positive("pool_size", int, d.pool_size),
        node_timeout=st.positive("node_timeout", float, d.node_timeout),
    )
    if store.backend not in STORE_BACKENDS:
        expected = ", ".join(f'"{b}"' for b in STORE_BACKENDS)
        raise st.fail("backend", f"unknown store backend {store.backend!r}; expected {expected}")
    if store.backend == "postgresql":
        if not store.dsn:
            raise st.fail("dsn", 'backend "postgresql" needs a dsn')
        _check_dsn(st, store.dsn)
    elif store.dsn:
        raise st.fail("dsn", 'only the "postgresql" backend uses a dsn')
    if len(store.node) > _MAX_NODE or any(
        not ch.isprintable() or ch.isspace() for ch in store.node
    ):
        raise st.fail("node", f"expected up to {_MAX_NODE} printable characters, no spaces")
    if store.pool_size > _MAX_POOL:
        raise st.fail("pool_size", f"must be at most {_MAX_POOL}")
    if store.node_timeout < _MIN_NODE_TIMEOUT:
        raise st.fail("node_timeout", f"must be at least {_MIN_NODE_TIMEOUT:g} seconds")
    st.done()
    return store


def _metrics(m: _Section) -> MetricsConfig:
    """[metrics]: `listen` is one host:port (an empty string or no key: off)."""
    text = m.get("listen", str, "")
    listen = None
    if text:
        try:
            listen = parse_endpoint(text)
        except ValueError as exc:
            raise m.fail("listen", str(exc)) from None
    m.done()
    return MetricsConfig(listen)


def _check_dsn(st: _Section, dsn: str) -> None:
    """The driver is an extra (pip install 'cgpop[postgresql]'); parse the DSN with it."""
    try:
        import psycopg
        from psycopg import conninfo
    except ImportError:
        raise st.fail(
            "backend", "the postgresql backend needs: pip install 'cgpop[postgresql]'"
        ) from None
    try:
        conninfo.conninfo_to_dict(dsn)
    except psycopg.Error as exc:  # libpq's own words
        raise st.fail("dsn", f"not a libpq URI or key=value string: {exc}") from None


_SECTIONS = ("server", "pop3", "lmtp", "delivery", "tls", "xtnd", "store", "metrics", "quota")


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the file named by `path`, else `$CGPOP_CONFIG`, else the built-in defaults."""
    if path is None:
        path = os.environ.get("CGPOP_CONFIG") or None
    if path is None:
        return Config()
    source = str(path)
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        # TOML files are UTF-8 (TOML 1.0, "Spec"); tomllib decodes before it parses.
        raise ConfigError(
            f"{source}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start});"
            " TOML files must be UTF-8"
        ) from None
    return from_dict(raw, source=source, base=Path(source).resolve().parent)


def from_dict(
    raw: Mapping[str, Any], *, source: str = "<dict>", base: Path | None = None
) -> Config:
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: [{unknown[0]}]: unknown section")
    sec = {name: _Section(source, name, raw.get(name, {})) for name in _SECTIONS}
    base = base or Path.cwd()

    def path_of(s: _Section, key: str, default: Path | None) -> Path | None:
        value = s.get(key, str, None)
        if value is None:
            return default
        p = Path(value).expanduser()
        return p if p.is_absolute() else base / p

    s = sec["server"]
    d = ServerConfig()
    data_dir = path_of(s, "data_dir", None)
    server = ServerConfig(
        hostname=s.get("hostname", str, d.hostname),
        data_dir=data_dir if data_dir is not None else d.data_dir,
        default_domain=s.get("default_domain", str, d.default_domain).lower(),
        admins=tuple(a.lower() for a in s.strings("admins", d.admins)),
        shutdown_grace=s.positive("shutdown_grace", float, d.shutdown_grace),
        log_level=s.get("log_level", str, d.log_level).upper(),
        syslog=s.get("syslog", bool, d.syslog),
        syslog_socket=s.get("syslog_socket", str, d.syslog_socket),
        login_cache_ttl=s.get("login_cache_ttl", float, d.login_cache_ttl),
        event_loop=s.get("event_loop", str, d.event_loop),
        workers=_workers_setting(s),
    )
    if not _HOSTNAME.fullmatch(server.hostname) or len(server.hostname) > 253:
        raise s.fail("hostname", f"not a host name: {server.hostname!r}")
    if server.login_cache_ttl < 0:
        raise s.fail("login_cache_ttl", "must be 0 (off) or positive")
    if server.event_loop not in ("auto", "uvloop", "asyncio"):
        raise s.fail("event_loop", 'expected "auto", "uvloop" or "asyncio"')
    if server.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise s.fail("log_level", "expected DEBUG, INFO, WARNING or ERROR")
    s.done()

    p = sec["pop3"]
    dp = Pop3Config()
    idle = p.positive("idle_timeout", float, dp.idle_timeout)
    if idle < 600:
        raise p.fail("idle_timeout", "RFC 1939 requires at least 600 seconds")
    line_timeout = p.positive("line_timeout", float, dp.line_timeout)
    if not math.isfinite(line_timeout) or line_timeout > idle:
        raise p.fail("line_timeout", "must be a number of seconds, at most idle_timeout")
    plaintext = p.get("plaintext_auth", str, dp.plaintext_auth)
    if plaintext not in ("tls", "always"):
        raise p.fail("plaintext_auth", 'expected "tls" or "always"')
    max_line = p.positive("max_line", int, dp.max_line)
    if not 255 <= max_line <= 65536:
        raise p.fail("max_line", "must be between 255 (RFC 2449) and 65536")
    proxy_from = p.strings("proxy_from", dp.proxy_from)
    for net in proxy_from:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise p.fail("proxy_from", f"not an address or network: {net!r}") from None
    auth_delay = p.get("auth_delay", float, dp.auth_delay)
    auth_delay_max = p.get("auth_delay_max", float, dp.auth_delay_max)
    if not 0 <= auth_delay <= auth_delay_max <= 60:
        raise p.fail("auth_delay", "need 0 <= auth_delay <= auth_delay_max <= 60")
    real_to_header = p.get("real_to_header", str, dp.real_to_header)
    if not _FIELD_NAME.fullmatch(real_to_header):
        raise p.fail(
            "real_to_header",
            f"not a header field name (RFC 5322 section 3.6.8): {real_to_header!r}",
        )
    salt_key = p.get("sasl_fake_salt_key", str, dp.sasl_fake_salt_key)
    if salt_key and len(salt_key) < 16:
        raise p.fail("sasl_fake_salt_key", "use at least 16 characters (or leave it empty)")
    domains = p.get("listener_domains", dict, {})
    for k, v in domains.items():
        if not isinstance(v, str):
            raise p.fail(f"listener_domains.{k}", "expected a domain name")
        p.check_text(f"listener_domains.{k}", v)
    pop3 = Pop3Config(
        listen=p.endpoints("listen", dp.listen) if "listen" in p.data else dp.listen,
        tls_listen=p.endpoints("tls_listen", dp.tls_listen),
        idle_timeout=idle,
        line_timeout=line_timeout,
        max_line=max_line,
        max_bad_commands=p.positive("max_bad_commands", int, dp.max_bad_commands),
        max_auth_failures=p.positive("max_auth_failures", int, dp.max_auth_failures),
        plaintext_auth=plaintext,
        apop=p.get("apop", bool, dp.apop),
        cram_md5=p.get("cram_md5", bool, dp.cram_md5),
        max_channels=p.positive("max_channels", int, dp.max_channels),
        max_per_ip=p.positive("max_per_ip", int, dp.max_per_ip),
        max_per_account=p.positive("max_per_account", int, dp.max_per_account),
        proxy_from=proxy_from,
        auth_delay=auth_delay,
        auth_delay_max=auth_delay_max,
        sasl_fake_salt_key=salt_key,
        real_to_header=real_to_header,
        listener_domains={k: v.lower() for k, v in domains.items()},
    )
    p.done()

    m = sec["lmtp"]
    dm = LmtpConfig()
    lmtp = LmtpConfig(
        listen=_lmtp_listen(m, base) if "listen" in m.data else dm.listen,
        max_message_size=m.positive("max_message_size", int, dm.max_message_size),
        max_recipients=m.positive("max_recipients", int, dm.max_recipients),
        max_connections=m.positive("max_connections", int, dm.max_connections),
        allow_from=_allow_from(m, dm.allow_from),
    )
    if not lmtp.allow_from and any(isinstance(ep, Endpoint) for ep in lmtp.listen):
        raise m.fail(
            "allow_from",
            "empty, so every TCP peer would be refused; list the MTA's address "
            "or listen only on unix:/path",
        )
    m.done()

    v = sec["delivery"]
    dv = DeliveryConfig()
    delivery = DeliveryConfig(
        duplicate_suppression=v.get("duplicate_suppression", bool, dv.duplicate_suppression),
        duplicate_window=v.positive("duplicate_window", float, dv.duplicate_window),
    )
    v.done()

    t = sec["tls"]
    tls = TlsConfig(
        cert=path_of(t, "cert", None),
        key=path_of(t, "key", None),
        certificates=_certificates(t, base),
    )
    if (tls.cert is None) != (tls.key is None):
        raise t.fail("cert" if tls.cert is None else "key", "cert and key go together")
    if tls.certificates and tls.cert is None:
        raise t.fail(
            "certificates", "needs [tls] cert and key (for clients whose name matches no entry)"
        )
    t.done()
    if pop3.tls_listen and tls.cert is None:
        raise ConfigError(f"{source}: pop3.tls_listen: needs [tls] cert and key")

    x = sec["xtnd"]
    dx = XtndConfig()
    xtnd = XtndConfig(
        enabled=x.get("enabled", bool, dx.enabled),
        max_message_size=x.positive("max_message_size", int, dx.max_message_size),
        max_recipients=x.positive("max_recipients", int, dx.max_recipients),
        relay=_relay(x),
        relay_starttls=x.get("relay_starttls", bool, dx.relay_starttls),
        relay_user=x.get("relay_user", str, dx.relay_user),
        relay_password=x.get("relay_password", str, dx.relay_password),
        max_queue_age=x.positive("max_queue_age", float, dx.max_queue_age),
        allowed_from=tuple(a.lower() for a in x.strings("allowed_from", dx.allowed_from)),
        rate_messages_per_hour=x.positive("rate_messages_per_hour", int, dx.rate_messages_per_hour),
        rate_recipients_per_hour=x.positive(
            "rate_recipients_per_hour", int, dx.rate_recipients_per_hour
        ),
        dns_servers=_dns_servers(x, dx.dns_servers),
        dns_port=x.positive("dns_port", int, dx.dns_port),
        smtp_port=x.positive("smtp_port", int, dx.smtp_port),
        retry_schedule=_retry_schedule(x, dx.retry_schedule),
        queue_poll_interval=x.positive("queue_poll_interval", float, dx.queue_poll_interval),
        relay_timeout=x.positive("relay_timeout", float, dx.relay_timeout),
    )
    for key in ("dns_port", "smtp_port"):
        if getattr(xtnd, key) > 65535:
            raise x.fail(key, "must be a port number (1-65535)")
    x.done()

    store = _store(sec["store"])
    metrics = _metrics(sec["metrics"])
    quota = _quota(sec["quota"])

    return Config(
        server, pop3, lmtp, delivery, tls, xtnd, source, store, metrics=metrics, quota=quota
    )


def _quota(q: _Section) -> QuotaConfig:
    dq = QuotaConfig()
    over = q.get("over_quota", str, dq.over_quota)
    if over not in OVER_QUOTA_ACTIONS:
        raise q.fail("over_quota", f"must be one of {', '.join(OVER_QUOTA_ACTIONS)}")
    warn = q.get("warn_percent", int, dq.warn_percent)
    if not 1 <= warn <= 100:
        raise q.fail("warn_percent", "must be a percentage from 1 to 100")
    q.done()
    return QuotaConfig(over_quota=over, warn_percent=warn)
