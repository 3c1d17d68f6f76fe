"""The benchmark's preflight, so that bench/run.py cannot rot: the service is started the way the
benchmark starts it (`timesheets dev` on a free port in a temporary directory, one pinned process
and the whole-box layout's 2 workers), seeded by the benchmark's own functions, and every scenario
must answer its status and body shape. No load: wrk is not needed. The peer part needs Node and the
peer prepared by an earlier `bench/run.py --peer`; without them only that part is skipped."""

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from .conftest import POSTGRES_URL

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 20.0  # seconds for the service (or the peer) to answer; the whole test takes a few


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


bench = load_bench()


def per_core_cpu() -> int | None:
    """The per-core layout's CPU, as the benchmark pins it, where this machine has it."""
    cpu = bench.layouts(bench.parse_args([])).get(bench.PER_CORE).server_cpu
    if shutil.which("taskset") and cpu in os.sched_getaffinity(0):
        return int(cpu)
    return None


def gone(pid: int) -> bool:
    return bench.proc_state(pid) in (None, "Z", "X")


@pytest.fixture
def started() -> Iterator[list[int]]:
    """Collects the pids of every server a test starts; afterwards none may be left running."""
    pids: list[int] = []
    yield pids
    left = [pid for pid in pids if not gone(pid)]
    assert not left, f"processes left behind: {[(pid, bench.cmdline(pid)) for pid in left]}"


WRONG = bench.Scenario(
    "healthz_as_entries",
    "GET /healthz taken for a list",
    "get.lua",
    "/healthz",
    "",
    shape="entries",
)


def check_service(
    started: list[int], workers: int, cpu: int | None, postgres: str | None, wrong: bool = False
) -> None:
    with bench.service(
        workers=workers,
        cpu=cpu,
        postgres=postgres,
        db_name=f"test_w{workers}",
        lifetime=600,
        start_timeout=START_TIMEOUT,
    ) as server:
        processes = bench.tree(server.proc.pid)
        started.extend(processes)
        assert len(bench.workers_of(server)) == workers
        bench.seed(server)
        if wrong:  # the preflight does find a scenario whose answer has another shape
            with pytest.raises(bench.BenchError, match="GET /healthz on the service: not a bare"):
                bench.preflight(server, [WRONG])
        checks = bench.preflight(server)
        memory = bench.memory(server)
    assert set(checks) == {s.key for s in bench.SCENARIOS}
    assert checks["get_timesheets"]["entries"] == bench.OWN_ENTRIES
    assert checks["get_approvals"]["entries"] == bench.OWN_ENTRIES + bench.OTHER_ENTRIES
    assert checks["post_timesheets"]["status"] == 201
    serving = [p for p in memory if p["role"] in ("process", "worker")]
    assert len(serving) == workers and all(p["rss_kb"] > 0 for p in serving)
    assert server.proc.returncode is not None


def test_preflight_passes_on_the_per_core_service_and_finds_a_wrong_shape(
    started: list[int],
) -> None:
    check_service(started, workers=1, cpu=per_core_cpu(), postgres=None, wrong=True)


def test_preflight_passes_on_the_whole_box_service_with_two_workers(started: list[int]) -> None:
    check_service(started, workers=2, cpu=None, postgres=None)


@pytest.mark.postgres
@pytest.mark.skipif(not POSTGRES_URL, reason="TIMESHEETS_TEST_POSTGRES_URL is not set")
def test_preflight_passes_on_the_service_on_postgresql(started: list[int]) -> None:
    check_service(started, workers=1, cpu=per_core_cpu(), postgres=POSTGRES_URL)


def test_preflight_passes_on_the_node_peer(started: list[int]) -> None:
    peer_dir = bench.prepared_peer(bench.PEER_SOURCE)
    if peer_dir is None:
        pytest.skip("needs Node and the peer prepared by `bench/run.py --peer` (no npm in tests)")
    with bench.service(cpu=None, lifetime=600, start_timeout=START_TIMEOUT) as svc:
        started.extend(bench.tree(svc.proc.pid))
        with bench.peer(
            peer_dir, svc, Path(svc.info["workdir"]), start_timeout=START_TIMEOUT
        ) as node:
            started.append(node.proc.pid)
            bench.seed(node)
            checks = bench.preflight(node)
            held = bench.peer_store_size(node)
    assert "get_healthz" not in checks  # the peer has no such route
    assert checks["get_timesheets"]["entries"] == bench.OWN_ENTRIES
    assert checks["get_approvals"]["entries"] == bench.OWN_ENTRIES + bench.OTHER_ENTRIES
    assert held == bench.OWN_ENTRIES + bench.OTHER_ENTRIES


def fake_run(
    target: str,
    *,
    rps: float,
    service_us: float,
    wrk_share: float,
    scenario: str = "get_timesheets",
    p99_us: int = 5000,
) -> dict[str, object]:
    """One wrk run as `run_wrk` records it, with just the fields the summaries and the report read."""
    return {
        "scenario": scenario,
        "target": target,
        "rps": rps,
        "requests": int(rps * 10),
        "wall_s": 10.0,
        "latency_us": {"p50": 1000, "p99": p99_us},
        "cpu_us_per_request": service_us,
        "server_cpu_share": rps * service_us / 1e6,
        "wrk_cpu_share": wrk_share,
        "other_cpu_share": 0.0,
        "non2xx": 0,
        "non2xx_by_status": {},
        "socket_errors": 0,
        "errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status_ge_400": 0},
        "server_cpu_by_process": [],
        "memory": [{"pid": 1, "role": "process", "name": "process", "rss_kb": 100 * 1024}],
    }


