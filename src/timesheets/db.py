"""Database access through the drivers themselves: the stdlib's sqlite3, or asyncpg for PostgreSQL.

Both speak the same SQL, written with `:name` parameters; for asyncpg they are rewritten to `$n` once
per statement. An ORM or SQLAlchemy Core in the request path cost more than everything else a request
does (see bench/README.md); SQLAlchemy is kept for what it is best at here, the migrations.

SQLite runs on the event loop thread: its statements take microseconds, WAL lets readers proceed
beside the single writer, and one writing connection per process serialises writes without a
thread hop; the transactions that arrive together share a COMMIT (`SqliteDatabase`). Transactions
are `BEGIN IMMEDIATE`, so a read-then-write (the daily cap) cannot interleave with
another writer, in this process or another. While another process holds the write lock, writers
wait on the event loop (their group tries its BEGIN again after short pauses; a busy statement
or COMMIT is tried again by `_unless_busy`), not in SQLite's busy handler, which sleeps the thread
and with it every other request of this process.
"""

import asyncio
import datetime as dt
import functools
import re
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

import asyncpg

from .errors import DatabaseUnavailable

Row = Sequence[Any]
T = TypeVar("T")
Params = Mapping[str, Any]


class Connection(Protocol):
    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]: ...
    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None: ...
    async def lock(self, key: str) -> None:
        """Serialise transactions that name the same key, until this transaction ends."""

    async def next_id(self, table: str) -> int:
        """The id that the next row of `table` (an `id` primary key that the database numbers)
        takes, reserved for this transaction: a row can be written whole, its id included."""

    async def write_all(self, statements: Sequence[tuple[str, Params]]) -> None:
        """Writes whose results are not needed, in one round trip where the database allows it
        (PostgreSQL: one statement). Each is an INSERT, UPDATE or DELETE. PostgreSQL runs the
        parts of a statement on one snapshot, so none of them may read what another writes, nor
        change the same rows; foreign keys are checked once all are written."""


class Database(Protocol):
    dialect: str

    def text_as_bytes(self, column: str) -> str:
        """SQL for the text `column` as its UTF-8 bytes (the driver then hands out `bytes`)."""

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        """A read of what is committed. Writes go through `transaction()` (SQLite's reading
        connection refuses them)."""

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
    """A time as this service writes it everywhere: UTC, microseconds and a Z (four-digit years
    included, so that the texts sort as the times do)."""
    if value.tzinfo is not dt.UTC:
        value = value.astimezone(dt.UTC)
    # isoformat, unlike strftime, pads a year before 1000, and takes a third of the time
    return value.isoformat(timespec="microseconds")[:-6] + "Z"


_AS_IS = frozenset({str, int, float, bytes, type(None)})  # most parameters: nothing to convert


