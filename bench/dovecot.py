"""Dovecot 2.3 started by hand on loopback: install, configure, populate, start, stop.

No systemd: the master runs in the foreground (`dovecot -F`) as a child of the harness, with
its own base_dir, state_dir and log under the run's temporary directory. Two configurations:
`hp` (high-performance mode: login and mail processes reused and pre-forked) and `default`.
Both get the same load-test settings (LOADTEST_SETTINGS), which the report prints verbatim.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from bench.dataset import MAIL_GID, MAIL_UID, Dataset, User, chown_tree, write_maildir
from bench.servers import Endpoints, RunningServer, apt_install, free_port, wait_for_greeting

PACKAGES = ["dovecot-core", "dovecot-pop3d", "dovecot-lmtpd"]

# Changed from Dovecot's defaults in both modes, and why.
LOADTEST_SETTINGS: dict[str, str] = {
    "auth_failure_delay": "0  # default 2 secs; only delays failed logins, which void a run",
    "mail_max_userip_connections": "100000  # default 10 per user+IP; 50 clients share 20 users",
    "default_process_limit": "12000  # default 100; default mode needs one process per session",
    "service pop3 process_limit": "12000  # built-in 1024; one pop3 process per session",
    "default_client_limit": "30000  # default 1000; 10,000 idle sessions",
    "service anvil/auth client_limit": "30000  # must cover every login process",
    "disable_plaintext_auth": "no  # USER/PASS on loopback without TLS, as cgpop allows",
    "auth_mechanisms": "plain  # default; USER/PASS only",
    "ssl_min_protocol": "TLSv1.2  # same as the client and cgpop",
    "pop3_uidl_format": "%08Xu%08Xv  # pinned explicitly (it is the 2.3 default)",
    "pop3_no_flag_updates": "no  # default kept: RETR marks \\Seen, as cgpop does",
    "mail_location": "maildir:~/Maildir  # homes under the run directory",
    "passdb/userdb": "passwd-file with {SCRAM-SHA-256} 4096-iteration entries",
}
# Added on top in high-performance mode (Dovecot's documented tuning for speed).
HP_SETTINGS: dict[str, str] = {
    "service pop3-login": "service_count = 0, process_min_avail = nproc, "
    "client_limit = 15000 (high-performance login mode)",
    "service pop3": "service_count = 0, process_min_avail = nproc (mail processes reused)",
    "maildir_very_dirty_syncs": "yes  # Dovecot is the only writer of its Maildir",
    "auth_cache_size / auth_cache_ttl": "10M / 1 hour  # default 0: no auth cache",
    "auth_cache_verify_password_with_worker": "yes  # a cache hit re-runs the KDF (Dovecot "
    "caches the stored hash, not the verified login); this spreads it over auth-worker "
    "processes instead of the single auth master",
}
# Not changed: anvil's auth penalty only follows failed logins (auth_failure_delay is 0).
# Mode `hp-noauthcache` is `hp` without the auth-cache lines, to show what they are worth.
# Mode `hp-plain` is `hp` with the users' passwords stored as `{PLAIN}` (issue 14 section 4):
# no KDF per login, as cgpop's login cache skips it, so the sessions lead does not rest on the
# KDF. It takes part in the login-heavy workloads only (PLAIN_WORKLOADS).
PLAIN_SETTINGS: dict[str, str] = {
    "passdb": "passwd-file with {PLAIN} passwords (scheme=PLAIN): no KDF at login",
}
PLAIN_WORKLOADS = frozenset({"sessions", "pipelined", "tls", "tls-resume"})


def ensure_installed() -> str:
    """Install Dovecot from Debian's packages when missing; return `dovecot --version`."""
    if (
        shutil.which("dovecot") is None
        or not Path("/usr/lib/dovecot/pop3").exists()
        or not Path("/usr/lib/dovecot/lmtp").exists()
    ):
        apt_install(PACKAGES)
    out = subprocess.run(["dovecot", "--version"], check=True, capture_output=True, text=True)
    return out.stdout.strip()


