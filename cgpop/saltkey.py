"""The key of SCRAM's fake salts (cgpop/sasl/): the same salt for an unknown name on every
connection and across restarts, so a fake account looks like a real one."""

from __future__ import annotations

import os
import secrets

from cgpop.config import Config

FAKE_SALT_KEY_FILE = "sasl-fake-salt.key"


def fake_salt_key(config: Config) -> bytes:
    """The configured key, else one kept in the data directory, made (0600) on first start:
    a per-process key would change the fake salt of unknown names at each restart."""
    configured = config.pop3.sasl_fake_salt_key
    if configured:
        return configured.encode("utf-8")
    path = config.server.data_dir / FAKE_SALT_KEY_FILE
    # The prefork parent makes the key before any store has made data_dir (a database
    # backend never does); node-local files live there, so make it here too.
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_bytes()
        if len(key) < 16:
            raise OSError(f"{path}: too short to be a key; delete it to make a new one") from None
        return key
    key = secrets.token_bytes(32)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key
