#!/usr/bin/env python3
"""Benchmark the Timesheets API (and, with --peer, the seed's Node stack next to it) with wrk.

    .venv/bin/python bench/run.py [--peer] [--postgres URL] [--duration 10] [--rounds 3]
                                  [--layouts per-core,whole-box] [--workers 2] [--leak-rounds 5]

Two layouts, measured in the same rounds, interleaved per scenario:
  per-core   one process per target pinned to CPU 1 (`taskset -c 1 timesheets dev`, and with --peer
             `taskset -c 1 node server.js`), wrk pinned to CPU 0: a per-core figure.
  whole-box  the service as `timesheets dev --workers 2`, nothing pinned, wrk not pinned either:
             what the whole 2-core machine serves.
Per round every server is fresh (`timesheets dev` in a new temporary working directory: new signing
key, new SQLite file, or a new PostgreSQL database with --postgres), seeded alike and checked by
`preflight()` (every scenario answers with its status and body shape). Then each scenario loads the
per-core service, the peer, the whole-box service, each after a short warm-up. After the rounds, a
leak check per layout runs each scenario --leak-rounds times on one long-lived server and watches the
resident memory of its processes. Printed: one table per scenario, memory, the leak check, the
scaling 2 workers / 1, one verdict per target of the issue, and as the last line the service/peer
ratios. Raw results: bench/results/<timestamp>.json. See bench/README.md.

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
from collections.abc import Callable, Iterator, Sequence
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
PENDING_ENTRIES = OWN_ENTRIES + OTHER_ENTRIES
PROJECTS = ("StoreZero", "Auth0 Dashboard")
ENTRY_FIELDS = ("id", "user_id", "project", "date", "hours", "approved")

START_TIMEOUT = 30.0  # seconds for a server to answer after it was started
STOP_TIMEOUT = 15.0  # seconds for a server to exit after SIGTERM before it gets SIGKILL
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024

# The issue's bounds (issue 5): checked and printed as verdicts, never used to steer the run.
MEMORY_BOUND_MB = 150.0  # resident memory per worker after the benchmark
GOAL_SCALING = 1.7  # whole-box (2 workers) RPS / per-core RPS


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    script: str  # file in bench/lua
    path: str
    token: str  # which token: "employee", "approver" or "" (none)
    on_peer: bool = True  # False: the peer has no such endpoint; reported as n/a
    method: str = "GET"
    status: int = 200  # what every request of the scenario must answer
    shape: str = "array"  # "entries" (the caller's entries), "array", "object_with_id" or "any"
    entries: int | None = None  # how many items the array has after seeding


SCENARIOS = (
    Scenario(
        "get_timesheets",
        "GET /timesheets (the caller's 50 entries)",
        "get.lua",
        "/timesheets",
        "employee",
        shape="entries",
        entries=OWN_ENTRIES,
    ),
    Scenario(
        "get_approvals",
        "GET /approvals (150 pending entries of employees)",
        "get.lua",
        "/approvals",
        "approver",
        shape="array",
        entries=PENDING_ENTRIES,
    ),
    Scenario(
        "get_healthz",
        "GET /healthz (no token)",
        "get.lua",
        "/healthz",
        "",
        on_peer=False,
        shape="any",
    ),
    Scenario(
        "post_timesheets",
        "POST /timesheets (1 h on a new date per request)",
        "post_timesheets.lua",
        "/timesheets",
        "employee",
        method="POST",
        status=201,
        shape="object_with_id",
    ),
)


@dataclass(frozen=True)
class Layout:
    """How a target is started and loaded: pinned one process per core, or the whole box."""

    key: str  # "per-core" or "whole-box"
    workers: int  # the service's uvicorn workers (the peer is always one process)
    server_cpu: int | None  # the CPU the servers are pinned to; None: not pinned
    client_cpu: int | None  # the CPU wrk is pinned to; None: not pinned

    def describe(self) -> str:
        where = f"pinned to CPU {self.server_cpu}" if self.server_cpu is not None else "not pinned"
        client = f"pinned to CPU {self.client_cpu}" if self.client_cpu is not None else "not pinned"
        what = "one process per target" if self.workers == 1 else f"{self.workers} workers"
        return f"{self.key}: {what}, {where}; wrk {client}"


PER_CORE, WHOLE_BOX = "per-core", "whole-box"
# Targets of a run: the service and the peer in the per-core layout, the service in the whole box
SERVICE, PEER, BOX = "service", "peer", "box"
TARGET_LABELS = {SERVICE: "service", PEER: "peer", BOX: "service"}


class BenchError(Exception):
    """A problem that stops the benchmark; the message is for the user."""


# --- processes ----------------------------------------------------------------------------------


@dataclass
class Server:
    name: str  # "service" or "peer"
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path
    label: str = ""  # for messages: "service (2 workers)"
    workers: int = 1
    info: dict[str, Any] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)
    # with --postgres: the pids of the database server's backends that serve this server
    db_backend_pids: Callable[[], list[int]] | None = None

    def __post_init__(self) -> None:
        self.label = self.label or self.name

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_peer(self) -> bool:
        return self.name == "peer"

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


def pinned(cpu: int | None, argv: list[str]) -> list[str]:
    """argv run through `taskset -c cpu` (which execs it: same pid), or as is when cpu is None."""
    return argv if cpu is None else ["taskset", "-c", str(cpu), *argv]


@contextmanager
def running(
    name: str,
    argv: list[str],
    cwd: Path,
    env: dict[str, str],
    port: int,
    log_path: Path,
    label: str = "",
    workers: int = 1,
) -> Iterator[Server]:
    """Start a server (in a session of its own, so Ctrl-C reaches only this script) and always stop it."""
    log = open(log_path, "wb")  # noqa: SIM115 - closed in finally
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    except BaseException:
        log.close()
        raise
    server = Server(name, proc, port, log_path, label=label, workers=workers)
    try:
        yield server
    finally:
        stop(proc)
        log.close()


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's whole process group (its workers included), SIGKILL if it lingers.

    Waits for the server itself and then for every other member of its group (uvicorn's workers and
    multiprocessing's resource tracker), each wait bounded."""
    group = proc.pid  # start_new_session: the server leads a group of its own
    for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            break
        except PermissionError:  # the group id was reused by someone else's process: ours are gone
            break
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        if wait_group_gone(group, timeout=wait):
            break
    if proc.poll() is None:  # reap it if SIGKILL got it
        try:
            proc.wait(timeout=5.0)
        except subprocess.TimeoutExpired:
            pass


def wait_group_gone(group: int, timeout: float) -> bool:
    """True once no live (non-zombie) process of the group is left; False after timeout seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if not [pid for pid in group_members(group) if proc_state(pid) not in ("Z", "X", None)]:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def group_members(group: int) -> list[int]:
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = stat_fields(int(entry.name))
        if fields is not None and int(fields[2]) == group:
            members.append(int(entry.name))
    return members


def stat_fields(pid: int) -> list[bytes] | None:
    """The fields of /proc/<pid>/stat after the command name: [state, ppid, pgrp, ...]."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None


def proc_state(pid: int) -> str | None:
    """R, S, D, Z, ... of a process; None when it is gone."""
    fields = stat_fields(pid)
    return fields[0].decode() if fields else None


def wait_until_up(
    server: Server, path: str, ok: Callable[[int], bool], timeout: float = START_TIMEOUT
) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(
                f"the {server.label} exited with status {server.proc.returncode}:\n{server.log_tail()}"
            )
        try:
            status = httpx.get(server.base_url + path, timeout=2.0).status_code
            if ok(status):
                break
            last = f"status {status}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.1)
    else:
        raise BenchError(
            f"the {server.label} did not answer on port {server.port} within {timeout:.0f} s ({last}):\n{server.log_tail()}"
        )
    # with several workers: until each of them runs (the first one may answer before the others)
    while len(workers_of(server)) < server.workers:
        if time.monotonic() > deadline:
            raise BenchError(
                f"the {server.label} did not start its {server.workers} workers within {timeout:.0f} s:\n{server.log_tail()}"
            )
        time.sleep(0.1)


# --- CPU time and memory of a process tree ---------------------------------------------------------


def process_table() -> dict[int, list[bytes]]:
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = stat_fields(int(entry.name))
            if fields is not None:
                table[int(entry.name)] = fields
    return table


