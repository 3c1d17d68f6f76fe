"""A real key server on loopback for the tests: serves a DevIssuer's JWKS over HTTP, counts fetches,
and can be made to fail, so that the verifier is tested over the network it uses in production."""

import json
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from timesheets.auth import DevIssuer

Behaviour = Callable[[BaseHTTPRequestHandler], None]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that gave up (the service's fetch timed out) is what some tests are about:
        # nothing to print. Anything else is printed as http.server does.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class KeyServer:
    def __init__(self, issuer: DevIssuer) -> None:
        self.issuer = issuer
        self.requests: list[str] = []
        self.behaviour: Behaviour | None = None  # None: serve the JWKS
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                with server._lock:
                    server.requests.append(self.path)
                if server.behaviour is not None:
                    server.behaviour(self)
                    return
                server._send_json(self, 200, server.issuer.jwks())

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def jwks_fetches(self) -> int:
        with self._lock:
            return sum(1 for path in self.requests if path.endswith("jwks.json"))

    def fail_with(self, status: int) -> None:
        self.behaviour = lambda handler: self._send_json(handler, status, {"error": "down"})

    def recover(self) -> None:
        self.behaviour = None

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    @staticmethod
    def _send_json(handler: BaseHTTPRequestHandler, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
