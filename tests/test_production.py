"""Production behaviour of `timesheets serve`, run as real processes on loopback: two processes on
one PostgreSQL, several workers on SQLite, SIGTERM with requests in flight, a PostgreSQL outage on
a cluster of the test's own, and the limits on bodies and headers."""

import asyncio
import collections
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from timesheets import listeners

from .conftest import AUDIENCE, POSTGRES_URL, bearer
from .keyserver import KeyServer
from .processes import TIMESHEETS, ServerProcess, clean_env, free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")

pytestmark = pytest.mark.slow


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return False
    except ConnectionRefusedError:
        return True


# --- server processes ---------------------------------------------------------------------------


class Serve(ServerProcess):
    """`timesheets serve` as a child process on a free loopback port; output in a log file."""

    def __init__(self, cwd: Path, env: dict[str, str], workers: int = 1) -> None:
        super().__init__(["serve", "--workers", str(workers)], cwd, env, free_port())


@pytest.fixture
def serve(tmp_path: Path, key_server: KeyServer) -> Iterator[Callable[..., Serve]]:
    """Makes (unstarted) `timesheets serve` processes; every one is stopped at the end."""
    if not TIMESHEETS.exists():
        pytest.skip(f"no console script at {TIMESHEETS}: install the package (pip install -e .)")
    servers: list[Serve] = []

    def make(database_url: str, *, workers: int = 1, **settings: str) -> Serve:
        env = clean_env(
            TIMESHEETS_ISSUER=key_server.base_url,
            TIMESHEETS_AUDIENCE=AUDIENCE,
            TIMESHEETS_JWKS_URI=key_server.base_url + ".well-known/jwks.json",
            TIMESHEETS_DATABASE_URL=database_url,
        )
        env.update({f"TIMESHEETS_{name.upper()}": value for name, value in settings.items()})
        server = Serve(tmp_path, env, workers)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def started(server: Serve) -> Serve:
    server.launch()
    server.wait_ready()
    return server


@dataclass
class Answer:
    status: int  # 0: no answer (a transport error or a timeout)
    started: float
    elapsed: float
    body: Any = None
    retry_after: str | None = None
    error: str | None = None


async def call(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> Answer:
    begin = time.monotonic()
    try:
        response = await http.request(method, url, **kwargs)
    except httpx.HTTPError as exc:
        return Answer(0, begin, time.monotonic() - begin, error=repr(exc))
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return Answer(
        response.status_code,
        begin,
        time.monotonic() - begin,
        body,
        response.headers.get("retry-after"),
    )


def client(base_url: str, connections: int = 20, timeout: float = 30.0) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=base_url,
        limits=httpx.Limits(max_connections=connections),
        timeout=timeout,
        trust_env=False,
    )


