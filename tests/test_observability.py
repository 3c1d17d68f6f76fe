"""Request ids, one log line per request, and Prometheus metrics that move."""

import io
import json
import re

import pytest
from starlette.applications import Starlette
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import StreamingResponse
from starlette.testclient import TestClient

from timesheets import app as app_module
from timesheets import service
from timesheets.app import create_app
from timesheets.errors import NotFound
from timesheets.observability import AccessLog
from timesheets.routes import timesheets as timesheets_routes

from .conftest import ENTRY, bearer


def _metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    pattern = re.compile(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", re.MULTILINE)
    match = pattern.search(text)
    return float(match.group(1)) if match else 0.0


def _app_logging_to(settings) -> tuple[Starlette, io.BytesIO]:
    """The application with its access log written to a buffer of its own."""
    stream = io.BytesIO()
    return create_app(settings, prefetch_keys=False, access_log=AccessLog(stream)), stream


def _logged(stream: io.BytesIO) -> list[tuple[str, int]]:
    """(request id, status) of each access-log line."""
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [(line["request_id"], line["status"]) for line in lines]


def _unhandled(caplog) -> list:
    return [r for r in caplog.records if r.getMessage().startswith("unhandled error")]


def test_request_id_is_echoed_when_sane_and_generated_otherwise(client, ann):
    echoed = client.get("/timesheets", headers={**ann, "X-Request-ID": "req-42.a"})
    generated = client.get("/timesheets", headers={**ann, "X-Request-ID": "bad id; x=1"})

    assert echoed.headers["X-Request-ID"] == "req-42.a"
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])


def test_a_500_carries_the_request_id_and_its_line_in_the_access_log(settings, ann, monkeypatch):
    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "list_entries", broken)
    app, stream = _app_logging_to(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        given = client.get("/timesheets", headers={**ann, "X-Request-ID": "r-500"})
        generated = client.get("/timesheets", headers=ann)

    assert given.status_code == 500 and given.json()["error"] == "internal_error"
    assert given.headers["X-Request-ID"] == "r-500"
    assert given.headers.get_list("Vary") == ["Origin"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])
    assert _logged(stream) == [
        ("r-500", 500),
        (generated.headers["X-Request-ID"], 500),
    ]


def test_a_500_to_a_browser_carries_the_cors_headers_one_request_id_and_one_log_line(
    settings, ann, monkeypatch, caplog
):
    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(service, "list_entries", broken)
    spa = "https://spa.example.com"
    listed = settings.model_copy(update={"cors_origins": (spa,)})
    app, stream = _app_logging_to(listed)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/timesheets", headers={**ann, "Origin": spa, "X-Request-ID": "b-1"})

    assert response.status_code == 500 and response.json()["error"] == "internal_error"
    assert response.headers["Access-Control-Allow-Origin"] == spa
    assert response.headers.get_list("X-Request-ID") == ["b-1"]
    assert response.headers.get_list("Vary") == ["Origin"]
    errors = _unhandled(caplog)
    assert len(errors) == 1 and errors[0].request_id == "b-1"
    assert _logged(stream) == [("b-1", 500)]


@pytest.mark.parametrize(
    "error",
    [ZeroDivisionError("a bug while streaming"), NotFound("an API error after the start")],
    ids=["unexpected", "api_error"],
)
def test_an_error_after_the_response_started_is_not_answered_a_second_time(
    settings, ann, monkeypatch, caplog, error
):
    async def half_then_an_error():
        yield b"["
        raise error

    def streamed(*args, **kwargs):
        return StreamingResponse(half_then_an_error(), media_type="application/json")

    monkeypatch.setattr(timesheets_routes, "paged_response", streamed)
    app, stream = _app_logging_to(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/timesheets", headers={**ann, "X-Request-ID": "s-1"})

    # What went out stays as it was (the server then closes the connection); no 500 page follows.
    assert response.status_code == 200 and response.content == b"["
    errors = _unhandled(caplog)
    assert len(errors) == 1 and errors[0].request_id == "s-1"
    assert errors[0].exc_info[0] is type(error)  # the error itself, not a wrapper
    assert _logged(stream) == [("s-1", 200)]


def test_an_error_handler_that_fails_still_gets_a_json_500_with_the_request_id(
    settings, monkeypatch, caplog
):
    def broken_handler(request, exc):
        raise RuntimeError("a bug in an error handler")

    monkeypatch.setattr(app_module, "_render_http_exception", broken_handler)
    app, stream = _app_logging_to(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/no-such-page", headers={"X-Request-ID": "h-1"})

    assert response.status_code == 500 and response.json()["error"] == "internal_error"
    assert response.headers["X-Request-ID"] == "h-1"
    assert response.headers.get_list("Vary") == ["Origin"]
    errors = _unhandled(caplog)
    assert len(errors) == 1 and errors[0].request_id == "h-1"
    assert _logged(stream) == [("h-1", 500)]


def test_each_request_logs_one_json_line_with_route_status_and_caller_but_never_the_token(
    settings, ann
):
    token = ann["Authorization"].split()[1]
    app, stream = _app_logging_to(settings)
    with TestClient(app) as client:
        created = client.post("/timesheets", json=ENTRY, headers={**ann, "X-Request-ID": "r-1"})
        client.get(f"/timesheets/{created.json()['id']}", headers=ann)
        client.get("/timesheets")
    # the lifespan's end flushes what is still buffered

    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["method"], line["route"], line["status"]) for line in lines] == [
        ("POST", "/timesheets", 201),
        ("GET", "/timesheets/{entry_id}", 200),
        ("GET", "/timesheets", 401),
    ]
    assert lines[0]["request_id"] == "r-1" and lines[0]["user_id"] == "ann@example.com"
    assert lines[2]["user_id"] is None and lines[2]["client_id"] is None
    assert all(line["duration_ms"] >= 0 and line["time"].endswith("Z") for line in lines)
    assert token.encode() not in stream.getvalue()