def _sqlite_value(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return utc_text(value)
    if isinstance(value, dt.date):
        return value.isoformat()
    return value


def _sqlite_params(params: Params | None) -> dict[str, Any]:
    return {
        name: value if type(value) in _AS_IS else _sqlite_value(value)
        for name, value in (params or {}).items()
    }


# How long a statement waits for another process to let go of the database (then 503), and the
# longest pause between two tries (`_busy_pause`): pauses of up to 2 ms left the write lock idle
# long enough to put 2-worker POST's p99 at 31-46 ms, against 20-29 with up to 0.5 or 1 ms
# (bench/README.md). Shorter would not be kept: an idle event loop sleeps in whole milliseconds
# (the selector rounds its timeout up), and uvloop rounds a timer under 0.5 ms to none, a try on
# every turn of the loop. Only the group waiting to begin tries (once for all its members); a try
# costs a few microseconds.
BUSY_TIMEOUT = 5.0
_BUSY_PAUSE = 0.001
# A group whose BEGIN finds another worker's group writing first tries again on the event loop's
# next turns (a group writes for well under a millisecond, and an idle loop would sleep a whole
# one), and after this many tries falls back to the pauses. 2-worker POST, interleaved A/B in 6
# pairs: 10,867-11,897 -> 11,126-12,235 RPS, higher in every pair, for 0-7 % more CPU a request.
_BUSY_TRIES_AT_ONCE = 40


def _busy_pause(tries: int) -> float:
    """The pause after the `tries`-th try (from 1) that found the database busy: 0.25, 0.5, 1, 1
    ... ms."""
    return _BUSY_PAUSE / 4 * (1 << min(max(tries, 1) - 1, 2))


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    """SQLITE_BUSY and its extended codes: another connection holds the lock we need."""
    # Some of the module's own errors (a column that is not UTF-8) carry no code at all.
    return getattr(exc, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY


def _deadline(timeout: float) -> float:
    return asyncio.get_running_loop().time() + timeout


async def _take_turn(turns: asyncio.Semaphore, deadline: float) -> None:
    """Waits in line for `turns` until `deadline` (the event loop's time), then 503. When a turn
    is free it is taken at once, without setting a timer."""
    if not turns.locked():
        await turns.acquire()
        return
    try:
        async with asyncio.timeout_at(deadline):
            await turns.acquire()
    except TimeoutError:
        raise DatabaseUnavailable() from None


async def _unless_busy(statement: Callable[[], T], deadline: float) -> T:
    """`statement()`, tried again while another process holds a lock it needs, until `deadline`
    (the event loop's time).

    The pauses are `asyncio.sleep`s, so the process serves its other requests meanwhile. A busy
    statement took no effect (SQLite undoes a failed statement), so trying it again is safe.
    """
    loop = asyncio.get_running_loop()
    tries = 0
    while True:
        try:
            return statement()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or loop.time() >= deadline:
                raise DatabaseUnavailable() from exc
        tries += 1
        await asyncio.sleep(_busy_pause(tries))


class _SqliteConnection:
    def __init__(self, connection: sqlite3.Connection, busy_timeout: float) -> None:
        self._connection = connection
        self._busy_timeout = busy_timeout

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        values = _sqlite_params(params)
        try:
            return self._connection.execute(sql, values).fetchall()
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc):
                raise DatabaseUnavailable() from exc
        return await _unless_busy(
            lambda: self._connection.execute(sql, values).fetchall(), _deadline(self._busy_timeout)
        )

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def lock(self, key: str) -> None:
        """Nothing to do: BEGIN IMMEDIATE already holds the database's single write lock."""

    async def write_all(self, statements: Sequence[tuple[str, Params]]) -> None:
        for sql, params in statements:  # statements take microseconds here: no round trips
            await self.fetch_all(sql, params)

    async def next_id(self, table: str) -> int:
        # AUTOINCREMENT keeps the highest id ever used in sqlite_sequence; the transaction holds
        # the write lock, so no one else can take the next one before this transaction ends.
        rows = await self.fetch_all(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = :table), 0) + 1",
            {"table": _identifier(table)},
        )
        return int(rows[0][0])


def _open_sqlite(path: str, busy_timeout: float) -> sqlite3.Connection:
    # Workers starting together may wait for each other here (once, before serving); from then on
    # SQLite's own busy handler is off and _unless_busy waits instead.
    connection = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, timeout=busy_timeout
    )
    _use_wal(connection, busy_timeout)
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.execute("PRAGMA foreign_keys=ON")
    connection.execute("PRAGMA busy_timeout=0")
    return connection