def tree(root: int, table: dict[int, list[bytes]] | None = None) -> list[int]:
    """root and its live descendants, by pid."""
    table = process_table() if table is None else table
    parents = {pid: int(fields[1]) for pid, fields in table.items()}
    found = []
    for pid in table:
        ancestor = pid
        while ancestor > 1 and ancestor != root:
            ancestor = parents.get(ancestor, 0)
        if ancestor == root:
            found.append(pid)
    return sorted(found)


def cpu_ticks_by_process(root: int) -> dict[int, int]:
    """utime+stime in clock ticks of root and each live descendant; root's entry also counts the
    children it waited for (cutime, cstime: uvicorn's supervisor reaps its workers)."""
    table = process_table()
    if root not in table:
        raise BenchError(f"process {root} is gone")
    ticks = {}
    for pid in tree(root, table):
        fields = table[pid]
        ticks[pid] = int(fields[11]) + int(fields[12])
        if pid == root:
            ticks[pid] += int(fields[13]) + int(fields[14])
    return ticks


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process, of its live descendants, and of its reaped children, in seconds."""
    return sum(cpu_ticks_by_process(pid).values()) / CLK_TCK


def process_ticks(pid: int) -> int | None:
    """utime+stime of one process in clock ticks; None when it is gone."""
    fields = stat_fields(pid)
    try:
        return int(fields[11]) + int(fields[12]) if fields else None
    except (IndexError, ValueError):
        return None


def rss_kb(pid: int) -> int | None:
    """VmRSS of a process in kB; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return 0  # a zombie has no VmRSS line


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def role(server: Server, pid: int) -> str:
    """What a process of a server's tree is: "process" (a single-process server), "supervisor"
    (uvicorn's parent of several workers), "worker", "resource tracker" (multiprocessing's), "other"."""
    if pid == server.proc.pid:
        return "process" if server.workers == 1 else "supervisor"
    line = cmdline(pid)
    if "resource_tracker" in line:
        return "resource tracker"
    if "spawn_main" in line or "multiprocessing" in line:
        return "worker"
    return "other"


def workers_of(server: Server) -> list[int]:
    """The pids that serve requests: the server itself, or its uvicorn workers."""
    if server.workers == 1:
        return [server.proc.pid]
    return [pid for pid in tree(server.proc.pid) if role(server, pid) == "worker"]


def memory(server: Server) -> list[dict[str, Any]]:
    """Every live process of a server with its role and VmRSS; workers numbered by pid."""
    out = []
    n = 0
    for pid in tree(server.proc.pid):
        kind = role(server, pid)
        kb = rss_kb(pid)
        if kb is None or proc_state(pid) == "Z":
            continue
        if kind == "worker":
            n += 1
            name = f"worker {n}"
        else:
            name = kind
        out.append({"pid": pid, "role": kind, "name": name, "rss_kb": kb})
    return out


def machine_busy_seconds() -> float:
    """CPU time spent by all CPUs on anything but idling (from /proc/stat), in seconds."""
    with open("/proc/stat", "rb") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle, iowait
    busy = sum(fields[:8]) - idle  # user nice system idle iowait irq softirq steal
    return busy / CLK_TCK


def cpus_allowed(pid: int) -> str:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


TROUBLE = re.compile(
    r"Traceback|\b(ERROR|WARNING|CRITICAL|FATAL)\b|\b\w*(Error|Exception|Warning)\b"
    r"|\"level\":\s*\"(error|warning|critical)\""
)


def problems_in_log(log_path: Path) -> list[str]:
    """Log lines that point at server-side trouble (tracebacks, errors, warnings); case matters,
    so that a logger's name such as `uvicorn.error` on an INFO line is not taken for one."""
    try:
        text = log_path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if TROUBLE.search(line)][:50]


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
def service(
    *,
    workers: int = 1,
    cpu: int | None = None,
    postgres: str | None = None,
    db_name: str = "",
    lifetime: int = 3600,
    start_timeout: float = START_TIMEOUT,
    extra_env: dict[str, str] | None = None,
) -> Iterator[Server]:
    """`timesheets dev --port <free port> [--workers N]` in a new temporary working directory (a new
    development signing key, a new SQLite file, or with `postgres` a new database on that server),
    pinned to `cpu` unless None; answers /healthz with all its workers up, and has its tokens minted.
    Stopped, with everything it started, when the block ends."""
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="timesheets-bench-")))
        if postgres:
            database = stack.enter_context(postgres_database(postgres, db_name or "x"))
            db_url = database.url
        else:
            db_url = "sqlite:///timesheets.db"
        # One caller at thousands of requests a second is the benchmark's load, not a client's:
        # the per-caller limit stays on (its cost is measured) but so high that it never refuses.
        env = clean_env(
            TIMESHEETS_DATABASE_URL=db_url,
            TIMESHEETS_RATE_LIMIT_PER_MINUTE=str(10**9),
            PYTHONUNBUFFERED="1",
        )
        env.update(extra_env or {})
        port = free_port()
        argv = [*timesheets_command(), "dev", "--port", str(port)]
        if workers != 1:
            argv += ["--workers", str(workers)]
        label = "service" if workers == 1 else f"service ({workers} workers)"
        info: dict[str, Any] = {}
        # registered before the server starts, so it runs after the server stopped (its last words
        # included) and before the temporary directory with the log goes away
        stack.callback(lambda: info.update(log_problems=problems_in_log(workdir / "server.log")))
        server = stack.enter_context(
            running(
                "service",
                pinned(cpu, argv),
                workdir,
                env,
                port,
                workdir / "server.log",
                label=label,
                workers=workers,
            )
        )
        server.info = info
        if postgres:
            server.db_backend_pids = database.backend_pids
        wait_until_up(server, "/healthz", lambda status: status == 200, timeout=start_timeout)
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
            workers=workers,
            worker_pids=workers_of(server),
            cpus=cpus_allowed(server.proc.pid),
            issuer=issuer,
            jwks_uri=issuer + ".well-known/jwks.json",
            database=db_url if not postgres else redact(db_url),
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
def postgres_database(admin_url: str, label: str) -> Iterator[PostgresDatabase]:
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
    name = f"timesheets_bench_{os.getpid()}_{re.sub(r'[^a-z0-9_]', '_', label.lower())}"

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


def peer_digest(source: Path) -> str:
    digest = hashlib.sha256()
    for name in ("server.js", "package.json", "package-lock.json"):
        digest.update((source / name).read_bytes())
    return digest.hexdigest()


def prepared_peer(source: Path = PEER_SOURCE) -> Path | None:
    """The peer's prepared copy when it is current and Node is installed; None otherwise (nothing
    is installed: for callers, such as the tests, that must not reach a registry)."""
    if not shutil.which("node") or not (source / "server.js").exists():
        return None
    stamp = PEER_CACHE / ".bench-stamp"
    try:
        current = stamp.read_text() == peer_digest(source)
    except OSError:
        return None
    return PEER_CACHE if current and (PEER_CACHE / "node_modules").is_dir() else None


def prepare_peer(source: Path) -> Path:
    """Copy the peer once into the cache (outside the repository) and `npm ci` it there."""
    for tool in ("node", "npm"):
        if not shutil.which(tool):
            raise BenchError(f"--peer needs `{tool}` (Node 20): apt-get install -y nodejs npm")
    if not (source / "server.js").exists():
        raise BenchError(f"the peer's source is missing: {source}/server.js")
    ready = prepared_peer(source)
    if ready is not None:
        return ready
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
    (PEER_CACHE / ".bench-stamp").write_text(peer_digest(source))
    return PEER_CACHE


@contextmanager
def peer(
    peer_dir: Path,
    svc: Server,
    logdir: Path,
    cpu: int | None = None,
    start_timeout: float = START_TIMEOUT,
) -> Iterator[Server]:
    """The Node peer, trusting the development issuer of `svc` (so it takes the very same tokens)."""
    port = free_port()
    env = clean_env(
        ISSUER=svc.info["issuer"],
        AUDIENCE=AUDIENCE,
        JWKS_URI=svc.info["jwks_uri"],
        PORT=str(port),
        NODE_ENV="production",
    )
    argv = pinned(cpu, ["node", "server.js"])
    info: dict[str, Any] = {}
    try:
        with running("peer", argv, peer_dir, env, port, logdir / "peer.log") as server:
            server.info = info
            # it has no health route: any HTTP answer will do
            wait_until_up(server, "/", lambda status: True, timeout=start_timeout)
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


