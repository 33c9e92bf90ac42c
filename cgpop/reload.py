"""SIGHUP: re-read the configuration file and apply what can change under running sessions.

The limits (`max_channels`, `max_per_ip`, `max_per_account`, `auth_delay`, `auth_delay_max`),
the log level, `[quota]` and the TLS certificates (`[tls]` and `[[tls.certificates]]`) take
effect at once: sessions already open stay, and each new connection, login or handshake sees the new
values. Any other key that changed (listen addresses, `data_dir`, the store, ...) keeps its old
value until a restart, and the log line names it. A file that no longer loads changes nothing.

It runs on the event loop, as the signal handler: one small TOML file and a few PEM files are
read, which takes milliseconds, and every new value then takes effect at one instant.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from cgpop import logs
from cgpop.config import Config, ConfigError, load
from cgpop.penalty import Penalty
from cgpop.tlsconf import CertificateError, ReloadableContext

log = logging.getLogger("cgpop")

# `section.key`, or a whole section by its name, that a reload applies without a restart.
RELOADABLE = frozenset(
    {
        "server.log_level",
        "pop3.max_channels",
        "pop3.max_per_ip",
        "pop3.max_per_account",
        "pop3.auth_delay",
        "pop3.auth_delay_max",
        "tls.cert",
        "tls.key",
        "tls.certificates",
        "quota",  # read by every delivery (Deliverer.quota), so the next one sees it
    }
)
_TLS_KEYS = ("tls.cert", "tls.key", "tls.certificates")


def reloadable(key: str) -> bool:
    return key in RELOADABLE or key.partition(".")[0] in RELOADABLE


def _sections(config: Config) -> list[str]:
    return [f.name for f in dataclasses.fields(config) if f.name != "source"]


def changed_keys(old: Config, new: Config) -> list[str]:
    """`section.key` for every value that differs between the two configurations."""
    out: list[str] = []
    for section in _sections(old):
        a, b = getattr(old, section), getattr(new, section)
        for f in dataclasses.fields(a):
            if getattr(a, f.name) != getattr(b, f.name):
                out.append(f"{section}.{f.name}")
    return out


def merge(old: Config, new: Config, keys: set[str]) -> Config:
    """`old` with the values of `keys` taken from `new`."""
    sections: dict[str, Any] = {}
    for section in _sections(old):
        a, b = getattr(old, section), getattr(new, section)
        taken = {
            f.name: getattr(b, f.name)
            for f in dataclasses.fields(a)
            if f"{section}.{f.name}" in keys
        }
        sections[section] = dataclasses.replace(a, **taken) if taken else a
    return dataclasses.replace(old, **sections)


def _reread(current: Config) -> Config:
    """The configuration file loaded again; the running one when there is no file (built-in
    defaults, a test's dict) or it no longer loads (logged)."""
    if current.source.startswith("<"):
        return current
    try:
        return load(current.source)
    except ConfigError as exc:
        log.error("reload: configuration not re-read, nothing changed: %s", exc)
        return current


def _reload_tls(tls: ReloadableContext | None, new: Config) -> tuple[bool, bool]:
    """Re-read every certificate (also when the configuration names the same files: they may
    have been replaced). Returns whether the new TLS keys are in force, and whether their
    change needs a restart instead (TLS turned on or off)."""
    if tls is None:
        # No certificate at start: no STLS offered, no TLS listener to hand one to.
        return False, new.tls.cert is not None
    if new.tls.cert is None or new.tls.key is None:
        return False, True  # TLS goes on with the old certificates until a restart
    try:
        tls.reconfigure(new.tls.cert, new.tls.key, new.tls.certificates)
    except CertificateError as exc:
        log.error(
            "reload: TLS certificates not re-read, the old ones stay: %s: %s", new.source, exc
        )
        return False, False
    log.info("reload: TLS certificates re-read (%d per-domain)", len(new.tls.certificates))
    return True, False


def reload_config(current: Config, *, tls: ReloadableContext | None, penalty: Penalty) -> Config:
    """Apply what a reload may change and return the configuration now in force."""
    new = _reread(current)
    changed = changed_keys(current, new)
    applied = {k for k in changed if reloadable(k)}
    tls_ok, tls_restart = _reload_tls(tls, new)
    if not tls_ok:
        applied -= set(_TLS_KEYS)
    restart = sorted(k for k in changed if not reloadable(k) or (tls_restart and k in _TLS_KEYS))
    merged = merge(current, new, applied)
    if merged.server.log_level != current.server.log_level:
        logs.set_level(merged.server.log_level)
    delays = (merged.pop3.auth_delay, merged.pop3.auth_delay_max)
    if delays != (current.pop3.auth_delay, current.pop3.auth_delay_max):
        penalty.policy = dataclasses.replace(penalty.policy, base=delays[0], maximum=delays[1])
    if applied:
        log.info("reload: applied %s", ", ".join(sorted(applied)))
    if restart:
        verb = "need" if len(restart) > 1 else "needs"
        log.warning(
            "reload: %s changed but %s a restart; running with the old value until then",
            ", ".join(restart),
            verb,
        )
    log.info("reload done")
    return merged