def _use_wal(connection: sqlite3.Connection, timeout: float) -> None:
    """WAL journal mode (it stays with the file once set). Connections that switch a new file at
    the same moment (workers starting together) can each hold the lock the other needs; SQLite
    then answers "locked" at once instead of waiting, so the switch is tried again here."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            connection.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(0.005)


def _unavailable(cause: BaseException) -> DatabaseUnavailable:
    unavailable = DatabaseUnavailable()
    unavailable.__cause__ = cause
    return unavailable


class _Group:
    """The transactions that one `BEGIN IMMEDIATE ... COMMIT` carries (group commit).

    Its members gather while it waits: for the group before it, and for another process's write
    lock. When it may go, they are woken together, so that the event loop runs its `BEGIN`, the
    members one after another and its `COMMIT` as consecutive callbacks: the write lock is held
    for the group's own work, not while the loop serves other requests in between (unless a
    member's work waits for something: then the others follow it, and the COMMIT the last).
    """

    __slots__ = (
        "waiting", "woken", "begun", "error", "lost", "members", "commit_due", "waiters",
        "deadline", "retry", "tries",
    )  # fmt: skip

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[None]] = []  # one per member waiting to be woken
        self.woken = False  # its members have been woken for a try at BEGIN
        self.begun = False  # its BEGIN IMMEDIATE succeeded
        self.error: BaseException | None = None  # why it never began, or why its COMMIT failed
        self.lost = False  # its transaction is or will be rolled back: nothing of it is kept
        self.members = 0  # members that joined and have not finished their work
        self.commit_due = False  # its `_due` has run: the last member to finish commits
        self.waiters: list[asyncio.Future[None]] = []  # one per member, told when it has ended
        self.deadline: asyncio.TimerHandle | None = None
        self.retry: asyncio.Handle | None = None  # the next try at BEGIN, while busy
        self.tries = 0  # BEGINs that found the write lock taken

    @property
    def gathering(self) -> bool:
        """Whether a new member may still join: the members have not been woken."""
        return not self.woken and self.error is None

    def cancel_timers(self) -> None:
        for timer in (self.deadline, self.retry):
            if timer is not None:
                timer.cancel()
        self.deadline = self.retry = None


class SqliteDatabase(_SqliteConnection):
    """Two connections: reads outside transactions go to one, transactions to the other.

    Transactions are committed in groups (`_Group`). A transaction is a savepoint inside the
    writer's `BEGIN IMMEDIATE`; those that arrive in one turn of the event loop, while the group
    before theirs runs, or while another process holds the write lock, share one COMMIT, and
    each member leaves `transaction()` only once that COMMIT succeeded (or, when it failed, with
    DatabaseUnavailable, none of the group's writes being kept). Nothing is acknowledged before
    it is committed. A commit writes each changed page once for the group, instead of once per
    request; the other connection reads only what is committed, so no one sees a group's writes
    before its COMMIT. A `:memory:` database has one connection, so there each transaction is a
    group of its own.
    """

    dialect = "sqlite"

    def text_as_bytes(self, column: str) -> str:
        return f"CAST({column} AS BLOB)"

    def __init__(self, path: str, *, busy_timeout: float = BUSY_TIMEOUT) -> None:
        if path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        writer = _open_sqlite(path, busy_timeout)
        if path == ":memory:":
            reader = writer
        else:
            reader = _open_sqlite(path, busy_timeout)
            reader.execute("PRAGMA query_only=ON")
        super().__init__(reader, busy_timeout)
        self._writer = _SqliteConnection(writer, busy_timeout)
        self._grouped = reader is not writer
        self._groups: deque[_Group] = deque()  # the running group first, then those waiting
        self._at_work = False  # a member is between its SAVEPOINT and its RELEASE
        self._work_done: asyncio.Future[None] | None = None  # for members waiting for that one
        self._ending: set[asyncio.Task[None]] = set()
        self._drained: asyncio.Future[None] | None = None  # close() waits for the last group
        self._closed = False

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_SqliteConnection]:
        """One transaction at a time in this process, and across processes SQLite's write lock.
        The wait for both together is bounded by the busy timeout (then 503): its own, and the
        one of its group's first transaction while the group waits to begin (so a transaction
        that joins a group late may give up sooner).

        A body that raised is answered with its own error once its group has committed, or
        with DatabaseUnavailable when that COMMIT failed: its error may rest on what another
        member wrote, and a retry will find out."""
        deadline = _deadline(self._busy_timeout)
        group = self._join()
        try:
            await self._admitted(group, deadline)
        except BaseException:
            self._leave(group)
            raise
        ended = asyncio.get_running_loop().create_future()
        group.waiters.append(ended)  # before its work: the last member to finish commits
        self._at_work = True
        writer = self._writer._connection
        try:
            writer.execute("SAVEPOINT member")
            try:
                yield self._writer
            except BaseException as exc:
                self._end_member(group, "ROLLBACK TO member", "RELEASE member")
                if not isinstance(exc, Exception):
                    raise  # cancelled: nothing more to answer
                failed: Exception | None = exc
            else:
                failed = self._end_member(group, "RELEASE member")
        except sqlite3.Error as exc:  # the SAVEPOINT itself
            group.lost = True
            failed = _unavailable(exc)
        finally:
            self._off_work(group)
        await ended
        if group.error is not None:
            raise _unavailable(group.error)
        if failed is not None:
            raise failed

    def _join(self) -> _Group:
        """The group that a new transaction joins: the last one while it gathers, else a new one
        (always a new one without grouping)."""
        if self._closed:
            raise DatabaseUnavailable()
        group = self._groups[-1] if self._groups else None
        if group is None or not group.gathering or not self._grouped:
            loop = asyncio.get_running_loop()
            group = _Group()
            group.deadline = loop.call_at(_deadline(self._busy_timeout), self._expire, group)
            self._groups.append(group)
            if len(self._groups) == 1:  # the transactions of this turn of the loop join it too
                loop.call_soon(self._let_go, group)
        group.members += 1
        return group

    async def _admitted(self, group: _Group, deadline: float) -> None:
        """Waits until `group` has begun (bounded by its own deadline timer) and no other member
        is at work (until `deadline`)."""
        while not group.begun:
            woken = asyncio.get_running_loop().create_future()
            group.waiting.append(woken)
            await woken
            if group.error is not None:
                raise _unavailable(group.error)
        while self._at_work:  # another member's work waits for something: after it
            if self._work_done is None:
                self._work_done = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout_at(deadline):
                    await asyncio.shield(self._work_done)
            except TimeoutError:
                raise DatabaseUnavailable() from None
        if group.lost:  # SQLite rolled the transaction back under an earlier member
            raise DatabaseUnavailable()

    def _off_work(self, group: _Group) -> None:
        self._at_work = False
        if self._work_done is not None:
            self._work_done.set_result(None)
            self._work_done = None
        self._leave(group)

    def _leave(self, group: _Group) -> None:
        """A member is done with `group` (its work finished, or it gave up waiting)."""
        group.members -= 1
        if group.members == 0 and group.commit_due:
            self._commit(group)

    def _let_go(self, group: _Group) -> None:
        """Wakes `group`'s members: its BEGIN, then each member, then `_due` (its COMMIT), as
        consecutive callbacks of the event loop's next turn."""
        if group.woken:
            return
        group.woken = True
        loop = asyncio.get_running_loop()
        loop.call_soon(self._begin, group)
        for woken in group.waiting:
            if not woken.done():  # (done: its member was cancelled)
                woken.set_result(None)
        group.waiting = []
        loop.call_soon(self._due, group)

    def _begin(self, group: _Group) -> None:
        if group.error is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            self._rollback()  # a transaction that nothing owns any more (a ROLLBACK that failed)
            self._writer._connection.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            if not _is_busy(exc) or self._closed:
                group.error = exc
                return
            # Another process holds the write lock: the members wait for the next try, and
            # transactions that arrive meanwhile join them (those of the turn just gone by may
            # have begun a group after this one).
            group.woken = False
            group.tries += 1
            if group.tries <= _BUSY_TRIES_AT_ONCE:
                group.retry = loop.call_soon(self._try_again, group)
            else:
                pause = _busy_pause(group.tries - _BUSY_TRIES_AT_ONCE)
                group.retry = loop.call_later(pause, self._try_again, group)
            return
        except (sqlite3.Error, DatabaseUnavailable) as exc:
            group.error = exc
            return
        group.begun = True
        group.cancel_timers()

    def _try_again(self, group: _Group) -> None:
        group.retry = None
        self._let_go(group)

    def _due(self, group: _Group) -> None:
        """After the members woken by this go: commits once they are done (at once, unless a
        member's work waits for something)."""
        if group.error is not None:  # it never began; its members were told
            self._drop(group)
        elif group.begun:  # (not begun: BEGIN was busy, and will be tried again)
            group.commit_due = True
            if group.members == 0:
                self._commit(group)

    def _expire(self, group: _Group) -> None:
        """The busy timeout has passed and `group` has not begun."""
        group.deadline = None
        if not group.begun and group.error is None:
            self._fail(group, DatabaseUnavailable())

    def _fail(self, group: _Group, error: BaseException) -> None:
        group.error = error
        group.cancel_timers()
        self._let_go(group)  # its members wake to the error; then it is dropped

    def _end_member(self, group: _Group, *statements: str) -> DatabaseUnavailable | None:
        """Keeps or takes back a member's writes. When that fails, or SQLite rolled the whole
        transaction back under the member (it does after some errors: a full disk, an I/O
        error), the group is lost: none of its members' writes will be kept."""
        writer = self._writer._connection
        try:
            for statement in statements:
                writer.execute(statement)
        except sqlite3.Error as exc:
            group.lost = True
            return _unavailable(exc)
        if not writer.in_transaction:
            group.lost = True
        return None

    def _commit(self, group: _Group) -> None:
        """COMMITs `group` (a lost one is rolled back) and tells its members how that went."""
        group.commit_due = False
        try:
            if group.lost:
                raise DatabaseUnavailable()
            self._writer._connection.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):  # SQLite allows a COMMIT to be tried again
                task = asyncio.get_running_loop().create_task(self._commit_when_free(group))
                self._ending.add(task)
                task.add_done_callback(self._ending.discard)
                return
            self._abandon(group, exc)
        except (sqlite3.Error, DatabaseUnavailable) as exc:
            self._abandon(group, exc)
        self._drop(group)

    async def _commit_when_free(self, group: _Group) -> None:
        writer = self._writer._connection
        try:
            await _unless_busy(lambda: writer.execute("COMMIT"), _deadline(self._busy_timeout))
        except BaseException as exc:
            self._abandon(group, exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            self._drop(group)

    def _abandon(self, group: _Group, error: BaseException) -> None:
        """A group whose COMMIT failed: rolled back, so that the writer never stays inside it."""
        group.error = error
        try:
            self._rollback()
        except DatabaseUnavailable:
            pass  # the next group's BEGIN tries again

    def _drop(self, group: _Group) -> None:
        """`group` has ended: its members are told, and the next group may go."""
        group.cancel_timers()
        running = bool(self._groups) and self._groups[0] is group
        if group in self._groups:
            self._groups.remove(group)
        for ended in group.waiters:
            if not ended.done():  # (done: its member was cancelled)
                ended.set_result(None)
        group.waiters = []
        while running and self._groups:
            following = self._groups[0]
            if following.members > 0 or following.error is not None:
                self._let_go(following)
                break
            self._groups.popleft()  # every member gave up waiting: nothing to begin
            following.cancel_timers()
        if not self._groups and self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def _rollback(self) -> None:
        if self._writer._connection.in_transaction:
            try:
                self._writer._connection.execute("ROLLBACK")
            except sqlite3.Error as exc:
                raise DatabaseUnavailable() from exc

    async def close(self) -> None:
        """Lets the groups that can run commit (their members are waiting), then closes. A group
        that finds another process holding the write lock from now on gets DatabaseUnavailable."""
        self._closed = True
        for group in list(self._groups):
            if group.retry is not None:
                self._fail(group, DatabaseUnavailable())
        if self._groups:
            if self._drained is None:
                self._drained = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._drained)
        while self._ending:
            await asyncio.gather(*self._ending, return_exceptions=True)
        self._writer._connection.close()
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
IDLE_LIFETIME = 300.0  # seconds an idle connection is kept, as asyncpg's pool does


