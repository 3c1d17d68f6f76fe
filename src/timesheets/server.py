"""uvicorn's httptools protocol with a cap on the request head (request line and headers).

h11 refuses a head over `h11_max_incomplete_event_size`; httptools (the faster parser, used by
default) has no cap at all and would buffer a header of any size. This protocol applies the same
setting: a head that grows past it gets 431 and the connection is closed, before the app sees it.
"""

import asyncio
import os
import socket
import weakref
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from .config import Settings

_TOO_LARGE = b"Request header fields too large"
# Each worker reads the setting from the environment (Settings has checked it at start).
_DEFAULT_HEAD_TIMEOUT = Settings.model_fields["header_timeout_seconds"].default


# Bodies up to this size are copied behind their head and sent with it; larger ones follow it.
_JOIN_LIMIT = 64 * 1024


class _HeadTooLarge(Exception):
    pass


class _KeepAliveSweep:
    """Closes the server's kept-alive connections that stay idle past the keep-alive timeout.

    uvicorn sets a timer when each response completes and cancels it when the next request
    arrives: a timer object and a heap insertion a request, about a tenth of a cheap request's
    CPU time. This timer runs a few times per timeout for all connections together, so an idle
    connection is closed between the timeout and a quarter of it later (at most 1 s, at least
    50 ms). One sweep serves one server on one event loop: a server run again, on a new loop,
    gets a new one.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, state: ServerState, timeout: float):
        self.loop = loop
        self._connections = state.connections
        self._interval = max(0.05, min(1.0, timeout / 4))
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(self._interval, self._sweep)

    def _sweep(self) -> None:
        self._timer = None
        now = self.loop.time()
        for protocol in list(self._connections):
            if isinstance(protocol, LimitedHttpToolsProtocol):
                protocol.close_if_idle(now)
        if self._connections:
            self.start()


class _OneSendResponses:
    """The transport as a request's cycle sees it: a response's head is held back until the first
    write of its body (or the response's end), and both go out in one send. uvicorn writes them
    separately: two system calls and two wake-ups of the client for every response.

    The cycle's writes on a connection are ordered: an interim `100 Continue` passes straight
    through; the first other write after a response completed is the next response's head. The
    protocol's own answers (400, 408, 431) call `flush()` first, so that they never overtake a
    held head. A streamed response's head leaves with its first chunk; an empty first chunk
    (`more_body`) sends it at once. A body over `_JOIN_LIMIT` is written after the head rather
    than copied behind it."""

    __slots__ = ("_transport", "_held", "_head_due")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._held: bytes | None = None
        self._head_due = True

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if len(data) <= _JOIN_LIMIT:
                self._transport.write(held + data)
                return
            self._transport.write(held)
            self._transport.write(data)
        elif self._head_due and not data.startswith(b"HTTP/1.1 100 "):
            self._head_due = False
            self._held = data
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Sends a head still held."""
        if self._held is not None:
            self.write(b"")

    def response_complete(self) -> None:
        """Sends a head still held (a response without a body: HEAD, 204, 304)."""
        self._head_due = True
        self.flush()

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        # Anything else a cycle may use (uvicorn's cycles use only the three methods here).
        return getattr(self._transport, name)


_sweeps: "weakref.WeakKeyDictionary[ServerState, _KeepAliveSweep]" = weakref.WeakKeyDictionary()


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """The head's size is bounded by the bytes read since the message began, so a head that came
    in one read costs two additions, and only a large read makes it count the parsed headers.
    The slow-head timer runs only while a head is incomplete after a read (and on a new
    connection, until its first byte): the usual request, whole in one read, never arms it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._max_head = self.config.h11_max_incomplete_event_size or 64 * 1024
        self._in_head = False
        self._fed = 0  # bytes handed to the parser on this connection
        self._chunk_start = 0  # _fed before the read being parsed
        self._message_start = 0  # _chunk_start of the read in which the current message began
        self._trailers = 0  # bytes of trailer fields after the current message's chunked body
        self._refused = False
        # Slowloris: a request head that takes longer than this to arrive closes the connection.
        self._head_timeout = float(
            os.environ.get("TIMESHEETS_HEADER_TIMEOUT_SECONDS", _DEFAULT_HEAD_TIMEOUT)
        )
        self._head_timer: asyncio.TimerHandle | None = None
        self._idle_since: float | None = None  # loop time the last response completed, if idle
        self._writer: _OneSendResponses | None = None

    def connection_made(self, transport: Any) -> None:
        # `--workers N` binds its socket with proto 0, so asyncio leaves Nagle's algorithm on
        # (uvicorn issue 3149): every keep-alive response then waited ~40 ms for a delayed ACK.
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # the connection is already gone: nothing to tune
                pass
        super().connection_made(transport)
        self._writer = _OneSendResponses(transport)
        self._arm_head_timer()  # a new connection must send its first request head in time
        sweep = _sweeps.get(self.server_state)
        if sweep is None or sweep.loop is not self.loop:
            sweep = _sweeps[self.server_state] = _KeepAliveSweep(
                self.loop, self.server_state, self.timeout_keep_alive
            )
        sweep.start()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._idle_since = None
        self._chunk_start = self._fed
        self._fed += len(data)
        super().data_received(data)
        if self._refused or self.parser is None:
            return
        if self._in_head:
            # A head still incomplete: counted by the read, so the overshoot is one read at most.
            if self._fed - self._message_start > self._max_head:
                self._refuse_head()
            elif self._head_timer is None:
                self._arm_head_timer()
        elif self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
            # Bytes that began no request (blank lines between requests): uvicorn has stopped its
            # keep-alive timer, so this one must see a head arrive in time.
            self._arm_head_timer()

    def on_response_complete(self) -> None:
        # uvicorn's, except that an idle connection is left to the sweep instead of a timer.
        self.server_state.total_requests += 1
        if self._writer is not None:
            self._writer.response_complete()
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        else:
            self._idle_since = self.loop.time()

    def close_if_idle(self, now: float) -> None:
        """Closes the connection when no request has begun since the keep-alive timeout."""
        if self._idle_since is not None and now - self._idle_since >= self.timeout_keep_alive:
            self._idle_since = None
            self.timeout_keep_alive_handler()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._message_start, self._trailers = True, self._chunk_start, 0

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # a trailer field after a chunked body: bounded like a head
            self._trailers += len(name) + len(value) + 4
            if self._trailers > self._max_head:
                self._refused = True
                raise _HeadTooLarge()
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_head_timer()
        if self._fed - self._message_start > self._max_head and self._head_size() > self._max_head:
            self._refused = True  # a whole head in one read: stop the parser
            raise _HeadTooLarge()
        super().on_headers_complete()
        if self.cycle is not None:
            self.cycle.transport = self._writer  # type: ignore[assignment]

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers 400 to any error the parser raises, ours included.
        if self._refused:
            self._refuse_head()
        else:
            self._flush_held()
            super().send_400_response(msg)

    def _refuse_head(self) -> None:
        self._refused, self._in_head = True, False
        self._flush_held()
        self.logger.warning("Request head over %d bytes refused.", self._max_head)
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
            b"content-type: text/plain; charset=utf-8\r\n"
            b"content-length: " + str(len(_TOO_LARGE)).encode() + b"\r\n"
            b"connection: close\r\n\r\n" + _TOO_LARGE
        )
        self.transport.close()

    def _flush_held(self) -> None:
        """Before an answer of the protocol's own: a response's head still held goes first."""
        if self._writer is not None:
            self._writer.flush()

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        self.logger.info(
            "Request head not complete within %s s: connection closed.", self._head_timeout
        )
        self._flush_held()
        self.transport.write(
            b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        self.transport.close()
