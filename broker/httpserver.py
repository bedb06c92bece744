"""The daemon's HTTP server: http.server plumbing only, on a background thread.

What each path answers is decided by a :class:`Handler` (broker/webapp.py); this module only
moves requests and responses, and turns a handler that raised into a 500 without dying."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


class HttpServer:
    """Serves ``handler`` on ``host:port`` (port 0: any free port) from a background thread."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 9808) -> None:
        self.handler = handler
        self.httpd = ThreadingHTTPServer((host, port), _request_handler_for(handler))
        self.httpd.daemon_threads = True
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


def _request_handler_for(handler: Handler) -> type[BaseHTTPRequestHandler]:
    class RequestHandler(BaseHTTPRequestHandler):
        server_version = "slotkeeper"

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

    return RequestHandler
