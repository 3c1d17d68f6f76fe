"""Reading requests: bodies from the ASGI messages themselves, query parameters as Starlette does,
whole hours as the same number with a fraction."""

import asyncio

import pytest
from starlette.datastructures import QueryParams
from starlette.requests import Request

from timesheets.api import _Request
from timesheets.errors import MalformedBody, PayloadTooLarge
from timesheets.http import read_body
from timesheets.inputs import InputError, parse_hours


def _request(*messages: dict) -> Request:
    queue = list(messages)

    async def receive() -> dict:
        return queue.pop(0)

    scope = {"type": "http", "method": "POST", "path": "/", "headers": [], "query_string": b""}
    return Request(scope, receive)


def _read(request: Request, max_bytes: int = 100) -> bytes:
    return asyncio.run(read_body(request, max_bytes))


def test_a_body_sent_in_several_messages_is_read_whole():
    request = _request(
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.request", "body": b"", "more_body": True},
        {"type": "http.request", "body": b"1}"},
    )
    assert _read(request) == b'{"a":1}'


def test_a_request_without_a_body_reads_as_empty():
    assert _read(_request({"type": "http.request"})) == b""


def test_a_connection_that_ends_before_the_body_does_is_a_malformed_body():
    request = _request(
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.disconnect"},
    )
    with pytest.raises(MalformedBody):
        _read(request)


def test_a_body_growing_past_the_limit_is_refused_at_the_message_that_crosses_it():
    request = _request(
        {"type": "http.request", "body": b"x" * 60, "more_body": True},
        {"type": "http.request", "body": b"x" * 60, "more_body": True},
        {"type": "http.disconnect"},  # never read: refused before
    )
    with pytest.raises(PayloadTooLarge):
        _read(request)


@pytest.mark.parametrize("query", [b"", b"status=", b"a=1&a=2", b"a&b=", b"=x", b"&", b"a=%00"])
def test_query_parameters_read_as_starlettes_do(query):
    ours = _Request({"type": "http", "query_string": query, "headers": []}).query_params
    theirs = QueryParams(query)
    assert ours.multi_items() == theirs.multi_items() and str(ours) == str(theirs)
    for name in ("a", "b", "status", "", "missing"):
        assert ours.get(name) == theirs.get(name)
        assert ours.get(name, "default") == theirs.get(name, "default")
        assert (name in ours) == (name in theirs)


@pytest.mark.parametrize("hours", [-1, 0, 1, 7, 24, 25, 10**30])
def test_whole_hours_are_read_as_the_same_number_with_a_fraction_is(hours):
    def read(value):
        try:
            return parse_hours(value)
        except InputError as error:
            return str(error)

    assert read(hours) == read(float(hours))  # 7 as 7.0: the same answer, or the same refusal
    assert read(hours) in (hours * 100, "must be more than 0 and at most 24")
