"""The router's shortcut for paths without parameters picks what Starlette's walk would pick; the
application's state answers by attribute and by item alike."""

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, Router
from starlette.testclient import TestClient

from timesheets.app import _AppState, _Router


def _named(name: str):
    async def endpoint(request: Request) -> Response:
        route = request.scope["route"].path
        return PlainTextResponse(f"{name} {route} {dict(request.path_params)}")

    return endpoint


def _client() -> TestClient:
    routes = [
        Route("/entries/{entry_id}", _named("one"), methods=["GET"]),
        Route("/entries/latest", _named("latest"), methods=["GET", "POST"]),
        Route("/healthz", _named("health"), methods=["GET"]),
    ]
    app = Starlette()
    app.router = _Router(routes, lifespan=None)
    return TestClient(app)


def test_a_path_that_an_earlier_route_with_parameters_matches_goes_to_that_route():
    client = _client()

    answer = client.get("/entries/latest")

    assert answer.text == "one /entries/{entry_id} {'entry_id': 'latest'}"
    assert set(client.app.router._exact) == {  # the shortcuts taken
        ("/entries/latest", "POST"),
        ("/healthz", "GET"),
        ("/healthz", "HEAD"),
    }


def test_a_path_without_parameters_goes_to_its_own_route_for_its_other_methods():
    client = _client()

    assert client.post("/entries/latest").text == "latest /entries/latest {}"
    assert client.get("/healthz").text == "health /healthz {}"
    assert client.head("/healthz").status_code == 200


def test_other_methods_and_unknown_paths_still_get_405_and_404():
    client = _client()

    refused = client.delete("/healthz")
    assert refused.status_code == 405
    assert set(refused.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert client.get("/nowhere").status_code == 404


def test_only_paths_without_a_shortcut_take_the_walk(monkeypatch):
    walks: list[str] = []
    walk = Router.app

    async def counted(self, scope, receive, send):
        walks.append(scope["path"])
        await walk(self, scope, receive, send)

    monkeypatch.setattr(Router, "app", counted)
    client = _client()
    below_root = TestClient(client.app, root_path="/api")

    assert client.get("/healthz").text == "health /healthz {}"
    assert client.post("/entries/latest").status_code == 200
    assert walks == []
    assert client.get("/entries/7").status_code == 200
    assert below_root.get("/api/healthz").text == "health /healthz {}"
    assert walks == ["/entries/7", "/api/healthz"]


def test_app_state_reads_what_was_set_by_attribute_or_by_item_and_forgets_what_was_deleted():
    state = _AppState()
    state.db = "first"
    state["db"] = "second"
    assert state.db == state["db"] == "second"
    state.limiter = "kept"
    del state["db"]
    assert not hasattr(state, "db") and state.limiter == "kept"
    del state.limiter
    with pytest.raises(KeyError):
        state["limiter"]