# --- seeding and preflight ------------------------------------------------------------------------


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


def seed(server: Server) -> None:
    """All but the last of ann's entries; the service also gets the 100 entries of other users the
    peer has built in. preflight() posts ann's last entry: call seed() then preflight() once."""
    auth = {"Authorization": f"Bearer {server.tokens['employee']}"}
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        for i in range(OWN_ENTRIES - 1):
            answer = client.post("/timesheets", json=own_entry(i), headers=auth)
            if answer.status_code != 201:
                raise BenchError(
                    f"seeding the {server.label}: POST /timesheets gave {answer.status_code}: {answer.text[:300]}"
                )
        if not server.is_peer:
            answer = client.post(
                "/timesheets/upload",
                json=other_entries(),
                headers={"Authorization": f"Bearer {server.tokens['machine']}"},
            )
            if answer.status_code != 201:
                raise BenchError(
                    f"seeding the {server.label}: POST /timesheets/upload gave {answer.status_code}: {answer.text[:300]}"
                )


def preflight(server: Server, scenarios: Sequence[Scenario] = SCENARIOS) -> dict[str, Any]:
    """Send every scenario's request once, as wrk will send it (path, method, token), and check that
    it answers the scenario's status and body shape; raise BenchError with every mismatch.

    Expects a server seeded by seed(): the POST goes first and creates ann's last seed entry (so the
    load sees exactly the seeded store), then GET /timesheets must be a bare array of ann's 50
    entries with id, user_id, project, date, hours and approved, GET /approvals an array of the 150
    pending entries, GET /healthz 200, POST /timesheets 201 with an object that has an id.
    Scenarios the peer has no endpoint for are skipped on the peer. Returns, per scenario, the
    status, the entries counted and the response's size."""
    problems: list[str] = []
    checks: dict[str, Any] = {}
    ordered = sorted(scenarios, key=lambda s: s.method != "POST")  # POST first, stable otherwise
    with httpx.Client(base_url=server.base_url, timeout=10.0) as client:
        for scenario in ordered:
            if server.is_peer and not scenario.on_peer:
                continue
            token = server.tokens.get(scenario.token, "")
            headers = {"Accept": "application/json"}
            if token:
                headers["Authorization"] = f"Bearer {token}"
            where = f"{scenario.method} {scenario.path} on the {server.label}"
            try:
                if scenario.method == "POST":
                    answer = client.post(
                        scenario.path, json=own_entry(OWN_ENTRIES - 1), headers=headers
                    )
                else:
                    answer = client.request(scenario.method, scenario.path, headers=headers)
            except httpx.HTTPError as exc:
                problems.append(f"{where}: no answer ({type(exc).__name__}: {exc})")
                continue
            check: dict[str, Any] = {
                "status": answer.status_code,
                "response_bytes": len(answer.content),
                "entries": None,
            }
            checks[scenario.key] = check
            if answer.status_code != scenario.status:
                problems.append(
                    f"{where}: status {answer.status_code}, not {scenario.status}: {answer.text[:300]}"
                )
                continue
            if scenario.shape == "any":
                continue
            try:
                body = answer.json()
            except ValueError:
                problems.append(f"{where}: the body is not JSON: {answer.text[:300]}")
                continue
            problems += [f"{where}: {p}" for p in shape_problems(scenario, body, check)]
    if problems:
        raise BenchError("preflight failed:\n  " + "\n  ".join(problems))
    return checks


def peer_store_size(server: Server) -> int | None:
    """How many entries the peer holds: its `GET /approvals` lists every entry not approved, and
    the benchmark approves none. Each of its `POST`s walks them all for the next id."""
    auth = {"Authorization": f"Bearer {server.tokens['approver']}"}
    try:
        answer = httpx.get(server.base_url + "/approvals", headers=auth, timeout=30.0)
        entries = answer.json() if answer.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return len(entries) if isinstance(entries, list) else None


def shape_problems(scenario: Scenario, body: Any, check: dict[str, Any]) -> list[str]:
    if scenario.shape == "object_with_id":
        if not isinstance(body, dict) or "id" not in body:
            return [f"not an object with an id: {json.dumps(body)[:300]}"]
        return []
    if not isinstance(body, list):
        return [f"not a bare JSON array: {json.dumps(body)[:300]}"]
    check["entries"] = len(body)
    problems = []
    if scenario.entries is not None and len(body) != scenario.entries:
        problems.append(f"{len(body)} entries, not {scenario.entries}")
    if not all(isinstance(item, dict) and "id" in item for item in body):
        problems.append("not every item is an object with an id")
    elif scenario.shape == "entries":
        for item in body:
            missing = [name for name in ENTRY_FIELDS if name not in item]
            if missing:
                problems.append(f"an entry lacks {', '.join(missing)}: {json.dumps(item)[:300]}")
                break
            if item["user_id"] != BENCH_USER:
                problems.append(f"an entry of {item['user_id']!r}, not of {BENCH_USER}")
                break
    return problems


KEEPALIVE_SLOW_MS = 20.0  # a keep-alive request slower than this, unloaded, points at Nagle


def keepalive_probe(server: Server, connections: int = 3, requests: int = 6) -> dict[str, Any]:
    """Latency of unloaded requests on keep-alive connections (each one's first request left out),
    as wrk sends them. About 40 ms instead of well under 1 ms means the server's connections lack
    TCP_NODELAY: a response written in two parts waits for the client's delayed ACK."""
    path, token = ("/timesheets", "employee") if server.is_peer else ("/healthz", "")
    headers = {"Authorization": f"Bearer {server.tokens[token]}"} if token else {}
    samples = []
    for _ in range(connections):
        with httpx.Client(base_url=server.base_url, timeout=5.0) as client:  # one connection
            for i in range(requests):
                began = time.perf_counter()
                client.get(path, headers=headers).raise_for_status()
                if i:
                    samples.append((time.perf_counter() - began) * 1000)
    return {
        "path": path,
        "median_ms": round(statistics.median(samples), 2),
        "max_ms": round(max(samples), 2),
    }


# --- wrk ------------------------------------------------------------------------------------------


def wrk_version() -> str:
    done = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=10)
    return (
        (done.stdout + done.stderr).splitlines()[0].strip() if (done.stdout + done.stderr) else "?"
    )


def run_wrk(
    args: argparse.Namespace,
    server: Server,
    scenario: Scenario,
    seconds: int,
    date_slot: int,
    client_cpu: int | None,
) -> dict[str, Any]:
    """One wrk run against one server; returns wrk's numbers plus the server's CPU time (all its
    processes: with several workers, the supervisor and every worker) and memory afterwards."""
    env = dict(os.environ)
    env.update(
        BENCH_LUA_DIR=str(LUA_DIR),
        BENCH_TOKEN=server.tokens[scenario.token],
        BENCH_PATH=scenario.path,
        BENCH_DATE_SLOT=str(date_slot),
        BENCH_THREADS=str(args.threads),
    )
    argv = pinned(client_cpu, [
        "wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{seconds}s", "--latency",
        "-s", str(LUA_DIR / scenario.script), server.base_url + scenario.path,
    ])  # fmt: skip
    if server.proc.poll() is not None:
        raise BenchError(
            f"the {server.label} has exited (status {server.proc.returncode}):\n{server.log_tail()}"
        )
    db_pids = server.db_backend_pids() if server.db_backend_pids else []
    db_before = {pid: process_ticks(pid) or 0 for pid in db_pids}
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks_before = cpu_ticks_by_process(server.proc.pid)
    busy_before = machine_busy_seconds()
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
            f"wrk did not finish within {seconds + 30:.0f} s against the {server.label}"
        ) from None
    wall = time.monotonic() - wall_before
    busy = machine_busy_seconds() - busy_before
    ticks_after = cpu_ticks_by_process(server.proc.pid)
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    mem = memory(server)
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
            f"wrk failed (status {done.returncode}) against the {server.label}:\n{done.stdout}\n{done.stderr}"
        )
    result: dict[str, Any] = json.loads(line.removeprefix("BENCH_RESULT "))
    duration = result["duration_us"] / 1e6
    requests = result["requests"]
    cpu = (sum(ticks_after.values()) - sum(ticks_before.values())) / CLK_TCK
    by_process = [
        {
            "pid": pid,
            "role": role(server, pid),
            "cpu_s": round((ticks - ticks_before.get(pid, 0)) / CLK_TCK, 3),
        }
        for pid, ticks in sorted(ticks_after.items())
    ]
    wrk_cpu = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    errors = result["errors"]
    result.update(
        rps=requests / duration if duration else 0.0,
        wall_s=round(wall, 3),
        server_cpu_s=round(cpu, 3),
        server_cpu_by_process=by_process,
        cpu_us_per_request=cpu * 1e6 / requests if requests else None,
        server_cpu_share=cpu / wall if wall else None,  # 1.0 = one core busy all the time
        wrk_cpu_share=wrk_cpu / wall if wall else None,
        # everything else the machine did meanwhile (other jobs, PostgreSQL, the kernel's share
        # not charged to a process): the noise of this run, in cores
        other_cpu_share=max(0.0, busy - cpu - wrk_cpu - (db_cpu or 0.0)) / wall if wall else None,
        memory=mem,
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


def fmt_pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.0f}%"


