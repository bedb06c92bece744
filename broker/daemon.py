"""The slotkeeper daemon: prompt reclaim of expired leases and tickets, plus metrics and health.

Correctness never needs it (every script reclaims lazily what it touches); the daemon adds prompt
reclaim of idle limits, grants (and wake-ups) after expiry, and the Prometheus export. Any number
of daemons may run against one Redis: each reclaim call is one atomic, bounded script, so they only
share the work.

Each pass discovers the limits (``Broker.list_limits``), calls ``Broker.reclaim(name, batch)`` per
limit until it reports nothing more (at most ``max_calls`` calls per limit per pass; a backlog
starts the next pass at once), then ``Broker.reclaim(None, batch)`` for namespace-wide record GC.
Signal handlers only set a flag: the loop finishes the script call in flight and returns.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from slotkeeper.broker import doctor
from slotkeeper.broker.client import Broker
from slotkeeper.broker.collector import CACHE_SECONDS, SlotkeeperCollector
from slotkeeper.broker.connection import redact
from slotkeeper.broker.doctor import Report
from slotkeeper.broker.errors import BrokerUnavailable, SlotkeeperError
from slotkeeper.broker.httpserver import MAX_CONNECTIONS, REQUEST_TIMEOUT, HttpServer
from slotkeeper.broker.keys import check_limit_name, is_template
from slotkeeper.broker.readmodel import ProblemLog, ReadModel, read_limit
from slotkeeper.broker.webapp import WebApp

log = logging.getLogger("slotkeeper.daemon")

DEFAULT_INTERVAL = 1.0
DEFAULT_BATCH = 500
MAX_CALLS_PER_LIMIT = 200  # per pass; the rest waits for the next pass (which starts at once)
AUDIT_EVERY = 60.0  # s between full reads of every limit looking for unreadable entries
AUDIT_SAMPLE = 200
DOCTOR_EVERY = 300.0  # s between runs of the doctor's checks (logged on change, exported as gauges)
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass(frozen=True)
class PassResult:
    """What one pass did."""

    limits: int
    calls: int
    expired: int  # expired holder entries (slots) removed
    gc_leases: int
    gc_tickets: int
    granted: int
    seconds: float
    max_call_seconds: float
    backlog: bool  # some limit still had expired entries when the pass ended
    errors: int


class DaemonStats:
    """The daemon's own figures (this process only), exported by :class:`DaemonCollector`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.passes = 0
        self.errors = 0
        self.reclaimed = 0
        self.granted = 0
        self.last_reclaimed = 0
        self.last_max_call = 0.0
        self.last_pass_at = 0.0  # unix time
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.duration_sum = 0.0

    def record(self, r: PassResult) -> None:
        with self._lock:
            self.passes += 1
            self.errors += r.errors
            self.reclaimed += r.expired
            self.granted += r.granted
            self.last_reclaimed = r.expired
            self.last_max_call = r.max_call_seconds
            self.last_pass_at = time.time()
            i = next(
                (i for i, b in enumerate(DURATION_BUCKETS) if r.seconds <= b), len(DURATION_BUCKETS)
            )
            self.buckets[i] += 1
            self.duration_sum += r.seconds

    def failed(self) -> None:
        with self._lock:
            self.errors += 1

    def histogram(self) -> tuple[list[tuple[str, float]], float]:
        with self._lock:
            out, acc = [], 0
            for b, n in zip(DURATION_BUCKETS, self.buckets, strict=False):
                acc += n
                out.append((repr(float(b)), float(acc)))
            out.append(("+Inf", float(acc + self.buckets[-1])))
            return out, self.duration_sum


