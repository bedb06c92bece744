"""The Prometheus export of a namespace: a collector that reads the read model at scrape time.

Every counter and histogram here is kept in Redis by the Lua scripts, so every daemon on every
machine exports the same cluster-wide figures: aggregate with ``max by (namespace, limit)``, never
``sum``, when several daemons are scraped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from slotkeeper.broker.client import Broker
from slotkeeper.broker.errors import BrokerUnavailable, SlotkeeperError
from slotkeeper.broker.keys import WAIT_BUCKETS_MS, printable
from slotkeeper.broker.readmodel import SAMPLE, LimitStats, ProblemLog, read_limit, read_limits
from slotkeeper.broker.records import Counters

log = logging.getLogger("slotkeeper.metrics")

LIMIT_LABELS = ("namespace", "limit")


def _le(seconds: float) -> str:
    """A bucket bound as Prometheus writes it (0.005, 1.0, 300.0)."""
    return repr(float(seconds))


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
    rate_limit = gauge("slotkeeper_limit_rate_units", "Units a limit's --rate allows per window.")
    rate_period = gauge("slotkeeper_limit_rate_period_seconds", "Window length of the --rate.")
    rate_used = gauge("slotkeeper_limit_rate_in_window", "Rate units granted in the window now.")
    units = counter("slotkeeper_rate_units_total", "Rate units granted.")
    rejected = counter("slotkeeper_rejected_total", "Requests refused by --max-waiters.")
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
        # a template reports its keys aggregated: its capacity is its --total (if any)
        cap = snap.config.total if snap.config.is_template else snap.config.slots
        if cap is not None:
            slots.add_metric(lv, float(cap))
        if snap.config.rate is not None and not snap.config.is_template:
            rate_limit.add_metric(lv, float(snap.config.rate.units))
            rate_period.add_metric(lv, snap.config.rate.period_ms / 1000.0)
            rate_used.add_metric(lv, float(snap.rate_in_window))
        units.add_metric(lv, float(c.units))
        rejected.add_metric(lv, float(c.rejected))
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
        rate_limit,
        rate_period,
        rate_used,
        units,
        rejected,
        wait,
        problems,
        redis_up,
    ]


CACHE_SECONDS = 1.0  # a scrape within this long of the last read reuses it


class SlotkeeperCollector(Collector):
    """Reads every limit of the broker's namespace from Redis at scrape time.

    The figures read are reused for ``cache_seconds`` (and concurrent scrapes wait for one read
    instead of each starting their own), so however many scrapers or page views there are,
    Redis sees at most one read of the namespace per ``cache_seconds``. 0 turns caching off."""

    def __init__(
        self,
        broker: Broker,
        problems: ProblemLog | None = None,
        sample: int = SAMPLE,
        cache_seconds: float = CACHE_SECONDS,
        per_key: int = 0,
    ) -> None:
        self.broker = broker
        self.problems = problems
        self.sample = sample
        self.cache_seconds = cache_seconds
        self.reads = 0  # reads of Redis made (for tests and the curious)
        self._lock = threading.Lock()
        self._cached: tuple[float, list[LimitStats], bool] | None = None
        self.per_key = per_key  # >0: also series for up to this many keys of each template

    def describe(self) -> Iterator[Metric]:
        yield from _families(self.broker.namespace, (), False)

    def collect(self) -> Iterator[Metric]:
        stats, up = self.read()
        yield from _families(self.broker.namespace, stats, up)

    def read(self) -> tuple[list[LimitStats], bool]:
        """(every limit, Redis answered): from Redis, or from a read younger than the cache."""
        with self._lock:
            c = self._cached
            if c is not None and time.monotonic() - c[0] < self.cache_seconds:
                return c[1], c[2]
            stats, up = self._read()
            self._cached = (time.monotonic(), stats, up)
            return stats, up

    def _read(self) -> tuple[list[LimitStats], bool]:
        self.reads += 1
        stats: list[LimitStats] = []
        up = False
        try:
            up = self.broker.ping()
            if up:
                stats = read_limits(self.broker, self.sample)
                if self.per_key > 0:  # opt-in: keys made from templates get series of their own
                    for st in list(stats):
                        if st.snapshot is not None and st.snapshot.config.is_template:
                            for key, _ in self.broker.template_keys(st.name, self.per_key):
                                stats.append(read_limit(self.broker, key, self.sample))
        except BrokerUnavailable:
            up = False
            stats = []
        except SlotkeeperError as exc:  # e.g. the limits set itself is of the wrong type
            log.warning("cannot list limits: %s", exc)
        if self.problems is not None and up:
            for st in stats:
                self.problems.report(st.name, st.messages())
        return stats, up
