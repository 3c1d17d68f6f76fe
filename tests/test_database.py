"""The database layer's own promises, beyond what the API tests see."""

import asyncio
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import pytest

from timesheets import db

T = TypeVar("T")


def test_postgres_connections_go_to_waiting_requests_first_come_first_served(postgres_database):
    async def scenario() -> list[str]:
        database = await db.connect(postgres_database)
        served: list[str] = []
        try:
            held = [await database._acquire() for _ in range(db.POOL_SIZE)]

            async def ask(name: str) -> None:
                connection = await database._acquire()
                served.append(name)
                database._release(connection)

            waiting = []
            for name in ("first", "second", "third"):
                waiting.append(asyncio.ensure_future(ask(name)))
                await asyncio.sleep(0.01)  # queued in this order
            for connection in held[:-1]:
                # A newcomer that asks while a connection is being given back must not take it
                # from those already waiting (asyncpg's own pool lets it).
                database._release(connection)
                waiting.append(asyncio.ensure_future(ask("newcomer")))
            await asyncio.wait_for(asyncio.gather(*waiting), 5)
            database._release(held[-1])
        finally:
            await database.close()
        return served

    served = asyncio.run(scenario())

    assert served[:3] == ["first", "second", "third"]
    assert len(served) == 3 + db.POOL_SIZE - 1


def test_the_daily_cap_reads_one_day_through_the_date_index_on_postgres(postgres_database):
    from timesheets.service.writes import DAY_ENTRIES

    async def plan() -> str:
        connection = await asyncpg.connect(postgres_database)
        try:
            query, _ = db._positional(DAY_ENTRIES)
            await connection.execute("SET plan_cache_mode = force_generic_plan")
            await connection.execute(f"PREPARE day_entries AS {query}")
            rows = await connection.fetch(
                "EXPLAIN EXECUTE day_entries('ann@example.com', '2017-07-10')"
            )
            return "\n".join(row[0] for row in rows)
        finally:
            await connection.close()

    assert "ix_entry_user_date" in asyncio.run(plan())


def _held_elsewhere(path: str) -> sqlite3.Connection:
    """Another process's view of the database: a connection of its own holding the write lock."""
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO t VALUES ('other')")
    return other


def _sqlite_file(tmp_path) -> str:
    path = str(tmp_path / "shared.db")
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE t (name TEXT)")
    return path


def test_a_sqlite_writer_waits_for_another_process_while_its_own_requests_go_on(tmp_path):
    path = _sqlite_file(tmp_path)

    async def scenario() -> tuple[int, list[str]]:
        database = db.SqliteDatabase(path)
        other = _held_elsewhere(path)

        async def write() -> None:
            async with database.transaction() as tx:
                await tx.fetch_all("INSERT INTO t VALUES ('ours')")

        writer = asyncio.ensure_future(write())
        turns = 0
        for _ in range(20):  # 0.2 s of other work while the writer waits for the lock
            await asyncio.sleep(0.01)
            await database.fetch_all("SELECT count(*) FROM t")  # readers are not held up
            turns += 1
        assert not writer.done()
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(writer, 2)
        names = [row[0] for row in await database.fetch_all("SELECT name FROM t ORDER BY rowid")]
        await database.close()
        return turns, names

    turns, names = asyncio.run(scenario())

    assert turns == 20
    assert names == ["other", "ours"]


def test_a_sqlite_writer_gives_up_with_unavailable_when_the_lock_stays_taken(tmp_path):
    path = _sqlite_file(tmp_path)

    async def scenario() -> list[str]:
        database = db.SqliteDatabase(path, busy_timeout=0.2)
        other = _held_elsewhere(path)
        started = asyncio.get_running_loop().time()
        with pytest.raises(db.DatabaseUnavailable):
            async with database.transaction() as tx:
                await tx.fetch_all("INSERT INTO t VALUES ('refused')")
        assert 0.2 <= asyncio.get_running_loop().time() - started < 2
        other.execute("ROLLBACK")
        other.close()
        async with database.transaction() as tx:  # the lock is free again: writes go through
            await tx.fetch_all("INSERT INTO t VALUES ('later')")
        names = [row[0] for row in await database.fetch_all("SELECT name FROM t")]
        await database.close()
        return names

    assert asyncio.run(scenario()) == ["later"]


def _backend(rows) -> int:
    return int(rows[0][0])


