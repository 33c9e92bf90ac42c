"""The shipped systemd unit and the sample configuration's commented production blocks: what
an operator copies must be valid as it stands."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cgpop import config

CONF = Path(__file__).resolve().parent.parent / "conf"


def unit() -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(strict=False, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(CONF / "cgpop.service")
    return parser


def test_unit_settings() -> None:
    s = unit()["Service"]
    assert s["Type"] == "notify"
    assert s["ExecStart"].endswith("cgpop serve")
    assert s["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert s["User"] == "cgpop"
    assert s["AmbientCapabilities"] == "CAP_NET_BIND_SERVICE"
    assert s["NoNewPrivileges"] == "true"
    assert s["ProtectSystem"] == "strict"
    assert s["PrivateTmp"] == "true"
    assert s["ReadWritePaths"] == "/var/lib/cgpop"
    # The data directory the unit may write is the one the sample names for production.
    sample = (CONF / "cgpop.toml").read_text()
    assert re.search(r'data_dir = .*\n\s+# production: "/var/lib/cgpop"', sample)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    """systemd's own parser: no unknown key, no bad value (ExecStart pointed at this cgpop,
    since verify checks that the program exists)."""
    text = (CONF / "cgpop.service").read_text()
    cgpop = Path(sys.executable).parent / "cgpop"
    path = tmp_path / "cgpop.service"
    path.write_text(text.replace("/opt/cgpop/bin/cgpop", str(cgpop)))
    done = subprocess.run(
        ["systemd-analyze", "verify", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "cgpop.service" not in done.stderr, done.stderr


def test_commented_tls_blocks_load(tmp_path: Path) -> None:
    """Uncommenting the sample's [tls] and [[tls.certificates]] lines gives a valid file."""
    lines = []
    for line in (CONF / "cgpop.toml").read_text().splitlines():
        stripped = re.sub(
            r"^# ((cert|key|names|domain) = |\[\[tls\.certificates\]\]$)", r"\1", line
        )
        lines.append(stripped)
    f = tmp_path / "cgpop.toml"
    f.write_text("\n".join(lines) + "\n")
    cfg = config.load(f)
    assert cfg.tls.cert == Path("/etc/cgpop/cert.pem")
    (entry,) = cfg.tls.certificates
    assert entry.names == ("pop.client2.com", "*.client2.com")
    assert entry.key == Path("/etc/cgpop/client2.key")
    assert entry.domain == "client2.com"
