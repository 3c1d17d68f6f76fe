"""A response's head and body leave in one send (server.py), without holding back what a client
waits for: an interim 100 Continue, the head of a response without a body, pipelined answers, the
protocol's own error answers, and a streamed head whose first chunk is empty."""

import asyncio
import socket
import time

import pytest

from timesheets.server import _JOIN_LIMIT, _OneSendResponses

from .inprocess import protocol_server, running


class _Recorder(asyncio.Transport):
    """The socket's side of the transport: every write as the kernel would get it."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def _writer() -> tuple[_OneSendResponses, _Recorder]:
    socket_side = _Recorder()
    return _OneSendResponses(socket_side), socket_side


def test_head_and_body_of_each_response_go_out_in_one_write():
    writer, socket_side = _writer()
    for n in (1, 2):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n")
        assert socket_side.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx"] * (n - 1)
        writer.write(b"x")
        writer.response_complete()
    assert socket_side.writes == [b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nx"] * 2


def test_an_interim_100_continue_is_written_at_once():
    writer, socket_side = _writer()
    writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert socket_side.writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]
    writer.write(b"HTTP/1.1 201 Created\r\n\r\n")
    writer.write(b"{}")
    assert socket_side.writes[1:] == [b"HTTP/1.1 201 Created\r\n\r\n{}"]


def test_a_head_without_a_body_is_written_when_its_response_completes():
    writer, socket_side = _writer()
    writer.write(b"HTTP/1.1 304 Not Modified\r\n\r\n")
    writer.response_complete()
    assert socket_side.writes == [b"HTTP/1.1 304 Not Modified\r\n\r\n"]


def test_closing_sends_a_held_head_first():
    writer, socket_side = _writer()
    writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n")
    writer.close()
    assert socket_side.writes == [b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n"]
    assert socket_side.closed


def test_a_streamed_body_joins_only_its_first_chunk_to_the_head():
    writer, socket_side = _writer()
    for chunk in (b"HTTP/1.1 200 OK\r\n\r\n", b"1\r\na\r\n", b"1\r\nb\r\n", b"0\r\n\r\n"):
        writer.write(chunk)
    writer.response_complete()
    assert socket_side.writes == [b"HTTP/1.1 200 OK\r\n\r\n1\r\na\r\n", b"1\r\nb\r\n", b"0\r\n\r\n"]


def test_a_body_over_the_join_limit_follows_its_head_instead_of_being_copied_behind_it():
    writer, socket_side = _writer()
    body = b"x" * (_JOIN_LIMIT + 1)
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
    writer.write(body)
    assert socket_side.writes == [b"HTTP/1.1 200 OK\r\n\r\n", body]


def test_flush_sends_a_held_head_and_nothing_else():
    writer, socket_side = _writer()
    writer.flush()
    assert socket_side.writes == []
    writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
    writer.flush()
    writer.flush()
    assert socket_side.writes == [b"HTTP/1.1 200 OK\r\n\r\n"]


def test_everything_else_a_cycle_asks_of_the_transport_is_the_transport_s():
    writer, socket_side = _writer()
    socket_side.get_extra_info = lambda name, default=None: ("127.0.0.1", 8000)  # type: ignore[method-assign]
    assert writer.get_extra_info("peername") == ("127.0.0.1", 8000)


# --- through a real server ----------------------------------------------------------------------


async def _echo(scope, receive, send) -> None:
    """Answers with the request body (read whole), or with none to HEAD; /held and /flushed
    stream (see _slow_stream)."""
    if scope["type"] != "http":
        return
    if scope["path"] in ("/held", "/flushed"):
        return await _slow_stream(scope, receive, send)
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    body = body or b"empty"
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def _read_until(sock: socket.socket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


@pytest.fixture(scope="module")
def port():
    with running(protocol_server(_echo)) as port:
        yield port


def test_a_client_that_expects_100_continue_gets_it_before_sending_the_body(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        assert _read_until(sock, b"\r\n\r\n") == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        answer = _read_until(sock, b"hello")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nhello")


def test_a_head_request_gets_its_head_and_the_connection_serves_on(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        head = _read_until(sock, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK\r\n") and b"content-length: 5\r\n" in head
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _read_until(sock, b"empty").startswith(b"HTTP/1.1 200 OK\r\n")


def test_pipelined_requests_are_answered_in_order_each_whole(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\none"
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\ntwo"
        )
        answers = _read_until(sock, b"two")
    first, second = answers.split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert first.endswith(b"\r\n\r\none") and second.endswith(b"\r\n\r\ntwo")


async def _slow_stream(scope, receive, send) -> None:
    """A streamed answer whose body comes 0.3 s after its head; at /flushed it first sends an
    empty chunk, which must send the head at once."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    if scope["path"] == "/flushed":
        await send({"type": "http.response.body", "body": b"", "more_body": True})
    await asyncio.sleep(0.3)
    await send({"type": "http.response.body", "body": b"late"})


def test_an_empty_first_chunk_sends_a_streamed_head_at_once(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /flushed HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        head = _read_until(sock, b"\r\n\r\n")
        assert time.monotonic() - started < 0.25
        assert head.startswith(b"HTTP/1.1 200 OK\r\n")
        assert _read_until(sock, b"0\r\n\r\n").endswith(b"4\r\nlate\r\n0\r\n\r\n")


def test_the_protocols_own_400_never_overtakes_a_held_head(port):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.1)  # the head is held, the body 0.2 s away
        sock.sendall(b"\x01garbage\r\n\r\n")
        answer = _read_until(sock, b"never")
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"HTTP/1.1 400 Bad Request" in answer
