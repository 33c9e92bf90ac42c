"""`python -m bench`: set up Dovecot and cgpop on the same data, run the workloads, report.

Each workload runs `reps` times per server, alternating the server order between repetitions,
after one untimed warm-up per server (Dovecot builds its index files, cgpop its caches). The
median of the valid runs is reported; a server with an invalid run in a workload is shown as
INVALID for it. Raw figures and machine facts go to bench/results/latest.json.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import ceiling, certs, cgpop_side, dovecot, pgcluster, procstat, rawpop
from bench.dataset import big_message
from bench.servers import RunningServer
from bench.workloads import (
    APPLIES,
    FRESH_BEFORE_EACH,
    FRESH_BEFORE_WARMUP,
    FULL,
    FULL_DATA,
    HEADLINE,
    QUICK,
    QUICK_DATA,
    WORKLOADS,
    Env,
    Run,
)

RESULTS = Path(__file__).resolve().parent / "results"
NOFILE = 65536  # 10,000 idle sessions need one fd each here, and as many in the server
# Memory per idle session barely moves between repetitions, and 100,000 logins take minutes.
MAX_REPS = {"idle": 1}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small counts: a smoke run of ~1 min")
    p.add_argument(
        "--only",
        action="append",
        choices=sorted(WORKLOADS),
        metavar="WORKLOAD",
        help=f"run only this workload (repeatable): {', '.join(WORKLOADS)}",
    )
    p.add_argument("--server", choices=("dovecot", "cgpop", "both"), default="both")
    p.add_argument(
        "--dovecot-modes",
        default="hp,default,hp-plain",
        help="comma list of Dovecot configurations (hp, hp-noauthcache, hp-plain, default); "
        "hp-plain: hp with {PLAIN}-stored passwords, login-heavy workloads only",
    )
    p.add_argument(
        "--clients",
        type=int,
        default=1,
        metavar="N",
        help="split the load client over N processes (sessions, pipelined, tls, tls-resume, "
        "delivery, idle) so it is not the bottleneck; 1: the harness itself",
    )
    p.add_argument(
        "--idle-sessions",
        type=int,
        metavar="N",
        help="sessions cgpop holds in idle (default 100,000; --quick 300); Dovecot holds "
        "--idle-sessions-dovecot (default 10,000)",
    )
    p.add_argument("--idle-sessions-dovecot", type=int, metavar="N")
    p.add_argument(
        "--cgpop-workers",
        metavar="N|auto",
        help="write [server] workers = N into cgpop's configuration (a process holds at most "
        "20,000 open files here: 100,000 idle sessions need at least 6 workers)",
    )
    p.add_argument(
        "--cgpop-metrics",
        action="store_true",
        help="turn on cgpop's [metrics] listen (the issue 12 bound: within 3%% of it off)",
    )
    p.add_argument(
        "--cgpop-variants",
        default="cache,nocache",
        help="comma list of cgpop instances: cache (shipped login_cache_ttl), nocache (ttl 0)",
    )
    p.add_argument(
        "--tls-loop",
        choices=("asyncio", "auto"),
        default="auto",
        help="cgpop's event loop for the tls workload (see cgpop_side.TLS_LOOP_NOTE)",
    )
    p.add_argument(
        "--all-reps",
        action="store_true",
        help="give every server the full repetitions (default: dovecot-default and "
        "cgpop-nocache run once, beside the ratio)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="attach py-spy to cgpop during its first timed run and write the top of the "
        "profile to FILE (needs py-spy in the environment)",
    )
    p.add_argument("--reps", type=int, help="repetitions per workload and server")
    p.add_argument("--keep", action="store_true", help="keep the temporary run directory")
    p.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    return p.parse_args(argv)


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def server_nofile(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
            if line.startswith("Max open files"):
                return " ".join(line.split()[3:5])
    except OSError:
        pass
    return "?"


def machine(dovecot_version: str | None) -> dict[str, Any]:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_GB": round(mem_kb / 2**20, 1),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "dovecot": dovecot_version,
        "cgpop": cgpop_side.version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def median_figures(runs: list[Run]) -> dict[str, float] | None:
    if not runs or not all(r.valid for r in runs):
        return None
    keys = runs[0].figures.keys()
    return {k: statistics.median(r.figures[k] for r in runs if k in r.figures) for k in keys}


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:,.2f}"


HP = "dovecot-hp"
HP_PLAIN = "dovecot-hp-plain"
# Issue 6's targets, raised by issue 14: (workload, figure) -> [(what is compared, bound, the
# Dovecot instance the ratio is taken against, or None for cgpop's own value)].
TARGETS: dict[tuple[str, str], list[tuple[str, float, str | None]]] = {
    ("sessions", "sessions_per_s"): [("ratio>=", 1.5, HP), ("ratio>=", 1.5, HP_PLAIN)],
    ("sessions", "server_cpu_ms_per_session"): [("ratio<=", 1.0, HP), ("ratio<=", 1.0, HP_PLAIN)],
    ("pipelined", "sessions_per_s"): [("ratio>=", 1.0, HP)],
    ("pipelined", "server_cpu_ms_per_session"): [("ratio<=", 1.0, HP)],
    ("tls", "implicit_sessions_per_s"): [("ratio>=", 1.5, HP)],
    ("tls", "stls_sessions_per_s"): [("ratio>=", 1.5, HP)],
    ("tls-resume", "implicit_sessions_per_s"): [("ratio>=", 1.5, HP)],
    ("tls-resume", "stls_sessions_per_s"): [("ratio>=", 1.5, HP)],
    ("bigbox", "p50_ms"): [("ratio<=", 1.0, HP)],
    ("bigmsg", "MB_per_s"): [("ratio>=", 3.0, HP)],
    ("bigmsg", "fraction_of_ceiling"): [("value>=", 0.7, None)],
    ("idle", "pss_kB_per_session"): [("ratio<=", 0.1, HP)],
    ("idle", "rss_kB_per_session"): [("ratio<=", 0.1, HP)],
    ("idle", "fresh_p99_ms"): [("value<=", 100.0, None)],
    ("delivery", "messages_per_s"): [("ratio>=", 1.5, HP)],
    ("delivery", "server_cpu_ms_per_message"): [("ratio<=", 1.0, HP)],
    ("filtered", "filtered_over_unfiltered_p50"): [("value<=", 1.0, None)],
}
# Ratio columns: (numerator, denominator), shown when both ran.
RATIOS = [
    ("cgpop", HP),
    ("cgpop-nocache", HP),
    ("cgpop", HP_PLAIN),
    (pgcluster.PG, HP),
    (pgcluster.PG2, HP),
    (pgcluster.PG, "cgpop"),
]
# Issue 11's targets on cgpop on PostgreSQL: (workload, figure) -> [(kind, bound, denominator
# or None for the value itself, numerator)].
PG_TARGETS: dict[tuple[str, str], list[tuple[str, float, str | None, str]]] = {
    ("cluster", "sessions_per_s"): [("ratio>=", 1.0, HP, pgcluster.PG)],
    ("cluster", "messages_per_s"): [("ratio>=", 1.0, HP, pgcluster.PG)],
    ("cluster", "db_round_trips_per_open"): [("value<=", 2.0, None, pgcluster.PG)],
    ("bigbox", "p50_ms"): [("ratio<=", 1.5, "cgpop", pgcluster.PG)],
}


def _short(label: str) -> str:
    return label.removeprefix("dovecot-")


def _ratio(a: dict[str, float] | None, b: dict[str, float] | None, fig: str) -> float | None:
    if not a or not b or fig not in a or fig not in b or not b[fig]:
        return None
    return a[fig] / b[fig]


def _verdicts(
    wl: str, fig: str, medians: dict[str, dict[str, float] | None], labels: list[str]
) -> str:
    out = []
    targets = [(*t, "cgpop") for t in TARGETS.get((wl, fig), [])] + PG_TARGETS.get((wl, fig), [])
    for kind, bound, base, subject in targets:
        if (base is not None and base not in labels) or subject not in labels:
            continue
        c = medians.get(subject)
        x = (c or {}).get(fig) if base is None else _ratio(c, medians.get(base), fig)
        if x is None:
            continue
        ok = x >= bound if kind.endswith(">=") else x <= bound
        what = f"{_short(subject)}/{_short(base)}" if base else f"{_short(subject)} value"
        out.append(f"{'holds' if ok else 'FAILS'} ({what} {kind[-2:]} {bound:g})")
    return "; ".join(out) or "-"


def client_bound(runs: list[Run]) -> bool:
    """Whether the load client saturated in any measured block of these runs: a ratio taken on
    such a run measures the client, and the table says so."""
    return any("client CPU" in v for r in runs for v in r.saturation.values())


def table_rows(results: dict[str, dict[str, list[Run]]], labels: list[str]) -> list[list[str]]:
    """Header row, then one row per headline figure: medians per server, cgpop/hp (and
    cgpop-nocache/hp when that instance ran), and whether issue 6's target holds."""
    cols = ["workload", "figure", *labels]
    ratio_of = [(a, b) for a, b in RATIOS if a in labels and b in labels]
    cols += [f"{a}/{_short(b)}" for a, b in ratio_of] + ["target"]
    rows = [cols]
    for wl, per_server in results.items():
        medians = {lab: median_figures(per_server.get(lab, [])) for lab in labels}
        for fig, higher in HEADLINE[wl]:
            row = [wl, fig + (" ↑" if higher else " ↓")]
            for lab in labels:
                m, runs = medians[lab], per_server.get(lab, [])
                if m is None:
                    bad = sum(r.errors for r in runs)
                    row.append(f"INVALID({bad})" if runs else "-")
                else:
                    row.append(fmt(m.get(fig)))
            for a, b in ratio_of:
                r = _ratio(medians.get(a), medians.get(b), fig)
                bound = client_bound(per_server.get(a, [])) or client_bound(per_server.get(b, []))
                row.append("-" if r is None else f"{r:.2f}x" + (" (client-bound)" if bound else ""))
            row.append(_verdicts(wl, fig, medians, labels))
            rows.append(row)
    return rows