def test_a_postgres_connection_the_server_closed_is_replaced_not_handed_out(postgres_database):
    async def scenario() -> tuple[int, int]:
        database = await db.connect(postgres_database)
        try:
            first = _backend(await database.fetch_all("SELECT pg_backend_pid()"))
            admin = await asyncpg.connect(postgres_database)
            await admin.fetch("SELECT pg_terminate_backend($1)", first)
            await admin.close()
            await asyncio.sleep(0.2)  # the goodbye reaches the idle connection
            second = _backend(await database.fetch_all("SELECT pg_backend_pid()"))
        finally:
            await database.close()
        return first, second

    first, second = asyncio.run(scenario())

    assert first != second


def test_a_refused_postgres_statement_leaves_its_connection_in_service(postgres_database):
    async def scenario() -> tuple[int, int]:
        database = await db.connect(postgres_database)
        try:
            first = _backend(await database.fetch_all("SELECT pg_backend_pid()"))
            with pytest.raises(asyncpg.DivisionByZeroError):
                await database.fetch_all("SELECT 1 / 0")
            with pytest.raises(asyncpg.DivisionByZeroError):
                async with database.transaction() as tx:
                    await tx.fetch_all("SELECT 1 / 0")
            second = _backend(await database.fetch_all("SELECT pg_backend_pid()"))
        finally:
            await database.close()
        return first, second

    first, second = asyncio.run(scenario())

    assert first == second


def test_a_cancelled_postgres_transaction_closes_its_connection_and_frees_its_turn(
    postgres_database,
):
    async def scenario() -> tuple[int, int, bool]:
        database = await db.connect(postgres_database)
        try:
            first = _backend(await database.fetch_all("SELECT pg_backend_pid()"))

            async def slow() -> None:
                async with database.transaction() as tx:
                    await tx.fetch_all("SELECT pg_sleep(5)")

            task = asyncio.ensure_future(slow())
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            second = _backend(await database.fetch_all("SELECT pg_backend_pid()"))
            all_free = not database._turns.locked() and database._turns._value == db.POOL_SIZE
        finally:
            await database.close()
        return first, second, all_free

    first, second, all_free = asyncio.run(scenario())

    assert first != second  # the cancelled one was in the middle of a statement: not reused
    assert all_free


@pytest.mark.parametrize("first", ["lock", "write"])
def test_a_postgres_transaction_is_seen_by_others_only_once_committed_and_never_if_it_raised(
    postgres_database, first
):
    table = f"tx_{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[list[int], list[int], list[int]]:
        database = await db.connect(postgres_database)
        other = await asyncpg.connect(postgres_database)
        try:
            await other.execute(f"CREATE TABLE {table} (n int)")
            seen, backends = [], []

            async def work(tx, n: int) -> None:
                if first == "lock":  # BEGIN travels with the lock
                    await tx.lock("entries:ann@example.com")
                await tx.fetch_all(f"INSERT INTO {table} VALUES (:n)", {"n": n})
                seen.append(await other.fetchval(f"SELECT count(*) FROM {table}"))
                backends.append(_backend(await tx.fetch_all("SELECT pg_backend_pid()")))

            async with database.transaction() as tx:
                await work(tx, 1)
            with pytest.raises(RuntimeError):
                async with database.transaction() as tx:
                    await work(tx, 2)
                    raise RuntimeError("refused after writing")
            rows = [r[0] for r in await other.fetch(f"SELECT n FROM {table}")]
            backends.append(_backend(await database.fetch_all("SELECT pg_backend_pid()")))
        finally:
            await other.execute(f"DROP TABLE IF EXISTS {table}")
            await other.close()
            await database.close()
        return seen, rows, backends

    seen, rows, backends = asyncio.run(scenario())

    assert seen == [0, 1]  # nothing of a transaction shows before its end
    assert rows == [1]  # the one that raised left nothing
    assert backends[1] == backends[2]  # and its connection, rolled back, serves on


def test_a_postgres_lock_excludes_one_taken_the_way_earlier_versions_take_it(postgres_database):
    keys = ("entries:ann@example.com", "entries:bob@example.com")
    try_lock = "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))"

    async def scenario() -> list[tuple[bool, ...]]:
        database = await db.connect(postgres_database)
        earlier = await asyncpg.connect(postgres_database)  # a process of an earlier version
        try:
            free = []
            for held in (*keys, keys[0]):  # the last one with both numbers remembered
                async with database.transaction() as tx:
                    await tx.lock(held)
                    async with earlier.transaction():
                        free.append(tuple([await earlier.fetchval(try_lock, k) for k in keys]))
            async with database.transaction() as tx:  # a lock after another statement
                await tx.fetch_all("SELECT 1")
                await tx.lock(keys[1])
                async with earlier.transaction():
                    free.append(tuple([await earlier.fetchval(try_lock, k) for k in keys]))
            async with earlier.transaction():
                free.append(tuple([await earlier.fetchval(try_lock, k) for k in keys]))
        finally:
            await earlier.close()
            await database.close()
        return free

    free = asyncio.run(scenario())

    assert free == [(False, True), (True, False), (False, True), (True, False), (True, True)]