def test_the_scaling_ceiling_counts_what_wrk_takes_of_the_whole_box() -> None:
    # one process: 10,000 req/s at 100 us each; the whole box (4 CPUs, workers at 120 us a
    # request): wrk spends 25 us a request (75 % of a CPU at 30,000 req/s), so 4 CPUs serve about
    # 4e6 / (100 + 25) = 32,000 req/s at best: 3.2x
    rounds = [
        {
            "round": 1,
            "runs": [
                fake_run(bench.SERVICE, rps=10_000, service_us=100, wrk_share=0.2),
                fake_run(bench.BOX, rps=30_000, service_us=120, wrk_share=0.75),
            ],
        }
    ]
    scenario = [s for s in bench.SCENARIOS if s.key == "get_timesheets"]
    _, _, scaling = bench.aggregate(rounds, scenario, [bench.SERVICE, bench.BOX], cores=4)
    found = scaling["get_timesheets"]
    assert found["rps"] == pytest.approx(3.0)
    assert found["ceiling"]["wrk_us"] == pytest.approx(25)
    assert found["ceiling"]["rps"] == pytest.approx(3.2)
    assert "same 4 CPUs: about 3.20x" in bench.ceiling_text(found["ceiling"])


def test_the_peers_post_runs_report_how_many_entries_it_held() -> None:
    runs = [
        {**fake_run("peer", rps=1000, service_us=900, wrk_share=0.1), "peer_entries": held}
        for held in (13_000, 15_500, 14_000)
    ]
    assert bench.summarize(runs)["peer_entries_median"] == 14_000
    service_runs = [fake_run("service", rps=1500, service_us=600, wrk_share=0.1)]
    assert bench.summarize(service_runs)["peer_entries_median"] is None


def fake_results(runs: list[dict[str, object]]) -> dict[str, object]:
    """What `main` records of a one-round run with the peer and both layouts, concluded as it does."""
    targets = [bench.SERVICE, bench.PEER, bench.BOX]
    args = bench.parse_args(["--peer"])
    results: dict[str, object] = {
        "meta": {
            "rounds_done": 1, "threads": 2, "connections": 64, "duration_s": 10, "warmup_s": 3,
            "database": "sqlite", "cpus": 2, "loadavg_at_start": "0.50 0.40 0.30 1/100 1",
            "loadavg_at_end": "1.90 1.20 0.70 1/100 2", "node": "v20.0.0", "targets": targets,
            "layouts": {key: vars(layout) for key, layout in bench.layouts(args).items()},
            "git": {"commit": "c0ffee" * 6 + "c0ff", "dirty_paths": [], "src_diff_sha256": ""},
        },
        "rounds": [{"round": 1, "keepalive": {}, "runs": runs, "memory_end": {}}],
        "leak": [],
    }  # fmt: skip
    bench.conclude(results, list(bench.SCENARIOS), cores=2)
    return results


def test_the_report_gives_each_target_its_verdict_and_ends_with_the_ratios() -> None:
    runs = []
    for scenario in bench.SCENARIOS:
        key = scenario.key
        runs.append(
            fake_run(bench.SERVICE, rps=10_000, service_us=100, wrk_share=0.2, scenario=key)
        )
        runs.append(fake_run(bench.BOX, rps=16_000, service_us=110, wrk_share=0.2, scenario=key))
        if scenario.on_peer:
            peer_rps = 5_000 if key == "post_timesheets" else 4_000
            runs.append(
                fake_run(
                    bench.PEER,
                    rps=peer_rps,
                    service_us=250,
                    wrk_share=0.1,
                    scenario=key,
                    p99_us=20_000,
                )
                | ({"peer_entries": 31_000} if key == "post_timesheets" else {})
            )
    lines = bench.report(fake_results(runs))
    text = "\n".join(lines)

    post_table = text[text.index(bench.SCENARIOS[-1].title) :]
    peer_row = next(line for line in post_table.splitlines() if line.strip().startswith("peer"))
    assert "5,000" in peer_row
    assert "it held 31,000 entries after the run" in post_table
    assert "GET /timesheets RPS >= 2x peer's: met (2.50x); 10,000 vs 4,000 req/s" in text
    assert "POST /timesheets RPS >= 3x peer's: MISSED by 33% (2.00x of 3.00x" in text
    assert "GET /timesheets p99 <= 0.5x peer's: met (0.25x)" in text
    assert "get_healthz with 2 workers >= 1.7x 1 process: MISSED by 6% (1.60x of 1.70x" in text
    assert "ceiling with wrk on the same 2 CPUs: about 1.78x" in text
    assert "resident memory per worker < 150 MB: met (peak 100.0 MB" in text
    assert lines[-1].startswith("ratios service/peer, per core")
    assert "get_timesheets RPS 2.50 CPU/req 0.40 p99 0.25" in lines[-1]
    assert "get_healthz n/a" in lines[-1]  # the peer has no /healthz
