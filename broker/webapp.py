"""What the daemon's HTTP paths answer (read-only; GET and HEAD only).

====================  ===========================================================================
path                  answer
====================  ===========================================================================
``/``                 the status page (HTML, refreshes itself; ``?refresh=S``)
``/metrics``          Prometheus text or OpenMetrics (by Accept header)
``/healthz``          readiness: 200 when Redis answers and the loop runs, else 503; JSON body
``/livez``            liveness: 200 while the daemon's loop turns (even with Redis down), else 503
``/api/v1/limits``    every limit in brief (the shape of ``ls --json``)
``/api/v1/limits/N``  one limit in full (the shape of ``show --json``)
``/api/v1/events``    audit events, oldest first (``?limit=NAME&since=10min&count=100``)
====================  ===========================================================================

Errors are routed by exception type (:data:`ERROR_STATUS`), never by message text, and answered
as ``{"error": ..., "type": ...}`` with no secrets in them.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from slotkeeper.broker.connection import redact
from slotkeeper.broker.errors import (
    BrokerUnavailable,
    InvalidArgument,
    InvalidType,
    LimitNotFound,
    LimitUnreadable,
    SlotkeeperError,
)
from slotkeeper.broker.httpserver import Request, Response
from slotkeeper.broker.rates import parse_duration
from slotkeeper.broker.readmodel import ReadModel
from slotkeeper.broker.render_html import CONTENT_SECURITY_POLICY, DEFAULT_REFRESH, status_page
from slotkeeper.broker.render_json import limit_detail, limit_summary

log = logging.getLogger("slotkeeper.http")

API = "/api/v1"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
HTML = "text/html; charset=utf-8"
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

PAGE_EVENTS = 20  # newest events on the status page
MAX_API_EVENTS = 10_000

HealthCheck = Callable[[], tuple[bool, dict[str, object]]]

# First match wins: subclasses before their bases.
ERROR_STATUS: tuple[tuple[type[SlotkeeperError], int], ...] = (
    (LimitNotFound, 404),
    (InvalidArgument, 400),
    (InvalidType, 400),
    (BrokerUnavailable, 503),
    (LimitUnreadable, 500),
    (SlotkeeperError, 500),
)


def error_status(exc: SlotkeeperError) -> int:
    return next(code for cls, code in ERROR_STATUS if isinstance(exc, cls))


def json_response(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, sort_keys=False, default=str).encode() + b"\n"
    return Response(status, body, JSON, {"Cache-Control": "no-store"})


def error_response(exc: SlotkeeperError) -> Response:
    return json_response({"error": redact(str(exc)), "type": type(exc).__name__}, error_status(exc))


class WebApp:
    """The request handler of the daemon's HTTP server (see the module's table of paths)."""

    def __init__(
        self,
        model: ReadModel,
        registry: CollectorRegistry,
        health: HealthCheck,
        liveness: HealthCheck | None = None,
    ) -> None:
        self.model = model
        self.registry = registry
        self.health = health
        self.liveness = liveness or (lambda: (True, {}))

    def __call__(self, req: Request) -> Response:
        if req.method not in ("GET", "HEAD"):
            return Response(405, b"method not allowed\n", TEXT, {"Allow": "GET, HEAD"})
        path = req.path.rstrip("/") or "/"
        try:
            if path == "/metrics":
                return self.metrics(req)
            if path in ("/healthz", "/health", "/readyz"):
                return self.healthz()
            if path == "/livez":
                return self.livez()
            if path == "/":
                return self.page(req)
            if path == "/favicon.ico":  # browsers ask; the page has no assets to serve
                return Response(204, b"", TEXT)
            if path == f"{API}/limits":
                return self.api_limits()
            if req.path.startswith(f"{API}/limits/"):
                return self.api_limit(req.path[len(f"{API}/limits/") :])
            if path == f"{API}/events":
                return self.api_events(req)
        except SlotkeeperError as exc:
            return error_response(exc)
        return Response(404, b"not found\n", TEXT)

    def metrics(self, req: Request) -> Response:
        encoder, ctype = choose_encoder(req.headers.get("accept", ""))
        try:
            body = encoder(self.registry)
        except Exception as exc:  # a scrape must never kill the server
            log.warning("metrics scrape failed: %s", redact(str(exc)))
            return Response(500, f"scrape failed: {redact(str(exc))}\n".encode(), TEXT)
        return Response(200, body, ctype)

    def livez(self) -> Response:
        return self._probe(self.liveness)

    def healthz(self) -> Response:
        return self._probe(self.health)

    def _probe(self, check: HealthCheck) -> Response:
        try:
            ok, info = check()
        except Exception as exc:
            ok, info = False, {"error": redact(str(exc))}
        body = json.dumps({"healthy": ok, **info}, sort_keys=True).encode() + b"\n"
        return Response(200 if ok else 503, body, JSON)

    def page(self, req: Request) -> Response:
        try:
            refresh = min(3600.0, max(1.0, float(req.query.get("refresh", DEFAULT_REFRESH))))
        except ValueError:
            refresh = DEFAULT_REFRESH
        status, error, stats, events = 200, None, [], []
        try:
            stats = self.model.limits()
            events = [e.as_dict() for e in reversed(self.model.events(count=PAGE_EVENTS))]
        except BrokerUnavailable as exc:
            status, error = 503, f"Redis unreachable: {redact(str(exc))}"
        except SlotkeeperError as exc:
            status, error = error_status(exc), redact(str(exc))
        body = status_page(self.model.namespace, stats, events=events, error=error, refresh=refresh)
        return Response(status, body.encode(), HTML, PAGE_HEADERS)

    def api_limits(self) -> Response:
        stats = self.model.limits()
        return json_response(
            {
                "namespace": self.model.namespace,
                "time": time.time(),
                "limits": [limit_summary(st) for st in stats],
            }
        )

    def api_events(self, req: Request) -> Response:
        q = req.query
        try:
            count = int(q.get("count", "100"))
        except ValueError:
            raise InvalidArgument(f"count must be an integer, got {q['count']!r}") from None
        if not 1 <= count <= MAX_API_EVENTS:
            raise InvalidArgument(f"count must be between 1 and {MAX_API_EVENTS}")
        since = parse_duration(q["since"]) if q.get("since") else None
        evs = self.model.events(limit=q.get("limit") or None, since_s=since, count=count)
        on, cap = self.model.event_settings()
        return json_response(
            {
                "namespace": self.model.namespace,
                "recording": on,
                "cap": cap,
                "events": [e.as_dict() for e in evs],
            }
        )

    def api_limit(self, name: str) -> Response:
        return json_response(limit_detail(self.model.readable_limit(name)))