def test_a_cancelled_postgres_transaction_lets_go_of_its_lock_at_once(postgres_database):
    key = f"entries:{uuid.uuid4().hex}"

    async def scenario() -> bool:
        database = await db.connect(postgres_database)
        other = await asyncpg.connect(postgres_database)
        try:

            async def slow() -> None:
                async with database.transaction() as tx:
                    await tx.lock(key)
                    await tx.fetch_all("SELECT pg_sleep(5)")

            task = asyncio.ensure_future(slow())
            await asyncio.sleep(0.3)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            async with other.transaction():  # the server stopped the statement, and let go
                return await other.fetchval(
                    "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 0))", key
                )
        finally:
            await other.close()
            await database.close()

    assert asyncio.run(scenario())


def test_a_first_postgres_lock_the_server_refuses_leaves_its_connection_clean(postgres_database):
    key = f"entries:{uuid.uuid4().hex}"

    async def scenario() -> tuple[int, int, int]:
        database = await db.connect(postgres_database)
        other = await asyncpg.connect(postgres_database)
        try:
            first = _backend(await database.fetch_all("SELECT pg_backend_pid()"))
            await database.fetch_all("SET lock_timeout = '100ms'")  # on the pooled connection
            async with other.transaction():
                await other.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", key)
                with pytest.raises(asyncpg.LockNotAvailableError):
                    async with database.transaction() as tx:
                        await tx.lock(key)  # BEGIN is accepted, the lock refused
            async with database.transaction() as tx:
                await tx.lock(key)
                second = _backend(await tx.fetch_all("SELECT pg_backend_pid()"))
            third = _backend(await database.fetch_all("SELECT pg_backend_pid()"))
        finally:
            await other.close()
            await database.close()
        return first, second, third

    first, second, third = asyncio.run(scenario())

    assert first == second == third


def test_postgres_lock_numbers_are_remembered_for_the_latest_keys_only():
    numbers = db._LockIds(size=2)
    numbers.remember("a", 1)
    numbers.remember("b", 2)
    numbers.get("a")  # used again: "b" is now the least recently used
    numbers.remember("c", 3)

    assert (numbers.get("a"), numbers.get("b"), numbers.get("c")) == (1, None, 3)
    assert len(numbers) == 2


def test_queued_sqlite_writers_each_wait_at_most_the_busy_timeout(tmp_path):
    path = _sqlite_file(tmp_path)

    async def scenario() -> list[float]:
        database = db.SqliteDatabase(path, busy_timeout=0.3)
        other = _held_elsewhere(path)
        loop = asyncio.get_running_loop()
        started = loop.time()

        async def write() -> float:
            with pytest.raises(db.DatabaseUnavailable):
                async with database.transaction() as tx:
                    await tx.fetch_all("INSERT INTO t VALUES ('refused')")
            return loop.time() - started

        waited = await asyncio.gather(*(write() for _ in range(4)))
        other.execute("ROLLBACK")
        other.close()
        await database.close()
        return waited

    waited = asyncio.run(scenario())

    # Not 0.3, 0.6, 0.9, 1.2: the line for this process's turn counts against the same bound.
    assert all(0.3 <= seconds < 0.6 for seconds in waited), waited


def _deferred_file(path: str) -> str:
    """A database whose `child` rows are checked against `parent` only at COMMIT."""
    with sqlite3.connect(path) as setup:
        setup.execute("CREATE TABLE parent (id INTEGER PRIMARY KEY)")
        setup.execute(
            "CREATE TABLE child (parent_id INTEGER REFERENCES parent (id) "
            "DEFERRABLE INITIALLY DEFERRED)"
        )
    return path


async def _orphan(database: db.SqliteDatabase) -> None:
    """A transaction whose COMMIT fails (a `_deferred_file`'s child without its parent)."""
    async with database.transaction() as tx:
        await tx.fetch_all("INSERT INTO child VALUES (42)")


def test_a_sqlite_commit_that_fails_is_unavailable_and_leaves_no_transaction_behind(tmp_path):
    path = _deferred_file(_sqlite_file(tmp_path))

    async def scenario() -> list[int]:
        database = db.SqliteDatabase(path)
        with pytest.raises(db.DatabaseUnavailable) as refused:  # checked only at COMMIT
            await _orphan(database)
        assert isinstance(refused.value.__cause__, sqlite3.IntegrityError)
        async with database.transaction() as tx:  # not "within a transaction", not stuck
            await tx.fetch_all("INSERT INTO parent VALUES (1)")
            await tx.fetch_all("INSERT INTO child VALUES (1)")
        rows = await database.fetch_all("SELECT parent_id FROM child")
        await database.close()
        return [row[0] for row in rows]

    assert asyncio.run(scenario()) == [1]


