#!/usr/bin/env python3
"""Benchmark the Timesheets API (and, with --peer, the seed's Node stack next to it) with wrk.

    .venv/bin/python bench/run.py [--peer] [--postgres URL] [--duration 10] [--rounds 3]
                                  [--connections 64] [--threads 2] [--warmup 3]

Per round: a fresh service (`timesheets dev` in a new temporary working directory: new signing key,
new SQLite file, or a new PostgreSQL database with --postgres) pinned to CPU 1, and with --peer a
fresh Node peer pinned to CPU 1 that trusts the service's development issuer, so both take the very
same tokens. Both are seeded alike, then every scenario loads the service, then the peer, with wrk
pinned to CPU 0, each after a short warm-up. Printed: one table per scenario, and as the last line
the service/peer ratios. Raw results: bench/results/<timestamp>.json. See bench/README.md.

Only the standard library and httpx (the service's own dependency); --postgres also uses asyncpg,
which the service needs for PostgreSQL anyway.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
LUA_DIR = BENCH_DIR / "lua"
RESULTS_DIR = BENCH_DIR / "results"
PEER_SOURCE = Path("/work/shared/peers/node-seed")
PEER_CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    / "timesheets-bench"
    / "node-seed"
)

AUDIENCE = "https://api.exampleco.com/timesheets"
BENCH_USER = "ann@example.com"
EMPLOYEE_SCOPES = "read:timesheets create:timesheets delete:timesheets"
APPROVER = "manager@example.com"
APPROVER_SCOPES = "read:timesheets create:timesheets approve:timesheets"
OWN_ENTRIES = 50
OTHER_ENTRIES = 100  # the Node peer has exactly these built in (user_id employee<n>@example.org)
PROJECTS = ("StoreZero", "Auth0 Dashboard")

START_TIMEOUT = 30.0  # seconds for a server to answer after it was started
STOP_TIMEOUT = 15.0  # seconds for a server to exit after SIGTERM before it gets SIGKILL
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    script: str  # file in bench/lua
    path: str
    token: str  # which token: "employee", "approver" or "" (none)
    on_peer: bool = True  # False: the peer has no such endpoint; reported as n/a


SCENARIOS = (
    Scenario(
        "get_timesheets",
        "GET /timesheets (the caller's 50 entries)",
        "get.lua",
        "/timesheets",
        "employee",
    ),
    Scenario(
        "get_approvals",
        "GET /approvals (150 pending entries of employees)",
        "get.lua",
        "/approvals",
        "approver",
    ),
    Scenario("get_healthz", "GET /healthz (no token)", "get.lua", "/healthz", "", on_peer=False),
    Scenario(
        "post_timesheets",
        "POST /timesheets (1 h on a new date per request)",
        "post_timesheets.lua",
        "/timesheets",
        "employee",
    ),
)


class BenchError(Exception):
    """A problem that stops the benchmark; the message is for the user."""


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str  # "service" or "peer"
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    info: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    # with --postgres: the pids of the database server's backends that serve this server
    db_backend_pids: Callable[[], list[int]] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any TIMESHEETS_*/AUTH0_* setting of the caller's shell."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TIMESHEETS_", "AUTH0_"))}
    env.update(extra)
    return env


@contextmanager
def running(
    name: str, argv: list[str], cwd: Path, env: dict[str, str], port: int, log_path: Path
) -> Iterator[Server]:
    """Start a server (in a session of its own, so Ctrl-C reaches only this script) and always stop it."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed in finally
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    server = Server(name, proc, port, log_path)
    try:
        yield server
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)  # the server and anything it started (its own session)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_until_up(server: Server, path: str, ok: Callable[[int], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    last = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(
                f"the {server.name} exited with status {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            status = httpx.get(server.base_url + path, timeout=2.0).status_code
            if ok(status):
                return
            last = f"status {status}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    raise BenchError(
        f"the {server.name} did not answer on port {server.port} within {START_TIMEOUT:.0f} s ({last}):\n{server.log_tail()}"
    )


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process, of its live descendants, and of its reaped children, in seconds."""
    parents: dict[int, int] = {}
    times: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        child = int(entry.name)
        parents[child] = int(fields[1])
        ticks = int(fields[11]) + int(fields[12])  # utime, stime
        if child == pid:
            ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: children it waited for
        times[child] = ticks
    if pid not in times:
        raise BenchError(f"process {pid} is gone")
    total = 0
    for proc_id, ticks in times.items():
        ancestor = proc_id
        while ancestor > 1 and ancestor != pid:
            ancestor = parents.get(ancestor, 0)
        if ancestor == pid:
            total += ticks
    return total / CLK_TCK


def process_ticks(pid: int) -> int | None:
    """utime+stime of one process in clock ticks; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None


