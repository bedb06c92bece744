"""Cluster-wide figures of a namespace, read from Redis, and their Prometheus export.

Every counter and histogram here is kept in Redis by the Lua scripts (DESIGN.md §14), so every
daemon on every machine exports the same figures: aggregate with ``max by (namespace, limit)``,
never ``sum``, when several daemons are scraped.

:func:`read_limit` is also what ``slotkeeper ls`` and ``top`` show, so the CLI and the metrics
never disagree. Unreadable entries (a non-number field, a record that is not msgpack, a key of the
wrong type) are reported as *problems* and never stop the others from being read.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import redis
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from slotkeeper.broker.client import Broker
from slotkeeper.broker.connection import redact
from slotkeeper.broker.errors import BrokerError, BrokerUnavailable, SlotkeeperError
from slotkeeper.broker.keys import WAIT_BUCKETS_MS, check_name, printable
from slotkeeper.broker.records import Counters, Snapshot

log = logging.getLogger("slotkeeper.metrics")

SAMPLE = 1000  # holders/waiters read per limit; beyond that, leases are counted in chunks
COUNT_CHUNK = 5000

LIMIT_LABELS = ("namespace", "limit")


@dataclass(frozen=True)
class LimitStats:
    """What one limit looks like right now (``snapshot`` is None when it could not be read)."""

    name: str
    snapshot: Snapshot | None
    leases: int = 0
    waiters: int = 0
    problems: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.snapshot is not None

    @property
    def problem_count(self) -> int:
        return len(self.problems) + (1 if self.error else 0)

    def messages(self) -> list[str]:
        return [*self.problems, *([self.error] if self.error else [])]


def _text(v: object) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _le(seconds: float) -> str:
    """A bucket bound as Prometheus writes it (0.005, 1.0, 300.0)."""
    return repr(float(seconds))


def _count_live_leases(broker: Broker, name: str, now_ms: int) -> int:
    """Live lease ids of a limit (holder entries ``id#2``.. are extra slots of one lease)."""
    key = broker.keys.limit(name)[1]
    n, offset = 0, 0
    try:
        while True:
            chunk = broker.redis.zrange(
                key, f"({now_ms}", "+inf", byscore=True, offset=offset, num=COUNT_CHUNK
            )
            n += sum(1 for m in chunk if "#" not in _text(m))
            if len(chunk) < COUNT_CHUNK:
                return n
            offset += COUNT_CHUNK
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise BrokerUnavailable(f"Redis at {broker.url_redacted}: {redact(str(exc))}") from exc
    except redis.RedisError as exc:
        raise BrokerError(f"Redis error: {redact(str(exc))}") from exc


def read_limit(broker: Broker, name: str, sample: int = SAMPLE, count: bool = True) -> LimitStats:
    """Read one limit; a limit that cannot be read comes back with ``error`` set.

    ``count=False`` skips counting leases beyond the sample (config-only readers).
    Raises only BrokerUnavailable (Redis unreachable: nothing can be read)."""
    try:
        check_name(name)
        snap = broker.snapshot(name, max_items=sample)
        if snap.used <= sample or not count:  # the holder list is complete
            leases = len(snap.holders)
        else:
            leases = _count_live_leases(broker, name, snap.now_ms)
        if snap.n_waiters <= sample:
            waiters = sum(1 for w in snap.waiters if w.garbage or w.expires_ms > snap.now_ms)
        else:
            waiters = snap.n_waiters
        return LimitStats(name, snap, leases, waiters, tuple(snap.problems))
    except BrokerUnavailable:
        raise
    except Exception as exc:  # never lets one unreadable limit stop the others
        msg = str(exc).split(" script: ", 1)[0]  # drop Redis's script sha / line noise
        if not isinstance(exc, SlotkeeperError):
            msg = f"{type(exc).__name__}: {redact(msg)[:200]}"
        if f"{name!r}" not in msg:
            msg = f"limit {name!r}: {msg}"
        return LimitStats(name, None, error=f"{msg} (unreadable)")


def read_limits(broker: Broker, sample: int = SAMPLE, count: bool = True) -> list[LimitStats]:
    return [read_limit(broker, n, sample, count) for n in broker.list_limits()]


def wait_quantile(counters: Counters, q: float) -> float | None:
    """The q-quantile of wait time (seconds) estimated from the histogram, like PromQL's
    ``histogram_quantile`` (linear within a bucket; the +Inf bucket reports its lower bound)."""
    buckets = counters.wait_buckets
    total = sum(buckets)
    if total == 0:
        return None
    rank = q * total
    seen = 0.0
    lower = 0.0
    for i, n in enumerate(buckets):
        upper = WAIT_BUCKETS_MS[i] / 1000.0 if i < len(WAIT_BUCKETS_MS) else None
        if n > 0 and seen + n >= rank:
            if upper is None:
                return lower
            return lower + (upper - lower) * (rank - seen) / n
        seen += n
        if upper is not None:
            lower = upper
    return lower


def wait_histogram(counters: Counters) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs for Prometheus from the non-cumulative Redis buckets."""
    out: list[tuple[str, float]] = []
    acc = 0
    buckets = list(counters.wait_buckets) or [0] * (len(WAIT_BUCKETS_MS) + 1)
    for i, bound in enumerate(WAIT_BUCKETS_MS):
        acc += buckets[i] if i < len(buckets) else 0
        out.append((_le(bound / 1000.0), float(acc)))
    acc += sum(buckets[len(WAIT_BUCKETS_MS) :])
    out.append(("+Inf", float(acc)))
    return out


class ProblemLog:
    """Logs each unreadable entry once while it persists (not once per pass or scrape)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log
        self._lock = threading.Lock()
        self._seen: dict[str, set[str]] = {}

    def report(self, limit: str, messages: Iterable[str]) -> None:
        now = set(messages)
        with self._lock:
            before = self._seen.get(limit, set())
            for m in sorted(now - before):
                self._log.warning("problem: %s", m)
            for m in sorted(before - now):
                self._log.info("resolved: %s", m)
            if now:
                self._seen[limit] = now
            else:
                self._seen.pop(limit, None)

    def forget_missing(self, limits: Iterable[str]) -> None:
        keep = set(limits)
        with self._lock:
            for name in [n for n in self._seen if n not in keep]:
                del self._seen[name]

    def current(self) -> dict[str, list[str]]:
        with self._lock:
            return {k: sorted(v) for k, v in self._seen.items()}


def _families(namespace: str, stats: Sequence[LimitStats], up: bool) -> list[Metric]:
    def gauge(name: str, doc: str) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, doc, labels=LIMIT_LABELS)

    def counter(name: str, doc: str) -> CounterMetricFamily:
        return CounterMetricFamily(name, doc, labels=LIMIT_LABELS)

    slots = gauge("slotkeeper_limit_slots", "Configured slots of the limit.")
    in_use = gauge("slotkeeper_limit_slots_in_use", "Slots held by live leases.")
    leases = gauge("slotkeeper_limit_leases", "Live leases holding slots of the limit.")
    waiters = gauge("slotkeeper_limit_waiters", "Waiting requests queued on the limit.")
    enabled = gauge("slotkeeper_limit_enabled", "1 if the limit is enforced, 0 if disabled.")
    problems = gauge(
        "slotkeeper_limit_problems", "Unreadable entries seen in the limit's keys (0 when healthy)."
    )
    acquired = counter("slotkeeper_acquired_total", "Leases granted.")
    released = counter("slotkeeper_released_total", "Leases released by their holder.")
    expired = counter(
        "slotkeeper_expired_total", "Leases that expired (holder gone) and were reclaimed."
    )
    revoked = counter("slotkeeper_revoked_total", "Leases revoked by an operator.")
    timed_out = counter("slotkeeper_timed_out_total", "Acquire requests that timed out waiting.")
    wait = HistogramMetricFamily(
        "slotkeeper_wait_seconds", "Time from request to grant of each lease.", labels=LIMIT_LABELS
    )
    redis_up = GaugeMetricFamily(
        "slotkeeper_redis_up", "1 if Redis answered this scrape.", labels=("namespace",)
    )
    redis_up.add_metric([namespace], 1.0 if up else 0.0)
    for st in stats:
        lv = [namespace, printable(st.name)]
        problems.add_metric(lv, float(st.problem_count))
        snap = st.snapshot
        if snap is None:
            continue
        c = snap.counters
        slots.add_metric(lv, float(snap.config.slots))
        in_use.add_metric(lv, float(snap.used))
        leases.add_metric(lv, float(st.leases))
        waiters.add_metric(lv, float(st.waiters))
        enabled.add_metric(lv, 1.0 if snap.config.enabled else 0.0)
        acquired.add_metric(lv, float(c.acquired))
        released.add_metric(lv, float(c.released))
        expired.add_metric(lv, float(c.expired))
        revoked.add_metric(lv, float(c.revoked))
        timed_out.add_metric(lv, float(c.timed_out))
        wait.add_metric(lv, wait_histogram(c), c.wait_sum_s)
    return [
        slots,
        in_use,
        leases,
        waiters,
        enabled,
        acquired,
        released,
        expired,
        revoked,
        timed_out,
        wait,
        problems,
        redis_up,
    ]