@functools.lru_cache(maxsize=64)
def _together(statements: tuple[str, ...]) -> str:
    """One statement of several: all but the last as parts of its WITH (PostgreSQL runs a
    data-modifying part once, whether the statement refers to it or not), the `:name`s of the
    i-th made `:s<i>_name`."""
    if not statements or any(
        sql.lstrip()[:6].upper() not in ("INSERT", "UPDATE", "DELETE") for sql in statements
    ):  # a SELECT in WITH that nothing refers to would never run
        raise ValueError(f"write_all takes INSERTs, UPDATEs and DELETEs, not {statements!r}")
    parts = [_NAMED.sub(rf":s{i}_\1", sql) for i, sql in enumerate(statements)]
    head = ", ".join(f"s{i} AS ({part})" for i, part in enumerate(parts[:-1]))
    return f"WITH {head} {parts[-1]}"


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


async def _fetch(connection: Any, sql: str, params: Params | None) -> list[Row]:
    query, names = _positional(sql)
    try:
        rows: list[Row] = await connection.fetch(query, *_args(names, params))
    except _UNAVAILABLE as exc:
        raise DatabaseUnavailable() from exc
    return rows


async def _execute(connection: Any, script: str) -> None:
    """Statements without parameters, in one message."""
    try:
        await connection.execute(script)
    except _UNAVAILABLE as exc:
        raise DatabaseUnavailable() from exc