def fmt_mb(kb: float | None) -> str:
    return "n/a" if kb is None else f"{kb / 1024:.1f}"


def median(values: Sequence[float]) -> float | None:
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
        "wrk_cpu_us_per_request_median": median(
            [r["wrk_cpu_share"] * r["wall_s"] * 1e6 / r["requests"] for r in runs if r["requests"]]
        ),
        "other_cpu_share_median": median(
            [r["other_cpu_share"] for r in runs if r.get("other_cpu_share") is not None]
        ),
        "worker_cpu_split": worker_cpu_split(runs),
        "peer_entries_median": median(
            [r["peer_entries"] for r in runs if r.get("peer_entries") is not None]
        ),
        "requests_total": sum(r["requests"] for r in runs),
        "non2xx_total": sum(r["non2xx"] for r in runs),
        "non2xx_by_status": merge_counts([r["non2xx_by_status"] for r in runs]),
        "socket_errors_total": sum(r["socket_errors"] for r in runs),
        "socket_errors": merge_counts(
            [{k: v for k, v in r["errors"].items() if k != "status_ge_400"} for r in runs]
        ),
    }


def worker_cpu_split(runs: list[dict[str, Any]]) -> list[float] | None:
    """With several workers: each worker's share of the workers' CPU time (sorted, largest first),
    median over the runs; shows whether the kernel spread the connections evenly."""
    shares: list[list[float]] = []
    for run in runs:
        cpu = sorted(
            (p["cpu_s"] for p in run.get("server_cpu_by_process", []) if p["role"] == "worker"),
            reverse=True,
        )
        if len(cpu) > 1 and sum(cpu) > 0:
            shares.append([c / sum(cpu) for c in cpu])
    if not shares:
        return None
    width = min(len(s) for s in shares)
    return [statistics.median(s[i] for s in shares) for i in range(width)]


