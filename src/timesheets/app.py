"""The application factory: nothing is built at import, everything in create_app()."""

import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route, Router
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import db as database
from .auth import AuthError, DevIssuer, TokenVerifier
from .config import Settings, load_settings
from .errors import ApiError, DatabaseUnavailable, InternalError, MethodNotAllowed, NotFound
from .http import JSONResponse
from .observability import (
    FLUSH_INTERVAL,
    REQUEST_ID_KEY,
    AccessLog,
    RequestLog,
    Telemetry,
    metrics_endpoint,
)
from .openapi import build_openapi
from .periodic import Periodic
from .ratelimit import RateLimiter
from .routes import OPERATIONS, health
from .routes.health import PROTECTED_RESOURCE_PATH

logger = logging.getLogger("timesheets")
auth_logger = logging.getLogger("timesheets.auth")

CORS_HEADERS = [
    "Authorization",
    "Content-Type",
    "If-Match",
    "If-None-Match",
    "Idempotency-Key",
    "X-Request-ID",
]
EXPOSED_HEADERS = [
    "Link",
    "Location",
    "WWW-Authenticate",
    "Retry-After",
    "ETag",
    "X-Request-ID",
    "X-Sync-Timestamp",
    "Idempotent-Replayed",
    "Content-Disposition",
]