def cpus_allowed(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


def problems_in_log(log_path: Path) -> list[str]:
    """Log lines that point at server-side trouble (tracebacks, errors, warnings)."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    pattern = re.compile(r"Traceback|ERROR|Error|Exception|WARNING|warn", re.IGNORECASE)
    return [line for line in text.splitlines() if pattern.search(line)][:50]


# --- the service, the peer, the database --------------------------------------------------------


def timesheets_command() -> list[str]:
    local = Path(sys.executable).parent / "timesheets"
    if local.exists():
        return [str(local)]
    found = shutil.which("timesheets")
    if found:
        return [found]
    return [sys.executable, "-m", "timesheets"]


def mint(workdir: Path, env: dict[str, str], *args: str) -> str:
    argv = [*timesheets_command(), "token", *args]
    done = subprocess.run(argv, cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    if done.returncode != 0 or not done.stdout.strip():
        raise BenchError(f"`timesheets token {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout.strip()


@contextmanager
def service(args: argparse.Namespace, round_no: int, lifetime: int) -> Iterator[Server]:
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="timesheets-bench-")))
        if args.postgres:
            database = stack.enter_context(postgres_database(args.postgres, round_no))
            db_url = database.url
        else:
            db_url = "sqlite:///timesheets.db"
        env = clean_env(TIMESHEETS_DATABASE_URL=db_url, PYTHONUNBUFFERED="1")
        port = free_port()
        argv = [
            "taskset",
            "-c",
            str(args.server_cpu),
            *timesheets_command(),
            "dev",
            "--port",
            str(port),
        ]
        info: dict[str, Any] = {}
        # registered before the server starts, so it runs after the server stopped (its last words
        # included) and before the temporary directory with the log goes away
        stack.callback(lambda: info.update(log_problems=problems_in_log(workdir / "server.log")))
        server = stack.enter_context(
            running("service", argv, workdir, env, port, workdir / "server.log")
        )
        server.info = info
        if args.postgres:
            server.db_backend_pids = database.backend_pids
        wait_until_up(server, "/healthz", lambda status: status == 200)
        issuer = json.loads((workdir / ".timesheets-dev" / "issuer.json").read_text())["issuer"]
        life = str(lifetime)
        server.tokens = {
            "employee": mint(
                workdir, env, "--email", BENCH_USER, "--scope", EMPLOYEE_SCOPES, "--lifetime", life
            ),
            "approver": mint(
                workdir, env, "--email", APPROVER, "--scope", APPROVER_SCOPES, "--lifetime", life
            ),
            "machine": mint(workdir, env, "--machine", "--lifetime", life),
            "": "",
        }
        info.update(
            pid=server.proc.pid,
            cpus=cpus_allowed(server.proc.pid),
            issuer=issuer,
            jwks_uri=issuer + ".well-known/jwks.json",
            database=db_url if not args.postgres else redact(db_url),
            workdir=str(workdir),
        )
        yield server


def redact(url: str) -> str:
    return re.sub(r"//([^:/@]+):[^@]*@", r"//\1:***@", url)


@dataclass(frozen=True)
class PostgresDatabase:
    url: str
    name: str
    admin_dsn: str

    def backend_pids(self) -> list[int]:
        """The server processes connected to this database (PostgreSQL runs on this machine)."""
        import asyncio

        import asyncpg

        async def query() -> list[int]:
            conn = await asyncpg.connect(self.admin_dsn, timeout=10)
            try:
                rows = await conn.fetch(
                    "SELECT pid FROM pg_stat_activity WHERE datname = $1", self.name, timeout=10
                )
                return [int(row["pid"]) for row in rows]
            finally:
                await conn.close(timeout=10)

        try:
            return asyncio.run(query())
        except Exception:  # a figure for the report, not worth stopping the run for
            return []


@contextmanager
def postgres_database(admin_url: str, round_no: int) -> Iterator[PostgresDatabase]:
    """A new, empty database on the server of admin_url, dropped afterwards."""
    try:
        import asyncio

        import asyncpg  # the service's own PostgreSQL driver
    except ImportError:
        raise BenchError(
            "--postgres needs asyncpg (the service's dependency) in this Python"
        ) from None

    scheme, sep, rest = admin_url.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise BenchError(f"--postgres wants a postgresql:// URL, not {admin_url!r}")
    admin_dsn = "postgresql://" + rest
    name = f"timesheets_bench_{os.getpid()}_{round_no}"

    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            await conn.execute(sql, timeout=30)
        finally:
            await conn.close(timeout=10)

    try:
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # any driver or network error, in one line
        raise BenchError(
            f"could not create a database on {redact(admin_url)}: {type(exc).__name__}: {exc}"
        ) from None
    base, _, tail = admin_dsn.partition("?")
    url = base.rsplit("/", 1)[0] + "/" + name + ("?" + tail if tail else "")
    try:
        yield PostgresDatabase(url, name, admin_dsn)
    finally:
        try:
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        except Exception as exc:
            print(f"warning: could not drop database {name}: {exc}", file=sys.stderr)


def prepare_peer(source: Path) -> Path:
    """Copy the peer once into the cache (outside the repository) and `npm ci` it there."""
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            raise BenchError(f"--peer needs `{tool}` (Node 20): apt-get install -y nodejs npm")
    if not (source / "server.js").exists():
        raise BenchError(f"the peer's source is missing: {source}/server.js")
    digest = hashlib.sha256()
    for name in ("server.js", "package.json", "package-lock.json"):
        digest.update((source / name).read_bytes())
    stamp = PEER_CACHE / ".bench-stamp"
    if (
        stamp.exists()
        and stamp.read_text() == digest.hexdigest()
        and (PEER_CACHE / "node_modules").is_dir()
    ):
        return PEER_CACHE
    progress(f"preparing the Node peer in {PEER_CACHE} (npm ci)")
    if PEER_CACHE.exists():
        shutil.rmtree(PEER_CACHE)
    PEER_CACHE.mkdir(parents=True)
    for name in ("server.js", "package.json", "package-lock.json", "README.md"):
        if (source / name).exists():
            shutil.copyfile(source / name, PEER_CACHE / name)
    try:
        done = subprocess.run(
            ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=PEER_CACHE,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        raise BenchError("`npm ci` for the peer took more than 10 minutes") from None
    if done.returncode != 0:
        raise BenchError(f"`npm ci` for the peer failed:\n{done.stdout}{done.stderr}")
    stamp.write_text(digest.hexdigest())
    return PEER_CACHE


@contextmanager
def peer(args: argparse.Namespace, peer_dir: Path, svc: Server, logdir: Path) -> Iterator[Server]:
    port = free_port()
    env = clean_env(
        ISSUER=svc.info["issuer"],
        AUDIENCE=AUDIENCE,
        JWKS_URI=svc.info["jwks_uri"],
        PORT=str(port),
        NODE_ENV="production",
    )
    argv = ["taskset", "-c", str(args.server_cpu), "node", "server.js"]
    info: dict[str, Any] = {}
    try:
        with running("peer", argv, peer_dir, env, port, logdir / "peer.log") as server:
            server.info = info
            # it has no health route: any HTTP answer will do
            wait_until_up(server, "/", lambda status: True)
            server.tokens = svc.tokens  # the very same tokens
            info.update(
                pid=server.proc.pid, cpus=cpus_allowed(server.proc.pid), node=node_version()
            )
            yield server
    finally:
        info["log_problems"] = problems_in_log(logdir / "peer.log")


def node_version() -> str:
    try:
        return subprocess.run(
            ["node", "--version"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# --- seeding --------------------------------------------------------------------------------------


def own_entry(i: int) -> dict[str, Any]:
    day = dt.date(2024, 1, 1) + dt.timedelta(days=i)
    return {"project": PROJECTS[i % 2], "date": day.isoformat(), "hours": 4 + i % 5}


def other_entries() -> list[dict[str, Any]]:
    """The same shape as the peer's built-in entries."""
    today = dt.date.today()
    return [
        {
            "user_id": f"employee{n}@example.org",
            "project": PROJECTS[n % 2],
            "date": (today - dt.timedelta(days=n % 7)).isoformat(),
            "hours": 4 + n % 5,
        }
        for n in range(OTHER_ENTRIES)
    ]


def seed(server: Server, upload_others: bool) -> dict[str, Any]:
    auth = {"Authorization": f"Bearer {server.tokens['employee']}"}
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        for i in range(OWN_ENTRIES):
            answer = client.post("/timesheets", json=own_entry(i), headers=auth)
            if answer.status_code != 201:
                raise BenchError(
                    f"seeding the {server.name}: POST /timesheets gave {answer.status_code}: {answer.text[:300]}"
                )
        if upload_others:
            answer = client.post(
                "/timesheets/upload",
                json=other_entries(),
                headers={"Authorization": f"Bearer {server.tokens['machine']}"},
            )
            if answer.status_code != 201:
                raise BenchError(
                    f"seeding the {server.name}: POST /timesheets/upload gave {answer.status_code}: {answer.text[:300]}"
                )
        checks = {}
        for key, path, token, want in (
            ("own", "/timesheets", "employee", OWN_ENTRIES),
            ("pending", "/approvals", "approver", OWN_ENTRIES + OTHER_ENTRIES),
        ):
            answer = client.get(path, headers={"Authorization": f"Bearer {server.tokens[token]}"})
            rows = answer.json() if answer.status_code == 200 else None
            if not isinstance(rows, list) or len(rows) != want:
                got = len(rows) if isinstance(rows, list) else f"status {answer.status_code}"
                raise BenchError(
                    f"after seeding, GET {path} on the {server.name} gave {got}, not {want} entries"
                )
            checks[key] = {"entries": len(rows), "response_bytes": len(answer.content)}
        return checks


# --- wrk ------------------------------------------------------------------------------------------


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    return (
        (done.stdout + done.stderr).splitlines()[0].strip() if (done.stdout + done.stderr) else "?"
    )


def run_wrk(
    args: argparse.Namespace, server: Server, scenario: Scenario, seconds: int, date_slot: int
) -> dict[str, Any]:
    """One wrk run against one server; returns wrk's numbers plus the server's CPU time."""
    env = dict(os.environ)
    env.update(
        BENCH_LUA_DIR=str(LUA_DIR),
        BENCH_TOKEN=server.tokens[scenario.token],
        BENCH_PATH=scenario.path,
        BENCH_DATE_SLOT=str(date_slot),
    )
    argv = [
        "taskset", "-c", str(args.client_cpu), "wrk",
        f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency",
        "-s", str(LUA_DIR / scenario.script), server.base_url + scenario.path,
    ]  # fmt: skip
    if server.proc.poll() is not None:
        raise BenchError(
            f"the {server.name} has exited (status {server.proc.returncode}):\n{server.log_tail()}"
        )
    db_pids = server.db_backend_pids() if server.db_backend_pids else []
    db_before = {pid: process_ticks(pid) or 0 for pid in db_pids}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_before = cpu_seconds(server.proc.pid)
    wall_before = time.monotonic()
    try:
        done = subprocess.run(
            argv,
            cwd=LUA_DIR,
            env=env,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=seconds + 30,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(
            f"wrk did not finish within {seconds + 30:.0f} s against the {server.name}"
        ) from None
    wall = time.monotonic() - wall_before
    cpu_after = cpu_seconds(server.proc.pid)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    db_cpu: float | None = None
    if server.db_backend_pids:
        db_pids = sorted(set(db_pids) | set(server.db_backend_pids()))
        db_ticks = 0
        for pid in db_pids:
            after = process_ticks(pid)
            if after is not None:
                db_ticks += after - db_before.get(pid, 0)
        db_cpu = db_ticks / CLK_TCK
    line = next((ln for ln in done.stdout.splitlines() if ln.startswith("BENCH_RESULT ")), None)
    if done.returncode != 0 or line is None:
        raise BenchError(
            f"wrk failed (status {done.returncode}) against the {server.name}:\n{done.stdout}\n{done.stderr}"
        )
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
    duration = result["duration_us"] / 1e6
    requests = result["requests"]
    cpu = cpu_after - cpu_before
    wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    errors = result["errors"]
    result.update(
        rps=requests / duration if duration else 0.0,
        server_cpu_s=round(cpu, 3),
        cpu_us_per_request=cpu * 1e6 / requests if requests else None,
        server_cpu_share=cpu / wall if wall else None,  # 1.0 = one core busy all the time
        wrk_cpu_share=wrk_cpu / wall if wall else None,
        db_backends=len(db_pids),
        db_cpu_s=None if db_cpu is None else round(db_cpu, 3),
        db_cpu_us_per_request=db_cpu * 1e6 / requests if db_cpu is not None and requests else None,
        socket_errors=errors["connect"] + errors["read"] + errors["write"] + errors["timeout"],
        wrk_output=done.stdout.replace(line, "").strip(),
    )
    return result


# --- reporting -----------------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt_ms(us: float | None) -> str:
    if us is None:
        return "n/a"
    ms = us / 1000
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms"


def fmt_int(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any] | None:
    if not runs:
        return None
    rps = [r["rps"] for r in runs]
    cpu = [r["cpu_us_per_request"] for r in runs if r["cpu_us_per_request"] is not None]
    return {
        "rounds": len(runs),
        "rps_median": median(rps),
        "rps_min": min(rps),
        "rps_max": max(rps),
        "p50_us_median": median([r["latency_us"]["p50"] for r in runs]),
        "p99_us_median": median([r["latency_us"]["p99"] for r in runs]),
        "p99_us_max": max(r["latency_us"]["p99"] for r in runs),
        "cpu_us_per_request_median": median(cpu),
        "cpu_us_per_request_min": min(cpu) if cpu else None,
        "cpu_us_per_request_max": max(cpu) if cpu else None,
        "server_cpu_share_median": median([r["server_cpu_share"] for r in runs]),
        "db_cpu_us_per_request_median": median(
            [r["db_cpu_us_per_request"] for r in runs if r.get("db_cpu_us_per_request") is not None]
        ),
        "wrk_cpu_share_median": median([r["wrk_cpu_share"] for r in runs]),
        "requests_total": sum(r["requests"] for r in runs),
        "non2xx_total": sum(r["non2xx"] for r in runs),
        "non2xx_by_status": merge_counts([r["non2xx_by_status"] for r in runs]),
        "socket_errors_total": sum(r["socket_errors"] for r in runs),
        "socket_errors": merge_counts(
            [{k: v for k, v in r["errors"].items() if k != "status_ge_400"} for r in runs]
        ),
    }


def merge_counts(dicts: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for d in dicts:
        for key, count in d.items():
            merged[key] = merged.get(key, 0) + count
    return merged


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def report(results: dict[str, Any], targets: list[str]) -> list[str]:
    """The tables (one per scenario) and, last, the line of service/peer ratios."""
    lines: list[str] = []
    meta = results["meta"]
    lines.append(
        f"Timesheets API benchmark: {meta['rounds_done']} round(s) x wrk -t{meta['threads']} -c{meta['connections']} "
        f"-d{meta['duration_s']:g}s (+{meta['warmup_s']:g}s warm-up), database {meta['database']}, "
        f"servers on CPU {meta['server_cpu']}, wrk on CPU {meta['client_cpu']}"
    )
    git = meta["git"]
    modified = (
        f" + {len(git['dirty_paths'])} modified path(s) in src/" if git["dirty_paths"] else ""
    )
    lines.append(
        f"service: commit {git['commit'][:12] or '?'}{modified}; peer: {meta['node'] or 'not run'}"
    )
    header = (
        f"  {'target':<8} {'RPS med':>9} {'RPS min-max':>15} {'p50 med':>9} {'p99 med':>9} "
        f"{'CPU us/req':>10} {'min-max':>11} {'srv CPU':>7} {'wrk CPU':>7} {'non-2xx':>8} {'sock err':>8}"
    )
    ratio_parts = []
    for scenario in SCENARIOS:
        summary = results["summary"].get(scenario.key)
        if summary is None:
            continue
        lines.append("")
        lines.append(scenario.title)
        lines.append(header)
        for target in targets:
            s = summary.get(target)
            if s is None:
                why = "no such endpoint on the peer" if not scenario.on_peer else "no data"
                lines.append(f"  {target:<8} n/a ({why})")
                continue
            cpu_range = (
                f"{s['cpu_us_per_request_min']:.0f}-{s['cpu_us_per_request_max']:.0f}"
                if s["cpu_us_per_request_min"] is not None
                else "n/a"
            )
            lines.append(
                f"  {target:<8} {fmt_int(s['rps_median']):>9} {fmt_int(s['rps_min']) + '-' + fmt_int(s['rps_max']):>15} "
                f"{fmt_ms(s['p50_us_median']):>9} {fmt_ms(s['p99_us_median']):>9} "
                f"{fmt_int(s['cpu_us_per_request_median']):>10} {cpu_range:>11} "
                f"{s['server_cpu_share_median'] * 100:>6.0f}% {s['wrk_cpu_share_median'] * 100:>6.0f}% "
                f"{s['non2xx_total']:>8,} {s['socket_errors_total']:>8,}"
            )
            if s["non2xx_total"]:
                lines.append(f"  {'':<8} non-2xx by status: {s['non2xx_by_status']}")
            if s["db_cpu_us_per_request_median"] is not None:
                lines.append(
                    f"  {'':<8} + PostgreSQL backends: {s['db_cpu_us_per_request_median']:,.0f} CPU us/req"
                    " (not pinned; not in the CPU us/req column or the ratios)"
                )
        r = results["ratios"].get(scenario.key)
        if r is None:
            ratio_parts.append(f"{scenario.key} n/a")
        else:
            ratio_parts.append(
                f"{scenario.key} RPS {r['rps']:.2f} CPU/req {r['cpu_per_request']:.2f}"
                if r["rps"] is not None and r["cpu_per_request"] is not None
                else f"{scenario.key} n/a"
            )
    lines.append("")
    if "peer" in targets:
        lines.append(
            "ratios service/peer (of the medians; RPS >1 and CPU/req <1 favour the service): "
            + " | ".join(ratio_parts)
        )
    else:
        lines.append("ratios service/peer: n/a (run with --peer)")
    return lines


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the Timesheets API with wrk; with --peer, side by side with the seed's Node stack.",
        epilog="Prints a table per scenario and, last, the service/peer ratios; raw results go to bench/results/.",
    )
    parser.add_argument(
        "--peer",
        action="store_true",
        help="also load the Node peer (the seed's stack), interleaved",
    )
    parser.add_argument(
        "--peer-source",
        type=Path,
        default=PEER_SOURCE,
        metavar="DIR",
        help=f"the peer's source (server.js, package-lock.json); default {PEER_SOURCE}",
    )
    parser.add_argument(
        "--postgres",
        metavar="URL",
        help="use PostgreSQL: an admin URL (postgresql://user@host:port/db) "
        "on which a fresh database is created and dropped per round; default: a fresh SQLite file",
    )
    parser.add_argument(
        "--duration", type=int, default=10, help="seconds per measured wrk run (default 10)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="seconds of warm-up before each measured run (default 3; 0: none)",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds, each with fresh servers (default 3)"
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument(
        "--server-cpu", type=int, default=1, help="CPU the servers are pinned to (default 1)"
    )
    parser.add_argument(
        "--client-cpu", type=int, default=0, help="CPU wrk is pinned to (default 0)"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(s.key for s in SCENARIOS),
        help="comma list of scenarios to run, in the fixed order (default: all)",
    )
    args = parser.parse_args(argv)
    if (
        args.duration < 1
        or args.warmup < 0
        or args.rounds < 1
        or args.connections < 1
        or args.threads < 1
    ):
        parser.error(
            "--duration >= 1, --warmup >= 0, --rounds >= 1, --connections >= 1, --threads >= 1"
        )
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    if args.threads > 9:
        parser.error(
            "--threads at most 9 (the POST script gives each thread its own range of dates)"
        )
    known = {s.key for s in SCENARIOS}
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in known]
    if unknown or not chosen:
        parser.error(f"unknown scenario(s) {unknown}; choose from {sorted(known)}")
    args.scenario_list = [s for s in SCENARIOS if s.key in chosen]
    return args


def preflight(args: argparse.Namespace) -> None:
    if not sys.platform.startswith("linux"):
        raise BenchError("this benchmark reads /proc and uses taskset: Linux only")
    if not shutil.which("wrk"):
        raise BenchError("wrk is not installed: apt-get install -y wrk")
    if not shutil.which("taskset"):
        raise BenchError("taskset is not installed: apt-get install -y util-linux")
    available = os.sched_getaffinity(0)
    for cpu in (args.server_cpu, args.client_cpu):
        if cpu not in available:
            raise BenchError(f"CPU {cpu} is not available here (available: {sorted(available)})")
    if args.server_cpu == args.client_cpu:
        progress("warning: servers and wrk share one CPU; the figures will not be per-core figures")


def git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=REPO_DIR, capture_output=True, text=True, timeout=10
            ).stdout.rstrip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty_paths": git("status", "--porcelain", "--", "src").splitlines(),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM/SIGHUP like Ctrl-C: unwind, so that every server is stopped
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    try:
        preflight(args)
        peer_dir = prepare_peer(args.peer_source) if args.peer else None
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    targets = ["service", "peer"] if args.peer else ["service"]
    started = dt.datetime.now(dt.UTC)
    per_round_seconds = (
        len(args.scenario_list) * len(targets) * (args.duration + args.warmup + 5) + 60
    )
    lifetime = int(min(31 * 86400, max(3600, 3 * per_round_seconds)))
    results: dict[str, Any] = {
        "meta": {
            "started": started.isoformat().replace("+00:00", "Z"),
            "command": [sys.executable, *sys.argv],
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "rounds": args.rounds,
            "rounds_done": 0,
            "connections": args.connections,
            "threads": args.threads,
            "server_cpu": args.server_cpu,
            "client_cpu": args.client_cpu,
            "database": "postgresql" if args.postgres else "sqlite",
            "targets": targets,
            "scenarios": [s.key for s in args.scenario_list],
            "wrk": wrk_version(),
            "python": platform.python_version(),
            "node": node_version() if args.peer else None,
            "cpus": os.cpu_count(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().strip(),
            "git": git_state(),
        },
        "rounds": [],
    }
    status = 0
    try:
        for round_no in range(1, args.rounds + 1):
            # appended first, filled as it goes: an interrupted round keeps its finished runs
            record: dict[str, Any] = {"round": round_no, "servers": {}, "seed": {}, "runs": []}
            results["rounds"].append(record)
            run_round(args, record, targets, peer_dir, lifetime)
            results["meta"]["rounds_done"] = round_no
    except KeyboardInterrupt:
        print("\ninterrupted: every server was stopped; the results so far follow", file=sys.stderr)
        status = 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 1

    results["meta"]["finished"] = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    results["summary"], results["ratios"] = aggregate(
        results["rounds"], args.scenario_list, targets
    )
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    problems = [
        f"{target} log, round {r['round']}: {line}"
        for r in results["rounds"]
        for target in targets
        for line in r["servers"].get(target, {}).get("log_problems", [])
    ]
    lines = report(results, targets)
    print("\n".join(lines[:-1]))
    if problems:
        print("\nserver log lines that look like trouble (first 20):")
        print("\n".join("  " + p for p in problems[:20]))
    print(f"\nraw results: {out.relative_to(REPO_DIR) if out.is_relative_to(REPO_DIR) else out}")
    print(lines[-1], flush=True)
    return status


def run_round(
    args: argparse.Namespace,
    record: dict[str, Any],
    targets: list[str],
    peer_dir: Path | None,
    lifetime: int,
) -> None:
    round_no = record["round"]
    with ExitStack() as stack:
        progress(f"round {round_no}/{args.rounds}: starting the service")
        svc = stack.enter_context(service(args, round_no, lifetime))
        servers = {"service": svc}
        # the same dict as the service's: it gets log_problems when the service stops
        record["servers"]["service"] = svc.info
        if peer_dir is not None:
            progress(f"round {round_no}/{args.rounds}: starting the Node peer")
            servers["peer"] = stack.enter_context(
                peer(args, peer_dir, svc, Path(svc.info["workdir"]))
            )
            record["servers"]["peer"] = servers["peer"].info
        for target in targets:
            record["seed"][target] = seed(servers[target], upload_others=(target == "service"))
        for scenario in args.scenario_list:
            for target in targets:
                if target == "peer" and not scenario.on_peer:
                    continue
                server = servers[target]
                if args.warmup > 0:
                    run_wrk(args, server, scenario, args.warmup, date_slot=0)
                run = run_wrk(args, server, scenario, args.duration, date_slot=1)
                run.update(round=round_no, scenario=scenario.key, target=target)
                record["runs"].append(run)
                progress(
                    f"round {round_no} {scenario.key:<16} {target:<7} {run['rps']:>8,.0f} req/s  "
                    f"p99 {fmt_ms(run['latency_us']['p99']):>9}  {fmt_int(run['cpu_us_per_request']):>5} us/req  "
                    f"srv CPU {run['server_cpu_share'] * 100:3.0f}%  non-2xx {run['non2xx']}  sock err {run['socket_errors']}"
                )
                if run["non2xx"]:
                    progress(f"    non-2xx {run['non2xx_by_status']}: {run['non2xx_sample'][:200]}")


def aggregate(
    rounds: list[dict[str, Any]], scenarios: list[Scenario], targets: list[str]
) -> tuple[dict[str, Any], dict[str, Any]]:
    summary: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for scenario in scenarios:
        by_target = {}
        for target in targets:
            runs = [
                run
                for r in rounds
                for run in r["runs"]
                if run["scenario"] == scenario.key and run["target"] == target
            ]
            by_target[target] = summarize(runs)
        summary[scenario.key] = by_target
        a, b = by_target.get("service"), by_target.get("peer")
        if a and b:
            per_round = []
            for r in rounds:
                pair = {run["target"]: run for run in r["runs"] if run["scenario"] == scenario.key}
                if "service" in pair and "peer" in pair:
                    per_round.append(
                        {
                            "round": r["round"],
                            "rps": ratio(pair["service"]["rps"], pair["peer"]["rps"]),
                            "cpu_per_request": ratio(
                                pair["service"]["cpu_us_per_request"],
                                pair["peer"]["cpu_us_per_request"],
                            ),
                        }
                    )
            ratios[scenario.key] = {
                "rps": ratio(a["rps_median"], b["rps_median"]),
                "cpu_per_request": ratio(
                    a["cpu_us_per_request_median"], b["cpu_us_per_request_median"]
                ),
                "per_round": per_round,
            }
        else:
            ratios[scenario.key] = None
    return summary, ratios


if __name__ == "__main__":
    sys.exit(main())
