"""The daemon's HTTP server: http.server plumbing only, on a background thread.

What each path answers is decided by a :class:`Handler` (broker/webapp.py); this module only
moves requests and responses, and turns a handler that raised into a 500 without dying."""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from slotkeeper.broker.connection import redact

log = logging.getLogger("slotkeeper.http")


@dataclass(frozen=True)
class Request:
    method: str
    path: str  # percent-decoded, without the query string (a trailing '/' is kept)
    query: Mapping[str, str]  # the last value of each parameter
    headers: Mapping[str, str]


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[Request], Response]


def parse_request(method: str, raw_path: str, headers: Mapping[str, str]) -> Request:
    parts = urlsplit(raw_path)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    path = unquote(parts.path) or "/"
    return Request(method, path, query, headers)


REQUEST_TIMEOUT = 5.0  # s a client may take to send its request (and to read the answer)
MAX_CONNECTIONS = 32  # connections served at once; more are answered 503 at once and closed
_DISCONNECTS = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, TimeoutError)


class _BoundedServer(ThreadingHTTPServer):
    """ThreadingHTTPServer with a cap on threads, per-connection timeouts, and quiet logs: a
    client that goes away (or stalls past the timeout) is a debug line, never a traceback."""

    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], cap: int
    ) -> None:
        self._slots = threading.BoundedSemaphore(cap)
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            _refuse(request)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, _DISCONNECTS):
            log.debug("http: client %s went away: %s", client_address, type(exc).__name__)
        else:
            log.warning("http: request from %s failed: %s", client_address, redact(str(exc)))


def _refuse(sock: socket.socket) -> None:
    """Answer a connection over the cap with a 503, without starting a thread: send it, drain
    what the client already sent (closing with unread data would reset the connection and could
    discard the answer), and let the caller close."""
    with contextlib.suppress(OSError):
        sock.settimeout(0.5)
        sock.sendall(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 5\r\nRetry-After: 1\r\nConnection: close\r\n\r\nbusy\n"
        )
        sock.setblocking(False)
        for _ in range(16):
            if not sock.recv(65536):
                break


class HttpServer:
    """Serves ``handler`` on ``host:port`` (port 0: any free port) from a background thread.

    Each connection has ``timeout`` seconds to send its request (a slow or half-sent request
    cannot hold a thread longer); at most ``max_connections`` are served at once, the rest get a
    503 straight away."""

    def __init__(
        self,
        handler: Handler,
        host: str = "127.0.0.1",
        port: int = 9808,
        *,
        timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if timeout <= 0 or max_connections < 1:
            raise ValueError("timeout must be > 0 and max_connections >= 1")
        self.handler = handler
        self.httpd = _BoundedServer(
            (host, port), _request_handler_for(handler, timeout), max_connections
        )
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def start(self) -> HttpServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="slotkeeper-http",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _request_handler_for(handler: Handler, timeout: float) -> type[BaseHTTPRequestHandler]:
    class RequestHandler(BaseHTTPRequestHandler):
        server_version = "slotkeeper"
        sys_version = ""

        def version_string(self) -> str:
            return "slotkeeper"  # no version banner (neither slotkeeper's nor Python's)

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._serve("GET")

        def do_HEAD(self) -> None:  # noqa: N802
            self._serve("HEAD")

        def _serve(self, method: str) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            try:
                resp = handler(parse_request(method, self.path, headers))
            except Exception as exc:  # a request must never kill the server
                log.warning("request %s failed: %s", self.path[:200], redact(str(exc)))
                resp = Response(500, b"internal error\n", "text/plain; charset=utf-8")
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(resp.body)))
            for k, v in resp.headers.items():
                self.send_header(k, v)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(resp.body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("http: " + format, *args)

    RequestHandler.timeout = timeout  # the socket timeout of every read and write
    return RequestHandler
