"""Database access through the drivers themselves: the stdlib's sqlite3, or asyncpg for PostgreSQL.

Both speak the same SQL, written with `:name` parameters; for asyncpg they are rewritten to `$n` once
per statement. An ORM or SQLAlchemy Core in the request path cost more than everything else a request
does (see bench/README.md); SQLAlchemy is kept for what it is best at here, the migrations.

SQLite runs on the event loop thread: its statements take microseconds, WAL lets readers proceed
beside the single writer, and one connection per process serialises writes without a thread hop.
Transactions are `BEGIN IMMEDIATE`, so a read-then-write (the daily cap) cannot interleave with
another writer, in this process or another.
"""

import asyncio
import contextlib
import datetime as dt
import functools
import re
import sqlite3
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from .errors import DatabaseUnavailable

Row = Sequence[Any]
Params = Mapping[str, Any]


class Connection(Protocol):
    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]: ...
    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None: ...
    async def lock(self, key: str) -> None:
        """Serialise transactions that name the same key, until this transaction ends."""

    async def next_id(self, table: str) -> int:
        """The id that the next row of `table` (an `id` primary key that the database numbers)
        takes, reserved for this transaction: a row can be written whole, its id included."""


class Database(Protocol):
    dialect: str

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]: ...
    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None: ...
    def transaction(self) -> Any: ...  # async context manager yielding a Connection
    async def close(self) -> None: ...


async def connect(url: str) -> Database:
    """A database for a SQLAlchemy-style URL: `sqlite:///file.db` or `postgresql://...`."""
    if url.startswith("sqlite"):
        return SqliteDatabase(sqlite_path(url))
    return await PostgresDatabase.open(postgres_dsn(url))


def sqlite_path(url: str) -> str:
    path = url.split(":///", 1)[1] if ":///" in url else ""
    return path or ":memory:"


def postgres_dsn(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URL: {url}")
    return "postgresql://" + rest


# --- SQLite -------------------------------------------------------------------------------------


def _identifier(name: str) -> str:
    if not name.isidentifier():
        raise ValueError(f"not a table name: {name!r}")
    return name


def utc_text(value: dt.datetime) -> str:
    """A time as this service writes it everywhere: UTC, microseconds and a Z."""
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return utc_text(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _sqlite_params(params: Params | None) -> dict[str, Any]:
    return {name: _sqlite_value(value) for name, value in (params or {}).items()}


class _SqliteConnection:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        try:
            return self._connection.execute(sql, _sqlite_params(params)).fetchall()
        except sqlite3.OperationalError as exc:
            raise DatabaseUnavailable() from exc

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def lock(self, key: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE already holds the database's single write lock."""

    async def next_id(self, table: str) -> int:
        # AUTOINCREMENT keeps the highest id ever used in sqlite_sequence; the transaction holds
        # the write lock, so no one else can take the next one before this transaction ends.
        rows = await self.fetch_all(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = :table), 0) + 1",
            {"table": _identifier(table)},
        )
        return int(rows[0][0])


class SqliteDatabase(_SqliteConnection):
    dialect = "sqlite"

    def __init__(self, path: str) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("PRAGMA busy_timeout=5000")
        connection.execute("PRAGMA foreign_keys=ON")
        super().__init__(connection)
        self._write_lock = asyncio.Lock()

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteConnection]:
        async with self._write_lock:
            try:
                self._connection.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise DatabaseUnavailable() from exc
            try:
                yield self
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            else:
                self._connection.execute("COMMIT")

    async def close(self) -> None:
        self._connection.close()


# --- PostgreSQL ---------------------------------------------------------------------------------

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
# The database is down, restarting, overloaded or too slow: the client may retry (503). Class 57
# covers a server shutting down under a session (AdminShutdown on `pg_ctl stop -m fast`,
# CrashShutdown) and a statement cancelled by its timeout; class 53 "too many connections";
# InternalClientError a connection whose protocol state a server's goodbye left confused. A
# connection that failed so is terminated, never handed to another request.
_UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    asyncpg.exceptions.InternalClientError,
)
# Bounds, so that a database that does not answer costs a request seconds, not a hang: to connect,
# to wait for a pooled connection, and for any one statement.
CONNECT_TIMEOUT = 3.0
ACQUIRE_TIMEOUT = 5.0
COMMAND_TIMEOUT = 5.0
CLOSE_TIMEOUT = 2.0
POOL_SIZE = 10