def populate(data_dir: Path, ds: Dataset, workloads: set[str]) -> Path:
    """Write the passwd-file and every Maildir; return the passwd-file path. Beside it,
    `users-plain` holds the same users with `{PLAIN}` passwords (mode hp-plain)."""
    homes = data_dir / "home"
    homes.mkdir(parents=True, exist_ok=True)
    for box in ds.mailboxes(workloads):
        write_maildir(homes / box.user.local, box)
    lines = []
    for user in ds.all_users(workloads):
        home = homes / user.local
        home.mkdir(exist_ok=True)
        lines.append(f"{user.name}:{ds.dovecot_password(user)}:{MAIL_UID}:{MAIL_GID}::{home}::\n")
    passwd = data_dir / "users"
    passwd.write_text("".join(lines))
    passwd.chmod(0o644)
    plain = plain_passwd(passwd)
    plain.write_text(
        "".join(
            f"{u.name}:{{PLAIN}}{u.password}:{MAIL_UID}:{MAIL_GID}::{homes / u.local}::\n"
            for u in ds.all_users(workloads & PLAIN_WORKLOADS)
        )
    )
    plain.chmod(0o644)
    chown_tree(homes, MAIL_UID, MAIL_GID)
    return passwd


def plain_passwd(passwd: Path) -> Path:
    """The `{PLAIN}` twin of a passwd-file (same users, same homes)."""
    return passwd.with_name(passwd.name + "-plain")


def add_users(data_dir: Path, users: list[User], ds: Dataset) -> None:
    """Users created after start-up; Dovecot re-reads a changed passwd-file by itself."""
    homes = data_dir / "home"
    with (data_dir / "users").open("a") as f:
        for user in users:
            home = homes / user.local
            home.mkdir(exist_ok=True)
            os.chown(home, MAIL_UID, MAIL_GID)
            f.write(f"{user.name}:{ds.dovecot_password(user)}:{MAIL_UID}:{MAIL_GID}::{home}::\n")


def config_text(
    mode: str, run_dir: Path, passwd: Path, cert: Path, key: Path, ports: Endpoints
) -> str:
    ncpu = os.cpu_count() or 1
    hp = mode.startswith("hp")
    plain = mode.endswith("-plain")
    scheme = "PLAIN" if plain else "SCRAM-SHA-256"
    if plain:
        passwd = plain_passwd(passwd)
    auth_cache = (
        "auth_cache_size = 10M\nauth_cache_ttl = 1 hour\n"
        "auth_cache_verify_password_with_worker = yes\n"
        if mode in ("hp", "hp-plain")
        else ""
    )
    login_extra = (
        f"  service_count = 0\n  process_min_avail = {ncpu}\n  client_limit = 15000\n"
        "  vsz_limit = 1G\n"
        if hp
        else ""
    )
    # pop3's built-in process_limit is 1024 (not default_process_limit), and each session is a
    # process of its own (client_limit 1) in both modes.
    pop3_extra = "  process_limit = 12000\n" + (
        f"  service_count = 0\n  process_min_avail = {ncpu}\n" if hp else ""
    )
    return f"""# generated by bench/dovecot.py ({mode} mode)
base_dir = {run_dir}/run
state_dir = {run_dir}/state
log_path = {run_dir}/dovecot.log
info_log_path = {run_dir}/dovecot.log
instance_name = bench-{mode}
protocols = pop3 lmtp
listen = 127.0.0.1
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain
auth_failure_delay = 0
mail_location = maildir:~/Maildir
first_valid_uid = {min(MAIL_UID, 500)}
mail_max_userip_connections = 100000
default_process_limit = 12000
default_client_limit = 30000
default_vsz_limit = 1G
pop3_uidl_format = %08Xu%08Xv
pop3_no_flag_updates = no
postmaster_address = postmaster@bench.local
{"maildir_very_dirty_syncs = yes" if hp else ""}
{auth_cache}passdb {{
  driver = passwd-file
  args = scheme={scheme} {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {ports.pop3}
  }}
  inet_listener pop3s {{
    port = {ports.pop3s}
    ssl = yes
  }}
{login_extra}}}
service pop3 {{
{pop3_extra}}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {ports.lmtp}
  }}
}}
service anvil {{
  client_limit = 30000
}}
service auth {{
  client_limit = 30000
}}
"""


def start(mode: str, run_dir: Path, passwd: Path, cert: Path, key: Path) -> RunningServer:
    run_dir.mkdir(parents=True, exist_ok=True)
    ports = Endpoints(pop3=free_port(), pop3s=free_port(), lmtp=free_port())
    conf = run_dir / "dovecot.conf"
    conf.write_text(config_text(mode, run_dir, passwd, cert, key, ports))
    log = run_dir / "dovecot.log"
    proc = subprocess.Popen(
        ["dovecot", "-F", "-c", str(conf)],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = RunningServer(f"dovecot-{mode}", proc, ports, log, {"config": str(conf)})
    try:
        wait_for_greeting(ports.pop3, proc, log)
    except BaseException:
        server.stop()
        raise
    return server