class _PostgresConnection:
    """A transaction on one connection, begun by its first statement: a lock that comes first
    (most writes) travels with the `BEGIN` in one message, one round trip fewer. The lock's number
    is `hashtextextended(key, 0)`, as a lock taken in a statement of its own has always had, so
    processes of this and earlier versions exclude each other; for a first lock it is asked for
    once per key and remembered in `lock_ids`."""

    def __init__(self, connection: Any, lock_ids: "_LockIds") -> None:
        self._connection = connection
        self._lock_ids = lock_ids

    @property
    def begun(self) -> bool:
        """Whether the transaction has begun: the server's own state, as the connection last
        heard it (begun too when a statement after `BEGIN` was refused: the transaction is then
        aborted, not gone)."""
        return bool(self._connection.is_in_transaction())

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        if not self.begun:
            await _execute(self._connection, "BEGIN")
        return await _fetch(self._connection, sql, params)

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    async def lock(self, key: str) -> None:
        if self.begun:
            await _fetch(
                self._connection,
                "SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))",
                {"key": key},
            )
            return
        number = self._lock_ids.get(key)
        if number is None:
            rows = await _fetch(self._connection, "SELECT hashtextextended(:key, 0)", {"key": key})
            number = self._lock_ids.remember(key, int(rows[0][0]))
        # `number` is an int, so there is nothing to quote; BEGIN and the lock go in one message
        await _execute(self._connection, f"BEGIN; SELECT pg_advisory_xact_lock({number:d})")

    async def next_id(self, table: str) -> int:
        rows = await self.fetch_all(
            "SELECT nextval(pg_get_serial_sequence(:table, 'id'))", {"table": _identifier(table)}
        )
        return int(rows[0][0])

    async def write_all(self, statements: Sequence[tuple[str, Params]]) -> None:
        if len(statements) == 1:
            await self.fetch_all(*statements[0])
            return
        await self.fetch_all(
            _together(tuple(sql for sql, _ in statements)),
            {
                f"s{i}_{name}": value
                for i, (_, params) in enumerate(statements)
                for name, value in params.items()
            },
        )

    async def commit(self) -> None:
        if self.begun:
            await _execute(self._connection, "COMMIT")