def merge_counts(dicts: list[dict[str, int]]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for d in dicts:
        for key, count in d.items():
            merged[key] = merged.get(key, 0) + count
    return merged


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def target_label(target: str, layouts: dict[str, Layout]) -> str:
    if target == BOX:
        return f"service {layouts[WHOLE_BOX].workers}w"
    return f"{TARGET_LABELS[target]} 1p"


def report(results: dict[str, Any]) -> list[str]:
    """The tables (one per scenario), memory, the leak check, scaling, the verdicts, and last the
    line of service/peer ratios."""
    lines: list[str] = []
    meta = results["meta"]
    targets: list[str] = meta["targets"]
    layouts = {key: Layout(**value) for key, value in meta["layouts"].items()}
    lines.append(
        f"Timesheets API benchmark: {meta['rounds_done']} round(s) x wrk -t{meta['threads']} -c{meta['connections']} "
        f"-d{meta['duration_s']:g}s (+{meta['warmup_s']:g}s warm-up), database {meta['database']}, "
        f"{meta['cpus']} CPUs, load average {meta['loadavg_at_start'].split()[0]} at start, "
        f"{meta.get('loadavg_at_end', '?').split()[0]} at the end"
    )
    for layout in layouts.values():
        lines.append(f"  layout {layout.describe()}")
    git = meta["git"]
    lines.append(f"service: {code(git)}; peer: {meta['node'] or 'not run'}")
    measured = [(f"round {r['round']}", r["git"]) for r in results["rounds"] if r.get("git")] + [
        (f"leak check {lc['layout']}", lc["git"]) for lc in results["leak"] if lc.get("git")
    ]
    if any(state != git for _, state in measured):
        lines.append("warning: src/ changed during the run; the code each part measured:")
        lines += [f"  {part}: {code(state)}" for part, state in measured]
    for target in targets:
        probes = [r["keepalive"][target] for r in results["rounds"] if target in r["keepalive"]]
        slow = median([p["median_ms"] for p in probes])
        if slow is not None and slow > KEEPALIVE_SLOW_MS:
            lines.append(
                f"warning: the {target_label(target, layouts)} answers unloaded keep-alive requests in "
                f"{slow:.0f} ms (median, {probes[0]['path']}; a healthy server: under 1 ms): its connections\n"
                "  lack TCP_NODELAY, so a response waits for the client's delayed ACK. uvicorn --workers N binds\n"
                "  the socket with proto 0, and asyncio then skips TCP_NODELAY: https://github.com/Kludex/uvicorn/issues/3149"
            )
    header = (
        f"  {'target':<10} {'RPS med':>9} {'RPS min-max':>15} {'p50 med':>9} {'p99 med':>9} "
        f"{'CPU us/req':>10} {'min-max':>11} {'srv CPU':>7} {'wrk CPU':>7} {'other':>6} {'non-2xx':>8} {'sock err':>8}"
    )
    lines.append(
        "  (1p: one process, per-core layout; "
        + (f"{layouts[WHOLE_BOX].workers}w: workers, whole-box layout; " if BOX in targets else "")
        + "srv CPU 100% = one core)"
    )
    for scenario in SCENARIOS:
        summary = results["summary"].get(scenario.key)
        if summary is None:
            continue
        lines.append("")
        lines.append(scenario.title)
        lines.append(header)
        for target in targets:
            label = target_label(target, layouts)
            s = summary.get(target)
            if s is None:
                why = (
                    "no such endpoint on the peer"
                    if target == PEER and not scenario.on_peer
                    else "no data"
                )
                lines.append(f"  {label:<10} n/a ({why})")
                continue
            cpu_range = (
                f"{s['cpu_us_per_request_min']:.0f}-{s['cpu_us_per_request_max']:.0f}"
                if s["cpu_us_per_request_min"] is not None
                else "n/a"
            )
            lines.append(
                f"  {label:<10} {fmt_int(s['rps_median']):>9} {fmt_int(s['rps_min']) + '-' + fmt_int(s['rps_max']):>15} "
                f"{fmt_ms(s['p50_us_median']):>9} {fmt_ms(s['p99_us_median']):>9} "
                f"{fmt_int(s['cpu_us_per_request_median']):>10} {cpu_range:>11} "
                f"{s['server_cpu_share_median'] * 100:>6.0f}% {s['wrk_cpu_share_median'] * 100:>6.0f}% "
                f"{fmt_pct(s['other_cpu_share_median']):>6} "
                f"{s['non2xx_total']:>8,} {s['socket_errors_total']:>8,}"
            )
            if s["non2xx_total"]:
                lines.append(f"  {'':<10} non-2xx by status: {s['non2xx_by_status']}")
            if s["db_cpu_us_per_request_median"] is not None:
                lines.append(
                    f"  {'':<10} + PostgreSQL backends: {s['db_cpu_us_per_request_median']:,.0f} CPU us/req"
                    " (not pinned; not in the CPU us/req column or the ratios)"
                )
            if s.get("peer_entries_median") is not None:
                lines.append(
                    f"  {'':<10} it held {s['peer_entries_median']:,.0f} entries after the run "
                    "(median): each of its POSTs walks them all for the next id"
                )
            if s["worker_cpu_split"]:
                split = s["worker_cpu_split"]
                uneven = (
                    ": uneven, one worker served most of wrk's connections"
                    if split[0] > 0.75
                    else ""
                )
                lines.append(
                    f"  {'':<10} workers' shares of the CPU time: "
                    + " / ".join(f"{share * 100:.0f}%" for share in split)
                    + uneven
                )
        scaling = results["scaling"].get(scenario.key)
        if scaling and scaling["rps"] is not None:
            lines.append(
                f"  scaling {layouts[WHOLE_BOX].workers} workers / 1 process: RPS {scaling['rps']:.2f}x, "
                f"CPU/req {fmt_ratio(scaling['cpu_per_request'])}x; per round "
                + " ".join(fmt_ratio(r["rps"]) for r in scaling["per_round"])
            )
            if scaling.get("ceiling"):
                lines.append(f"  {'':<10} {ceiling_text(scaling['ceiling'])}")
    lines.append("")
    lines += memory_report(results, layouts)
    if results["leak"]:
        lines.append("")
        lines += leak_report(results)
    lines.append("")
    lines.append(verdict_marker())
    lines += [f"  {v['text']}" for v in results["verdicts"]]
    lines.append(ratio_line(results, targets))
    return lines


def code(git: dict[str, Any]) -> str:
    """The commit, and what was not committed yet in src/."""
    dirty = git["dirty_paths"]
    return f"commit {git['commit'][:12] or '?'}" + (
        f" + {len(dirty)} uncommitted path(s) in src/ (diff {git['src_diff_sha256'][:12]})"
        if dirty
        else ""
    )


def verdict_marker() -> str:
    return "targets of the issue (per core against the peer, one run; scaling; memory):"


def ratio_line(results: dict[str, Any], targets: list[str]) -> str:
    if PEER not in targets:
        return "ratios service/peer: n/a (run with --peer)"
    parts = []
    for scenario in SCENARIOS:
        if scenario.key not in results["ratios"]:
            continue
        r = results["ratios"][scenario.key]
        if r is None or r["rps"] is None or r["cpu_per_request"] is None:
            parts.append(f"{scenario.key} n/a")
        else:
            parts.append(
                f"{scenario.key} RPS {r['rps']:.2f} CPU/req {r['cpu_per_request']:.2f} p99 {fmt_ratio(r['p99'])}"
            )
    return (
        "ratios service/peer, per core (of the medians; RPS >1, CPU/req <1 and p99 <1 favour the service): "
        + " | ".join(parts)
    )


def memory_report(results: dict[str, Any], layouts: dict[str, Layout]) -> list[str]:
    """VmRSS in MB of every process of the service after each scenario and at the end of each round."""
    lines = [
        "Resident memory (VmRSS, MB) of each process after each scenario's measured run, and at the end of the round"
    ]
    keys = [s.key for s in SCENARIOS if s.key in results["summary"]]
    names = " ".join(f"{k:>15}" for k in keys)
    lines.append(f"  {'target':<10} {'round':>5} {'process':<17} {names} {'end of round':>13}")
    for target in results["meta"]["targets"]:
        for r in results["rounds"]:
            snapshots = {
                run["scenario"]: {p["name"]: p["rss_kb"] for p in run["memory"]}
                for run in r["runs"]
                if run["target"] == target
            }
            end = {p["name"]: p["rss_kb"] for p in r.get("memory_end", {}).get(target, [])}
            processes: list[str] = []
            for snap in [*snapshots.values(), end]:
                processes += [name for name in snap if name not in processes]
            for name in processes:
                cells = " ".join(f"{fmt_mb(snapshots.get(k, {}).get(name)):>15}" for k in keys)
                lines.append(
                    f"  {target_label(target, layouts):<10} {r['round']:>5} {name:<17} {cells} {fmt_mb(end.get(name)):>13}"
                )
    return lines


def leak_report(results: dict[str, Any]) -> list[str]:
    lines = []
    for lc in results["leak"]:
        lines.append(
            f"Leak check, {lc['layout']} layout: one server, each scenario {lc['warmup_s']} s warm-up then "
            f"{lc['rounds']} x {lc['duration_s']} s; VmRSS (MB) of each process after each repetition; "
            f"growth counted from the first repetition, tolerance {lc['tolerance_mb']:g} MB"
        )
        for sc in lc["scenarios"]:
            for name, series in sc["rss_kb"].items():
                growth = sc["growth_kb"].get(name)
                per_1k = sc["growth_bytes_per_1k_requests"].get(name)
                cells = " ".join(f"{fmt_mb(v):>6}" for v in series)
                extra = (
                    f"{growth / 1024:+.1f} MB ({per_1k:+,.0f} B per 1k requests)"
                    if growth is not None and per_1k is not None
                    else "n/a"
                )
                lines.append(f"  {sc['scenario']:<16} {name:<17} {cells}   {extra}")
            lines.append(
                f"  {'':<16} {'RPS':<17} "
                + " ".join(f"{rps:>6,.0f}" for rps in sc["rps"])
                + f"   non-2xx {sc['non2xx']}, socket errors {sc['socket_errors']}"
            )
        lines.append(f"  verdict ({lc['layout']}): {lc['verdict']}")
    return lines


# --- targets and verdicts -------------------------------------------------------------------------


def ceiling_text(ceiling: dict[str, Any]) -> str:
    return (
        f"ceiling with wrk on the same {ceiling['cores']} CPUs: about {ceiling['rps']:.2f}x "
        f"({ceiling['cores']} CPUs / (service {ceiling['service_us']:,.0f} + wrk "
        f"{ceiling['wrk_us']:,.0f} CPU us a request), over one process)"
    )


def verdicts(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One verdict per target of issue 5: met, or missed by how much."""
    meta = results["meta"]
    targets = meta["targets"]
    postgres = meta["database"] == "postgresql"
    out: list[dict[str, Any]] = []

    def at_least(name: str, value: float | None, goal: float, detail: str = "") -> None:
        if value is None:
            out.append(
                {"target": name, "met": None, "text": f"{name}: n/a ({detail or 'not measured'})"}
            )
            return
        met = value >= goal
        how = (
            f"met ({value:.2f}x)"
            if met
            else f"MISSED by {(goal - value) / goal * 100:.0f}% ({value:.2f}x of {goal:.2f}x: "
            f"{(goal / value - 1) * 100:.0f}% more needed)"
        )
        out.append({"target": name, "met": met, "value": value, "goal": goal,
                    "text": f"{name}: {how}{'; ' + detail if detail else ''}"})  # fmt: skip

    def at_most(name: str, value: float | None, goal: float, detail: str = "") -> None:
        if value is None:
            out.append(
                {"target": name, "met": None, "text": f"{name}: n/a ({detail or 'not measured'})"}
            )
            return
        met = value <= goal
        how = (
            f"met ({value:.2f}x)"
            if met
            else f"MISSED by {(value / goal - 1) * 100:.0f}% ({value:.2f}x of at most {goal:.2f}x)"
        )
        out.append({"target": name, "met": met, "value": value, "goal": goal,
                    "text": f"{name}: {how}{'; ' + detail if detail else ''}"})  # fmt: skip

    summary, ratios = results["summary"], results["ratios"]
    ref = "; the issue sets it for SQLite, shown for reference" if postgres else ""
    if PEER in targets:
        pairs = [
            ("get_timesheets", "GET /timesheets", 1.3 if postgres else 2.0, "on PostgreSQL" if postgres else ""),
            ("post_timesheets", "POST /timesheets", 3.0, ref.lstrip("; ")),
        ]  # fmt: skip
        for key, title, goal, note in pairs:
            r = ratios.get(key)
            detail = (
                note
                if r is None
                else f"{fmt_int(summary[key][SERVICE]['rps_median'])} vs {fmt_int(summary[key][PEER]['rps_median'])} req/s"
                + (f"; {note}" if note else "")
            )
            at_least(f"{title} RPS >= {goal:g}x peer's", r["rps"] if r else None, goal, detail)
        for key, title in (
            ("get_timesheets", "GET /timesheets"),
            ("post_timesheets", "POST /timesheets"),
        ):
            r = ratios.get(key)
            detail = (
                "not measured"
                if r is None
                else f"{fmt_ms(summary[key][SERVICE]['p99_us_median'])} vs {fmt_ms(summary[key][PEER]['p99_us_median'])}"
                + (ref if ref else "")
            )
            at_most(f"{title} p99 <= 0.5x peer's", r["p99"] if r else None, 0.5, detail)
    else:
        out.append(
            {
                "target": "peer",
                "met": None,
                "text": "targets against the peer: n/a (run with --peer)",
            }
        )
    if BOX in targets and SERVICE in targets:
        for scenario in SCENARIOS:
            s = results["scaling"].get(scenario.key)
            if scenario.key not in summary:
                continue
            detail = (
                f"{fmt_int(summary[scenario.key][BOX]['rps_median'])} vs {fmt_int(summary[scenario.key][SERVICE]['rps_median'])} req/s"
                if s and s["rps"] is not None
                else "not measured"
            )
            if s and s.get("ceiling"):
                detail += f"; {ceiling_text(s['ceiling'])}"
            at_least(
                f"{scenario.key} with {meta['layouts'][WHOLE_BOX]['workers']} workers >= {GOAL_SCALING:g}x 1 process",
                s["rps"] if s else None,
                GOAL_SCALING,
                detail,
            )
    peak = peak_worker_rss_kb(results)
    if peak is None:
        out.append({"target": "memory", "met": None, "text": "memory per worker: n/a"})
    else:
        mb, where = peak[0] / 1024, peak[1]
        met = mb < MEMORY_BOUND_MB
        out.append({
            "target": "memory", "met": met, "value": mb, "goal": MEMORY_BOUND_MB,
            "text": f"resident memory per worker < {MEMORY_BOUND_MB:g} MB: "
            + (f"met (peak {mb:.1f} MB, {where})" if met
               else f"MISSED by {mb - MEMORY_BOUND_MB:.1f} MB (peak {mb:.1f} MB, {where})"),
        })  # fmt: skip
    if results["leak"]:
        leaks = [lc for lc in results["leak"] if lc["possible_leak"]]
        incomplete = [lc for lc in results["leak"] if lc["possible_leak"] is None]
        text = "no growth across repeated runs (leak check): "
        if leaks:
            text += "MISSED, possible leak in " + "; ".join(
                f"{lc['layout']}: {lc['verdict']}" for lc in leaks
            )
        elif incomplete:
            text += "n/a (the leak check did not complete)"
        else:
            text += (
                "met ("
                + "; ".join(f"{lc['layout']}: {lc['growth_summary']}" for lc in results["leak"])
                + ")"
            )
        out.append(
            {"target": "leak", "met": None if incomplete and not leaks else not leaks, "text": text}
        )
    else:
        out.append(
            {
                "target": "leak",
                "met": None,
                "text": "no growth across repeated runs: n/a (--leak-rounds 0)",
            }
        )
    return out


def peak_worker_rss_kb(results: dict[str, Any]) -> tuple[int, str] | None:
    """The largest VmRSS of a serving process (a single-process server or a worker; not uvicorn's
    supervisor nor multiprocessing's resource tracker) of the service, anywhere in the run."""
    best: tuple[int, str] | None = None

    def consider(snapshot: list[dict[str, Any]], where: str) -> None:
        nonlocal best
        for p in snapshot:
            if p["role"] in ("process", "worker") and (best is None or p["rss_kb"] > best[0]):
                best = (p["rss_kb"], f"{p['name']}, {where}")

    for r in results["rounds"]:
        for run in r["runs"]:
            if run["target"] != PEER:
                consider(
                    run["memory"], f"{run['target']} after {run['scenario']}, round {r['round']}"
                )
        for target, snapshot in r.get("memory_end", {}).items():
            if target != PEER:
                consider(snapshot, f"{target} at the end of round {r['round']}")
    for lc in results["leak"]:
        for sc in lc["scenarios"]:
            for snapshot in sc["memory"]:
                consider(snapshot, f"leak check {lc['layout']}, {sc['scenario']}")
    return best


# --- main ---------------------------------------------------------------------------------------


def cpu_arg(value: str) -> int | None:
    if value.lower() in ("none", "no", "-"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a CPU number or 'none', not {value!r}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the Timesheets API with wrk; with --peer, side by side with the seed's Node stack.",
        epilog="Prints a table per scenario, memory, a leak check, the verdicts and, last, the "
        "service/peer ratios; raw results go to bench/results/.",
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
        "on which a fresh database is created and dropped per server; default: a fresh SQLite file",
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
        "--layouts",
        default=f"{PER_CORE},{WHOLE_BOX}",
        help=f"comma list: {PER_CORE} (one pinned process per target) and/or {WHOLE_BOX} "
        "(the service with --workers workers, unpinned); default both",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help=f"the service's workers in the {WHOLE_BOX} layout (default 2)",
    )
    parser.add_argument(
        "--server-cpu",
        type=int,
        default=1,
        help=f"CPU the servers are pinned to in the {PER_CORE} layout (default 1)",
    )
    parser.add_argument(
        "--client-cpu",
        type=int,
        default=0,
        help=f"CPU wrk is pinned to in the {PER_CORE} layout (default 0)",
    )
    parser.add_argument(
        "--box-client-cpu",
        type=cpu_arg,
        default=None,
        metavar="CPU|none",
        help=f"CPU wrk is pinned to in the {WHOLE_BOX} layout (default none: not pinned)",
    )
    parser.add_argument(
        "--leak-rounds",
        type=int,
        default=5,
        help="leak check: repetitions of each scenario on one long-lived server per layout, "
        "with the memory after each (default 5; 0: no leak check)",
    )
    parser.add_argument(
        "--leak-duration",
        type=int,
        default=3,
        help="seconds of each leak-check repetition (default 3)",
    )
    parser.add_argument(
        "--leak-tolerance-mb",
        type=float,
        default=4.0,
        help="growth of a process's VmRSS after the first repetition above which the leak check "
        "says 'possible leak' (default 4)",
    )
    parser.add_argument(
        "--report",
        type=Path,
        metavar="FILE",
        help="print the report of a saved results file (bench/results/*.json) and exit; no load",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(s.key for s in SCENARIOS),
        help="comma list of scenarios to run, in the fixed order (default: all)",
    )
    parser.add_argument(
        "--service-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the service's processes, e.g. TIMESHEETS_EVENT_LOOP=uvloop (repeatable)",
    )
    args = parser.parse_args(argv)
    pairs = [item.partition("=") for item in args.service_env]
    if any(not name or not sep for name, sep, _ in pairs):
        parser.error("--service-env takes NAME=VALUE")
    args.service_env = {name: value for name, _, value in pairs}
    if (
        args.duration < 1
        or args.warmup < 0
        or args.rounds < 1
        or args.connections < 1
        or args.threads < 1
        or args.workers < 1
        or args.leak_rounds < 0
        or args.leak_duration < 1
        or args.leak_tolerance_mb < 0
    ):
        parser.error(
            "--duration >= 1, --warmup >= 0, --rounds >= 1, --connections >= 1, --threads >= 1, "
            "--workers >= 1, --leak-rounds >= 0, --leak-duration >= 1, --leak-tolerance-mb >= 0"
        )
    if args.leak_rounds == 1 or args.leak_rounds > 25:
        parser.error("--leak-rounds 0 (no leak check) or 2 to 25 (the POST script's date slots)")
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    if args.threads > 16:
        parser.error("--threads at most 16")
    known = {s.key for s in SCENARIOS}
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in known]
    if unknown or not chosen:
        parser.error(f"unknown scenario(s) {unknown}; choose from {sorted(known)}")
    args.scenario_list = [s for s in SCENARIOS if s.key in chosen]
    wanted = [s.strip() for s in args.layouts.split(",") if s.strip()]
    bad = [w for w in wanted if w not in (PER_CORE, WHOLE_BOX)]
    if bad or not wanted:
        parser.error(f"unknown layout(s) {bad}; choose from {PER_CORE}, {WHOLE_BOX}")
    if args.peer and PER_CORE not in wanted:
        parser.error(f"--peer is measured in the {PER_CORE} layout: add it to --layouts")
    args.layout_map = {key: layout for key, layout in layouts(args).items() if key in wanted}
    return args


def layouts(args: argparse.Namespace) -> dict[str, Layout]:
    return {
        PER_CORE: Layout(PER_CORE, 1, args.server_cpu, args.client_cpu),
        WHOLE_BOX: Layout(WHOLE_BOX, args.workers, None, args.box_client_cpu),
    }


def check_environment(args: argparse.Namespace) -> None:
    if not sys.platform.startswith("linux"):
        raise BenchError("this benchmark reads /proc and uses taskset: Linux only")
    if not shutil.which("wrk"):
        raise BenchError("wrk is not installed: apt-get install -y wrk")
    cpus = [
        cpu
        for layout in args.layout_map.values()
        for cpu in (layout.server_cpu, layout.client_cpu)
        if cpu is not None
    ]
    if cpus and not shutil.which("taskset"):
        raise BenchError("taskset is not installed: apt-get install -y util-linux")
    available = os.sched_getaffinity(0)
    for cpu in cpus:
        if cpu not in available:
            raise BenchError(f"CPU {cpu} is not available here (available: {sorted(available)})")
    if PER_CORE in args.layout_map and args.server_cpu == args.client_cpu:
        progress("warning: servers and wrk share one CPU; the figures will not be per-core figures")
    if WHOLE_BOX in args.layout_map and args.workers > len(available):
        progress(f"warning: {args.workers} workers on {len(available)} CPUs")


def git_state() -> dict[str, Any]:
    def git(*a: str) -> str:
        try:
            return subprocess.run(
                ["git", *a], cwd=REPO_DIR, capture_output=True, text=True, timeout=10
            ).stdout.rstrip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    dirty = git("status", "--porcelain", "--", "src").splitlines()
    digest = hashlib.sha256(git("diff", "HEAD", "--", "src").encode())
    for line in dirty:  # untracked files are not in the diff: hash their contents too
        if line.startswith("??"):
            path = REPO_DIR / line[3:].strip()
            files = sorted(path.rglob("*")) if path.is_dir() else [path]
            for f in files:
                if f.is_file() and "__pycache__" not in f.parts:
                    digest.update(str(f.relative_to(REPO_DIR)).encode() + f.read_bytes())
    return {
        "commit": git("rev-parse", "HEAD"),
        "dirty_paths": dirty,
        "src_diff_sha256": digest.hexdigest() if dirty else "",
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report:
        try:
            print_report(json.loads(args.report.read_text()), args.report, problems=[])
        except (OSError, ValueError, KeyError) as exc:
            print(
                f"error: cannot report {args.report}: {type(exc).__name__}: {exc}", file=sys.stderr
            )
            return 2
        return 0
    # SIGTERM/SIGHUP like Ctrl-C: unwind, so that every server is stopped
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    try:
        check_environment(args)
        peer_dir = prepare_peer(args.peer_source) if args.peer else None
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    targets = []
    if PER_CORE in args.layout_map:
        targets += [SERVICE, PEER] if args.peer else [SERVICE]
    if WHOLE_BOX in args.layout_map:
        targets.append(BOX)
    started = dt.datetime.now(dt.UTC)
    runs_per_round = len(args.scenario_list) * len(targets)
    per_round_seconds = runs_per_round * (args.duration + args.warmup + 5) + 90
    leak_seconds = len(args.scenario_list) * (
        args.warmup + args.leak_rounds * args.leak_duration + 5
    )
    lifetime = int(min(31 * 86400, max(3600, 3 * max(per_round_seconds, leak_seconds))))
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
            "layouts": {key: vars(layout) for key, layout in args.layout_map.items()},
            "database": "postgresql" if args.postgres else "sqlite",
            "targets": targets,
            "scenarios": [s.key for s in args.scenario_list],
            "leak_rounds": args.leak_rounds,
            "wrk": wrk_version(),
            "python": platform.python_version(),
            "node": node_version() if args.peer else None,
            "cpus": os.cpu_count(),
            "loadavg_at_start": Path("/proc/loadavg").read_text().strip(),
            "git": git_state(),
        },
        "rounds": [],
        "leak": [],
    }
    status = 0
    try:
        for round_no in range(1, args.rounds + 1):
            # appended first, filled as it goes: an interrupted round keeps its finished runs
            record: dict[str, Any] = {
                "round": round_no,
                "git": git_state(),
                "servers": {},
                "seed": {},
                "keepalive": {},
                "runs": [],
                "memory_end": {},
            }
            results["rounds"].append(record)
            run_round(args, record, targets, peer_dir, lifetime)
            results["meta"]["rounds_done"] = round_no
        if args.leak_rounds:
            for layout in args.layout_map.values():
                check: dict[str, Any] = {"layout": layout.key, "git": git_state()}
                results["leak"].append(check)
                leak_check(args, layout, check, lifetime)
    except KeyboardInterrupt:
        print("\ninterrupted: every server was stopped; the results so far follow", file=sys.stderr)
        status = 130
    except BenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        status = 1

    results["meta"]["finished"] = dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")
    results["meta"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().strip()
    conclude(results, args.scenario_list, cores=len(os.sched_getaffinity(0)))
    RESULTS_DIR.mkdir(exist_ok=True)
    out = RESULTS_DIR / f"{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    problems = [
        f"{target} log, round {r['round']}: {line}"
        for r in results["rounds"]
        for target, server in r["servers"].items()
        for line in server.get("log_problems", [])
    ] + [
        f"service log, leak check {lc['layout']}: {line}"
        for lc in results["leak"]
        for line in lc.get("server", {}).get("log_problems", [])
    ]
    print_report(results, out, problems)
    return status


def conclude(results: dict[str, Any], scenarios: list[Scenario], *, cores: int) -> None:
    """Adds to the recorded `results` the summaries, ratios and scaling (`aggregate`), each leak
    check's verdict, and the verdicts on the issue's targets."""
    results["summary"], results["ratios"], results["scaling"] = aggregate(
        results["rounds"], scenarios, results["meta"]["targets"], cores=cores
    )
    for lc in results["leak"]:
        judge_leak(lc)
    results["verdicts"] = verdicts(results)


def print_report(results: dict[str, Any], out: Path, problems: list[str]) -> None:
    """The report, with the log problems and the results file before the verdicts and the ratios."""
    lines = report(results)
    marker = lines.index(verdict_marker())
    print("\n".join(lines[:marker]).rstrip())
    if problems:
        print("\nserver log lines that look like trouble (first 20):")
        print("\n".join("  " + p for p in problems[:20]))
    out = out.resolve()
    print(f"\nraw results: {out.relative_to(REPO_DIR) if out.is_relative_to(REPO_DIR) else out}")
    print("\n".join(lines[marker:]), flush=True)


def run_round(
    args: argparse.Namespace,
    record: dict[str, Any],
    targets: list[str],
    peer_dir: Path | None,
    lifetime: int,
) -> None:
    round_no = record["round"]
    lay = args.layout_map
    with ExitStack() as stack:
        servers: dict[str, Server] = {}
        if SERVICE in targets:
            progress(f"round {round_no}/{args.rounds}: starting the service ({PER_CORE})")
            servers[SERVICE] = stack.enter_context(
                service(
                    cpu=lay[PER_CORE].server_cpu,
                    postgres=args.postgres,
                    db_name=f"r{round_no}_pc",
                    lifetime=lifetime,
                    extra_env=args.service_env,
                )
            )
        if BOX in targets:
            progress(
                f"round {round_no}/{args.rounds}: starting the service with {lay[WHOLE_BOX].workers} workers ({WHOLE_BOX})"
            )
            servers[BOX] = stack.enter_context(
                service(
                    workers=lay[WHOLE_BOX].workers,
                    cpu=lay[WHOLE_BOX].server_cpu,
                    postgres=args.postgres,
                    db_name=f"r{round_no}_wb",
                    lifetime=lifetime,
                    extra_env=args.service_env,
                )
            )
        if peer_dir is not None:
            progress(f"round {round_no}/{args.rounds}: starting the Node peer")
            svc = servers[SERVICE]
            servers[PEER] = stack.enter_context(
                peer(peer_dir, svc, Path(svc.info["workdir"]), cpu=lay[PER_CORE].server_cpu)
            )
        for target in targets:
            # the same dict as the server's: it gets log_problems when the server stops
            record["servers"][target] = servers[target].info
            seed(servers[target])
            record["seed"][target] = preflight(servers[target])
            record["keepalive"][target] = keepalive_probe(servers[target])
        for scenario in args.scenario_list:
            for target in targets:
                if target == PEER and not scenario.on_peer:
                    continue
                server = servers[target]
                client_cpu = lay[WHOLE_BOX if target == BOX else PER_CORE].client_cpu
                if args.warmup > 0:
                    run_wrk(args, server, scenario, args.warmup, date_slot=0, client_cpu=client_cpu)
                run = run_wrk(args, server, scenario, args.duration, 1, client_cpu)
                run.update(round=round_no, scenario=scenario.key, target=target)
                if target == PEER and scenario.method == "POST":
                    run["peer_entries"] = peer_store_size(server)
                record["runs"].append(run)
                progress(
                    f"round {round_no} {scenario.key:<16} {target:<7} {run['rps']:>8,.0f} req/s  "
                    f"p99 {fmt_ms(run['latency_us']['p99']):>9}  {fmt_int(run['cpu_us_per_request']):>5} us/req  "
                    f"srv CPU {run['server_cpu_share'] * 100:3.0f}%  non-2xx {run['non2xx']}  sock err {run['socket_errors']}  "
                    f"RSS {'/'.join(fmt_mb(p['rss_kb']) for p in run['memory'])} MB"
                )
                if run["non2xx"]:
                    progress(f"    non-2xx {run['non2xx_by_status']}: {run['non2xx_sample'][:200]}")
        for target in targets:
            record["memory_end"][target] = memory(servers[target])


def leak_check(
    args: argparse.Namespace, layout: Layout, record: dict[str, Any], lifetime: int
) -> None:
    """One service in `layout`, seeded and preflighted; each scenario once as warm-up, then
    --leak-rounds times back to back on the same server, with every process's VmRSS after each
    repetition. POST runs last, as in the rounds, so that the GETs see the seeded store."""
    record.update(
        rounds=args.leak_rounds,
        duration_s=args.leak_duration,
        warmup_s=args.warmup,
        tolerance_mb=args.leak_tolerance_mb,
        scenarios=[],
    )
    progress(
        f"leak check ({layout.key}): {args.leak_rounds} x {args.leak_duration} s of each scenario on one server"
    )
    with service(
        workers=layout.workers,
        cpu=layout.server_cpu,
        postgres=args.postgres,
        db_name=f"leak_{layout.key}",
        lifetime=lifetime,
        extra_env=args.service_env,
    ) as server:
        record["server"] = server.info
        seed(server)
        preflight(server)
        record["memory_start"] = memory(server)
        for scenario in args.scenario_list:
            sc: dict[str, Any] = {
                "scenario": scenario.key,
                "memory": [],
                "rps": [],
                "requests": [],
                "non2xx": 0,
                "socket_errors": 0,
            }
            record["scenarios"].append(sc)
            if args.warmup > 0:
                run_wrk(args, server, scenario, args.warmup, 0, layout.client_cpu)
            for rep in range(1, args.leak_rounds + 1):
                run = run_wrk(args, server, scenario, args.leak_duration, rep, layout.client_cpu)
                sc["memory"].append(run["memory"])
                sc["rps"].append(run["rps"])
                sc["requests"].append(run["requests"])
                sc["non2xx"] += run["non2xx"]
                sc["socket_errors"] += run["socket_errors"]
            progress(
                f"leak check ({layout.key}) {scenario.key:<16} RSS "
                + " ".join(
                    "/".join(fmt_mb(p["rss_kb"]) for p in snapshot) for snapshot in sc["memory"]
                )
                + " MB"
            )


def judge_leak(lc: dict[str, Any]) -> None:
    """Per scenario and process: the VmRSS series, its growth from the first repetition to the
    last, per 1,000 requests; the verdict "possible leak" when a growth exceeds the tolerance."""
    tolerance_kb = lc.get("tolerance_mb", 0) * 1024
    worst: tuple[float, str] | None = None
    suspects = []
    complete = bool(lc.get("scenarios")) and all(
        len(sc["memory"]) == lc["rounds"] for sc in lc["scenarios"]
    )
    for sc in lc.get("scenarios", []):
        series: dict[str, list[int | None]] = {}
        for i, snapshot in enumerate(sc["memory"]):
            for p in snapshot:
                series.setdefault(p["name"], [None] * len(sc["memory"]))[i] = p["rss_kb"]
        sc["rss_kb"] = series
        sc["growth_kb"] = {}
        sc["growth_bytes_per_1k_requests"] = {}
        later_requests = sum(sc["requests"][1:])
        for name, values in series.items():
            if len(values) < 2 or values[0] is None or values[-1] is None:
                continue
            growth = values[-1] - values[0]
            sc["growth_kb"][name] = growth
            sc["growth_bytes_per_1k_requests"][name] = (
                growth * 1024 * 1000 / later_requests if later_requests else 0.0
            )
            if worst is None or growth > worst[0]:
                worst = (growth, f"{name} in {sc['scenario']}")
            if growth > tolerance_kb:
                suspects.append(
                    f"{name} grew {growth / 1024:.1f} MB over {len(values) - 1} repetitions of {sc['scenario']}"
                )
    lc["possible_leak"] = bool(suspects) if complete or suspects else None
    lc["growth_summary"] = (
        f"largest growth {worst[0] / 1024:+.1f} MB ({worst[1]})" if worst else "no data"
    )
    if suspects:
        lc["verdict"] = "possible leak: " + "; ".join(suspects)
    elif not complete:
        lc["verdict"] = f"incomplete ({lc['growth_summary']})"
    else:
        lc["verdict"] = (
            f"no growth beyond {lc['tolerance_mb']:g} MB after the first repetition: {lc['growth_summary']}"
        )


def aggregate(
    rounds: list[dict[str, Any]], scenarios: list[Scenario], targets: list[str], *, cores: int
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """Per scenario: a summary per target; the service/peer ratios (per core); the scaling of the
    whole-box service over the per-core service, with its ceiling on `cores` CPUs (see
    `scaling_ceiling`). Ratios are of the medians, and per round too."""
    summary: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    scaling: dict[str, Any] = {}
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
        for store, a_key, b_key in ((ratios, SERVICE, PEER), (scaling, BOX, SERVICE)):
            a, b = by_target.get(a_key), by_target.get(b_key)
            if not (a and b):
                store[scenario.key] = None
                continue
            per_round = []
            for r in rounds:
                pair = {run["target"]: run for run in r["runs"] if run["scenario"] == scenario.key}
                if a_key in pair and b_key in pair:
                    per_round.append(
                        {
                            "round": r["round"],
                            "rps": ratio(pair[a_key]["rps"], pair[b_key]["rps"]),
                            "cpu_per_request": ratio(
                                pair[a_key]["cpu_us_per_request"],
                                pair[b_key]["cpu_us_per_request"],
                            ),
                            "p99": ratio(
                                pair[a_key]["latency_us"]["p99"], pair[b_key]["latency_us"]["p99"]
                            ),
                        }
                    )
            store[scenario.key] = {
                "rps": ratio(a["rps_median"], b["rps_median"]),
                "cpu_per_request": ratio(
                    a["cpu_us_per_request_median"], b["cpu_us_per_request_median"]
                ),
                "p99": ratio(a["p99_us_median"], b["p99_us_median"]),
                "per_round": per_round,
            }
        if scaling.get(scenario.key):
            scaling[scenario.key]["ceiling"] = scaling_ceiling(
                cores, by_target[SERVICE], by_target[BOX]
            )
    return summary, ratios, scaling


def scaling_ceiling(
    cores: int, one_process: dict[str, Any], box: dict[str, Any]
) -> dict[str, Any] | None:
    """About the most the whole box can serve, over one process, while wrk shares its `cores`
    (the CPUs this run may use): each request costs the service the least it cost in either
    layout (the workers' best case: no contention, no extra work) plus what it costs wrk in the
    whole-box run, and the cores pay for both; the machine's other work is left out. Per core wrk
    has a CPU of its own; in the whole box it does not, so a service that is cheap next to wrk
    cannot reach twice its per-core figure, however well it scales."""
    costs = [t["cpu_us_per_request_median"] for t in (one_process, box)]
    wrk_us = box.get("wrk_cpu_us_per_request_median")
    if None in costs or not (wrk_us and one_process["rps_median"]):
        return None
    service_us = min(costs)
    box_rps = cores * 1e6 / (service_us + wrk_us)
    return {
        "rps": ratio(box_rps, one_process["rps_median"]),
        "service_us": service_us,
        "wrk_us": wrk_us,
        "cores": cores,
    }


if __name__ == "__main__":
    sys.exit(main())
