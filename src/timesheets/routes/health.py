"""Liveness, readiness and the API's own description; none of these needs a token."""

import dataclasses

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ..errors import DatabaseUnavailable
from ..http import JSONResponse
from . import OPERATIONS

_DOCS = """<!doctype html>
<html><head><title>Timesheets API</title><meta charset="utf-8">
<link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head><body><div id="ui"></div>
<script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#ui"});</script>
</body></html>"""


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    keys = [dataclasses.asdict(state) for state in request.app.state.verifier.key_sources()]
    try:
        await request.app.state.db.fetch_one("SELECT 1")
        database = {"status": "up"}
    except DatabaseUnavailable:
        database = {"status": "down"}
    ready = database["status"] == "up"
    body = {"status": "ready" if ready else "not ready", "database": database, "key_sources": keys}
    return JSONResponse(body, status_code=200 if ready else 503)


PROTECTED_RESOURCE_PATH = "/.well-known/oauth-protected-resource"


async def protected_resource(request: Request) -> Response:
    """RFC 9728 protected-resource metadata: which issuers' tokens this API takes, and how."""
    settings = request.app.state.settings
    base = str(request.base_url).rstrip("/")
    scopes = sorted({op.scope for op in OPERATIONS if op.scope})
    return JSONResponse(
        {
            # Section 3.3: the resource identifier the metadata URL was built from.
            "resource": base,
            "authorization_servers": list(settings.issuer),
            "bearer_methods_supported": ["header"],
            "scopes_supported": scopes,
            "resource_signing_alg_values_supported": list(settings.algorithms),
            "resource_name": "Timesheets API",
            "resource_documentation": f"{base}/docs",
            "audiences": list(settings.audience),
        }
    )


async def openapi(request: Request) -> Response:
    return JSONResponse(request.app.state.openapi)


async def docs(request: Request) -> Response:
    return HTMLResponse(_DOCS)


ROUTES = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/openapi.json", openapi, methods=["GET"]),
    Route(PROTECTED_RESOURCE_PATH, protected_resource, methods=["GET"]),
    Route("/docs", docs, methods=["GET"]),
]