def _on_sqlite(path: str, work: Callable[[db.SqliteDatabase], Awaitable[T]]) -> T:
    """`work` on a SqliteDatabase of `path`, which is closed afterwards however `work` ends."""

    async def scenario() -> T:
        database = db.SqliteDatabase(path)
        try:
            return await work(database)
        finally:
            await database.close()

    return asyncio.run(scenario())


def _names(path: str) -> list[str]:
    """What another process would read: only committed rows."""
    with sqlite3.connect(path) as other:
        return [row[0] for row in other.execute("SELECT name FROM t ORDER BY rowid")]


async def _insert(database: db.SqliteDatabase, name: str, fail: bool = False) -> str:
    async with database.transaction() as tx:
        await tx.fetch_all("INSERT INTO t VALUES (:name)", {"name": name})
        if fail:
            raise LookupError(name)
    return name


def test_sqlite_transactions_that_arrive_together_share_one_commit(tmp_path):
    path = _sqlite_file(tmp_path)

    async def work(database: db.SqliteDatabase) -> list[object]:
        statements: list[str] = []
        database._writer._connection.set_trace_callback(statements.append)
        done = await asyncio.gather(*(_insert(database, f"n{i}") for i in range(10)))
        await _insert(database, "later")  # a transaction of its own, after the group's COMMIT
        return [*done, statements.count("COMMIT"), statements.count("BEGIN IMMEDIATE")]

    assert _on_sqlite(path, work) == [*(f"n{i}" for i in range(10)), 2, 2]
    assert _names(path) == [*(f"n{i}" for i in range(10)), "later"]


def test_a_group_waiting_for_another_process_tries_again_at_once_at_first_then_after_pauses(
    tmp_path,
):
    """Another worker's group writes for well under a millisecond, so the first tries come on
    the next turns of the event loop; a longer wait costs a try every millisecond at most."""
    path = _sqlite_file(tmp_path)

    async def scenario() -> int:
        database = db.SqliteDatabase(path)
        statements: list[str] = []
        database._writer._connection.set_trace_callback(statements.append)
        other = _held_elsewhere(path)
        writer = asyncio.ensure_future(_insert(database, "ours"))
        await asyncio.sleep(0.02)  # pauses alone would give about 20 tries
        other.execute("COMMIT")
        other.close()
        await asyncio.wait_for(writer, 2)
        await database.close()
        return statements.count("BEGIN IMMEDIATE")

    tries = asyncio.run(scenario())

    assert db._BUSY_TRIES_AT_ONCE < tries <= db._BUSY_TRIES_AT_ONCE + 25


def test_busy_pauses_grow_from_a_quarter_millisecond_to_one_and_stay_there():
    assert [db._busy_pause(tries) * 1000 for tries in range(1, 7)] == [0.25, 0.5, 1, 1, 1, 1]


def test_a_group_holds_the_write_lock_only_while_its_own_members_work(tmp_path):
    """Its BEGIN, its members and its COMMIT run back to back: what else the event loop serves
    never runs while another process would find the database locked."""
    path = _sqlite_file(tmp_path)

    async def work(database: db.SqliteDatabase) -> list[bool]:
        writer = database._writer._connection
        seen: list[bool] = []
        done = False

        async def other_requests() -> None:
            while not done:
                seen.append(writer.in_transaction)
                await asyncio.sleep(0)

        watcher = asyncio.ensure_future(other_requests())
        for batch in range(3):
            await asyncio.gather(*(_insert(database, f"b{batch}n{i}") for i in range(5)))
        done = True
        await watcher
        return seen

    seen = _on_sqlite(path, work)

    assert len(seen) > 3
    assert not any(seen)
    assert len(_names(path)) == 15


def test_transactions_that_arrive_while_another_process_writes_wait_in_one_group(tmp_path):
    path = _sqlite_file(tmp_path)

    async def scenario() -> tuple[list[str], int]:
        database = db.SqliteDatabase(path)
        statements: list[str] = []
        database._writer._connection.set_trace_callback(statements.append)
        other = _held_elsewhere(path)
        writers = []
        for i in range(3):
            writers.append(asyncio.ensure_future(_insert(database, f"w{i}")))
            await asyncio.sleep(0.01)
        other.execute("COMMIT")
        other.close()
        done = await asyncio.wait_for(asyncio.gather(*writers), 2)
        await database.close()
        return done, statements.count("COMMIT")

    assert asyncio.run(scenario()) == (["w0", "w1", "w2"], 1)
    assert _names(path) == ["other", "w0", "w1", "w2"]


