"""Per-request logs with a request id, and Prometheus metrics.

Metrics live in a registry of the application's own. When the command line runs several worker
processes it sets PROMETHEUS_MULTIPROC_DIR first: every process then writes its values there, and
/metrics (in any worker, or on the separate metrics port) adds them all up.
"""

import bisect
import itertools
import logging
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, BinaryIO

import orjson
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger("timesheets")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_ID_KEY = "timesheets.request_id"  # where the request's id waits in the ASGI scope
FLUSH_INTERVAL = 0.2  # seconds between flushes of the access log and the request metrics
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Telemetry:
    """The service's metrics; the auth package reports into it through `auth_event`."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "timesheets_requests",
            "Requests answered, by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "timesheets_request_duration_seconds",
            "Time to answer a request, by route template.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.token_rejections = Counter(
            "timesheets_token_rejections",
            "Requests refused by the token check, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.key_fetches = Counter(
            "timesheets_key_fetches",
            "Fetches of issuers' signing keys, by outcome.",
            ["issuer", "outcome"],
            registry=self.registry,
        )
        self.database_errors = Counter(
            "timesheets_database_errors",
            "Requests answered 503 because the database failed.",
            ["kind"],
            registry=self.registry,
        )

        self.answered = RequestStats(self.requests, self.latency)

    def auth_event(self, event: str, fields: dict[str, Any]) -> None:
        if event == "key_fetch":
            self.key_fetches.labels(fields["issuer"], fields["outcome"]).inc()

    def exposition(self) -> bytes:
        self.answered.flush()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry)
        return generate_latest(self.registry)


class RequestStats:
    """The per-request metrics, counted in plain dicts and added to Prometheus's in batches.

    A Prometheus value takes a lock (and, with several workers, writes a shared file) on every
    update: three updates a request cost more than the rest of the request log together
    (bench/README.md). `flush` adds up what was counted since the last one; /metrics flushes
    first, and the application flushes every `FLUSH_INTERVAL` seconds.
    """

    def __init__(
        self, requests: Counter, latency: Histogram, buckets: tuple[float, ...] = _LATENCY_BUCKETS
    ) -> None:
        self._requests = requests
        self._latency = latency
        self._bounds = buckets  # the histogram's upper bounds, without +Inf
        self._counts: dict[tuple[str, str, int], int] = {}
        # per (route, method): a count per bucket (the last for +Inf), then the sum
        self._latencies: dict[tuple[str, str], list[float]] = {}

    def record(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        self._counts[key] = self._counts.get(key, 0) + 1
        buckets = self._latencies.get((route, method))
        if buckets is None:
            buckets = self._latencies[route, method] = [0.0] * (len(self._bounds) + 2)
        buckets[bisect.bisect_left(self._bounds, seconds)] += 1
        buckets[-1] += seconds

    def flush(self) -> None:
        counts, self._counts = self._counts, {}
        latencies, self._latencies = self._latencies, {}
        for (route, method, status), count in counts.items():
            self._requests.labels(route, method, str(status)).inc(count)
        for (route, method), buckets in latencies.items():
            _observe_many(self._latency.labels(route, method), buckets)


def _observe_many(child: Any, buckets: list[float]) -> None:
    """Adds counted observations to a Histogram's series at once.

    prometheus_client (0.2x) has no public call for that: its series keeps one value per bucket
    (`_buckets`, not cumulative) and one for the sum (`_sum`). tests/test_observability.py checks
    that the exposed histogram agrees with the requests made.
    """
    for index, count in enumerate(buckets[:-1]):
        if count:
            child._buckets[index].inc(count)
    child._sum.inc(buckets[-1])


async def metrics_endpoint(request: Request) -> Response:
    telemetry: Telemetry = request.app.state.telemetry
    return Response(telemetry.exposition(), media_type=CONTENT_TYPE_LATEST)


class AccessLog:
    """The per-request log: one JSON object a line, on stderr unless told otherwise.

    Lines are written in batches (`flush`, which the application calls every `FLUSH_INTERVAL`
    seconds; sooner when 64 KiB are waiting) and encoded with orjson: the logging module and a write per request cost more than
    the rest of a cheap request together (bench/README.md). A crash loses at most the last batch.
    """

    def __init__(self, stream: BinaryIO | None = None) -> None:
        self._stream = stream
        self._lines: list[bytes] = []
        self._size = 0

    def write(self, entry: dict[str, Any]) -> None:
        line = orjson.dumps(entry) + b"\n"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= 64 * 1024:
            self.flush()

    def flush(self) -> None:
        if not self._lines:
            return
        stream = self._stream or sys.stderr.buffer
        stream.write(b"".join(self._lines))
        stream.flush()
        self._lines, self._size = [], 0


class RequestLog:
    """ASGI middleware: a request id on every response, one log line and the metrics per request.

    The token is never logged; the caller is, as the user id and client id the token proved.
    """

    def __init__(
        self,
        app: ASGIApp,
        telemetry: Telemetry,
        access_log: AccessLog,
        *,
        vary_origin: bool = False,
        answer_error: Callable[[Scope, Exception], Awaitable[Response]] | None = None,
    ) -> None:
        """With `vary_origin`, a response to a request without an Origin header gets
        `Vary: Origin` (the CORS layer inside answers for requests with one). `answer_error`
        answers (and logs) an error that escapes the layers inside before they started a
        response; the layers inside answer their own errors, so it sees only theirs."""
        self.app = app
        self.telemetry = telemetry
        self.access_log = access_log
        self._vary_origin = vary_origin
        self._answer_error = answer_error
        # Generated request ids are unique, not secret: a random prefix per application (each
        # worker builds its own) and a counter cost a fraction of a uuid4 a request.
        self._id_prefix = os.urandom(8).hex()
        self._ids = itertools.count(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        given_id, has_origin = _scan(scope["headers"])
        request_id = given_id or self._new_id()
        scope[REQUEST_ID_KEY] = request_id  # for the log line of an unexpected error
        added = [(b"x-request-id", request_id.encode())]
        if self._vary_origin and not has_origin:
            added.append((b"vary", b"Origin"))
        status = 0  # no response started

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                # Each message is a new dict (Starlette's responses build one per send).
                message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:
            if status or self._answer_error is None:
                raise
            response = await self._answer_error(scope, exc)
            await response(scope, receive, send_with_id)
        finally:
            self._record(scope, request_id, status or 500, time.perf_counter() - started)

    def _new_id(self) -> str:
        return f"{self._id_prefix}{next(self._ids) & 0xFFFFFFFFFFFFFFFF:016x}"

    def _record(self, scope: Scope, request_id: str, status: int, elapsed: float) -> None:
        route = scope.get("route")
        template = getattr(route, "path", None) or "unmatched"
        method = scope["method"]
        self.telemetry.answered.record(template, method, status, elapsed)
        principal = scope.get("state", {}).get("principal")
        self.access_log.write(
            {
                "time": _now(),
                "level": "info",
                "logger": "timesheets.access",
                "request_id": request_id,
                "method": method,
                "route": template,
                "status": status,
                "duration_ms": round(elapsed * 1000, 2),
                "user_id": getattr(principal, "user_id", None),
                "client_id": getattr(principal, "client_id", None),
            }
        )


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text
_MILLISECONDS = tuple(f".{n:03d}Z" for n in range(1000))


def _now() -> str:
    """UTC with milliseconds and a Z; the date and time are formatted once a second."""
    now = time.time()
    second = int(now)
    if second != _second[0]:
        _second[:] = [second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))]
    text: str = _second[1]
    return text + _MILLISECONDS[int((now - second) * 1000)]


def _scan(headers: list[tuple[bytes, bytes]]) -> tuple[str | None, bool]:
    """The client's X-Request-ID when it is a sane token, and whether the request names an Origin."""
    request_id, origin = None, False
    for name, value in headers:
        if name == b"x-request-id" and request_id is None:
            text = bytes(value).decode("latin-1")
            request_id = text if _REQUEST_ID.fullmatch(text) else ""
        elif name == b"origin":
            origin = True
    return request_id or None, origin