class _LockIds:
    """The lock numbers of the keys locked lately: at most `size`, the least recently used
    forgotten first."""

    def __init__(self, size: int = 4096) -> None:
        self._numbers: dict[str, int] = {}
        self._size = size

    def get(self, key: str) -> int | None:
        number = self._numbers.pop(key, None)
        if number is not None:
            self._numbers[key] = number  # the most recently used, last
        return number

    def remember(self, key: str, number: int) -> int:
        self._numbers.pop(key, None)
        if len(self._numbers) >= self._size:
            del self._numbers[next(iter(self._numbers))]
        self._numbers[key] = number
        return number

    def __len__(self) -> int:
        return len(self._numbers)


async def _ended(connection: Any, exc: BaseException) -> bool:
    """Ends the transaction of a block that raised `exc`; whether its connection can serve on.

    After a refused statement, ROLLBACK. After work that was cut off (cancelled, timed out) the
    connection is closed, but a ROLLBACK is awaited first all the same (bounded): asyncpg sends
    the server a cancel request for the statement in flight, and closing at once would drop that
    request, leaving the statement to run on with the transaction's locks. (After a cut-off
    `BEGIN; lock`, the connection may not know yet that it is inside a transaction.)"""
    survives = _survives(exc)
    if connection.is_closed():
        return False
    if survives and not connection.is_in_transaction():
        return True
    try:
        await asyncio.wait_for(connection.execute("ROLLBACK"), CLOSE_TIMEOUT)
    except Exception:
        return False
    return survives


def _survives(exc: BaseException) -> bool:
    """Whether a connection whose work ended in `exc` can serve again: yes after an error the
    server sent (a refused statement, a rolled-back transaction) or one of ours; no when the
    connection or the database failed, or the work was cancelled in the middle of a statement."""
    unavailable = isinstance(exc, (DatabaseUnavailable, *_UNAVAILABLE))
    return isinstance(exc, Exception) and not unavailable