def test_a_member_whose_work_waits_holds_the_others_of_its_group_back_until_it_is_done(tmp_path):
    """Its savepoint stays its own: the member after it begins only once it has ended."""
    path = _sqlite_file(tmp_path)

    async def work(database: db.SqliteDatabase) -> list[object]:
        async def wait_then_fail() -> None:
            async with database.transaction() as tx:
                await tx.fetch_all("INSERT INTO t VALUES ('waited')")
                await asyncio.sleep(0.05)
                raise LookupError("waited")

        outcomes = await asyncio.gather(
            wait_then_fail(), _insert(database, "quick"), return_exceptions=True
        )
        return [type(o).__name__ if isinstance(o, BaseException) else o for o in outcomes]

    assert _on_sqlite(path, work) == ["LookupError", "quick"]
    assert _names(path) == ["quick"]


def test_a_writer_behind_a_member_that_never_ends_gives_up_after_the_busy_timeout(tmp_path):
    path = _sqlite_file(tmp_path)

    async def scenario() -> float:
        database = db.SqliteDatabase(path, busy_timeout=0.2)
        loop = asyncio.get_running_loop()
        entered = asyncio.Event()

        async def hang() -> None:
            async with database.transaction() as tx:
                await tx.fetch_all("INSERT INTO t VALUES ('hung')")
                entered.set()
                await asyncio.sleep(10)

        hung = asyncio.ensure_future(hang())
        await entered.wait()
        started = loop.time()
        with pytest.raises(db.DatabaseUnavailable):
            await asyncio.wait_for(_insert(database, "late"), 2)
        waited = loop.time() - started
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        assert await _insert(database, "after") == "after"
        await database.close()
        return waited

    assert 0.2 <= asyncio.run(scenario()) < 1
    assert _names(path) == ["after"]


def test_a_member_cancelled_while_its_group_commits_leaves_the_others_answers_alone(tmp_path):
    """Its own wait ends, not the group's: the others learn of the COMMIT, which keeps its
    writes too."""
    path = _sqlite_file(tmp_path)

    async def work(database: db.SqliteDatabase) -> list[object]:
        members: list[asyncio.Future[str]] = []

        def on_statement(sql: str) -> None:
            if sql == "COMMIT":
                members[0].cancel()

        database._writer._connection.set_trace_callback(on_statement)
        members.extend(asyncio.ensure_future(_insert(database, name)) for name in ("a", "b"))
        outcomes = await asyncio.gather(*members, return_exceptions=True)
        return [type(o).__name__ if isinstance(o, BaseException) else o for o in outcomes]

    assert _on_sqlite(path, work) == ["CancelledError", "b"]
    assert _names(path) == ["a", "b"]


def test_a_group_rolled_back_under_its_members_keeps_nothing_and_the_next_one_begins_afresh(
    tmp_path,
):
    """As SQLite does after some errors (a full disk): every member is told to retry, including
    those that had not begun their work yet."""
    path = _sqlite_file(tmp_path)

    async def work(database: db.SqliteDatabase) -> list[object]:
        async def rolled_back() -> None:
            async with database.transaction() as tx:
                await tx.fetch_all("INSERT INTO t VALUES ('x')")
                await tx.fetch_all("ROLLBACK")

        outcomes = await asyncio.gather(
            _insert(database, "a"), rolled_back(), _insert(database, "b"),
            return_exceptions=True,
        )  # fmt: skip
        after = await _insert(database, "after")
        return [type(o).__name__ for o in outcomes] + [after]

    unavailable = "DatabaseUnavailable"
    assert _on_sqlite(path, work) == [unavailable, unavailable, unavailable, "after"]
    assert _names(path) == ["after"]


def test_a_writer_behind_a_waiting_member_of_its_own_group_gives_up_after_the_busy_timeout(
    tmp_path,
):
    path = _sqlite_file(tmp_path)

    async def scenario() -> float:
        database = db.SqliteDatabase(path, busy_timeout=0.2)
        loop = asyncio.get_running_loop()

        async def slow() -> None:
            async with database.transaction() as tx:
                await tx.fetch_all("INSERT INTO t VALUES ('slow')")
                await asyncio.sleep(2)

        member = asyncio.ensure_future(slow())
        started = loop.time()
        with pytest.raises(db.DatabaseUnavailable):  # the same turn: the same group as `slow`
            await asyncio.wait_for(_insert(database, "late"), 5)
        waited = loop.time() - started
        member.cancel()
        await asyncio.gather(member, return_exceptions=True)
        await database.close()
        return waited

    assert 0.2 <= asyncio.run(scenario()) < 1
    assert _names(path) == []


