"""`cgpop queue list|flush|remove`, run as the operator runs them (the console script, a TOML
config naming the data directory) while a live server with a relay worker uses the same store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import LiveServer
from tests.e2e.test_xtnd_live import FlakyHandler, msg, queue_empty, submit, wait_for
from tests.xtnd.conftest import Sink, _start

CGPOP = Path(sys.executable).parent / "cgpop"


@pytest.fixture
def sink() -> Iterator[Sink]:
    yield from _start(FlakyHandler())


def cgpop(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CGPOP_CONFIG"}
    return subprocess.run(
        [str(CGPOP), *args, "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def listing(config: Path) -> Any:
    done = cgpop(config, "queue", "list", "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_list_remove_flush(
    server_factory: Callable[..., LiveServer], sink: Sink, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    # An hour between attempts: only a flush can make the retry happen within the test.
    server = server_factory(
        data_dir,
        xtnd={
            "relay": f"127.0.0.1:{sink.port}",
            "retry_schedule": [3600],
            "queue_poll_interval": 0.2,
        },
    )
    server.add_account("joe@example.com", "secret")
    config = tmp_path / "cgpop.toml"
    config.write_text(f'[server]\ndata_dir = "{data_dir}"\n')

    assert submit(server, msg("flaky@example.org")).startswith(b"+OK")
    assert submit(server, msg("temp@example.org")).startswith(b"+OK")  # always 450
    # Wait (in-process, cheaply) until both had their first, failed, attempt.
    wait_for(
        lambda: [e.recipients[0].attempts for e in server.call(server.store.list_queue)] == [1, 1]
    )
    rows = listing(config)
    by_rcpt = {r["recipients"][0]["recipient"]: r for r in rows}
    flaky, temp = by_rcpt["flaky@example.org"], by_rcpt["temp@example.org"]
    assert flaky["sender"] == "joe@example.com" and flaky["size"] > 0
    assert flaky["recipients"][0]["state"] == "queued"
    assert "450" in flaky["recipients"][0]["last_error"]

    text = cgpop(config, "queue", "list")
    assert text.returncode == 0 and "temp@example.org" in text.stdout

    assert cgpop(config, "queue", "remove", str(temp["id"])).returncode == 0
    again = cgpop(config, "queue", "remove", str(temp["id"]))
    assert again.returncode == 1 and f"no queued message {temp['id']}" in again.stderr
    assert [r["id"] for r in listing(config)] == [flaky["id"]]

    assert sink.handler.messages == []
    flushed = cgpop(config, "queue", "flush")
    assert flushed.returncode == 0 and flushed.stdout.startswith("1 ")
    [relayed] = wait_for(lambda: sink.handler.messages)
    assert relayed.rcpt_tos == ["flaky@example.org"]
    wait_for(lambda: queue_empty(server))
    assert cgpop(config, "queue", "list").stdout.strip() == "queue is empty"
    assert listing(config) == []
