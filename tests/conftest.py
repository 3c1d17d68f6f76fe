"""Shared fixtures: real RS256 tokens from a local issuer whose keys are served over real HTTP on
loopback, and a real database per test, SQLite always and PostgreSQL when
TIMESHEETS_TEST_POSTGRES_URL is set (a database of its own per run, dropped at the end)."""

import asyncio
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from starlette.testclient import TestClient

from timesheets.app import create_app
from timesheets.auth import DevIssuer, SigningKey
from timesheets.config import Settings
from timesheets.migrate import upgrade

from .keyserver import KeyServer

AUDIENCE = "https://api.exampleco.com/timesheets"
EMAIL_CLAIM = "https://api.exampleco.com/email"
EMPLOYEE = ("read:timesheets", "create:timesheets", "delete:timesheets")
MANAGER = (*EMPLOYEE, "approve:timesheets")
POSTGRES_URL = os.environ.get("TIMESHEETS_TEST_POSTGRES_URL")


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's TIMESHEETS_*/AUTH0_* variables or a stray .env file."""
    for name in list(os.environ):
        if name.startswith(("TIMESHEETS_", "AUTH0_")):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def signing_keys() -> list[SigningKey]:
    """RSA keys generated once per run (key generation is the slow part)."""
    return [SigningKey.generate(f"key-{n}") for n in range(3)]


@pytest.fixture
def key_server(signing_keys: list[SigningKey]) -> Iterator[KeyServer]:
    server = KeyServer(DevIssuer("placeholder", [signing_keys[0]]))
    server.issuer.issuer = server.base_url
    yield server
    server.stop()


@pytest.fixture
def issuer(key_server: KeyServer) -> DevIssuer:
    return key_server.issuer


@pytest.fixture
def make_token(issuer: DevIssuer) -> Callable[..., str]:
    def make(
        email: str | None = "ann@example.com", scopes: tuple[str, ...] = EMPLOYEE, **options: Any
    ) -> str:
        options.setdefault("subject", f"auth0|{email or 'machine'}")
        return issuer.mint(audience=AUDIENCE, email=email, scopes=scopes, **options)

    return make


RESOURCE_METADATA = "http://testserver/.well-known/oauth-protected-resource"


def challenge(*params: str) -> str:
    """The exact WWW-Authenticate value: realm, then `params`, then RFC 9728 resource_metadata."""
    return ", ".join(
        ['Bearer realm="timesheets"', *params, f'resource_metadata="{RESOURCE_METADATA}"']
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- databases ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    if not POSTGRES_URL:
        pytest.skip("TIMESHEETS_TEST_POSTGRES_URL is not set")
    name = f"timesheets_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(POSTGRES_URL, f'CREATE DATABASE "{name}"'))
    url = POSTGRES_URL.rsplit("/", 1)[0] + "/" + name
    upgrade(url)
    yield url
    asyncio.run(_admin(POSTGRES_URL, f'DROP DATABASE "{name}" WITH (FORCE)'))


# Every table the migrations made, whatever they are by now, emptied with its id sequences.
_TRUNCATE_ALL = """
DO $$ DECLARE tables text; BEGIN
  SELECT string_agg(quote_ident(tablename), ', ') INTO tables FROM pg_tables
   WHERE schemaname = 'public' AND tablename <> 'alembic_version';
  EXECUTE 'TRUNCATE ' || tables || ' RESTART IDENTITY';
END $$"""


async def _admin(url: str, *statements: str) -> None:
    connection = await asyncpg.connect(url)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A fresh, migrated, empty database for each test, on each engine."""
    if request.param == "sqlite":
        path = tmp_path / "timesheets.db"
        shutil.copy(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("postgres_database")
    asyncio.run(_admin(url, _TRUNCATE_ALL))
    return url


# --- the application ----------------------------------------------------------------------------


@pytest.fixture
def settings(database_url: str, key_server: KeyServer) -> Settings:
    return Settings(
        _env_file=None,
        issuer=key_server.base_url,
        audience=AUDIENCE,
        database_url=database_url,
        jwks_uri=key_server.base_url + ".well-known/jwks.json",
        jwks_cooldown_seconds=0,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    # Keys are fetched by the first request, so that tests can count fetches exactly; the
    # start-up fetch and the background refresh have tests of their own.
    with TestClient(create_app(settings, prefetch_keys=False)) as test_client:
        yield test_client


@pytest.fixture
def ann(make_token: Callable[..., str]) -> dict[str, str]:
    """An employee's headers."""
    return bearer(make_token("ann@example.com"))


@pytest.fixture
def mia(make_token: Callable[..., str]) -> dict[str, str]:
    """A manager's headers."""
    return bearer(make_token("mia@example.com", MANAGER))


@pytest.fixture
def max_(make_token: Callable[..., str]) -> dict[str, str]:
    """A second manager's headers."""
    return bearer(make_token("max@example.com", MANAGER))


@pytest.fixture
def importer(make_token: Callable[..., str]) -> dict[str, str]:
    """The batch importer's headers: a machine token with batch:upload and no email."""
    return bearer(
        make_token(
            None,
            ("batch:upload",),
            subject="importer@clients",
            extra_claims={"azp": "importer", "gty": "client-credentials"},
        )
    )


ENTRY = {"project": "StoreZero", "date": "2017-07-10", "hours": 7.5}


def create_entry(client: TestClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    """Creates an entry (ENTRY with `fields` changed), which must answer 201; the entry."""
    response = client.post("/timesheets", json={**ENTRY, **fields}, headers=headers)
    assert response.status_code == 201, response.text
    entry: dict[str, Any] = response.json()
    return entry
