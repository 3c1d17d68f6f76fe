"""The `timesheets` command: serve | dev | token | db upgrade."""

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

import click
import uvicorn

from . import listeners
from .config import (
    ConfigError,
    DatabaseSettings,
    Settings,
    load_database_settings,
    load_settings,
)
from .devstate import DevState
from .logs import logging_config

EMPLOYEE_SCOPES = "read:timesheets create:timesheets delete:timesheets"


@click.group()
@click.version_option(package_name="timesheets")
def main() -> None:
    """The Timesheets API: record, list and approve working hours."""


def _settings() -> Settings:
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.ClickException(f"refusing to start: {exc}") from None


def _upgrade(settings: DatabaseSettings) -> None:
    from .migrate import upgrade

    try:
        upgrade(settings.database_url)
    except Exception as exc:  # any driver's error: report it in one line, no trace
        raise click.ClickException(
            f"could not migrate the database at TIMESHEETS_DATABASE_URL: {type(exc).__name__}: {exc}"
        ) from None


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--log-format", type=click.Choice(["json", "text"]), default="json", show_default=True
)
def serve(host: str, port: int, workers: int, log_format: str) -> None:
    """Run the API against a real issuer (Auth0 or any OpenID Connect provider)."""
    settings = _settings()
    _upgrade(settings)
    _run(
        "timesheets.app:create_app_from_env", host, port, workers, log_format, settings.metrics_port
    )


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8080, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 64))
@click.option(
    "--log-format", type=click.Choice(["json", "text"]), default="text", show_default=True
)
def dev(host: str, port: int, workers: int, log_format: str) -> None:
    """Run the API with a built-in development issuer and SQLite: no Auth0 account needed."""
    state = DevState.for_port(port)
    state.save()
    os.environ.update(
        TIMESHEETS_ISSUER=state.issuer,
        TIMESHEETS_AUDIENCE=state.audience,
        TIMESHEETS_JWKS_URI=state.jwks_uri,
        TIMESHEETS_DEV_ISSUER_KEY_FILE=state.key_file,
    )
    settings = _settings()
    _upgrade(settings)
    from .auth import DevIssuer

    DevIssuer.from_key_file(state.issuer, Path(state.key_file))  # create the key once, up front
    click.echo(_dev_banner(host, port, state, settings.database_url))
    _run(
        "timesheets.app:create_dev_app_from_env",
        host,
        port,
        workers,
        log_format,
        settings.metrics_port,
    )


def _dev_banner(host: str, port: int, state: DevState, database_url: str) -> str:
    return (
        f"Timesheets API (development issuer {state.issuer}, database {database_url})\n"
        f"Get a token in another shell, then call the API:\n"
        f'  TOKEN=$(timesheets token --email ann@example.com --scope "{EMPLOYEE_SCOPES}")\n'
        f'  curl -H "Authorization: Bearer $TOKEN" http://{host}:{port}/timesheets\n'
        f"API document: http://{host}:{port}/docs\n"
    )


def _run(
    factory: str, host: str, port: int, workers: int, log_format: str, metrics_port: int | None
) -> None:
    # Every worker writes its metrics here, and /metrics adds them up (prometheus_client reads
    # the variable when it is imported: set it before any worker starts).
    metrics_dir = tempfile.mkdtemp(prefix="timesheets-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    try:
        if metrics_port is not None:
            _serve_metrics(metrics_port)
        _run_uvicorn(factory, host, port, workers, log_format)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _serve_metrics(port: int) -> None:
    """All workers' metrics on a port of their own, on loopback only."""
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr="127.0.0.1", registry=registry)