def test_closing_the_database_twice_at_once_returns_from_both(tmp_path):
    path = _sqlite_file(tmp_path)

    async def scenario() -> None:
        database = db.SqliteDatabase(path)

        async def slow() -> None:
            async with database.transaction() as tx:
                await tx.fetch_all("INSERT INTO t VALUES ('x')")
                await asyncio.sleep(0.05)

        member = asyncio.ensure_future(slow())
        await asyncio.sleep(0.01)
        await asyncio.wait_for(asyncio.gather(database.close(), database.close()), 2)
        await member

    asyncio.run(scenario())
    assert _names(path) == ["x"]


def test_a_failed_member_of_a_group_leaves_nothing_and_the_others_are_kept(tmp_path):
    path = _sqlite_file(tmp_path)

    async def work(database: db.SqliteDatabase) -> list[object]:
        outcomes = await asyncio.gather(
            _insert(database, "a"),
            _insert(database, "refused", fail=True),
            _insert(database, "b"),
            return_exceptions=True,
        )
        return [type(o).__name__ if isinstance(o, BaseException) else o for o in outcomes]

    assert _on_sqlite(path, work) == ["a", "LookupError", "b"]
    assert _names(path) == ["a", "b"]


def test_a_group_whose_commit_fails_answers_every_member_unavailable_and_keeps_nothing(tmp_path):
    path = _deferred_file(_sqlite_file(tmp_path))

    async def work(database: db.SqliteDatabase) -> list[object]:
        outcomes = await asyncio.gather(
            _insert(database, "a"), _orphan(database), _insert(database, "b"),
            return_exceptions=True,
        )  # fmt: skip
        after = await _insert(database, "after")  # the connection is out of the failed group
        return [type(o).__name__ for o in outcomes] + [after]

    unavailable = "DatabaseUnavailable"
    assert _on_sqlite(path, work) == [unavailable, unavailable, unavailable, "after"]
    assert _names(path) == ["after"]


def test_a_refused_member_of_a_group_whose_commit_fails_is_told_to_retry(tmp_path):
    """Its refusal may rest on another member's writes, which are not kept: 503, not its 4xx."""
    path = _deferred_file(_sqlite_file(tmp_path))

    async def work(database: db.SqliteDatabase) -> list[str]:
        outcomes = await asyncio.gather(
            _orphan(database), _insert(database, "refused", fail=True), return_exceptions=True
        )
        alone = await asyncio.gather(
            _insert(database, "refused", fail=True), return_exceptions=True
        )  # in a group that commits: its own error
        return [type(o).__name__ for o in [*outcomes, *alone]]

    unavailable = "DatabaseUnavailable"
    assert _on_sqlite(path, work) == [unavailable, unavailable, "LookupError"]


def test_closing_the_database_answers_a_writer_waiting_for_another_process_unavailable(tmp_path):
    path = _sqlite_file(tmp_path)

    async def scenario() -> None:
        database = db.SqliteDatabase(path)
        other = _held_elsewhere(path)
        writer = asyncio.ensure_future(_insert(database, "late"))
        await asyncio.sleep(0.05)  # it polls for the lock
        await database.close()
        with pytest.raises(db.DatabaseUnavailable):
            await asyncio.wait_for(writer, 2)
        other.execute("ROLLBACK")
        other.close()

    asyncio.run(scenario())
    assert _names(path) == []


def test_a_transaction_ends_only_once_its_writes_are_committed(tmp_path):
    path = _sqlite_file(tmp_path)

    async def work(database: db.SqliteDatabase) -> list[list[str]]:
        seen: list[list[str]] = []

        async def write_then_look(name: str) -> None:
            await _insert(database, name)
            seen.append(_names(path))  # another process sees it as soon as we return

        async with database.transaction() as tx:
            await tx.fetch_all("INSERT INTO t VALUES ('inside')")
            # the service's own reads see only what is committed, and refuse to write
            seen.append([row[0] for row in await database.fetch_all("SELECT name FROM t")])
            with pytest.raises(db.DatabaseUnavailable):
                await database.fetch_all("INSERT INTO t VALUES ('read-only')")
        await asyncio.gather(write_then_look("x"), write_then_look("y"))
        return seen

    assert _on_sqlite(path, work) == [[], ["inside", "x", "y"], ["inside", "x", "y"]]


