"""Schema migrations on an empty database of its own, on SQLite and (when
TIMESHEETS_TEST_POSTGRES_URL is set) on a PostgreSQL database created and dropped by each test."""

import asyncio
import datetime as dt
import json
import re
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from alembic.config import Config
from alembic.script import ScriptDirectory

from timesheets import migrate
from timesheets.migrate import upgrade

from .conftest import POSTGRES_URL

# name: (nullable, part of the primary key)
COLUMNS = {
    "id": (False, True),
    "user_id": (False, False),
    "work_date": (False, False),
    "project": (False, False),
    "hours_cents": (False, False),
    "notes": (False, False),
    "status": (False, False),
    "rejection_reason": (True, False),
    "created_by": (False, False),
    "decided_by": (True, False),
    "created_at": (False, False),
    "updated_at": (False, False),
    "body": (False, False),
    "version": (False, False),
    "deleted_at": (True, False),
    "external_ref": (True, False),
    "source_client": (True, False),
}
INDEXES = {
    "ix_entry_user_date",
    "ix_entry_status_date",
    "ix_entry_user_updated",
    "ux_entry_external_ref",
}


def head_revision() -> str:
    config = Config()
    config.set_main_option("script_location", str(Path(migrate.__file__).parent / "migrations"))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


class Inspector:
    """Plain SQL against the database at `url`, written with `?` parameters for either engine."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.dialect = "sqlite" if url.startswith("sqlite") else "postgresql"

    def query(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        if self.dialect == "sqlite":
            connection = sqlite3.connect(self.url.split(":///", 1)[1])
            try:
                with connection:
                    return [tuple(row) for row in connection.execute(sql, args).fetchall()]
            finally:
                connection.close()
        counter = iter(range(1, 1000))
        numbered = re.sub(r"\?", lambda _: f"${next(counter)}", sql)
        return asyncio.run(_pg_fetch(self.url, numbered, *args))

    def columns(self) -> dict[str, tuple[bool, bool]]:
        if self.dialect == "sqlite":
            rows = self.query("PRAGMA table_info(timesheet_entry)")
            return {name: (not notnull, pk > 0) for _, name, _, notnull, _, pk in rows}
        primary = {
            name
            for (name,) in self.query(
                "SELECT a.attname FROM pg_index i JOIN pg_attribute a"
                " ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                " WHERE i.indrelid = 'timesheet_entry'::regclass AND i.indisprimary"
            )
        }
        rows = self.query(
            "SELECT column_name, is_nullable FROM information_schema.columns"
            " WHERE table_schema = current_schema() AND table_name = 'timesheet_entry'"
        )
        return {name: (nullable == "YES", name in primary) for name, nullable in rows}

    def indexes(self) -> set[str]:
        if self.dialect == "sqlite":
            rows = self.query(
                "SELECT name FROM sqlite_master WHERE type = 'index'"
                " AND tbl_name = 'timesheet_entry'"
            )
        else:
            rows = self.query(
                "SELECT indexname FROM pg_indexes WHERE tablename = 'timesheet_entry'"
            )
        return {name for (name,) in rows}

    def versions(self) -> list[str]:
        return [version for (version,) in self.query("SELECT version_num FROM alembic_version")]

    def insert_entry(
        self, user_id: str = "ann@example.com", hours_cents: int = 750, status: str = "pending"
    ) -> int:
        now = dt.datetime(2017, 7, 10, 12, 0, tzinfo=dt.UTC)
        values: tuple[Any, ...] = (
            user_id,
            dt.date(2017, 7, 10),
            "StoreZero",
            hours_cents,
            status,
            user_id,
            now,
            now,
        )
        if self.dialect == "sqlite":  # the stdlib's default date adapters are deprecated
            values = tuple(v.isoformat() if isinstance(v, dt.date) else v for v in values)
        rows = self.query(
            "INSERT INTO timesheet_entry (user_id, work_date, project, hours_cents, status,"
            " created_by, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            *values,
        )
        entry_id: int = rows[0][0]
        return entry_id


async def _pg_fetch(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    connection = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await connection.fetch(sql, *args)]
    finally:
        await connection.close()


async def _pg_admin(statement: str) -> None:
    assert POSTGRES_URL
    connection = await asyncpg.connect(POSTGRES_URL)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture
def empty_postgres_url() -> Iterator[str]:
    """A PostgreSQL database of this test's own, empty, dropped afterwards."""
    if not POSTGRES_URL:
        pytest.skip("TIMESHEETS_TEST_POSTGRES_URL is not set")
    name = f"timesheets_migrate_{uuid.uuid4().hex[:12]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty database (no tables at all), on each engine."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'empty.db'}"
    url: str = request.getfixturevalue("empty_postgres_url")
    return url