async def _admin(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _query(url: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(url, timeout=10)
    try:
        return list(await connection.fetch(sql))
    finally:
        await connection.close()


@pytest.fixture
def fresh_postgres() -> Iterator[str]:
    """A new, empty database on the machine's PostgreSQL (no migrations: the servers run them)."""
    if not POSTGRES_URL:
        pytest.skip("TIMESHEETS_TEST_POSTGRES_URL is not set")
    name = f"timesheets_prod_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(POSTGRES_URL, f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_admin(POSTGRES_URL, f'DROP DATABASE "{name}" WITH (FORCE)'))


def employee(make_token: Callable[..., str], n: int) -> dict[str, str]:
    return bearer(make_token(f"user{n}@example.com"))


# --- 1. two processes on one PostgreSQL ---------------------------------------------------------

USERS = 10
POSTS_PER_USER = 30  # one hour each, all on one date: exactly 24 fit
DAY = "2017-07-10"


@pytest.mark.postgres
def test_two_processes_on_one_postgres_store_every_create_once_and_hold_the_daily_cap(
    serve, fresh_postgres, make_token
):
    # Both start at once on an empty database: they race to migrate it, and must both come up.
    servers = [serve(fresh_postgres), serve(fresh_postgres)]
    for server in servers:
        server.launch()
    for server in servers:
        server.wait_ready()
    tokens = [employee(make_token, n) for n in range(USERS)]

    async def run() -> list[tuple[int, Answer]]:
        gate = asyncio.Semaphore(40)
        https = [client(server.url) for server in servers]

        async def post(n: int) -> tuple[int, Answer]:
            user = n % USERS
            body = {"project": "Cap", "date": DAY, "hours": 1, "notes": f"request {n}"}
            async with gate:
                answer = await call(
                    https[n % 2], "POST", "/timesheets", json=body, headers=tokens[user]
                )
            return user, answer

        try:
            return await asyncio.gather(*(post(n) for n in range(USERS * POSTS_PER_USER)))
        finally:
            for http in https:
                await http.aclose()

    answers = asyncio.run(run())

    statuses = sorted({answer.status for _, answer in answers})
    assert statuses == [201, 422], [a for _, a in answers if a.status not in (201, 422)][:3]
    created: dict[int, list[int]] = {user: [] for user in range(USERS)}
    for user, answer in answers:
        if answer.status == 201:
            created[user].append(answer.body["id"])
        else:
            assert answer.body["error"] == "validation_failed"
    assert {user: len(ids) for user, ids in created.items()} == dict.fromkeys(range(USERS), 24)
    ids = [entry_id for user_ids in created.values() for entry_id in user_ids]
    assert len(set(ids)) == len(ids) == USERS * 24

    rows = asyncio.run(
        _query(fresh_postgres, "SELECT id, user_id, work_date, hours_cents FROM timesheet_entry")
    )
    assert sorted(row["id"] for row in rows) == sorted(ids)  # each stored once, nothing else
    per_user: dict[str, int] = {}
    for row in rows:
        assert row["work_date"] == dt.date.fromisoformat(DAY)
        per_user[row["user_id"]] = per_user.get(row["user_id"], 0) + row["hours_cents"]
    assert sorted(per_user.values()) == [2400] * USERS
    events = asyncio.run(_query(fresh_postgres, "SELECT entry_id, action FROM entry_event"))
    assert sorted((e["entry_id"], e["action"]) for e in events) == [
        (entry_id, "created") for entry_id in sorted(ids)
    ]
    for server in servers:
        assert "Traceback" not in server.log()


@pytest.mark.postgres
def test_retry_storm_across_two_processes_creates_one_entry_with_identical_answers(
    serve, fresh_postgres, make_token
):
    servers = [serve(fresh_postgres), serve(fresh_postgres)]
    for server in servers:
        server.launch()
    for server in servers:
        server.wait_ready()
    headers = {**employee(make_token, 0), "Idempotency-Key": "tap-2017-07-10-1"}
    body = {"project": "Storm", "date": DAY, "hours": "7.5"}

    async def run() -> list[Answer]:
        https = [client(server.url, connections=20) for server in servers]
        try:
            return await asyncio.gather(
                *(
                    call(https[n % 2], "POST", "/timesheets", json=body, headers=headers)
                    for n in range(40)
                )
            )
        finally:
            for http in https:
                await http.aclose()

    answers = asyncio.run(run())

    assert {answer.status for answer in answers} == {201}, [a.status for a in answers]
    assert len({json.dumps(answer.body, sort_keys=True) for answer in answers}) == 1
    rows = asyncio.run(_query(fresh_postgres, "SELECT id FROM timesheet_entry"))
    assert [row["id"] for row in rows] == [answers[0].body["id"]]


# --- 2. several workers on SQLite ---------------------------------------------------------------


def test_sqlite_workers_never_answer_database_locked(serve, tmp_path, make_token):
    server = started(serve(f"sqlite:///{tmp_path / 'shared.db'}", workers=2))
    tokens = [employee(make_token, n) for n in range(8)]
    requests = 320

    async def run() -> list[Answer]:
        gate = asyncio.Semaphore(64)
        # A new connection per request: the kernel spreads them over both workers.
        async with client(server.url, connections=64) as http:

            async def one(n: int) -> Answer:
                headers = {**tokens[n % len(tokens)], "Connection": "close"}
                async with gate:
                    if n % 5 == 4:
                        return await call(http, "GET", "/timesheets", headers=headers)
                    body = {"project": "Lite", "date": DAY, "hours": 1.5, "notes": f"n{n}"}
                    return await call(http, "POST", "/timesheets", json=body, headers=headers)

            return await asyncio.gather(*(one(n) for n in range(requests)))

    answers = asyncio.run(run())
    bad = [a for a in answers if a.status not in (200, 201, 422)]
    assert not bad, bad[:3]
    assert not [a for a in answers if "locked" in str(a.body)]
    created = [a.body["id"] for a in answers if a.status == 201]
    refused = [a for a in answers if a.status == 422]
    assert len(set(created)) == len(created) == 8 * 16  # 16 × 1.5 h = 24 h per user, across workers
    assert all(a.body["error"] == "validation_failed" for a in refused)
    assert "database is locked" not in server.log()


def _listening_sockets(port: int) -> int:
    """How many sockets listen on `port` (IPv4), from the kernel's own table."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(
        1 for row in rows if row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "0A"
    )


@pytest.mark.skipif(not listeners.OWN_LISTENERS, reason="SO_REUSEPORT groups are Linux's")
def test_two_workers_listen_on_sockets_of_their_own_and_share_a_burst_of_connections(
    serve, tmp_path
):
    server = started(serve(f"sqlite:///{tmp_path / 'spread.db'}", workers=2))
    deadline = time.monotonic() + 10.0  # the first worker may answer before the second listens
    while _listening_sockets(server.port) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _listening_sockets(server.port) == 2

    async def burst() -> list[str]:
        clients = [
            httpx.AsyncClient(base_url=server.url, trust_env=False, timeout=5.0) for _ in range(40)
        ]
        try:  # 40 connections opened at once, as a load balancer's pool or wrk does
            answers = await asyncio.gather(*(http.get("/healthz") for http in clients))
        finally:
            await asyncio.gather(*(http.aclose() for http in clients))
        return [answer.headers["x-request-id"][:16] for answer in answers]

    workers = collections.Counter(asyncio.run(burst()))  # request ids begin with the worker's

    assert len(workers) == 2, workers
    assert min(workers.values()) >= 8, workers  # spread by the kernel's hash, not all to one


# --- 3. SIGTERM with requests in flight ---------------------------------------------------------


def _slow_key_server(key_server: KeyServer, release: threading.Event) -> None:
    """The key server answers only once `release` is set (bounded): a cold cache, a slow issuer."""

    def slow(handler: Any) -> None:
        release.wait(timeout=8.0)
        KeyServer._send_json(handler, 200, key_server.issuer.jwks())

    key_server.behaviour = slow


def test_sigterm_lets_requests_in_flight_finish_refuses_new_ones_and_exits(
    serve, tmp_path, key_server, make_token
):
    release = threading.Event()
    _slow_key_server(key_server, release)
    server = started(serve(f"sqlite:///{tmp_path / 'term.db'}", jwks_timeout_seconds="20"))
    headers = employee(make_token, 1)

    async def run() -> tuple[list[Answer], float]:
        async with client(server.url, connections=10) as http:
            body = {"project": "Term", "date": DAY, "hours": 2}
            flights = [
                asyncio.ensure_future(call(http, "POST", "/timesheets", json=body, headers=headers))
                for _ in range(4)
            ]
            flights += [
                asyncio.ensure_future(call(http, "GET", "/timesheets", headers=headers))
                for _ in range(2)
            ]
            await asyncio.sleep(0.7)  # all sent and accepted; all waiting for the keys
            assert not any(flight.done() for flight in flights)
            server.terminate()
            terminated = time.monotonic()
            refused = False
            for _ in range(40):
                if await asyncio.to_thread(refuses_connections, server.port):
                    refused = True
                    break
                await asyncio.sleep(0.05)
            assert refused, "new connections are still accepted after SIGTERM"
            assert not any(flight.done() for flight in flights)
            release.set()  # the keys arrive: the requests in flight complete normally
            return list(await asyncio.gather(*flights)), terminated

    try:
        answers, terminated = asyncio.run(run())
    finally:
        release.set()
    assert [a.status for a in answers] == [201] * 4 + [200] * 2, answers
    assert server.process is not None
    server.process.wait(timeout=max(0.1, terminated + 10 - time.monotonic()))
    assert time.monotonic() - terminated < 10
    # uvicorn re-raises the signal once it has shut down cleanly (systemd counts that a clean stop).
    assert server.process.returncode in (0, -signal.SIGTERM), server.log()


def test_sigterm_exits_within_the_bound_even_when_a_request_never_finishes(
    serve, tmp_path, key_server, make_token
):
    release = threading.Event()
    _slow_key_server(key_server, release)
    server = started(
        serve(
            f"sqlite:///{tmp_path / 'stuck.db'}",
            jwks_timeout_seconds="30",
            shutdown_timeout_seconds="2",
        )
    )
    headers = employee(make_token, 1)
    assert server.process is not None

    async def run() -> tuple[Answer, float]:
        async with client(server.url, connections=2) as http:
            flight = asyncio.ensure_future(call(http, "GET", "/timesheets", headers=headers))
            await asyncio.sleep(0.5)
            server.terminate()
            terminated = time.monotonic()
            await asyncio.to_thread(server.process.wait, 10)  # type: ignore[union-attr]
            return await flight, terminated

    try:
        answer, terminated = asyncio.run(run())
    finally:
        release.set()
    assert time.monotonic() - terminated < 2 + 3, "did not exit within the shutdown bound"
    # Cut off when the bound is up: uvicorn cancels the request and answers 500 itself.
    assert answer.status in (0, 500, 503), answer


# --- 4. a PostgreSQL outage ---------------------------------------------------------------------


class Cluster:
    """A PostgreSQL cluster of the test's own on a spare loopback port (never the machine's)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="timesheets-pg-"))
        self.data = self.root / "data"
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:  # postgres refuses to run as root
            shutil.chown(self.root, "postgres", "postgres")
            self.as_postgres = [shutil.which("runuser") or "runuser", "-u", "postgres", "--"]
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*self.as_postgres, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
        )

    def init(self) -> str | None:
        """None, or why this machine cannot run a cluster of its own."""
        if not (PG_BIN / "initdb").exists():
            return f"no PostgreSQL binaries in {PG_BIN}"
        if self.as_postgres and shutil.which("runuser") is None:
            return "running as root without runuser: postgres refuses to run as root"
        done = self.run(
            str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        if done.returncode != 0:
            return f"initdb failed: {done.stderr.strip()[-500:]}"
        return None

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=50"
        )
        done = self.run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options, "-l",
            str(self.root / "postgres.log"), "-w", "-t", "30", "start",
        )  # fmt: skip
        assert done.returncode == 0, done.stdout + done.stderr + self.log()

    def stop(self, mode: str = "immediate") -> None:
        done = self.run(
            str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "30", "stop"
        )
        assert done.returncode == 0, done.stdout + done.stderr

    def destroy(self) -> None:
        if (self.data / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    own = Cluster()
    try:
        reason = own.init()
        if reason is not None:
            pytest.skip(f"cannot start a PostgreSQL cluster of our own here: {reason}")
        own.start()
        yield own
    finally:
        own.destroy()


@pytest.mark.postgres
@pytest.mark.parametrize("mode", ["immediate", "fast"])  # a crash; a restart (sessions terminated)
def test_postgres_outage_answers_503_then_recovers_with_nothing_half_written(
    serve, cluster, make_token, mode
):
    server = started(serve(cluster.url))
    tokens = [employee(make_token, n) for n in range(4)]
    sent: dict[str, Answer] = {}  # notes -> the answer to the create that carried them
    answers: list[tuple[str, Answer]] = []
    readiness: list[Answer] = []

    async def run() -> dict[str, float]:
        marks: dict[str, float] = {}
        stop = asyncio.Event()
        async with client(server.url, connections=20, timeout=15.0) as http:

            async def traffic(worker: int) -> None:
                last_id: int | None = None
                for n in range(10_000):  # bounded; ends long before, when `stop` is set
                    if stop.is_set():
                        return
                    headers = tokens[worker % len(tokens)]
                    if n % 3 == 2:
                        path = f"/timesheets/{last_id}" if last_id else "/timesheets"
                        answer = await call(http, "GET", path, headers=headers)
                        answers.append(("GET", answer))
                    else:
                        notes = f"w{worker}-{n}"
                        day = dt.date(2010, 1, 1) + dt.timedelta(days=n)
                        body = {"project": "Outage", "date": str(day), "hours": 1, "notes": notes}
                        answer = await call(http, "POST", "/timesheets", json=body, headers=headers)
                        sent[notes] = answer
                        answers.append(("POST", answer))
                        if answer.status == 201:
                            last_id = answer.body["id"]
                    await asyncio.sleep(0.01)

            def created_since(moment: float) -> int:
                return sum(1 for a in sent.values() if a.status == 201 and a.started >= moment)

            async def wait_for_creates(since: float, count: int, timeout: float) -> None:
                deadline = time.monotonic() + timeout
                while created_since(since) < count:
                    assert time.monotonic() < deadline, f"fewer than {count} creates since"
                    await asyncio.sleep(0.05)

            workers = [asyncio.ensure_future(traffic(w)) for w in range(6)]
            try:
                await wait_for_creates(0, 30, timeout=15)
                marks["down"] = time.monotonic()
                await asyncio.to_thread(cluster.stop, mode)
                marks["stopped"] = time.monotonic()
                for _ in range(10):  # /readyz tells the database is down
                    readiness.append(await call(http, "GET", "/readyz"))
                    await asyncio.sleep(0.1)
                await asyncio.sleep(1.5)  # the outage goes on, traffic keeps coming
                marks["restart"] = time.monotonic()
                await asyncio.to_thread(cluster.start)
                marks["up"] = time.monotonic()
                await wait_for_creates(marks["up"], 30, timeout=20)  # recovers by itself
                marks["recovered"] = time.monotonic()
                await asyncio.sleep(1.0)  # and stays up
                readiness.append(await call(http, "GET", "/readyz"))
            finally:
                stop.set()
                await asyncio.gather(*workers, return_exceptions=True)
        return marks

    marks = asyncio.run(run())

    # Never a 500, never a hang, never no answer.
    unexpected = [(m, a) for m, a in answers if a.status not in (200, 201, 503)]
    assert not unexpected, unexpected[:5]
    slow = [(m, a) for m, a in answers if a.elapsed > 5.0]
    assert not slow, slow[:5]
    # During the outage: 503 with Retry-After. Only answers that came back before the restart
    # began count: a request sent just before it may reach the service (or wait for a connection
    # there) once the database is back, and then rightly succeed.
    during = [
        a
        for _, a in answers
        if marks["stopped"] <= a.started and a.started + a.elapsed < marks["restart"]
    ]
    served = [a for a in during if a.status != 503]
    assert during and not served, served[:5]
    unavailable = [a for _, a in answers if a.status == 503]
    assert all(a.retry_after and int(a.retry_after) > 0 for a in unavailable)
    assert all(a.body["error"] == "database_unavailable" for a in unavailable)
    assert [a.status for a in readiness[:10]] == [503] * 10
    assert all(a.body["database"]["status"] == "down" for a in readiness[:10])
    assert readiness[-1].status == 200 and readiness[-1].body["database"]["status"] == "up"
    # After the recovery, normal service.
    tail = [a for _, a in answers if a.started >= marks["recovered"]]
    assert tail and all(a.status in (200, 201) for a in tail), tail[:5]

    # Nothing half-written: every 201 stored once, every stored row has its one audit event.
    rows = asyncio.run(_query(cluster.url, "SELECT id, notes FROM timesheet_entry"))
    stored = {row["notes"]: row["id"] for row in rows}
    assert len(stored) == len(rows)  # no notes twice: no create stored twice
    for notes, answer in sent.items():
        if answer.status == 201:
            assert stored.get(notes) == answer.body["id"], notes
    ambiguous = {notes for notes, a in sent.items() if a.status == 503}
    assert set(stored) <= {notes for notes, a in sent.items() if a.status == 201} | ambiguous
    events = asyncio.run(_query(cluster.url, "SELECT entry_id, action FROM entry_event"))
    assert sorted((e["entry_id"], e["action"]) for e in events) == sorted(
        (entry_id, "created") for entry_id in stored.values()
    )
    assert "Traceback" not in server.log()


# --- 5. limits on bodies and headers ------------------------------------------------------------


def _raw_exchange(port: int, head: bytes, chunks: list[bytes] = (), timeout: float = 5.0) -> bytes:  # type: ignore[assignment]
    """Sends `head` and then `chunks` (never more), and reads what the server answers."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(head)
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except OSError:  # the server answered and closed: that is allowed
                break
        received = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in received and time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            received += data
        return received


def _status(reply: bytes) -> int:
    first = reply.split(b"\r\n", 1)[0].split()
    return int(first[1]) if len(first) > 1 else 0


def test_oversized_bodies_get_413_before_they_are_read_and_huge_headers_no_500(
    serve, tmp_path, make_token
):
    cap = 8192
    server = started(serve(f"sqlite:///{tmp_path / 'limits.db'}", max_body_bytes=str(cap)))
    token = make_token("ann@example.com")
    head = (
        "POST /timesheets HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    )

    # Declared too large: 413 at once, without sending a byte of the body.
    started_at = time.monotonic()
    reply = _raw_exchange(server.port, (head + "Content-Length: 50000000\r\n\r\n").encode())
    assert _status(reply) == 413, reply[:300]
    assert time.monotonic() - started_at < 3.0

    # Chunked: cut off just past the cap, though the body never ends.
    chunk = b"400\r\n" + b" " * 1024 + b"\r\n"
    reply = _raw_exchange(
        server.port, (head + "Transfer-Encoding: chunked\r\n\r\n").encode(), [chunk] * 10
    )
    assert _status(reply) == 413, reply[:300]

    # A 100 KB header: refused (4xx) or the connection closed, never served and never a 500.
    filler = "a" * 100_000
    reply = _raw_exchange(
        server.port,
        f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: {filler}\r\n\r\n".encode(),
    )
    assert reply == b"" or 400 <= _status(reply) < 500, reply[:300]

    # A client that goes away in the middle of its body (a phone losing its network): nothing
    # stored, no error logged.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5.0) as sock:
        sock.sendall((head + "Content-Length: 100\r\n\r\n").encode() + b'{"project": "A')
        time.sleep(0.3)
    time.sleep(0.3)

    # And the server is still fine.
    assert httpx.get(server.url + "/healthz", timeout=5.0, trust_env=False).status_code == 200
    listed = httpx.get(server.url + "/timesheets", headers=bearer(token), trust_env=False)
    assert listed.json() == []
    assert "Traceback" not in server.log()


@pytest.mark.slow
def test_request_heads_over_the_cap_get_431_whether_sent_at_once_or_in_pieces(
    serve, tmp_path, make_token
):
    server = started(serve(f"sqlite:///{tmp_path / 'heads.db'}"))
    big = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: " + b"a" * 120_000 + b"\r\n\r\n"

    assert _status(_raw_exchange(server.port, b"", [big])) == 431
    pieces = [big[i : i + 1000] for i in range(0, len(big), 1000)]
    assert _status(_raw_exchange(server.port, pieces[0], pieces[1:])) == 431

    # Heads under the cap pass, also several on one connection and a large body after a small
    # head in the same read (the cap counts the head, not the body).
    small = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: " + b"a" * 30_000 + b"\r\n\r\n"
    last = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=5.0) as sock:
        sock.sendall(small * 3 + last)
        reply = b"".join(iter(lambda: sock.recv(65536), b""))
    assert reply.count(b"HTTP/1.1 200") == 4, reply[:300]
    # Trailer fields after a chunked body are bounded like a head: no endless growth.
    chunked = (
        b"POST /timesheets HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + make_token("ann@example.com").encode() + b"\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n1\r\n{\r\n0\r\n"
    )
    trailers = [b"X-T%d: " % n + b"a" * 1000 + b"\r\n" for n in range(200)]
    assert _status(_raw_exchange(server.port, chunked, trailers)) == 431

    body = b"{" + b" " * 100_000 + b"}"
    post = (
        b"POST /timesheets HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    assert _status(_raw_exchange(server.port, post)) == 401  # read, then refused for the token
    assert "Traceback" not in server.log()


@pytest.mark.slow
def test_slow_request_heads_and_silent_connections_are_cut_off(serve, tmp_path):
    server = started(serve(f"sqlite:///{tmp_path / 'slow.db'}", header_timeout_seconds="0.5"))

    # Slowloris: a head started but never finished gets 408 and a closed connection.
    started_at = time.monotonic()
    reply = _raw_exchange(server.port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-A: 1\r\n")
    assert _status(reply) == 408, reply[:300]
    assert time.monotonic() - started_at < 3.0

    # A connection that never says anything is closed as well.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5.0) as sock:
        started_at = time.monotonic()
        assert _status(sock.recv(1024)) == 408
        assert time.monotonic() - started_at < 3.0

    # Blank lines after a response begin no request: the connection must still send a head.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5.0) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        reply = b""
        while not reply.endswith(b'{"status":"ok"}'):
            reply += sock.recv(65536)
        assert _status(reply) == 200
        sock.sendall(b"\r\n")
        started_at = time.monotonic()
        assert _status(sock.recv(1024)) == 408
        assert time.monotonic() - started_at < 3.0

    # A prompt client on a kept-alive connection is not affected by the timer.
    with httpx.Client(base_url=server.url, trust_env=False, timeout=5.0) as http:
        for _ in range(3):
            assert http.get("/healthz").status_code == 200
            time.sleep(0.3)


@pytest.mark.slow
def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_timeout(serve, tmp_path):
    server = started(serve(f"sqlite:///{tmp_path / 'idle.db'}"))
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    def exchange(sock: socket.socket) -> float:
        sock.sendall(request)
        reply = b""
        while not reply.endswith(b'{"status":"ok"}'):
            reply += sock.recv(65536)
        assert _status(reply) == 200
        return time.monotonic()

    with socket.create_connection(("127.0.0.1", server.port), timeout=15.0) as sock:
        exchange(sock)
        time.sleep(3.0)  # idle for less than the timeout (5 s): the connection still serves
        answered = exchange(sock)
        assert sock.recv(1024) == b""  # blocks until the server closes the connection
        idle = time.monotonic() - answered
    assert 4.8 <= idle < 7.5, idle


@pytest.mark.slow
def test_rate_limit_counts_across_two_serve_processes(serve, tmp_path, make_token):
    database = f"sqlite:///{tmp_path / 'limit.db'}"
    limit = "rate_limit_per_minute"
    first = started(serve(database, **{limit: "20", "rate_limit_sync_seconds": "0.2"}))
    second = started(serve(database, **{limit: "20", "rate_limit_sync_seconds": "0.2"}))
    headers = employee(make_token, 0)

    statuses = []
    to_next_minute = 60 - time.time() % 60
    if to_next_minute < 10:  # the allowance is per minute: keep the whole run inside one
        time.sleep(to_next_minute + 0.5)
    with (
        httpx.Client(base_url=first.url, trust_env=False, timeout=5.0) as a,
        httpx.Client(base_url=second.url, trust_env=False, timeout=5.0) as b,
    ):
        for n in range(60):  # alternately, 20 a second: each process alone would allow 20
            answer = (a if n % 2 == 0 else b).get("/timesheets", headers=headers)
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                assert 1 <= int(answer.headers["Retry-After"]) <= 60
            time.sleep(0.05)

    accepted = statuses.count(200)
    assert set(statuses) <= {200, 429}
    # Shared: about 20 in all (a sync interval's worth of slack); per process it would be 40.
    assert 20 <= accepted <= 26, statuses
    assert 429 in statuses[::2] and 429 in statuses[1::2]  # both processes refuse


def test_metrics_port_sums_the_requests_of_every_worker(serve, tmp_path, make_token):
    metrics_port = free_port()
    server = started(
        serve(f"sqlite:///{tmp_path / 'metrics.db'}", workers=2, metrics_port=str(metrics_port))
    )
    headers = employee(make_token, 0)
    for _ in range(20):  # a connection each, so that both workers take some
        assert httpx.get(server.url + "/timesheets", headers=headers, trust_env=False).is_success

    def counted() -> float:
        scraped = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", trust_env=False, timeout=5)
        assert scraped.status_code == 200
        return sum(
            float(line.rsplit(" ", 1)[1])
            for line in scraped.text.splitlines()
            if line.startswith("timesheets_requests_total{")
            and 'route="/timesheets"' in line
            and 'status="200"' in line
        )

    # Workers add their counts to the shared files every 0.2 s (the access log's flush).
    deadline = time.monotonic() + 3.0
    while counted() < 20 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert counted() == 20