def _run_uvicorn(factory: str, host: str, port: int, workers: int, log_format: str) -> None:
    settings = _settings()
    options: dict[str, Any] = dict(
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_level="info",
        log_config=logging_config(log_format),
        server_header=False,
        # After SIGTERM: stop accepting, let requests in flight finish, cancel them after this.
        timeout_graceful_shutdown=settings.shutdown_timeout_seconds,
        # The request head's cap (h11's setting; server.py applies it to httptools too): room for
        # the largest token allowed, then a 431 instead of buffering a header of any size.
        http=_http_protocol(),
        h11_max_incomplete_event_size=max(64 * 1024, settings.max_token_bytes + 32 * 1024),
        # Measured with bench/run.py at saturation: uvloop costs about 20 % less CPU a request,
        # but its p99 is 100-360 ms against asyncio's 15-35 ms; asyncio is the default.
        loop=settings.event_loop,
    )
    if workers > 1 and port != 0 and listeners.OWN_LISTENERS:
        _run_workers_on_own_sockets(uvicorn.Config(factory, **options), host, port)
    else:
        uvicorn.run(factory, **options)


def _run_workers_on_own_sockets(config: uvicorn.Config, host: str, port: int) -> None:
    """uvicorn's supervisor, each worker on a socket of its own (listeners.py): on one shared
    socket, one worker of two sometimes served 99 % of the benchmark's connections."""
    from uvicorn.supervisors import Multiprocess

    try:
        listeners.check_port(host, port)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    logging.getLogger("timesheets").info(
        "listening on %s, %d workers, each on a socket of its own",
        listeners.url(host, port),
        config.workers,
    )
    listener = listeners.OwnListener(host, port, config.backlog)
    try:
        Multiprocess(config, sockets=[listener]).run()  # type: ignore[list-item]
    except KeyboardInterrupt:  # pragma: no cover (as uvicorn.run)
        pass


def _http_protocol() -> str:
    try:
        import httptools  # noqa: F401
    except ImportError:  # pragma: no cover (uvicorn[standard] brings it)
        return "h11"
    return "timesheets.server:LimitedHttpToolsProtocol"


@main.command()
@click.option("--email", help="the user's email (put in the email claim)")
@click.option(
    "--scope", "scopes", default=None, help=f'space-separated scopes [default: "{EMPLOYEE_SCOPES}"]'
)
@click.option("--sub", help="the subject; defaults to one derived from the email")
@click.option("--machine", is_flag=True, help="a client-credentials token: batch:upload, no email")
@click.option(
    "--lifetime",
    default=3600,
    show_default=True,
    type=click.IntRange(1, 31 * 86400),
    help="seconds until it expires",
)
@click.option(
    "--port",
    default=8080,
    show_default=True,
    type=int,
    help="the dev server's port, if `timesheets dev` never ran here",
)
def token(
    email: str | None, scopes: str | None, sub: str | None, machine: bool, lifetime: int, port: int
) -> None:
    """Mint an access token for the development issuer of `timesheets dev`."""
    from .auth import DevIssuer

    state = DevState.load(default_port=port)
    issuer = DevIssuer.from_key_file(state.issuer, Path(state.key_file))
    if machine:
        scope_list = (scopes or "batch:upload").split()
        subject = sub or "dev-importer@clients"
        claims = {"azp": subject.split("@")[0], "gty": "client-credentials"}
        minted = issuer.mint(
            audience=state.audience,
            subject=subject,
            scopes=scope_list,
            lifetime=lifetime,
            extra_claims=claims,
        )
    else:
        if not email and not sub:
            raise click.UsageError("give --email (or --sub), or --machine")
        scope_list = (scopes if scopes is not None else EMPLOYEE_SCOPES).split()
        minted = issuer.mint(
            audience=state.audience,
            subject=sub or f"dev|{email}",
            email=email,
            scopes=scope_list,
            lifetime=lifetime,
        )
    click.echo(minted)


@main.group()
def db() -> None:
    """Database maintenance."""


@db.command()
def upgrade() -> None:
    """Apply the schema migrations (the service also does this when it starts)."""
    try:
        settings = load_database_settings()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    _upgrade(settings)
    click.echo("database is up to date")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