def test_upgrade_on_empty_database_creates_timesheet_entry_with_expected_columns(
    empty_database_url,
):
    upgrade(empty_database_url)

    db = Inspector(empty_database_url)
    assert db.columns() == COLUMNS
    assert INDEXES <= db.indexes()
    assert db.versions() == [head_revision()]


def test_upgrade_twice_is_a_no_op_that_keeps_the_data(empty_database_url):
    upgrade(empty_database_url)
    db = Inspector(empty_database_url)
    entry_id = db.insert_entry()

    upgrade(empty_database_url)

    assert db.columns() == COLUMNS
    assert db.versions() == [head_revision()]
    assert db.query("SELECT id, user_id FROM timesheet_entry") == [(entry_id, "ann@example.com")]


def test_upgrade_creates_columns_with_their_defaults(empty_database_url):
    upgrade(empty_database_url)
    db = Inspector(empty_database_url)
    now = "2017-07-10T12:00:00Z" if db.dialect == "sqlite" else dt.datetime.now(dt.UTC)
    day = "2017-07-10" if db.dialect == "sqlite" else dt.date(2017, 7, 10)

    db.query(
        "INSERT INTO timesheet_entry (user_id, work_date, project, hours_cents, created_by,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
        "ann@example.com",
        day,
        "StoreZero",
        750,
        "ann@example.com",
        now,
        now,
    )

    assert db.query("SELECT notes, status, rejection_reason FROM timesheet_entry") == [
        ("", "pending", None)
    ]


@pytest.mark.parametrize(
    "hours_cents, status", [(0, "pending"), (2401, "pending"), (750, "archived")]
)
def test_upgrade_creates_checks_that_refuse_bad_hours_and_status(
    empty_database_url, hours_cents, status
):
    upgrade(empty_database_url)
    db = Inspector(empty_database_url)

    with pytest.raises((sqlite3.IntegrityError, asyncpg.CheckViolationError)):
        db.insert_entry(hours_cents=hours_cents, status=status)


def test_upgrade_creates_ids_that_are_never_reused(empty_database_url):
    upgrade(empty_database_url)
    db = Inspector(empty_database_url)
    first = db.insert_entry()
    db.query("DELETE FROM timesheet_entry WHERE id = ?", first)

    assert db.insert_entry() > first


def test_upgrade_on_sqlite_file_in_missing_directory_creates_it(tmp_path):
    path = tmp_path / "data" / "nested" / "timesheets.db"

    upgrade(f"sqlite:///{path}")

    assert Inspector(f"sqlite:///{path}").columns() == COLUMNS


@pytest.mark.postgres
@pytest.mark.parametrize("scheme", ["postgres", "postgresql+asyncpg"])
def test_upgrade_accepts_other_postgres_url_schemes(empty_postgres_url, scheme):
    url = scheme + "://" + empty_postgres_url.split("://", 1)[1]

    upgrade(url)

    assert Inspector(empty_postgres_url).versions() == [head_revision()]


@pytest.mark.postgres
def test_upgrade_concurrently_on_postgres_both_succeed(empty_postgres_url):
    start = threading.Barrier(2, timeout=30)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            upgrade(empty_postgres_url)
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert not any(thread.is_alive() for thread in threads), "an upgrade hung"
    assert errors == []
    db = Inspector(empty_postgres_url)
    assert db.columns() == COLUMNS
    assert db.versions() == [head_revision()]


