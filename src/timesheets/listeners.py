"""Each worker on a listening socket of its own, in the port's SO_REUSEPORT group (Linux).

With one socket shared by all workers, the worker that wakes first takes every connection
waiting (asyncio accepts them in a loop); the kernel spreads connections over a SO_REUSEPORT
group by their addresses instead. A worker that stops (it died, or a reload retired it) takes the
connections still waiting in its own queue with it (they are reset), which a shared socket would
have left to the others.
"""

import logging
import socket
import sys
from typing import Any

from uvicorn.config import STARTUP_FAILURE

logger = logging.getLogger("timesheets")

OWN_LISTENERS = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def check_port(host: str, port: int) -> None:
    """Raises OSError when anything listens on `host:port` already, another SO_REUSEPORT group
    included (such as a second `timesheets serve` of the same user, which would otherwise
    quietly share the port and its connections with this one)."""
    with socket.socket(_family(host)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))  # bound, never listening: no connection ever waits on it


class OwnListener:
    """Stands for a listening socket in uvicorn's list of worker sockets. uvicorn hands that list
    to each worker it starts (or restarts) by pickling it; unpickled in the worker, this becomes
    a socket of the worker's own in the port's SO_REUSEPORT group."""

    def __init__(self, host: str, port: int, backlog: int) -> None:
        self.address = (host, port)
        self.backlog = backlog

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return listen_reusing_port, (self.address, self.backlog)


def listen_reusing_port(address: tuple[str, int], backlog: int) -> socket.socket:
    """A listening socket in the port's group. Built as uvicorn builds its own (IPv6 keeps the
    system's dual-stack default). A worker that cannot bind exits as uvicorn's workers do when
    they fail to start, so that the supervisor stops instead of restarting it for ever."""
    sock = socket.socket(_family(address[0]))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        logger.error("cannot listen on %s: %s", url(*address), exc.strerror)
        sys.exit(STARTUP_FAILURE)
    return sock


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