class DaemonCollector(Collector):
    """The daemon's own metrics (labelled by namespace only)."""

    def __init__(
        self, namespace: str, stats: DaemonStats, doctor: Callable[[], Report | None] = lambda: None
    ) -> None:
        self.namespace = namespace
        self.stats = stats
        self.doctor = doctor

    def describe(self) -> Iterator[Metric]:
        yield from self._families(empty=True)

    def collect(self) -> Iterator[Metric]:
        yield from self._families(empty=False)

    def _families(self, empty: bool) -> list[Metric]:
        lbl = ("namespace",)
        dur = HistogramMetricFamily(
            "slotkeeper_daemon_reclaim_duration_seconds",
            "Duration of one reclaim pass over every limit of the namespace.",
            labels=lbl,
        )
        reclaimed = CounterMetricFamily(
            "slotkeeper_daemon_reclaimed_total",
            "Expired holder entries (slots) this daemon reclaimed.",
            labels=lbl,
        )
        last = GaugeMetricFamily(
            "slotkeeper_daemon_reclaimed_last_pass",
            "Expired holder entries (slots) reclaimed by the last pass.",
            labels=lbl,
        )
        granted = CounterMetricFamily(
            "slotkeeper_daemon_granted_total",
            "Waiting requests this daemon granted after reclaiming slots.",
            labels=lbl,
        )
        passes = CounterMetricFamily(
            "slotkeeper_daemon_passes_total", "Reclaim passes completed.", labels=lbl
        )
        errors = CounterMetricFamily(
            "slotkeeper_daemon_errors_total",
            "Reclaim calls or passes that failed (Redis down, unreadable keys).",
            labels=lbl,
        )
        max_call = GaugeMetricFamily(
            "slotkeeper_daemon_reclaim_call_max_seconds",
            "Longest single reclaim script call (round trip) in the last pass.",
            labels=lbl,
        )
        last_at = GaugeMetricFamily(
            "slotkeeper_daemon_last_pass_timestamp_seconds",
            "Unix time the last pass completed.",
            labels=lbl,
        )
        checks = GaugeMetricFamily(
            "slotkeeper_doctor_check",
            "Last result of each `slotkeeper doctor` check: 0 fine, 1 warning, 2 danger, "
            "-1 could not check.",
            labels=("namespace", "check"),
        )
        fams: list[Metric] = [
            dur, reclaimed, last, granted, passes, errors, max_call, last_at, checks
        ]  # fmt: skip
        if empty:
            return fams
        report = self.doctor()
        for c in report.checks if report is not None else ():
            checks.add_metric([self.namespace, c.name], c.level.gauge)
        s = self.stats
        buckets, total = s.histogram()
        with s._lock:
            lv = [self.namespace]
            dur.add_metric(lv, buckets, total)
            reclaimed.add_metric(lv, float(s.reclaimed))
            last.add_metric(lv, float(s.last_reclaimed))
            granted.add_metric(lv, float(s.granted))
            passes.add_metric(lv, float(s.passes))
            errors.add_metric(lv, float(s.errors))
            max_call.add_metric(lv, s.last_max_call)
            last_at.add_metric(lv, s.last_pass_at)
        return fams


def _why(exc: Exception) -> str:
    """What went wrong, for the log (an unexpected exception type is named; nothing redacted
    away: slotkeeper errors are already redacted at the broker boundary)."""
    if isinstance(exc, SlotkeeperError):
        return str(exc)
    return f"{type(exc).__name__}: {redact(str(exc))[:300]}"


RECENT_KEYS_MS = 60_000  # template keys active this recently get a reclaim call each pass
RECENT_KEYS_PER_PASS = 100


