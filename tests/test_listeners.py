"""Worker sockets in one SO_REUSEPORT group: made where they are unpickled, refused when taken."""

import pickle
import socket

import pytest

from timesheets import listeners

pytestmark = pytest.mark.skipif(not listeners.OWN_LISTENERS, reason="Linux's SO_REUSEPORT")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_each_worker_that_unpickles_the_listener_gets_its_own_socket_on_the_port():
    port = _free_port()
    listener = listeners.OwnListener("127.0.0.1", port, backlog=16)

    first = pickle.loads(pickle.dumps(listener))
    second = pickle.loads(pickle.dumps(listener))
    try:
        assert isinstance(first, socket.socket) and isinstance(second, socket.socket)
        assert first.fileno() != second.fileno()
        assert first.getsockname() == second.getsockname() == ("127.0.0.1", port)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # they listen
    finally:
        first.close()
        second.close()


def test_a_port_that_another_program_listens_on_is_refused_before_any_worker_starts():
    with socket.create_server(("127.0.0.1", 0)) as other:
        port = other.getsockname()[1]
        with pytest.raises(OSError):
            listeners.check_port("127.0.0.1", port)


def test_a_free_port_passes_the_check_and_stays_free():
    port = _free_port()

    listeners.check_port("127.0.0.1", port)

    with socket.create_server(("127.0.0.1", port)):  # nothing of the check is left on it
        pass