def saturation_rows(results: dict[str, dict[str, list[Run]]]) -> list[list[str]]:
    """Per workload, server and measured block: server and client CPU in cores (tree total and
    busiest process) and what saturated, from the first timed run (issue 14 section 2)."""
    rows = [["workload", "server", "block", "server cores", "client cores", "disk", "saturated"]]
    for wl, per_server in results.items():
        for lab, runs in per_server.items():
            if not runs:
                continue
            r = runs[0]
            for block, u in r.usage.items():
                rows.append(
                    [
                        wl,
                        lab,
                        block,
                        f"{u.server_cores:.2f} (busiest {u.server_busiest:.2f}; "
                        + ", ".join(f"{k} {v:.2f}" for k, v in list(u.server_by_name.items())[:3])
                        + ")",
                        f"{u.client_cores:.2f} (busiest {u.client_busiest:.2f} of "
                        f"{u.client_processes})",
                        "-" if u.disk_util is None else f"{100 * u.disk_util:.0f}%",
                        r.saturation[block],
                    ]
                )
    return rows


def _columns(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows)


def table(results: dict[str, dict[str, list[Run]]], labels: list[str]) -> str:
    return _columns(table_rows(results, labels))


def markdown(
    results: dict[str, dict[str, list[Run]]],
    labels: list[str],
    info: dict[str, Any],
    command: str,
    notes: list[str],
) -> str:
    rows = table_rows(results, labels)
    out = [
        "# cgpop vs Dovecot: latest run",
        "",
        f"Command: `{command}`",
        "",
        "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()),
        "",
        "| " + " | ".join(rows[0]) + " |",
        "|" + "---|" * len(rows[0]),
    ]
    out += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    sat = saturation_rows(results)
    out += ["", "What saturated (first timed run; cores = CPU seconds per second):", ""]
    out += ["| " + " | ".join(sat[0]) + " |", "|" + "---|" * len(sat[0])]
    out += ["| " + " | ".join(r) + " |" for r in sat[1:]]
    out += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    return "\n".join(out) + "\n"


