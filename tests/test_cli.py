"""The `timesheets` command: refusals of `serve`, development tokens, `db upgrade`, and one end-to-end
run of `timesheets dev` as a newcomer would start it (a real process on a free loopback port)."""

import json
import sqlite3
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives import serialization

from timesheets import cli
from timesheets.auth import DevIssuer
from timesheets.devstate import DevState

from .conftest import EMAIL_CLAIM, EMPLOYEE, ENTRY
from .processes import TIMESHEETS, ServerProcess, clean_env, free_port

AUDIENCE = "https://api.exampleco.com/timesheets"
DEFAULT_ISSUER = "http://127.0.0.1:8080/dev/"
KEY_FILE = Path(".timesheets-dev/signing-key.pem")


def run(*args: str) -> Result:
    return CliRunner().invoke(cli.main, list(args))


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    """Replaces uvicorn: records what `serve`/`dev` would have run, so that no test can hang."""
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(cli, "_run", lambda *args: calls.append(args))
    return calls


def public_key() -> Any:
    key = serialization.load_pem_private_key(KEY_FILE.read_bytes(), password=None)
    return key.public_key()


def decode(token: str, issuer: str = DEFAULT_ISSUER) -> dict[str, Any]:
    """The claims of a development token, checked with the dev key's public key."""
    claims: dict[str, Any] = jwt.decode(
        token,
        public_key(),
        algorithms=["RS256"],
        audience=AUDIENCE,
        issuer=issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    return claims


def mint(*args: str) -> str:
    result = run("token", *args)
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert token.count(".") == 2 and "\n" not in token
    return token


def assert_refusal(result: Result, variable: str) -> None:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    assert "refusing to start" in result.output
    assert variable in result.output
    assert "Traceback" not in result.output


# --- serve --------------------------------------------------------------------------------------


def test_serve_without_configuration_exits_with_sentence(no_server):
    result = run("serve")

    assert_refusal(result, "TIMESHEETS_ISSUER")
    assert no_server == []


def test_serve_with_non_loopback_http_issuer_exits_with_sentence(monkeypatch, no_server):
    monkeypatch.setenv("TIMESHEETS_ISSUER", "http://example.eu.auth0.com/")
    monkeypatch.setenv("TIMESHEETS_AUDIENCE", AUDIENCE)

    assert_refusal(run("serve"), "TIMESHEETS_ISSUER")
    assert no_server == []


def test_serve_with_placeholder_auth0_domain_exits_with_sentence(monkeypatch, no_server):
    monkeypatch.setenv("AUTH0_DOMAIN", "${account.namespace}")
    monkeypatch.setenv("AUTH0_AUDIENCE", AUDIENCE)

    assert_refusal(run("serve"), "AUTH0_DOMAIN")
    assert no_server == []


def test_serve_with_symmetric_algorithm_from_dotenv_exits_with_sentence(tmp_path, no_server):
    (tmp_path / ".env").write_text(
        "TIMESHEETS_ISSUER=https://example.eu.auth0.com/\n"
        f"TIMESHEETS_AUDIENCE={AUDIENCE}\nTIMESHEETS_ALGORITHMS=HS256\n"
    )

    assert_refusal(run("serve"), "TIMESHEETS_ALGORITHMS")
    assert no_server == []


def test_serve_with_unreachable_database_exits_with_sentence(monkeypatch, no_server):
    monkeypatch.setenv("TIMESHEETS_ISSUER", "https://example.eu.auth0.com/")
    monkeypatch.setenv("TIMESHEETS_AUDIENCE", AUDIENCE)
    monkeypatch.setenv("TIMESHEETS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/timesheets")

    result = run("serve")

    assert result.exit_code == 1, result.output
    assert "TIMESHEETS_DATABASE_URL" in result.output
    assert "Traceback" not in result.output
    assert no_server == []


def test_serve_with_valid_configuration_migrates_then_runs_the_api(
    tmp_path, monkeypatch, no_server
):
    monkeypatch.setenv("TIMESHEETS_ISSUER", "https://example.eu.auth0.com/")
    monkeypatch.setenv("TIMESHEETS_AUDIENCE", AUDIENCE)

    result = run("serve", "--port", "9001", "--workers", "2")

    assert result.exit_code == 0, result.output
    assert no_server == [("timesheets.app:create_app_from_env", "127.0.0.1", 9001, 2, "json", None)]
    assert table_names(tmp_path / "timesheets.db") >= {"timesheet_entry"}


# --- dev (in process; the real process is below) ------------------------------------------------


def test_dev_saves_issuer_state_creates_key_and_prints_how_to_get_tokens(monkeypatch, no_server):
    for name in ("ISSUER", "AUDIENCE", "JWKS_URI", "DEV_ISSUER_KEY_FILE"):
        monkeypatch.setenv(f"TIMESHEETS_{name}", "")  # `dev` sets these; monkeypatch restores them

    result = run("dev", "--port", "9002")

    assert result.exit_code == 0, result.output
    assert no_server == [
        ("timesheets.app:create_dev_app_from_env", "127.0.0.1", 9002, 1, "text", None)
    ]
    assert "timesheets token --email ann@example.com" in result.output
    assert "http://127.0.0.1:9002/" in result.output
    state = json.loads(Path(".timesheets-dev/issuer.json").read_text())
    assert state["issuer"] == "http://127.0.0.1:9002/dev/"
    assert state["audience"] == AUDIENCE
    assert Path(state["key_file"]) == KEY_FILE.resolve()
    assert KEY_FILE.exists()
    assert Path("timesheets.db").exists()


# --- token --------------------------------------------------------------------------------------


def test_token_for_email_and_scope_carries_email_scope_issuer_audience(tmp_path):
    token = mint("--email", "ann@example.com", "--scope", "read:timesheets")

    claims = decode(token)
    assert claims[EMAIL_CLAIM] == "ann@example.com"
    assert claims["scope"] == "read:timesheets"
    assert claims["permissions"] == ["read:timesheets"]
    assert claims["iss"] == DEFAULT_ISSUER
    assert claims["aud"] == AUDIENCE
    assert claims["exp"] == claims["iat"] + 3600
    assert abs(claims["iat"] - time.time()) < 60
    assert claims["sub"] == "dev|ann@example.com"
    assert jwt.get_unverified_header(token)["alg"] == "RS256"


def test_token_without_scope_grants_employee_scopes():
    claims = decode(mint("--email", "ann@example.com"))

    assert claims["scope"].split() == list(EMPLOYEE)
    assert claims["permissions"] == list(EMPLOYEE)


def test_token_with_several_scopes_lists_each():
    claims = decode(
        mint("--email", "mia@example.com", "--scope", "read:timesheets approve:timesheets")
    )

    assert claims["scope"] == "read:timesheets approve:timesheets"
    assert claims["permissions"] == ["read:timesheets", "approve:timesheets"]


def test_token_with_lifetime_expires_that_many_seconds_after_issue():
    claims = decode(mint("--email", "ann@example.com", "--lifetime", "120"))

    assert claims["exp"] == claims["iat"] + 120


def test_token_with_sub_uses_that_subject():
    claims = decode(mint("--email", "ann@example.com", "--sub", "auth0|12345"))

    assert claims["sub"] == "auth0|12345"
    assert claims[EMAIL_CLAIM] == "ann@example.com"


def test_token_machine_grants_batch_upload_without_email():
    claims = decode(mint("--machine"))

    assert claims["scope"] == "batch:upload"
    assert claims["permissions"] == ["batch:upload"]
    assert EMAIL_CLAIM not in claims
    assert claims["sub"] == "dev-importer@clients"
    assert claims["gty"] == "client-credentials"


def test_token_without_email_sub_or_machine_is_a_usage_error():
    result = run("token")

    assert result.exit_code == 2
    assert "--email" in result.output
    assert "Traceback" not in result.output


def test_token_twice_reuses_the_key_file_so_one_jwks_verifies_both():
    first = mint("--email", "ann@example.com")
    key_bytes = KEY_FILE.read_bytes()
    second = mint("--email", "mia@example.com")

    assert KEY_FILE.read_bytes() == key_bytes
    first_kid = jwt.get_unverified_header(first)["kid"]
    assert jwt.get_unverified_header(second)["kid"] == first_kid
    jwks = jwt.PyJWKSet.from_dict(DevIssuer.from_key_file(DEFAULT_ISSUER, KEY_FILE).jwks())
    assert [key.key_id for key in jwks.keys] == [first_kid]
    for token, email in ((first, "ann@example.com"), (second, "mia@example.com")):
        claims = jwt.decode(token, jwks[first_kid].key, algorithms=["RS256"], audience=AUDIENCE)
        assert claims[EMAIL_CLAIM] == email


def test_token_key_file_is_private_to_its_owner():
    mint("--email", "ann@example.com")

    assert stat.S_IMODE(KEY_FILE.stat().st_mode) == 0o600


def test_token_after_dev_on_a_port_uses_that_ports_issuer():
    DevState.for_port(9123).save()

    token = mint("--email", "ann@example.com")

    assert decode(token, issuer="http://127.0.0.1:9123/dev/")["iss"] == "http://127.0.0.1:9123/dev/"


def test_token_with_port_before_dev_ever_ran_uses_that_ports_issuer():
    token = mint("--email", "ann@example.com", "--port", "9100")

    assert decode(token, issuer="http://127.0.0.1:9100/dev/")["iss"] == "http://127.0.0.1:9100/dev/"


# --- db upgrade ---------------------------------------------------------------------------------


def table_names(path: Path) -> set[str]:
    with sqlite3.connect(path) as connection:
        rows = connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    connection.close()
    return {name for (name,) in rows}


@pytest.fixture
def serve_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIMESHEETS_ISSUER", "https://example.eu.auth0.com/")
    monkeypatch.setenv("TIMESHEETS_AUDIENCE", AUDIENCE)


def test_db_upgrade_on_fresh_sqlite_file_creates_the_schema(tmp_path, monkeypatch, serve_env):
    monkeypatch.setenv("TIMESHEETS_DATABASE_URL", "sqlite:///fresh.db")

    result = run("db", "upgrade")

    assert result.exit_code == 0, result.output
    assert "up to date" in result.output
    assert {"timesheet_entry", "alembic_version"} <= table_names(tmp_path / "fresh.db")


def test_db_upgrade_twice_succeeds(tmp_path, monkeypatch, serve_env):
    monkeypatch.setenv("TIMESHEETS_DATABASE_URL", "sqlite:///fresh.db")

    assert run("db", "upgrade").exit_code == 0
    result = run("db", "upgrade")

    assert result.exit_code == 0, result.output
    assert "timesheet_entry" in table_names(tmp_path / "fresh.db")


def test_db_upgrade_without_database_url_uses_sqlite_file_in_working_directory(tmp_path, serve_env):
    result = run("db", "upgrade")

    assert result.exit_code == 0, result.output
    assert "timesheet_entry" in table_names(tmp_path / "timesheets.db")


def test_db_upgrade_with_unreachable_database_exits_with_sentence(monkeypatch, serve_env):
    monkeypatch.setenv("TIMESHEETS_DATABASE_URL", "postgresql://nobody@127.0.0.1:1/timesheets")

    result = run("db", "upgrade")

    assert result.exit_code == 1
    assert "TIMESHEETS_DATABASE_URL" in result.output
    assert "Traceback" not in result.output


# --- end to end: `timesheets dev` as a real process ---------------------------------------------


def newcomer_env() -> dict[str, str]:
    """The developer's environment without any TIMESHEETS_*/AUTH0_* setting."""
    return clean_env()


class DevServer(ServerProcess):
    """`timesheets dev --port PORT` in `cwd`, as a child process; output goes to a log file."""

    def __init__(self, cwd: Path, port: int) -> None:
        super().__init__(["dev"], cwd, newcomer_env(), port)

    def start(self, timeout: float = 30.0) -> None:
        self.launch()
        self.wait_ready(timeout)


@pytest.fixture
def dev_server(tmp_path: Path) -> Iterator[Callable[[int], DevServer]]:
    """Starts `timesheets dev` servers; every one is stopped at the end, whatever happens."""
    if not TIMESHEETS.exists():
        pytest.skip(f"no console script at {TIMESHEETS}: install the package (pip install -e .)")
    servers: list[DevServer] = []

    def start(port: int) -> DevServer:
        server = DevServer(tmp_path, port)
        servers.append(server)
        server.start()
        return server

    yield start
    for server in servers:
        server.stop()


def newcomer_token(cwd: Path, *args: str) -> str:
    done = subprocess.run(
        [str(TIMESHEETS), "token", *args],
        cwd=cwd,
        env=newcomer_env(),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_dev_server_serves_dev_tokens_and_keeps_them_valid_across_restart(tmp_path, dev_server):
    port = free_port()
    server = dev_server(port)
    token = newcomer_token(tmp_path, "--email", "ann@example.com")
    headers = {"Authorization": f"Bearer {token}"}

    with httpx.Client(base_url=server.url, timeout=10.0, trust_env=False) as http:
        created = http.post("/timesheets", json=ENTRY, headers=headers)
        assert created.status_code == 201, created.text
        entry = created.json()
        assert entry["user_id"] == "ann@example.com"
        assert entry["project"] == ENTRY["project"]
        assert created.headers["location"].endswith(f"/timesheets/{entry['id']}")

        listed = http.get("/timesheets", headers=headers)
        assert listed.status_code == 200, listed.text
        assert listed.json() == [entry]

        jwks = http.get("/dev/.well-known/jwks.json").json()
        assert [key["kid"] for key in jwks["keys"]] == [jwt.get_unverified_header(token)["kid"]]
        assert http.get("/timesheets").status_code == 401

    server.stop()
    assert server.process is not None and server.process.returncode is not None
    assert "timesheets token --email ann@example.com" in server.log()
    restarted = dev_server(port)

    with httpx.Client(base_url=restarted.url, timeout=10.0, trust_env=False) as http:
        # Minted before the restart: the signing key lives in a file, so the token still verifies.
        listed = http.get("/timesheets", headers=headers)
        assert listed.status_code == 200, listed.text
        assert listed.json() == [entry]
