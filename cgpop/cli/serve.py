"""`cgpop serve`: run the gateway."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable

from cgpop import config as configmod
from cgpop.cli.base import (
    EX_OK,
    EX_USAGE,
    CliError,
    Parsers,
    command,
)


# --- serve ---
@command("serve")
def cmd_serve(args: argparse.Namespace, cfg: configmod.Config) -> int:
    from cgpop import logs
    from cgpop.server import Gateway

    if cfg.server.syslog:
        # Checked before any listener opens; at run time a lost daemon is one stderr line.
        why = logs.syslog_unreachable(cfg.server.syslog_socket)
        if why is not None:
            raise CliError(
                f"configuration error: {cfg.source}: server.syslog_socket: {why}", EX_USAGE
            )
    from cgpop.prefork import Role, run_workers
    from cgpop.workers import worker_count

    workers = worker_count(cfg.server.workers)
    logs.setup(
        cfg.server.log_level, cfg.server.syslog, cfg.server.syslog_socket, with_pid=workers > 1
    )
    raise_open_files_limit()
    loop_factory = event_loop_factory(cfg.server.event_loop)

    def serve(role: Role | None) -> int:
        async def main() -> None:
            gw = Gateway(cfg, role)
            await gw.serve_forever()

        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(main())
        return EX_OK

    try:
        if workers == 1:
            return serve(None)
        # The parent opens the listeners and forks; each worker runs serve(role).
        return run_workers(cfg, serve)
    except configmod.ConfigError as exc:  # a certificate file named in [tls], found unusable
        raise CliError(f"configuration error: {exc}", EX_USAGE) from None
    except OSError as exc:
        raise CliError(str(exc)) from None


def raise_open_files_limit() -> None:
    """Each POP session is a file descriptor: take the hard limit, which the operator set,
    instead of the often small soft default (1024)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (libuv) is a drop-in asyncio loop with a faster I/O path; "auto" uses it when
    installed. None means the standard loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise CliError('[server] event_loop = "uvloop" but uvloop is not installed') from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def add_parsers(ps: Parsers) -> None:
    """The `serve` subcommands."""
    ps.sub.add_parser(
        "serve", parents=[ps.common], help="run the gateway (POP3 and LMTP listeners)"
    )
