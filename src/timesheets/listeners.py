"""Each worker on a listening socket of its own, in the port's SO_REUSEPORT group (Linux).

With one socket shared by all workers, the worker that wakes first takes every connection
waiting (asyncio accepts them in a loop); the kernel spreads connections over a SO_REUSEPORT
group by their addresses instead. A worker that stops takes the connections still waiting in its
own queue with it (they are reset), which a shared socket would have left to the others.
"""

import socket
import sys
from typing import Any

OWN_LISTENERS = sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def check_port(host: str, port: int) -> None:
    """Raises OSError when `host:port` is taken by a socket that is not ours to share."""
    with socket.socket(_family(host)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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
    return socket.create_server(
        address, family=_family(address[0]), backlog=backlog, reuse_port=True
    )


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