def test_a_member_cancelled_in_the_middle_of_its_work_leaves_nothing_and_frees_the_writer(
    tmp_path,
):
    path = _sqlite_file(tmp_path)

    async def work(database: db.SqliteDatabase) -> str:
        entered = asyncio.Event()

        async def slow() -> None:
            async with database.transaction() as tx:
                await tx.fetch_all("INSERT INTO t VALUES ('cancelled')")
                entered.set()
                await asyncio.sleep(10)  # holds the turn: a shutdown's deadline cancels it

        member = asyncio.ensure_future(slow())
        await entered.wait()
        member.cancel()
        with pytest.raises(asyncio.CancelledError):
            await member
        return await asyncio.wait_for(_insert(database, "after"), 2)

    assert _on_sqlite(path, work) == "after"
    assert _names(path) == ["after"]


def test_a_transaction_left_open_by_nobody_is_rolled_back_before_the_next_one(tmp_path):
    """As after a ROLLBACK that failed: the writer must not stay inside it for good."""
    path = _sqlite_file(tmp_path)

    async def work(database: db.SqliteDatabase) -> str:
        writer = database._writer._connection
        writer.execute("BEGIN")
        writer.execute("INSERT INTO t VALUES ('orphaned')")
        return await _insert(database, "after")

    assert _on_sqlite(path, work) == "after"
    assert _names(path) == ["after"]


def test_closing_the_database_commits_the_group_its_members_wait_for(tmp_path):
    path = _sqlite_file(tmp_path)

    async def scenario() -> str:
        database = db.SqliteDatabase(path)
        member = asyncio.ensure_future(_insert(database, "waiting"))
        await asyncio.sleep(0)  # the member has written and waits for the COMMIT
        await database.close()
        return await member

    assert asyncio.run(scenario()) == "waiting"
    assert _names(path) == ["waiting"]


def test_an_in_memory_sqlite_database_commits_each_transaction_on_its_own():
    async def scenario() -> list[object]:
        database = db.SqliteDatabase(":memory:")
        async with database.transaction() as tx:
            await tx.fetch_all("CREATE TABLE t (name TEXT)")
        outcomes = await asyncio.gather(
            _insert(database, "a"), _insert(database, "no", fail=True), _insert(database, "b"),
            return_exceptions=True,
        )  # fmt: skip
        rows = await database.fetch_all("SELECT name FROM t ORDER BY rowid")
        await database.close()
        return [type(o).__name__ if isinstance(o, BaseException) else o for o in outcomes] + [
            row[0] for row in rows
        ]

    assert asyncio.run(scenario()) == ["a", "LookupError", "b", "a", "b"]


def test_a_sqlite_error_without_a_code_is_unavailable_not_a_crash(tmp_path):
    async def scenario() -> None:
        database = db.SqliteDatabase(_sqlite_file(tmp_path))
        try:
            with pytest.raises(db.DatabaseUnavailable):
                await database.fetch_all("SELECT CAST(x'ff' AS TEXT)")  # not UTF-8
        finally:
            await database.close()

    asyncio.run(scenario())


def test_a_postgres_database_that_cannot_be_reached_gives_every_turn_back():
    async def scenario() -> bool:
        database = db.PostgresDatabase("postgresql://postgres@127.0.0.1:1/none")
        for _ in range(db.POOL_SIZE + 2):
            with pytest.raises(db.DatabaseUnavailable):
                await database.fetch_all("SELECT 1")
        free = database._turns._value == db.POOL_SIZE
        await database.close()
        return free

    assert asyncio.run(scenario())


def test_a_closed_postgres_database_opens_no_more_connections(postgres_database):
    async def scenario() -> None:
        database = await db.connect(postgres_database)
        await database.fetch_all("SELECT 1")
        await database.close()
        with pytest.raises(db.DatabaseUnavailable):
            await database.fetch_all("SELECT 1")
        assert database._idle == [] and database._lent == set()

    asyncio.run(scenario())


def test_an_idle_postgres_connection_is_replaced_after_its_lifetime(postgres_database, monkeypatch):
    async def scenario() -> tuple[int, int, int]:
        database = await db.connect(postgres_database)
        try:
            first = _backend(await database.fetch_all("SELECT pg_backend_pid()"))
            again = _backend(await database.fetch_all("SELECT pg_backend_pid()"))
            monkeypatch.setattr(db, "IDLE_LIFETIME", 0.0)
            later = _backend(await database.fetch_all("SELECT pg_backend_pid()"))
        finally:
            await database.close()
        return first, again, later

    first, again, later = asyncio.run(scenario())

    assert first == again  # kept while fresh
    assert later != first  # idle too long: closed, a new one opened


