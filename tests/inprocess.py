"""A uvicorn server with the service's HTTP protocol, run in a thread of this process."""

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from timesheets.server import LimitedHttpToolsProtocol


def protocol_server(app: Any, **config: Any) -> uvicorn.Server:
    """`app` behind LimitedHttpToolsProtocol on the asyncio loop; `config` as uvicorn.Config's."""
    options: dict[str, Any] = dict(lifespan="off", log_level="warning", loop="asyncio")
    options.update(config)
    return uvicorn.Server(uvicorn.Config(app, http=LimitedHttpToolsProtocol, **options))


@contextmanager
def running(server: uvicorn.Server) -> Iterator[int]:
    """`server` on a new socket, in a thread of its own, until the block ends; yields its port."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server.should_exit, server.started = False, False
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