def test_upgrade_renders_the_document_of_entries_stored_before_body_existed(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0001")
    connection = sqlite3.connect(tmp_path / "old.db")
    connection.execute(
        "INSERT INTO timesheet_entry (user_id, work_date, project, hours_cents, notes, status, "
        "created_by, created_at, updated_at) VALUES ('ann@example.com', '2017-07-10', 'StoreZero', "
        "750, '', 'approved', 'auth0|ann', '2017-07-10T12:00:00.123456Z', "
        "'2017-07-11T08:30:00.000001Z')"
    )
    connection.commit()
    upgrade(url, "0002")
    (body,) = connection.execute("SELECT body FROM timesheet_entry").fetchone()
    connection.close()
    assert json.loads(body) == {
        "id": 1,
        "user_id": "ann@example.com",
        "date": "2017-07-10",
        "project": "StoreZero",
        "hours": 7.5,
        "notes": "",
        "status": "approved",
        "approved": True,
        "rejection_reason": None,
        "created_at": "2017-07-10T12:00:00.123Z",
        "updated_at": "2017-07-11T08:30:00.000Z",
    }


def test_upgrade_renders_version_and_external_ref_into_stored_documents(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0002")
    connection = sqlite3.connect(tmp_path / "old.db")
    connection.execute(
        "INSERT INTO timesheet_entry (user_id, work_date, project, hours_cents, notes, status, "
        "created_by, created_at, updated_at, body) VALUES ('ann@example.com', '2017-07-10', "
        "'StoreZero', 750, 'n', 'pending', 'auth0|ann', '2017-07-10T12:00:00.123456Z', "
        "'2017-07-11T08:30:00.000001Z', '{}')"
    )
    connection.commit()
    upgrade(url)
    (body, version) = connection.execute("SELECT body, version FROM timesheet_entry").fetchone()
    connection.close()
    assert version == 1
    assert json.loads(body) == {
        "id": 1,
        "user_id": "ann@example.com",
        "date": "2017-07-10",
        "project": "StoreZero",
        "hours": 7.5,
        "notes": "n",
        "status": "pending",
        "approved": False,
        "rejection_reason": None,
        "created_at": "2017-07-10T12:00:00.123Z",
        "updated_at": "2017-07-11T08:30:00.000Z",
        "version": 1,
        "external_ref": None,
    }


def test_upgrade_creates_audit_and_idempotency_tables(empty_database_url):
    upgrade(empty_database_url)
    db = Inspector(empty_database_url)

    assert db.query("SELECT COUNT(*) FROM entry_event") == [(0,)]
    assert db.query("SELECT COUNT(*) FROM idempotency_key") == [(0,)]


def test_upgrade_indexes_only_entries_with_an_external_ref_and_keeps_them_unique(
    empty_database_url,
):
    upgrade(empty_database_url)
    db = Inspector(empty_database_url)
    with_ref, other = db.insert_entry(), db.insert_entry()
    db.insert_entry()  # stays without a reference: no row of it in the index
    refs = "UPDATE timesheet_entry SET source_client = 'importer', external_ref = ? WHERE id = ?"
    db.query(refs, "A-1", with_ref)

    with pytest.raises((sqlite3.IntegrityError, asyncpg.UniqueViolationError)):
        db.query(refs, "A-1", other)
    if db.dialect == "sqlite":
        (definition,) = db.query(
            "SELECT sql FROM sqlite_master WHERE name = 'ux_entry_external_ref'"
        )[0]
        assert "UNIQUE" in definition and "WHERE external_ref IS NOT NULL" in definition
        plan = db.query(
            "EXPLAIN QUERY PLAN SELECT id FROM timesheet_entry"
            " WHERE source_client = ? AND external_ref = ?",
            "importer",
            "A-1",
        )
        assert any("ux_entry_external_ref" in row[-1] for row in plan)
    else:
        (definition,) = db.query(
            "SELECT indexdef FROM pg_indexes WHERE indexname = 'ux_entry_external_ref'"
        )[0]
        assert "UNIQUE" in definition and "WHERE (external_ref IS NOT NULL)" in definition