@functools.lru_cache(maxsize=256)
def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """`:name` parameters rewritten to asyncpg's `$n`, with the names in order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _NAMED.sub(number, sql), tuple(names)


def _args(names: tuple[str, ...], params: Params | None) -> list[Any]:
    return [params[name] for name in names] if params else []


class _PostgresConnection:
    def __init__(self, connection: Any) -> None:
        self._connection = connection

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        query, names = _positional(sql)
        try:
            rows: list[Row] = await self._connection.fetch(query, *_args(names, params))
        except _UNAVAILABLE as exc:
            raise DatabaseUnavailable() from exc
        return rows

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def lock(self, key: str) -> None:
        await self.fetch_all(
            "SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))", {"key": key}
        )

    async def next_id(self, table: str) -> int:
        rows = await self.fetch_all(
            "SELECT nextval(pg_get_serial_sequence(:table, 'id'))", {"table": _identifier(table)}
        )
        return int(rows[0][0])


async def _keep_session(connection: Any) -> None:
    pass


def _discard(connection: Any) -> None:
    """Closes a connection that failed, so that the pool opens a new one instead of reusing it."""
    with contextlib.suppress(asyncpg.InterfaceError):  # the pool may have let it go already
        connection.terminate()


class PostgresDatabase(_PostgresConnection):
    """A pool of connections, handed out in the order requests asked for them.

    asyncpg's pool lets a newcomer take a connection that was just released to a request already
    waiting, which then queues again at the back: under load some requests waited hundreds of
    milliseconds (bench/README.md). A semaphore as wide as the pool keeps the line instead (first
    come, first served), and bounds the wait; the pool itself then never makes anyone wait.
    """

    dialect = "postgresql"

    def __init__(self, pool: Any) -> None:
        super().__init__(pool)
        self._turns = asyncio.Semaphore(POOL_SIZE)

    @classmethod
    async def open(cls, dsn: str) -> "PostgresDatabase":
        # min_size=0: start even while the database is down; requests then get 503, not a crash.
        # reset: our transactions leave no session state behind (their advisory locks end with
        # them), so the default reset, a round trip on every release, would buy nothing.
        pool = await asyncpg.create_pool(
            dsn,
            min_size=0,
            max_size=POOL_SIZE,
            timeout=CONNECT_TIMEOUT,
            command_timeout=COMMAND_TIMEOUT,
            reset=_keep_session,
        )
        return cls(pool)

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        """One statement outside any transaction, as the pool's own `fetch`, but bounded."""
        query, names = _positional(sql)
        connection = await self._acquire()
        try:
            rows: list[Row] = await connection.fetch(query, *_args(names, params))
        except _UNAVAILABLE as exc:
            _discard(connection)
            raise DatabaseUnavailable() from exc
        finally:
            await self._release(connection)
        return rows

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresConnection]:
        connection = await self._acquire()
        try:
            async with connection.transaction():
                yield _PostgresConnection(connection)
        except DatabaseUnavailable:
            _discard(connection)
            raise
        except _UNAVAILABLE as exc:
            _discard(connection)
            raise DatabaseUnavailable() from exc
        finally:
            await self._release(connection)

    async def _acquire(self) -> Any:
        if self._turns.locked():  # every connection is busy: wait in line, but not for ever
            try:
                async with asyncio.timeout(ACQUIRE_TIMEOUT):
                    await self._turns.acquire()
            except TimeoutError:
                raise DatabaseUnavailable() from None
        else:
            await self._turns.acquire()  # free: returns at once
        try:
            return await self._connection.acquire()  # a connection is free, or opens (bounded)
        except BaseException as exc:
            self._turns.release()
            if isinstance(exc, _UNAVAILABLE):
                raise DatabaseUnavailable() from exc
            raise

    async def _release(self, connection: Any) -> None:
        try:
            await self._connection.release(connection, timeout=CLOSE_TIMEOUT)
        finally:
            self._turns.release()

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._connection.close(), CLOSE_TIMEOUT)
        except (TimeoutError, *_UNAVAILABLE):
            self._connection.terminate()  # a connection still busy or a database gone: cut off