class Daemon:
    """Reclaim loop for one namespace. ``stop()`` is safe to call from a signal handler."""

    def __init__(
        self,
        broker: Broker,
        *,
        interval: float = DEFAULT_INTERVAL,
        batch: int = DEFAULT_BATCH,
        max_calls: int = MAX_CALLS_PER_LIMIT,
        audit_every: float = AUDIT_EVERY,
        health_broker: Broker | None = None,
        scrape_cache: float = CACHE_SECONDS,
        doctor_every: float = DOCTOR_EVERY,
        per_key_metrics: int = 0,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be > 0")
        if batch < 1:
            raise ValueError("batch must be >= 1")
        self.broker = broker
        self.health_broker = health_broker or broker
        self.interval = interval
        self.batch = batch
        self.max_calls = max_calls
        self.audit_every = audit_every
        self.scrape_cache = scrape_cache
        self.last_tick = time.monotonic()  # the loop's last turn (liveness)
        self.stats = DaemonStats()
        self.problems = ProblemLog(log)
        self._stop = False
        self.reaped = 0  # keys made from templates removed after their --idle-ttl
        self.per_key_metrics = per_key_metrics
        self._redis_up: bool | None = None  # unknown until the first pass
        self._bad_limits: dict[str, str] = {}
        self._last_audit: float | None = None  # audit on the first pass
        self.doctor_every = doctor_every
        self.doctor_report: doctor.Report | None = None
        self._last_doctor: float | None = None
        self.started = time.monotonic()

    # -- control ------------------------------------------------------------------------------

    def stop(self, *_: object) -> None:
        """Ask the loop to finish the call in flight and return (signal-handler safe)."""
        self._stop = True

    @property
    def stopping(self) -> bool:
        return self._stop

    # -- one pass -----------------------------------------------------------------------------

    def run_pass(self) -> PassResult:
        """One bounded pass over every limit. Raises BrokerUnavailable if Redis is down."""
        t0 = time.monotonic()
        names = self.broker.list_limits()
        calls = expired = gcl = gct = granted = errors = 0
        max_call = 0.0
        backlog = False
        for name in names:
            if self._stop:
                break
            try:
                check_limit_name(name)
            except SlotkeeperError as exc:
                self._limit_failed(name, f"limit {name!r} has an unusable name: {exc}")
                errors += 1
                continue
            try:
                for i in range(self.max_calls):
                    c0 = time.monotonic()
                    r = self.broker.reclaim(name, self.batch)
                    max_call = max(max_call, time.monotonic() - c0)
                    calls += 1
                    expired += r.expired
                    gcl += r.gc_leases
                    gct += r.gc_tickets
                    granted += r.granted
                    if r.orphans:
                        log.warning(
                            "limit %r: removed %d holder entries that no lease record backs "
                            "(written by another client)",
                            name,
                            r.orphans,
                        )
                    if not r.more or self._stop:
                        break
                    if i == self.max_calls - 1:
                        backlog = True
                if is_template(name):
                    # keys made from it: remove those idle for its --idle-ttl; reclaim (and grant
                    # due or fitting waiters of) the recently active ones, bounded per pass
                    self.reaped += self.broker.reap_idle(name, self.batch)
                    for key in self.broker.recent_template_keys(
                        name, RECENT_KEYS_MS, RECENT_KEYS_PER_PASS
                    ):
                        r = self.broker.reclaim(key, self.batch)
                        calls += 1
                        expired += r.expired
                        granted += r.granted
                self._limit_ok(name)
            except BrokerUnavailable:
                raise
            except Exception as exc:  # isolated: one bad limit never stops the others
                self._limit_failed(name, f"limit {name!r}: reclaim failed: {_why(exc)}")
                errors += 1
        for i in range(self.max_calls):
            if self._stop:
                break
            c0 = time.monotonic()
            r = self.broker.reclaim(None, self.batch)
            max_call = max(max_call, time.monotonic() - c0)
            calls += 1
            gcl += r.gc_leases
            gct += r.gc_tickets
            if not r.more:
                break
            if i == self.max_calls - 1:
                backlog = True
        for gone in [n for n in self._bad_limits if n not in names]:
            del self._bad_limits[gone]
        result = PassResult(
            len(names),
            calls,
            expired,
            gcl,
            gct,
            granted,
            time.monotonic() - t0,
            max_call,
            backlog,
            errors,
        )
        self.stats.record(result)
        if self.audit_every > 0 and (
            self._last_audit is None or time.monotonic() - self._last_audit >= self.audit_every
        ):
            self.audit(names)
        return result

    def audit(self, names: list[str] | None = None) -> None:
        """Read every limit and log unreadable entries (once each while they persist)."""
        self._last_audit = time.monotonic()
        if names is None:
            names = self.broker.list_limits()
        for name in names:
            if self._stop:
                return
            try:
                st = read_limit(self.broker, name, AUDIT_SAMPLE)
            except BrokerUnavailable:
                return
            self.problems.report(name, st.messages())
        self.problems.forget_missing(names)

    def check_redis(self) -> doctor.Report:
        """Run the doctor's checks; log each warning or danger when it appears or changes."""
        report = doctor.run(self.broker, clock_samples=3)
        before = {c.name: c for c in self.doctor_report.checks} if self.doctor_report else {}
        for c in report.checks:
            old = before.get(c.name)
            if old is not None and old.level is c.level:
                continue
            if c.level in (doctor.Level.WARN, doctor.Level.DANGER):
                log.warning("doctor: %s %s: %s (fix: %s)", c.level.value, c.name, c.summary, c.fix)
            elif old is not None and old.level in (doctor.Level.WARN, doctor.Level.DANGER):
                log.info("doctor: %s is fine now: %s", c.name, c.summary)
        self.doctor_report = report
        self._last_doctor = time.monotonic()
        return report

    def _doctor_due(self) -> bool:
        return self.doctor_every > 0 and (
            self._last_doctor is None or time.monotonic() - self._last_doctor >= self.doctor_every
        )

    def _limit_failed(self, name: str, msg: str) -> None:
        if self._bad_limits.get(name) != msg:
            log.warning("%s (carrying on with the other limits)", msg)
        self._bad_limits[name] = msg

    def _limit_ok(self, name: str) -> None:
        if self._bad_limits.pop(name, None) is not None:
            log.info("limit %r: reclaim works again", name)

    # -- the loop -----------------------------------------------------------------------------

    def _set_up(self, up: bool, detail: str = "") -> None:
        if up and self._redis_up is not True:
            if self._redis_up is False:
                log.warning("Redis at %s is reachable again", self.broker.url_redacted)
            else:
                log.info(
                    "connected to Redis at %s, namespace %r",
                    self.broker.url_redacted,
                    self.broker.namespace,
                )
        elif not up and self._redis_up is not False:
            log.error(
                "Redis at %s is unreachable (%s); retrying every %gs",
                self.broker.url_redacted,
                detail,
                self.interval,
            )
        self._redis_up = up

    def run(self, once: bool = False) -> int:
        """Run passes until stop() (or one pass if ``once``). Returns the exit status (0)."""
        while not self._stop:
            self.last_tick = time.monotonic()
            backlog = False
            try:
                if self._doctor_due() and not once:
                    self.check_redis()
                r = self.run_pass()
                self._set_up(True)
                backlog = r.backlog
                if r.expired or r.granted:
                    log.debug(
                        "pass: reclaimed %d, granted %d, %d calls in %.1f ms (max %.2f ms)",
                        r.expired,
                        r.granted,
                        r.calls,
                        r.seconds * 1000,
                        r.max_call_seconds * 1000,
                    )
            except BrokerUnavailable as exc:
                self.stats.failed()
                self._set_up(False, str(exc))
            except Exception as exc:  # e.g. the limits set is of the wrong type: next pass
                self.stats.failed()
                self._limit_failed("", f"reclaim pass failed: {_why(exc)}")
            if once:
                break
            if not backlog:
                self._sleep(self.interval)
        log.info("stopped")
        return 0

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            time.sleep(min(left, 0.1))

    # -- health and metrics -------------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, object]]:
        """Healthy when Redis answers a PING now and the loop completed a pass recently."""
        try:
            up = self.health_broker.ping()
        except SlotkeeperError:
            up = False
        info: dict[str, object] = {
            "redis": "up" if up else "down",
            "namespace": self.broker.namespace,
        }
        last = self.stats.last_pass_at
        stale_after = max(60.0, 20 * self.interval)
        if last:
            info["last_pass_age_seconds"] = round(time.time() - last, 3)
        stalled = up and (
            (last and time.time() - last > stale_after)
            or (not last and time.monotonic() - self.started > stale_after)
        )
        if stalled:
            info["loop"] = "stalled"
        return bool(up and not stalled), info

    def liveness(self) -> tuple[bool, dict[str, object]]:
        """Alive while the loop keeps turning, whatever Redis does (``/livez``): a Redis outage
        makes the daemon unready (``/healthz``), never a restart candidate."""
        age = time.monotonic() - self.last_tick
        limit = max(60.0, 20 * self.interval)
        return age <= limit, {"loop_turn_age_seconds": round(age, 3)}

    def registry(self) -> CollectorRegistry:
        reg = CollectorRegistry(auto_describe=True)
        reg.register(
            SlotkeeperCollector(self.health_broker, self.problems,
                                cache_seconds=self.scrape_cache, per_key=self.per_key_metrics)
        )
        reg.register(DaemonCollector(self.broker.namespace, self.stats, lambda: self.doctor_report))
        # the daemon process itself: process_* (CPU, memory, fds), python_info, python_gc_*
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        return reg

    def web_app(self) -> WebApp:
        return WebApp(ReadModel(self.health_broker), self.registry(), self.health, self.liveness)

    def serve_http(
        self,
        host: str,
        port: int,
        timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> HttpServer:
        """Serve /metrics, /healthz, /livez, the status page and /api/v1/ (broker/webapp.py)."""
        return HttpServer(
            self.web_app(), host, port, timeout=timeout, max_connections=max_connections
        ).start()