def test_times_are_written_in_utc_with_microseconds_a_z_and_four_digit_years():
    import datetime as dt

    plus_two = dt.timezone(dt.timedelta(hours=2))

    assert db.utc_text(dt.datetime(2017, 7, 10, 14, 32, 11, tzinfo=plus_two)) == (
        "2017-07-10T12:32:11.000000Z"
    )
    assert db.utc_text(dt.datetime(2026, 11, 29, 13, 0, 0, 123456, tzinfo=dt.UTC)) == (
        "2026-11-29T13:00:00.123456Z"
    )
    early = db.utc_text(dt.datetime(999, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    assert early == "0999-01-02T03:04:05.000000Z"
    assert early < db.utc_text(dt.datetime(2000, 1, 1, tzinfo=dt.UTC))  # texts sort as times


def _start_together(path: str, barrier, failures: list[BaseException]) -> None:
    barrier.wait()
    try:
        db.SqliteDatabase(path)
    except BaseException as exc:  # noqa: BLE001 - collected for the assertion
        failures.append(exc)


def test_workers_opening_a_new_sqlite_file_together_all_start(tmp_path):
    """Switching a new file to WAL: connections that try at the same moment can each hold the lock
    the other needs, and SQLite then says "locked" without waiting (workers starting together)."""
    import threading

    failures: list[BaseException] = []
    for trial in range(60):
        path = str(tmp_path / f"new-{trial}.db")
        with sqlite3.connect(path) as setup:  # a file in the default (rollback) journal mode
            setup.execute("CREATE TABLE t (name TEXT)")
        barrier = threading.Barrier(8)
        threads = [
            threading.Thread(target=_start_together, args=(path, barrier, failures))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    assert failures == []


def test_writes_sent_together_are_all_kept_each_with_its_own_parameters(database_url):
    table = f"together_{uuid.uuid4().hex[:8]}"

    async def scenario() -> list[tuple[str, int]]:
        database = await db.connect(database_url)
        try:
            async with database.transaction() as tx:
                await tx.fetch_all(f"CREATE TABLE {table} (name TEXT NOT NULL, n INTEGER)")
            insert = f"INSERT INTO {table} (name, n) VALUES (:name, :n)"
            async with database.transaction() as tx:  # the same names, other values
                await tx.write_all(
                    [(insert, {"name": "a", "n": 1}), (insert, {"name": "b", "n": 2})]
                )
            rows = await database.fetch_all(f"SELECT name, n FROM {table} ORDER BY name")
            async with database.transaction() as tx:
                await tx.fetch_all(f"DROP TABLE {table}")
            return [(row[0], row[1]) for row in rows]
        finally:
            await database.close()

    assert asyncio.run(scenario()) == [("a", 1), ("b", 2)]


def test_postgres_sends_writes_together_in_one_round_trip(postgres_database, monkeypatch):
    table = f"together_{uuid.uuid4().hex[:8]}"
    sent: list[str] = []
    fetch = db._fetch

    async def counted(connection, sql, params):
        sent.append(sql)
        return await fetch(connection, sql, params)

    async def scenario() -> int:
        database = await db.connect(postgres_database)
        try:
            async with database.transaction() as tx:
                await tx.fetch_all(f"CREATE TABLE {table} (n INTEGER PRIMARY KEY)")
                await tx.fetch_all(f"CREATE TABLE {table}_ref (n INTEGER REFERENCES {table})")
            monkeypatch.setattr(db, "_fetch", counted)
            async with database.transaction() as tx:
                await tx.write_all(  # the row a foreign key refers to, in the same statement
                    [
                        (f"INSERT INTO {table} (n) VALUES (:n)", {"n": 7}),
                        (f"INSERT INTO {table}_ref (n) VALUES (:n)", {"n": 7}),
                    ]
                )
            monkeypatch.setattr(db, "_fetch", fetch)
            count = (await database.fetch_one(f"SELECT count(*) FROM {table}_ref"))[0]
            async with database.transaction() as tx:
                await tx.fetch_all(f"DROP TABLE {table}_ref, {table}")
            return int(count)
        finally:
            await database.close()

    assert asyncio.run(scenario()) == 1
    assert len(sent) == 1  # both statements in one message, one round trip


def test_writes_sent_together_are_only_insert_update_or_delete():
    # PostgreSQL would never run a SELECT in a WITH that nothing refers to
    with pytest.raises(ValueError, match="INSERTs, UPDATEs and DELETEs"):
        db._together(("SELECT pg_advisory_xact_lock(1)", "INSERT INTO t VALUES (:n)"))
    with pytest.raises(ValueError):
        db._together(())
    assert db._together((" update t set n = :n", "DELETE FROM t WHERE n = :n")).startswith(
        "WITH s0 AS ( update t set n = :s0_n) DELETE FROM t WHERE n = :s1_n"
    )