def create_app(
    settings: Settings,
    *,
    dev_issuer: DevIssuer | None = None,
    jwks_transport: httpx.AsyncBaseTransport | None = None,
    prefetch_keys: bool = True,
    access_log: AccessLog | None = None,
) -> Starlette:
    """The Timesheets API for `settings`; `jwks_transport` replaces the key server's network.

    With `prefetch_keys`, every issuer's keys are fetched at start and kept fresh in the
    background (a failure is logged, not fatal); without, the first request fetches them.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        auth = settings.auth_config()
        timeout = httpx.Timeout(auth.keys.timeout, connect=min(2.0, auth.keys.timeout))
        async with httpx.AsyncClient(
            timeout=timeout, follow_redirects=False, transport=jwks_transport, trust_env=False
        ) as client:
            app.state.verifier = TokenVerifier.for_config(
                auth, client, observer=telemetry.auth_event
            )
            app.state.db = await database.connect(settings.database_url)
            flushing.start()
            app.state.rate_limiter = None
            if settings.rate_limit_per_minute:
                app.state.rate_limiter = RateLimiter(
                    app.state.db,
                    settings.rate_limit_per_minute,
                    sync_interval=settings.rate_limit_sync_seconds,
                )
                app.state.rate_limiter.start()
            if prefetch_keys:
                app.state.verifier.start()
            try:
                yield
            finally:
                await app.state.verifier.close()
                if app.state.rate_limiter is not None:
                    await app.state.rate_limiter.close()
                await flushing.close()
                await app.state.db.close()

    telemetry = Telemetry()
    request_log = access_log or AccessLog()

    async def flush() -> None:
        request_log.flush()
        telemetry.answered.flush()

    flushing = Periodic(FLUSH_INTERVAL, flush, what="writing the access log and request metrics")
    routes: list[BaseRoute] = [op.route() for op in OPERATIONS]
    routes += health.ROUTES
    if settings.metrics_enabled:
        routes.append(Route("/metrics", metrics_endpoint, methods=["GET"]))
    if dev_issuer is not None:
        routes += _dev_issuer_routes(dev_issuer)
    app = _Application(
        routes=routes,
        lifespan=lifespan,
        middleware=[
            Middleware(
                RequestLog,
                telemetry=telemetry,
                access_log=request_log,
                vary_origin=True,
                answer_error=_answer_outer_error,
            ),
            Middleware(
                _CorsMiddleware,
                allow_origins=list(settings.cors_origins),
                allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                allow_headers=CORS_HEADERS,
                expose_headers=EXPOSED_HEADERS,
                max_age=600,
            ),
            Middleware(
                _AnswerErrors,
                handlers={
                    ApiError: _render_api_error,
                    AuthError: _render_auth_error,
                    HTTPException: _render_http_exception,
                },
            ),
        ],
    )
    app.state = _AppState()
    app.router = _Router(routes, lifespan=lifespan)  # the same routes; Starlette builds its
    # middleware around app.router at the first request
    app.state.settings = settings
    app.state.telemetry = telemetry
    app.state.openapi = build_openapi(OPERATIONS)
    return app


class _AppState(State):
    """Starlette's `app.state`, whose values are plain attributes as well: State finds a value
    only after the usual lookup has failed, which builds and drops an AttributeError on each
    access (four a request for the database, verifier, rate limiter and settings)."""

    def __setattr__(self, key: str, value: Any) -> None:
        super().__setattr__(key, value)
        object.__setattr__(self, key, value)

    def __delattr__(self, key: str) -> None:
        super().__delattr__(key)
        object.__delattr__(self, key)

    def __setitem__(self, key: str, value: Any) -> None:
        self.__setattr__(key, value)

    def __delitem__(self, key: str) -> None:
        self.__delattr__(key)


class _CorsMiddleware(CORSMiddleware):
    """Starlette's CORS, for requests that name an Origin (browsers). The others (phones, the batch
    importer, other servers: most requests) pass straight through: all CORS owes them is
    `Vary: Origin`, which the request log outside adds in the pass it makes over every response
    anyway (`RequestLog(vary_origin=True)`); a layer of its own cost 8 % of a cheap request."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _has_origin(scope["headers"]):
            await self.app(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _has_origin(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, _ in headers:
        if name == b"origin":
            return True
    return False


ErrorHandler = Callable[[Request, Exception], Awaitable[Response]]


class _Application(Starlette):
    """Starlette, with its middleware and nothing around it: errors are answered by
    `_AnswerErrors`, inside the request log and CORS, instead of by Starlette's two layers (one
    outside everything, one inside), which cost 4 % of a `GET /timesheets` (bench/README.md).
    An error of the CORS layer itself is answered by the request log (`_answer_outer_error`)."""

    def build_middleware_stack(self) -> ASGIApp:
        app: ASGIApp = self.router
        for cls, args, kwargs in reversed(self.user_middleware):
            app = cls(app, *args, **kwargs)
        return app


class _AnswerErrors:
    """Every error of a request answered inside the request log and CORS, so that the response
    carries the request's id, `Vary: Origin` and, for a browser, the CORS headers that let the
    page read it: by the handler of its class (the first in its method resolution order), else
    with the 500 page, which is also the answer when a handler fails. An unexpected error is
    logged once, here. One raised after the response has started cannot be answered: it is
    logged and goes on to the server, which closes the connection."""

    def __init__(self, app: ASGIApp, handlers: dict[type[Exception], ErrorHandler]) -> None:
        self.app = app
        self._handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            if started:
                _log_unexpected(Request(scope), exc)
                raise
            response = await self._answer(Request(scope), exc)
            await response(scope, receive, send)

    async def _answer(self, request: Request, exc: Exception) -> Response:
        handler = next((self._handlers[c] for c in type(exc).__mro__ if c in self._handlers), None)
        if handler is not None:
            try:
                return await handler(request, exc)
            except Exception as failure:
                exc = failure
        return await _render_unexpected(request, exc)


class _Router(Router):
    """Starlette's router, which tries each route in turn, with a shortcut: a request for a path
    without parameters goes straight to its route when that route is the one the walk would pick
    (worked out once, here): `/healthz`, after every operation, was 15 regular-expression matches
    away. Everything else (parameters, 405, redirects, 404) takes the walk as before."""

    def __init__(self, routes: list[BaseRoute], *, lifespan: Any) -> None:
        super().__init__(routes, lifespan=lifespan)
        self._exact: dict[tuple[str, str], Route] = {}
        for route in routes:
            if isinstance(route, Route) and not route.param_convertors:
                for method in route.methods or ():
                    if self._first_full_match(route.path, method) is route:
                        self._exact[(route.path, method)] = route

    def _first_full_match(self, path: str, method: str) -> BaseRoute | None:
        scope = {"type": "http", "path": path, "root_path": "", "method": method}
        return next((r for r in self.routes if r.matches(scope)[0] is Match.FULL), None)

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not scope.get("root_path"):
            route = self._exact.get((scope["path"], scope["method"]))
            if route is not None:
                scope.setdefault("router", self)
                scope["route"] = route
                scope["endpoint"] = route.endpoint
                scope["path_params"] = dict(scope.get("path_params", {}))
                await route.handle(scope, receive, send)
                return
        await super().app(scope, receive, send)


def create_app_from_env() -> Starlette:
    """The factory that `timesheets serve` hands to uvicorn (once per worker process)."""
    return _for_serving(create_app(load_settings()))


def _for_serving(app: Starlette) -> Starlette:
    """`app`, in the process that serves it until it exits.

    What is built by now (modules, routes, validators, the OpenAPI document: some 50,000
    objects) lives as long as the process, so it leaves the cyclic garbage collector's sight
    (`gc.freeze()`). Otherwise every full collection walks all of it again, and a full collection
    comes every few thousand requests: under load each took about 60 ms, all requests in flight
    waiting (bench/README.md). Objects of requests are collected as before.
    """
    gc.collect()
    gc.freeze()
    return app


def _dev_issuer_routes(issuer: DevIssuer) -> list[BaseRoute]:
    jwks_path = "/dev/.well-known/jwks.json"

    async def jwks(request: Request) -> Response:
        return JSONResponse(issuer.jwks())

    async def discovery(request: Request) -> Response:
        return JSONResponse(issuer.discovery(issuer.issuer.rstrip("/") + "/.well-known/jwks.json"))

    return [
        Route(jwks_path, jwks, methods=["GET"]),
        Route("/dev/.well-known/openid-configuration", discovery, methods=["GET"]),
    ]


def _error_response(status: int, body: dict[str, object], headers: dict[str, str]) -> Response:
    return JSONResponse(body, status_code=status, headers=headers)


async def _render_api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    if isinstance(exc, DatabaseUnavailable):
        request.app.state.telemetry.database_errors.labels("unavailable").inc()
    return _error_response(exc.status_code, exc.body(), exc.headers())


async def _render_auth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthError)
    request.app.state.telemetry.token_rejections.labels(exc.reason).inc()
    auth_logger.info(
        "token rejected",
        extra={
            "event": "token_rejected",
            "reason": exc.reason,
            "status": exc.status_code,
            "method": request.method,
            "path": request.url.path,
            **exc.details,
        },
    )
    body: dict[str, object] = {"error": exc.code, "message": exc.message}
    if exc.description:
        body["detail"] = exc.description
    metadata = f"{request.base_url}{PROTECTED_RESOURCE_PATH.lstrip('/')}"
    return _error_response(exc.status_code, body, exc.headers(resource_metadata=metadata))


async def _render_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        error: ApiError = MethodNotAllowed()
        return _error_response(405, error.body(), dict(exc.headers or {}))
    error = NotFound() if exc.status_code == 404 else ApiError(exc.detail)
    return _error_response(exc.status_code, error.body(), dict(exc.headers or {}))


async def _render_unexpected(request: Request, exc: Exception) -> Response:
    """The 500 page; the error is logged with the request's id (the id the response carries)."""
    _log_unexpected(request, exc)
    return _error_response(500, InternalError().body(), {})


async def _answer_outer_error(scope: Scope, exc: Exception) -> Response:
    """The 500 page for an error of the CORS layer (which has no handler of its own)."""
    return await _render_unexpected(Request(scope), exc)


def _log_unexpected(request: Request, exc: Exception) -> None:
    logger.error(
        "unhandled error on %s %s",
        request.method,
        request.url.path,
        exc_info=exc,
        extra={"request_id": request.scope.get(REQUEST_ID_KEY)},
    )


def create_dev_app_from_env() -> Starlette:
    """The factory that `timesheets dev` hands to uvicorn: the API plus its development issuer."""
    settings = load_settings()
    if settings.dev_issuer_key_file is None:
        raise RuntimeError("TIMESHEETS_DEV_ISSUER_KEY_FILE is not set; start with `timesheets dev`")
    issuer = DevIssuer.from_key_file(settings.issuer[0], Path(settings.dev_issuer_key_file))
    # The development issuer's keys are served by this very server, which is not listening yet
    # while it starts: the first request fetches them.
    return _for_serving(create_app(settings, dev_issuer=issuer, prefetch_keys=False))
