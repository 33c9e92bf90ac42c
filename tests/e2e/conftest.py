"""Fixtures shared by the end-to-end tests: the `cgpop` command on a data directory of its own."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.e2e.test_cli import Cli


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    return Cli(tmp_path)


@pytest.fixture
def joe(cli: Cli) -> Cli:
    """The CLI's store with domain example.com and account joe (password "secret")."""
    cli.ok("domain", "add", "example.com")
    cli.ok("account", "add", "joe@example.com", "--password-stdin", stdin=b"secret\n")
    return cli