class PostgresDatabase:
    """Up to POOL_SIZE connections, opened when needed and handed out in the order requests asked.

    asyncpg's pool lets a newcomer take a connection that was just released to a request already
    waiting, which then queues again at the back: under load some requests waited hundreds of
    milliseconds (bench/README.md). It also spends a task, a timeout and an inactivity timer on
    every release, to reset session state that this service never leaves behind (its advisory
    locks end with their transactions). So the pool is this: a semaphore as wide as the pool
    keeps the line (first come, first served) and bounds the wait; idle connections wait in a
    list. A connection that failed, was cancelled or is still inside a transaction is closed,
    never handed out again; the next request opens a new one.
    """

    dialect = "postgresql"

    def text_as_bytes(self, column: str) -> str:
        return f"convert_to({column}, 'UTF8')"

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._turns = asyncio.Semaphore(POOL_SIZE)
        self._idle: list[tuple[Any, float]] = []  # (connection, when it was given back)
        self._lent: set[Any] = set()
        self._closed = False
        self._lock_ids = _LockIds()

    @classmethod
    async def open(cls, dsn: str) -> "PostgresDatabase":
        # Connections open on demand: the service starts even while the database is down, and
        # requests then get 503, not a crash.
        return cls(dsn)

    async def fetch_all(self, sql: str, params: Params | None = None) -> list[Row]:
        """One statement outside any transaction."""
        connection = await self._acquire()
        try:
            rows = await _fetch(connection, sql, params)
        except BaseException as exc:
            self._release(connection, reusable=_survives(exc))
            raise
        self._release(connection)
        return rows

    async def fetch_one(self, sql: str, params: Params | None = None) -> Row | None:
        rows = await self.fetch_all(sql, params)
        return rows[0] if rows else None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[_PostgresConnection]:
        """Committed when the block ends, rolled back when it raises. A connection whose work was
        cut off (cancelled, or the database failed) is closed instead: the server then rolls
        its transaction back."""
        connection = await self._acquire()
        tx = _PostgresConnection(connection, self._lock_ids)
        try:
            yield tx
            await tx.commit()
        except BaseException as exc:
            reusable = False
            try:
                reusable = await _ended(connection, exc)
            finally:  # even when cancelled while rolling back
                self._release(connection, reusable=reusable)
            if isinstance(exc, _UNAVAILABLE):
                raise DatabaseUnavailable() from exc
            raise
        self._release(connection)

    async def _acquire(self) -> Any:
        if self._closed:
            raise DatabaseUnavailable()
        await _take_turn(self._turns, _deadline(ACQUIRE_TIMEOUT))
        try:
            connection = self._take_idle() or await self._connect()
        except BaseException as exc:
            self._turns.release()
            if isinstance(exc, _UNAVAILABLE):
                raise DatabaseUnavailable() from exc
            raise
        self._lent.add(connection)
        return connection

    def _take_idle(self) -> Any:
        """The connection used last that is still open (the server may have closed some) and
        was idle for less than IDLE_LIFETIME (a firewall may have dropped it without a word)."""
        while self._idle:
            connection, since = self._idle.pop()
            if not connection.is_closed() and time.monotonic() - since < IDLE_LIFETIME:
                return connection
            connection.terminate()
        return None

    async def _connect(self) -> Any:
        return await asyncpg.connect(
            self._dsn, timeout=CONNECT_TIMEOUT, command_timeout=COMMAND_TIMEOUT
        )

    def _release(self, connection: Any, *, reusable: bool = True) -> None:
        self._lent.discard(connection)
        try:
            keep = reusable and not self._closed
            if keep and not connection.is_closed() and not connection.is_in_transaction():
                self._idle.append((connection, time.monotonic()))
            else:
                connection.terminate()
        finally:
            self._turns.release()

    async def close(self) -> None:
        """Closes the idle connections (politely, within CLOSE_TIMEOUT) and cuts off any still lent."""
        self._closed = True
        idle = [connection for connection, _ in self._idle]
        self._idle = []
        for connection in self._lent:
            connection.terminate()
        if idle:
            closing = asyncio.gather(*(c.close() for c in idle), return_exceptions=True)
            try:
                await asyncio.wait_for(closing, CLOSE_TIMEOUT)
            except TimeoutError:
                for connection in idle:
                    connection.terminate()
