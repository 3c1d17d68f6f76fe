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


def test_a_port_that_another_group_of_workers_shares_is_refused_too():
    port = _free_port()
    other = listeners.listen_reusing_port(("127.0.0.1", port), 16)  # another `serve`'s worker
    try:
        with pytest.raises(OSError):
            listeners.check_port("127.0.0.1", port)
    finally:
        other.close()


def test_a_worker_that_cannot_bind_exits_as_a_failed_start_not_a_crash_to_restart():
    with socket.create_server(("127.0.0.1", 0)) as other:  # taken since the port was checked
        port = other.getsockname()[1]
        with pytest.raises(SystemExit) as exited:
            listeners.listen_reusing_port(("127.0.0.1", port), 16)

    assert exited.value.code == 3  # uvicorn's STARTUP_FAILURE: its supervisor stops


def test_an_ipv6_host_keeps_the_systems_dual_stack_default():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    try:
        sock = listeners.listen_reusing_port(("::", 0), 16)
    except SystemExit:
        pytest.skip("no IPv6 address to bind here")
    with sock:
        default = socket.socket(socket.AF_INET6)
        with default:
            expected = default.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == expected
