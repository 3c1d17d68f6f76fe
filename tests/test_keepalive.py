"""Idle kept-alive connections are closed by one sweep per server (server.py), in process."""

import resource
import socket
import time

import uvicorn

from .inprocess import protocol_server, running


async def _hello(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok"})


def _server(keep_alive: float) -> uvicorn.Server:
    return protocol_server(_hello, timeout_keep_alive=keep_alive)


def _answered_then_closed_after(port: int) -> float:
    """Seconds from the answer to a request until the server closes the connection (15 s max)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        while not reply.endswith(b"ok"):
            reply += sock.recv(1024)
        answered = time.monotonic()
        assert sock.recv(1024) == b""
        return time.monotonic() - answered


def test_a_server_run_again_on_a_new_loop_still_closes_idle_connections():
    server = _server(keep_alive=0.5)
    for _ in range(2):
        with running(server) as port:
            assert 0.4 <= _answered_then_closed_after(port) < 2.0


def test_a_zero_keep_alive_timeout_closes_at_once_and_does_not_spin():
    server = _server(keep_alive=0)
    with running(server) as port:
        assert _answered_then_closed_after(port) < 1.0
        with socket.create_connection(("127.0.0.1", port)):  # open, silent: the head timer's
            before = resource.getrusage(resource.RUSAGE_SELF)
            time.sleep(1.0)
            after = resource.getrusage(resource.RUSAGE_SELF)
    busy = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    assert busy < 0.3, f"{busy:.2f} s of CPU in 1 s with one idle connection"
