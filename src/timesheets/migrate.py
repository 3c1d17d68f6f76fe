"""Schema migrations, applied by the service itself (Alembic, scripts shipped inside the package)."""

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from .db import postgres_dsn, sqlite_path

_SCRIPTS = Path(__file__).parent / "migrations"
# Several workers or hosts may start at once: the first upgrades, the others wait and find nothing to do.
_LOCK_ID = 7_245_001


def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the database at `database_url` to the newest schema (or to `revision`)."""
    if database_url.startswith("sqlite"):
        path = sqlite_path(database_url)
        if path != ":memory:":  # as the service does when it opens the file: create its folder
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(database_url)
        try:
            with engine.begin() as connection:
                _run(connection, revision)
        finally:
            engine.dispose()
    else:
        asyncio.run(_upgrade_postgres(database_url, revision))


async def _upgrade_postgres(database_url: str, revision: str) -> None:
    url = postgres_dsn(database_url).replace("postgresql://", "postgresql+asyncpg://", 1)
    engine = create_async_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.execute(text(f"SELECT pg_advisory_xact_lock({_LOCK_ID})"))
            await connection.run_sync(_run, revision)
    finally:
        await engine.dispose()


def _run(connection: Connection, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = connection
    command.upgrade(config, revision)