def test_access_log_writes_in_batches_and_flushes_on_close():
    stream = io.BytesIO()
    log = AccessLog(stream)
    log.write({"n": 1})
    assert stream.getvalue() == b""
    log.flush()
    assert stream.getvalue() == b'{"n":1}\n'
    for n in range(5000):  # more than 64 KiB waiting: written without waiting for the timer
        log.write({"n": n, "pad": "x" * 20})
    assert len(stream.getvalue()) > 64 * 1024


def test_metrics_count_requests_rejections_and_key_fetches(client, ann, make_token):
    before = client.get("/metrics").text
    client.get("/timesheets", headers=ann)
    client.get("/timesheets", headers=bearer(make_token(lifetime=-120)))
    after = client.get("/metrics")

    assert after.status_code == 200 and after.headers["content-type"].startswith("text/plain")
    text = after.text
    labels = {"route": "/timesheets", "method": "GET", "status": "200"}
    assert _metric(text, "timesheets_requests_total", **labels) == (
        _metric(before, "timesheets_requests_total", **labels) + 1
    )
    assert _metric(text, "timesheets_token_rejections_total", reason="expired") == 1
    assert "timesheets_request_duration_seconds_bucket" in text
    assert any(
        line.startswith("timesheets_key_fetches_total") and 'outcome="ok"' in line
        for line in text.splitlines()
    )


def test_metrics_can_be_switched_off(settings):
    with TestClient(create_app(settings.model_copy(update={"metrics_enabled": False}))) as client:
        assert client.get("/metrics").status_code == 404


def test_latency_histogram_agrees_with_the_requests_made(client, ann):
    def series(text: str) -> tuple[float, float, float]:
        labels = {"route": "/healthz", "method": "GET"}
        return (
            _metric(text, "timesheets_request_duration_seconds_count", **labels),
            _metric(text, "timesheets_request_duration_seconds_bucket", **labels, le="+Inf"),
            _metric(text, "timesheets_request_duration_seconds_bucket", **labels, le="5.0"),
        )

    before = series(client.get("/metrics").text)
    for _ in range(7):
        client.get("/healthz")
    after = series(client.get("/metrics").text)

    assert [a - b for a, b in zip(after, before, strict=True)] == [7, 7, 7]


def test_request_stats_put_each_duration_in_the_first_bucket_that_holds_it():
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from timesheets.observability import RequestStats

    registry = CollectorRegistry()
    requests = Counter("r", "r", ["route", "method", "status"], registry=registry)
    latency = Histogram("l", "l", ["route", "method"], buckets=(0.1, 1.0), registry=registry)
    stats = RequestStats(requests, latency, buckets=(0.1, 1.0))
    for seconds in (0.05, 0.1, 0.5, 1.0, 3.0):
        stats.record("/x", "GET", 200, seconds)
    stats.flush()

    samples = {
        (sample.name, sample.labels.get("le")): sample.value
        for metric in registry.collect()
        for sample in metric.samples
    }
    assert samples[("l_bucket", "0.1")] == 2
    assert samples[("l_bucket", "1.0")] == 4
    assert samples[("l_bucket", "+Inf")] == 5
    assert samples[("l_sum", None)] == pytest.approx(4.65)
    assert samples[("r_total", None)] == 5


def test_request_metrics_counted_last_are_flushed_when_the_app_stops(settings):
    app = create_app(settings, prefetch_keys=False)
    with TestClient(app) as client:
        client.get("/healthz")
    # No scrape happened: the lifespan's end handed the count to Prometheus's values (with several
    # workers, the shared files that outlive this one).
    counted = [
        sample.value
        for metric in app.state.telemetry.registry.collect()
        for sample in metric.samples
        if sample.name == "timesheets_requests_total" and sample.labels["route"] == "/healthz"
    ]
    assert counted == [1.0]


def test_an_error_in_the_cors_layer_itself_gets_the_json_500_with_the_request_id(
    settings, monkeypatch, caplog
):
    def broken(self, request_headers):
        raise RuntimeError("a bug in the preflight")

    monkeypatch.setattr(CORSMiddleware, "preflight_response", broken)
    spa = "https://spa.example.com"
    app, stream = _app_logging_to(settings.model_copy(update={"cors_origins": (spa,)}))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.options(
            "/timesheets",
            headers={"Origin": spa, "Access-Control-Request-Method": "GET", "X-Request-ID": "c-1"},
        )

    assert response.status_code == 500 and response.json()["error"] == "internal_error"
    assert response.headers["X-Request-ID"] == "c-1"
    errors = _unhandled(caplog)
    assert len(errors) == 1 and errors[0].request_id == "c-1"
    assert _logged(stream) == [("c-1", 500)]