def _restart(server: RunningServer, conf: str | None = None) -> None:
    if server.restart_fn is not None:
        server.restart_fn(Path(conf) if conf else None)
        server.info["restarts"] = int(server.info.get("restarts", 0)) + 1  # type: ignore[call-overload]


async def run_all(
    servers: list[RunningServer],
    env: Env,
    names: list[str],
    reps: int,
    single_rep: set[str],
    profile: Path | None = None,
    tls_loop: str = "auto",
) -> dict[str, dict[str, list[Run]]]:
    results: dict[str, dict[str, list[Run]]] = {}
    for name in names:
        wl = WORKLOADS[name]
        applies = APPLIES.get(name, lambda label: True)
        from bench.cgpop_side import NOCACHE_WORKLOADS

        these = [
            s
            for s in servers
            if applies(s.label)
            and (s.label != "cgpop-nocache" or name in NOCACHE_WORKLOADS)
            and (s.label != HP_PLAIN or name in dovecot.PLAIN_WORKLOADS)
            and pgcluster.takes_part(s.label, name)
        ]
        per: dict[str, list[Run]] = {s.label: [] for s in these}
        if not these:
            continue
        results[name] = per
        t_wl = time.perf_counter()
        swapped = [
            s
            for s in these
            if name == "tls" and tls_loop == "asyncio" and "asyncio_config" in s.info
        ]
        for s in swapped:
            _restart(s, str(s.info["asyncio_config"]))
        for s in these:
            if name in FRESH_BEFORE_WARMUP:
                _restart(s)
            warm = await wl(s, env, True)
            if not warm.valid:
                print(
                    f"  {name} warm-up on {s.label}: {warm.errors} errors {warm.error_samples[:3]}",
                    flush=True,
                )
        for rep in range(min(reps, MAX_REPS.get(name, reps))):
            order = these if rep % 2 == 0 else these[::-1]
            for s in order:
                if rep > 0 and s.label in single_rep:
                    continue
                if name in FRESH_BEFORE_EACH:
                    _restart(s)
                spy = None
                if profile is not None and s.label == "cgpop" and rep == 0 and name == names[0]:
                    from bench import profiling

                    spy = profiling.Recorder(s.pid, profile)
                run = await wl(s, env, False)
                if spy is not None:
                    spy.finish()
                per[s.label].append(run)
                figs = ", ".join(f"{k}={fmt(v)}" for k, v in run.figures.items())
                state = "ok" if run.valid else f"INVALID {run.errors} errors"
                print(
                    f"  {name:9} {s.label:16} rep {rep + 1}: {state}; {figs}; server cpu "
                    f"{run.server_cpu_s:.2f}s, loadgen cpu {run.loadgen_cpu_s:.2f}s",
                    flush=True,
                )
                for block, what in run.saturation.items():
                    print(f"      saturated [{block}]: {what}", flush=True)
                for sample in run.error_samples[:3]:
                    print(f"      {sample}", flush=True)
        for s in swapped:
            _restart(s)
        print(f"  {name} done in {time.perf_counter() - t_wl:.0f}s", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    names = args.only or list(WORKLOADS)
    wanted = set(names)
    scale = QUICK if args.quick else FULL
    if args.idle_sessions is not None:
        # --quick splits its few idle sessions over two processes to exercise the split; a
        # chosen count is split by the file limit, as in a full run.
        scale = dataclasses.replace(
            scale, idle_sessions=args.idle_sessions, idle_per_process=FULL.idle_per_process
        )
    if args.idle_sessions_dovecot is not None:
        scale = dataclasses.replace(scale, idle_sessions_dovecot=args.idle_sessions_dovecot)
    ds = QUICK_DATA if args.quick else FULL_DATA
    reps = args.reps or scale.reps
    nofile = raise_nofile()
    use_dovecot = args.server in ("dovecot", "both")
    use_cgpop = args.server in ("cgpop", "both")
    exe = cgpop_side.executable() if use_cgpop else None
    if use_cgpop and exe is None:
        print(
            "cgpop is not installed in this environment (pip install -e .); use --server dovecot",
            file=sys.stderr,
        )
        return 2
    dv_version = dovecot.ensure_installed() if use_dovecot else None

    root = Path(tempfile.mkdtemp(prefix="cgpop-bench-"))
    root.chmod(0o755)  # Dovecot's mail processes run as nobody and must reach the homes
    cert, key = certs.make_cert(root)
    env = Env(
        data=ds,
        scale=scale,
        tls=certs.client_context(cert),
        cafile=cert,
        run_dir=root,
        clients=max(1, args.clients),
    )
    ceiling_proc = None
    pg: pgcluster.Setup | None = None
    servers: list[RunningServer] = []
    setup: dict[str, float] = {}
    print(f"run directory {root}; fd limit {nofile}", flush=True)
    single = set() if args.all_reps else set(scale.single_rep)
    variants = [v.strip() for v in args.cgpop_variants.split(",") if v.strip()]
    try:
        # Maildirs and passwd-file once (dataset.py); cgpop imports the same Maildirs.
        cg: dict[str, tuple[Path, Any, Any]] = {}
        pending = []
        if use_cgpop:
            assert exe is not None
            t0 = time.perf_counter()
            for v in variants:
                wanted_v = wanted if v == "cache" else wanted & cgpop_side.NOCACHE_WORKLOADS
                if not wanted_v:
                    continue
                d = root / cgpop_side.label(v)
                conf, ports = cgpop_side.write_config(
                    d,
                    cert,
                    key,
                    login_cache_ttl=cgpop_side.VARIANTS[v],
                    workers=args.cgpop_workers,
                    metrics=args.cgpop_metrics,
                )
                cg[v] = (d, conf, ports)
                wanted_v = pgcluster.data_workloads(wanted_v)
                pending.append(
                    (v, cgpop_side.create_accounts(exe, conf, ds, wanted_v), conf, wanted_v)
                )
        t0 = time.perf_counter()
        passwd = dovecot.populate(root / "dovecot-data", ds, pgcluster.data_workloads(wanted))
        setup["maildir_write_s"] = time.perf_counter() - t0
        homes = root / "dovecot-data" / "home"
        if use_cgpop:
            assert exe is not None
            t0 = time.perf_counter()
            for _v, proc, conf, wanted_v in pending:
                cgpop_side.finish_accounts(proc, exe, conf, wanted_v)
            setup["cgpop_account_import_wait_s"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _v, _proc, conf, wanted_v in pending:
                cgpop_side.import_maildirs(exe, conf, homes, ds, wanted_v)
            setup["cgpop_mailbox_import_s"] = time.perf_counter() - t0
            for v, (d, conf, ports) in cg.items():
                srv = cgpop_side.start(exe, d, conf, ports, cgpop_side.label(v))
                servers.append(srv)
                if v == "cache" and "filtered" in wanted:
                    setup["cgpop_filtered_lmtp_s"] = asyncio.run(cgpop_side.load_filtered(srv, ds))
            if pgcluster.needed(wanted) and "cache" in cg:
                t0 = time.perf_counter()
                pg = pgcluster.setup(
                    exe,
                    root,
                    cert,
                    key,
                    cg["cache"][1],
                    wanted,
                    workers=args.cgpop_workers,
                    metrics=args.cgpop_metrics,
                )
                servers += pg.servers
                setup["cgpop_pg_setup_s"] = time.perf_counter() - t0
        if use_dovecot:
            for mode in args.dovecot_modes.split(","):
                servers.append(
                    dovecot.start(mode.strip(), root / f"dovecot-{mode.strip()}", passwd, cert, key)
                )
        for s in servers:
            s.info["nofile"] = server_nofile(s.pid)
        if "bigmsg" in wanted:
            body = rawpop.stuffed(big_message(f"{ds.seed}:bigmsg", ds.bigmsg_bytes))
            env.bigmsg_stuffed = len(body)
            ceiling_proc, env.ceiling_port = ceiling.start(root, body + b".\r\n")
        print("setup: " + ", ".join(f"{k} {v:.1f}s" for k, v in setup.items()), flush=True)
        results = asyncio.run(
            run_all(servers, env, names, reps, single, args.profile, args.tls_loop)
        )
    finally:
        if ceiling_proc is not None:
            ceiling_proc.terminate()
            ceiling_proc.wait()
        for s in servers:
            s.stop()
        if pg is not None:
            pg.stop()
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    labels = [s.label for s in servers]
    info = machine(dv_version)
    print()
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    if use_dovecot:
        print("Dovecot settings changed for the load test (both modes):")
        for k, v in dovecot.LOADTEST_SETTINGS.items():
            print(f"  {k} = {v}")
        print("Dovecot high-performance mode adds:")
        for k, v in dovecot.HP_SETTINGS.items():
            print(f"  {k}: {v}")
        print("Dovecot hp-plain is hp with:")
        for k, v in dovecot.PLAIN_SETTINGS.items():
            print(f"  {k}: {v}")
    if use_cgpop:
        print("cgpop settings changed from its defaults:")
        for k, v in cgpop_side.SETTINGS.items():
            print(f"  {k} = {v}")
    print(f"\nmedian of {reps} run(s); ↑ higher is better, ↓ lower is better")
    print(table(results, labels))
    single_ran = sorted(set(labels) & single)
    notes = [
        f"median of {reps} timed run(s) per server after one untimed warm-up, servers "
        "alternating; ↑ higher is better, ↓ lower is better; a run with one failed check is "
        "INVALID and never a figure."
        + (
            f" {', '.join(single_ran)}: one timed run each (beside the ratio, not in it)."
            if single_ran
            else ""
        ),
        "ratios are cgpop / Dovecot high-performance mode (dovecot-hp); dovecot-default is "
        "Dovecot's default process model with the same load-test settings; dovecot-hp-plain "
        "is hp with {PLAIN}-stored passwords (no KDF per login), login-heavy workloads only.",
        "`cgpop` runs its shipped configuration, login_cache_ttl = 60 s (a verified login is "
        "remembered, keyed to the stored keys); `cgpop-nocache` sets it to 0, so every login "
        "pays the 4096-iteration PBKDF2 (login-heavy workloads only).",
        "dovecot-hp has auth_cache_size = 10M, auth_cache_ttl = 1 hour, "
        "auth_cache_verify_password_with_worker = yes: Dovecot caches the stored hash, so a "
        "cache hit still runs the KDF; there is no Dovecot setting that skips it.",
        "passwords: SCRAM-SHA-256 stored keys, PBKDF2-HMAC-SHA256 4096 iterations, 16-byte "
        "salt, on both sides (Dovecot passwd-file `{SCRAM-SHA-256}` entries).",
        "data: one Maildir set written by the harness; Dovecot serves it, cgpop imports the "
        "same files with `cgpop mailbox import`; accounts via `cgpop account import`.",
        "server CPU is the whole process tree's utime+stime from /proc; the load client's is "
        f"the harness plus its {args.clients} client process(es) (--clients). 'What "
        "saturated' names every limit reached in a measured block: a server or client process "
        f"at >= {procstat.PROCESS_SATURATED:g} of a core, all cores >= "
        f"{procstat.MACHINE_SATURATED:.0%} busy (everyone's work: the host may be shared), the "
        f"run directory's disk >= {procstat.DISK_SATURATED:.0%} busy; a ratio is only a "
        "server comparison where the client is not among them.",
        "bigmsg: MB/s is the raw read (rawpop.py: recv_into, only the status line, the stuffed "
        "octet count and the final CRLF.CRLF checked); ceiling = the same read from a bare "
        "os.sendfile server of the same stuffed octets (ceiling.py), interleaved in the same "
        "run; parsed = the line-checking client, what a Python client sees; tls = raw over "
        "implicit TLS, with the server's peak RSS.",
        "memory: idle = growth of the server tree's PSS/RSS (summed over every process: "
        f"workers included) over {scale.idle_sessions:,} held sessions for cgpop and "
        f"{scale.idle_sessions_dovecot:,} for Dovecot, spread over "
        f"{ds.idle_users:,} accounts and 127.0.1.x source addresses, opened by client "
        f"processes of at most {scale.idle_per_process:,} sessions each; fresh_p99 = "
        f"{scale.idle_fresh} fresh login + STAT + QUIT while they are held; cgpop is restarted "
        "before idle and before every bigmsg run, so its figures are those of a fresh process "
        "(peak_rss_MB: whole tree, including the interpreter; Dovecot's is the sum over its "
        "process tree, reused hp processes included).",
        "tls-resume: each client offers its previous connection's TLS session "
        "(wrap_socket(session=...), blocking sockets in threads); resumed_fraction = sessions "
        "the server resumed / sessions that offered one.",
        "filtered (cgpop only): maildrop fbig@bench.local = a copy of bigbox plus "
        f"{ds.filtered_messages():,} messages delivered over LMTP to one@filter.local through "
        "the route `*@filter.local -> fbig@bench.local`; `one@filter.local` sees only those, "
        "`fbig@bench.local` sees all; logins alternate.",
        "Dovecot settings changed from its defaults (all modes): "
        + "; ".join(f"`{k} = {v}`" for k, v in dovecot.LOADTEST_SETTINGS.items()),
        "Dovecot high-performance mode adds: "
        + "; ".join(f"`{k}: {v}`" for k, v in dovecot.HP_SETTINGS.items()),
        f"cgpop [server] workers = {args.cgpop_workers or 'not set (one process)'}.",
        "cgpop settings changed from its defaults: "
        + "; ".join(f"`{k} = {v}`" for k, v in cgpop_side.SETTINGS.items()),
        "setup: " + ", ".join(f"{k} {v:.1f}s" for k, v in setup.items()),
    ]
    if pg is not None:
        notes += pgcluster.notes(pg)
    if use_cgpop and "tls" in results and args.tls_loop == "asyncio":
        notes.insert(3, cgpop_side.TLS_LOOP_NOTE)
    command = "bench/run " + " ".join(argv if argv is not None else sys.argv[1:])
    md = markdown(results, labels, info, command.strip(), notes)
    md_path = args.out.with_suffix(".md")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "machine": info,
        "quick": args.quick,
        "reps": reps,
        "single_rep_servers": sorted(single),
        "command": command,
        "setup_s": setup,
        "scale": scale.__dict__
        if hasattr(scale, "__dict__")
        else {f: getattr(scale, f) for f in scale.__slots__},
        "servers": {
            s.label: {
                "ports": s.ports.__dict__
                if hasattr(s.ports, "__dict__")
                else {f: getattr(s.ports, f) for f in s.ports.__slots__},
                **s.info,
            }
            for s in servers
        },
        "dovecot_settings": {
            "both": dovecot.LOADTEST_SETTINGS,
            "hp": dovecot.HP_SETTINGS,
            "hp-plain": dovecot.PLAIN_SETTINGS,
        },
        "cgpop_settings": cgpop_side.SETTINGS,
        "results": {
            wl: {
                lab: {"median": median_figures(runs), "runs": [r.as_dict() for r in runs]}
                for lab, runs in per.items()
            }
            for wl, per in results.items()
        },
    }
    args.out.write_text(json.dumps(doc, indent=2))
    md_path.write_text(md)
    print(f"\nraw figures: {args.out}; table: {md_path}")
    invalid = any(not r.valid for per in results.values() for runs in per.values() for r in runs)
    return 1 if invalid else 0


if __name__ == "__main__":
    raise SystemExit(main())
