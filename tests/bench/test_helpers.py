"""Pure helpers of the bench: what saturated, client splitting and merging, idle addresses."""

from __future__ import annotations

from bench import clients, procstat
from bench.cgpop_side import toml_workers
from bench.loadgen import Tally
from bench.workloads import PORTS_PER_ADDRESS, idle_sources


def usage(**kw: float) -> procstat.Usage:
    base = dict(
        wall_s=1.0,
        server_cores=0.5,
        server_busiest=0.5,
        client_cores=0.3,
        client_busiest=0.3,
        client_processes=1,
        machine_cores=0.8,
        nproc=2,
        disk_util=0.1,
    )
    base.update(kw)
    return procstat.Usage(**base)  # type: ignore[arg-type]


def test_nothing_saturated_is_latency_bound() -> None:
    assert procstat.saturated(usage()) == []
    assert "latency-bound" in procstat.verdict(usage())


def test_each_limit_is_named() -> None:
    assert procstat.verdict(usage(server_busiest=0.97)) == "server CPU (busiest process 0.97 core)"
    assert procstat.verdict(usage(client_busiest=0.9, client_processes=3)) == (
        "client CPU (busiest of 3 processes 0.90 core)"
    )
    assert procstat.verdict(usage(machine_cores=1.9)) == "all cores (1.90 of 2)"
    assert procstat.verdict(usage(disk_util=0.95)) == "disk (95% busy)"
    both = procstat.saturated(usage(server_busiest=1.0, client_busiest=1.0, machine_cores=2.0))
    assert [s.split(" (")[0] for s in both] == ["server CPU", "client CPU", "all cores"]


def test_unknown_disk_is_not_a_limit() -> None:
    assert procstat.saturated(usage(disk_util=None)) == []


def test_split_sums_to_total() -> None:
    assert clients.split(10, 3) == [4, 3, 3]
    assert clients.split(2, 4) == [1, 1, 0, 0]
    assert sum(clients.split(100_000, 7)) == 100_000


def test_merge_adds_counts_and_checks_listings_across_processes() -> None:
    a, b = Tally(), Tally()
    a.sessions, a.retr_bytes, a.listings["u"] = 2, 10, ([b"x", b"y"], [1, 2])
    b.sessions, b.retr_bytes, b.listings["u"] = 3, 5, ([b"x", b"y"], [1, 2])
    b.fail("one")
    b.errors += 4  # five failures, one sample
    into = Tally()
    clients.merge(into, clients.tally_to_json(a))
    clients.merge(into, clients.tally_to_json(b))
    assert (into.sessions, into.retr_bytes, into.errors, into.samples) == (5, 15, 5, ["one"])
    c = Tally()
    c.listings["u"] = ([b"x", b"z"], [1, 2])
    clients.merge(into, clients.tally_to_json(c))
    assert into.errors == 6
    assert "differ between client processes" in into.samples[-1]


def test_idle_sources_keep_each_address_under_its_port_range() -> None:
    assert idle_sources(300) == ["127.0.1.1", "127.0.1.2"]
    many = idle_sources(100_000)
    assert len(many) * PORTS_PER_ADDRESS >= 100_000
    assert len(many) == 4 and many[-1] == "127.0.1.4"


def test_workers_as_toml() -> None:
    assert toml_workers("8") == "8"
    assert toml_workers("auto") == '"auto"'


def test_combined_blocks_weigh_by_wall_time() -> None:
    a = usage(wall_s=1.0, server_busiest=1.0, disk_util=0.0)
    b = usage(wall_s=3.0, server_busiest=0.2, disk_util=None)
    c = procstat.combine([a, b])
    assert c.wall_s == 4.0
    assert abs(c.server_busiest - 0.4) < 1e-9
    assert c.disk_util is None  # unknown in one block: unknown overall


def test_a_ratio_on_a_client_bound_run_is_marked() -> None:
    from bench.__main__ import table_rows
    from bench.workloads import Run

    def run(rate: float, saturated: str) -> Run:
        r = Run(figures={"sessions_per_s": rate, "server_cpu_ms_per_session": 1.0})
        r.saturation["run"] = saturated
        return r

    server_bound = {"cgpop": [run(10.0, "all cores (1.95 of 2)")], "dovecot-hp": [run(5.0, "x")]}
    rows = table_rows({"sessions": server_bound}, ["cgpop", "dovecot-hp"])
    assert rows[1][4] == "2.00x"
    client = {"cgpop": [run(10.0, "client CPU (busiest of 1 process 0.95 core)")]}
    rows = table_rows({"sessions": {**server_bound, **client}}, ["cgpop", "dovecot-hp"])
    assert rows[1][4] == "2.00x (client-bound)"