class SlotkeeperCollector(Collector):
    """Reads every limit of the broker's namespace from Redis at scrape time."""

    def __init__(
        self, broker: Broker, problems: ProblemLog | None = None, sample: int = SAMPLE
    ) -> None:
        self.broker = broker
        self.problems = problems
        self.sample = sample

    def describe(self) -> Iterator[Metric]:
        yield from _families(self.broker.namespace, (), False)

    def collect(self) -> Iterator[Metric]:
        stats: list[LimitStats] = []
        up = False
        try:
            up = self.broker.ping()
            if up:
                stats = read_limits(self.broker, self.sample)
        except BrokerUnavailable:
            up = False
            stats = []
        except SlotkeeperError as exc:  # e.g. the limits set itself is of the wrong type
            log.warning("cannot list limits: %s", exc)
        if self.problems is not None and up:
            for st in stats:
                self.problems.report(st.name, st.messages())
        yield from _families(self.broker.namespace, stats, up)


HealthCheck = Callable[[], tuple[bool, dict[str, object]]]


class MetricsServer:
    """``/metrics`` (Prometheus text or OpenMetrics, by Accept header) and ``/healthz`` (200 when
    ``health()`` says healthy, else 503; a JSON body either way), on a background thread."""

    def __init__(
        self,
        registry: CollectorRegistry,
        health: HealthCheck,
        host: str = "127.0.0.1",
        port: int = 9808,
    ) -> None:
        self.registry = registry
        self.health = health
        handler = _handler_for(self)
        self.httpd = ThreadingHTTPServer((host, port), handler)
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

    def start(self) -> MetricsServer:
        self._thread = threading.Thread(
            target=self.httpd.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="slotkeeper-metrics",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler_for(server: MetricsServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "slotkeeper"

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            if path == "/metrics":
                self._metrics()
            elif path in ("/healthz", "/health"):
                self._health()
            elif path == "/":
                self._send(200, b"slotkeeper daemon: /metrics /healthz\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _metrics(self) -> None:
            try:
                encoder, ctype = choose_encoder(self.headers.get("Accept", ""))
                body = encoder(server.registry)
            except Exception as exc:  # a scrape must never kill the server
                log.warning("metrics scrape failed: %s", redact(str(exc)))
                self._send(500, f"scrape failed: {redact(str(exc))}\n".encode(), "text/plain")
                return
            self._send(200, body, ctype)

        def _health(self) -> None:
            try:
                ok, info = server.health()
            except Exception as exc:
                ok, info = False, {"error": redact(str(exc))}
            body = json.dumps({"healthy": ok, **info}, sort_keys=True).encode() + b"\n"
            self._send(200 if ok else 503, body, "application/json")

        def _send(self, code: int, body: bytes, ctype: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            log.debug("http: " + format, *args)

    return Handler
