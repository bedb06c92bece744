"""The Prometheus export of a namespace: a collector that reads the read model at scrape time.

Every counter and histogram here is kept in Redis by the Lua scripts, so every daemon on every
machine exports the same cluster-wide figures: aggregate with ``max by (namespace, limit)``, never
``sum``, when several daemons are scraped.

Cardinality: a limit has a ``limit`` label of its own unless ``metrics_group`` (broker/keys.py)
puts it in an aggregate. Keys made from a template are aggregated by the scripts themselves (in
the template's hash and holders) and are not listed; run-scoped limits ``run-<id>:<tag>`` are
summed here into ``run-*:<tag>`` (see ``Aggregates``: their counters stay monotonic while runs
come and go, for the life of the collector). ``per_key`` > 0 adds series for members too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace

from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from slotkeeper.broker.client import Broker
from slotkeeper.broker.errors import BrokerUnavailable, SlotkeeperError
from slotkeeper.broker.keys import WAIT_BUCKETS_MS, metrics_group, printable
from slotkeeper.broker.readmodel import SAMPLE, LimitStats, ProblemLog, read_limit, read_limits
from slotkeeper.broker.records import Counters

log = logging.getLogger("slotkeeper.metrics")

LIMIT_LABELS = ("namespace", "limit")


def _le(seconds: float) -> str:
    """A bucket bound as Prometheus writes it (0.005, 1.0, 300.0)."""
    return repr(float(seconds))


NBUCKETS = len(WAIT_BUCKETS_MS) + 1  # the bounds, then +Inf


def _buckets(counters: Counters) -> tuple[float, ...]:
    """The non-cumulative wait buckets of Redis, NBUCKETS long (extra ones fold into +Inf)."""
    raw = [float(b) for b in counters.wait_buckets] or [0.0] * NBUCKETS
    raw += [0.0] * (NBUCKETS - len(raw))
    return (*raw[: NBUCKETS - 1], sum(raw[NBUCKETS - 1 :]))


def _cumulative(buckets: Sequence[float]) -> list[tuple[str, float]]:
    out: list[tuple[str, float]] = []
    acc = 0.0
    for i, bound in enumerate(WAIT_BUCKETS_MS):
        acc += buckets[i]
        out.append((_le(bound / 1000.0), acc))
    out.append(("+Inf", acc + buckets[NBUCKETS - 1]))
    return out


def wait_histogram(counters: Counters) -> list[tuple[str, float]]:
    """Cumulative (le, count) pairs for Prometheus from the non-cumulative Redis buckets."""
    return _cumulative(_buckets(counters))


@dataclass(frozen=True)
class Totals:
    """What only ever grows: a series' counters and wait histogram (buckets non-cumulative)."""

    acquired: float = 0.0
    released: float = 0.0
    expired: float = 0.0
    revoked: float = 0.0
    timed_out: float = 0.0
    units: float = 0.0
    rejected: float = 0.0
    wait_sum_s: float = 0.0
    wait_buckets: tuple[float, ...] = (0.0,) * NBUCKETS

    @classmethod
    def of(cls, c: Counters) -> Totals:
        return cls(float(c.acquired), float(c.released), float(c.expired), float(c.revoked),
                   float(c.timed_out), float(c.units), float(c.rejected), c.wait_sum_s,
                   _buckets(c))

    def _fields(self) -> tuple[float, ...]:
        return (self.acquired, self.released, self.expired, self.revoked, self.timed_out,
                self.units, self.rejected, self.wait_sum_s, *self.wait_buckets)

    @classmethod
    def _make(cls, values: Sequence[float]) -> Totals:
        v = list(values)
        return cls(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], tuple(v[8:]))

    def plus(self, other: Totals) -> Totals:
        return Totals._make([a + b for a, b in zip(self._fields(), other._fields(), strict=True)])

    def lost_in(self, now: Totals) -> Totals:
        """What a figure seen as ``self`` lost by reading ``now``: each field that went down (a
        counter reset, e.g. a damaged hash rewritten) counts as its whole last value."""
        return Totals._make(
            [a if b < a else 0.0 for a, b in zip(self._fields(), now._fields(), strict=True)]
        )


@dataclass(frozen=True)
class Series:
    """One ``limit`` label's figures: one limit's, or the sum of an aggregate's members."""

    label: str
    totals: Totals = Totals()
    problems: float = 0.0
    live: bool = False  # it has figures read now (a limit read, or an aggregate with members)
    slots: float | None = None
    in_use: float = 0.0
    leases: float = 0.0
    waiters: float = 0.0
    enabled: float = 0.0
    rate_units: float | None = None
    rate_period: float | None = None
    rate_in_window: float | None = None

    @classmethod
    def of(cls, label: str, st: LimitStats) -> Series:
        snap = st.snapshot
        if snap is None:
            return cls(label, problems=float(st.problem_count))
        cfg = snap.config
        rate = cfg.rate if not cfg.is_template else None
        # a template reports its keys aggregated: its capacity is its --total (if any)
        cap = cfg.total if cfg.is_template else cfg.slots
        return cls(
            label, Totals.of(snap.counters), float(st.problem_count), True,
            None if cap is None else float(cap), float(snap.used), float(st.leases),
            float(st.waiters), 1.0 if cfg.enabled else 0.0,
            None if rate is None else float(rate.units),
            None if rate is None else rate.period_ms / 1000.0,
            None if rate is None else float(snap.rate_in_window),
        )

    def join(self, o: Series) -> Series:
        """The aggregate of two members: gauges and counters summed (enabled if any is, the
        longest rate window)."""

        def add(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else a + b

        def most(a: float | None, b: float | None) -> float | None:
            return b if a is None else a if b is None else max(a, b)

        totals, problems = self.totals.plus(o.totals), self.problems + o.problems
        if not o.live:
            return replace(self, totals=totals, problems=problems)
        if not self.live:
            return replace(o, label=self.label, totals=totals, problems=problems)
        return Series(
            self.label, totals, problems, True,
            add(self.slots, o.slots), self.in_use + o.in_use, self.leases + o.leases,
            self.waiters + o.waiters, max(self.enabled, o.enabled),
            add(self.rate_units, o.rate_units), most(self.rate_period, o.rate_period),
            add(self.rate_in_window, o.rate_in_window),
        )


def _families(namespace: str, rows: Sequence[Series], up: bool) -> list[Metric]:
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
    for row in rows:
        lv = [namespace, printable(row.label)]
        problems.add_metric(lv, row.problems)
        if not row.live and row.totals == Totals():
            continue  # a limit that could not be read (and no aggregate to keep counting)
        if row.slots is not None:
            slots.add_metric(lv, row.slots)
        if row.live:
            enabled.add_metric(lv, row.enabled)
        if row.rate_units is not None and row.rate_period is not None:
            rate_limit.add_metric(lv, row.rate_units)
            rate_period.add_metric(lv, row.rate_period)
            rate_used.add_metric(lv, row.rate_in_window or 0.0)
        in_use.add_metric(lv, row.in_use)
        leases.add_metric(lv, row.leases)
        waiters.add_metric(lv, row.waiters)
        t = row.totals
        units.add_metric(lv, t.units)
        rejected.add_metric(lv, t.rejected)
        acquired.add_metric(lv, t.acquired)
        released.add_metric(lv, t.released)
        expired.add_metric(lv, t.expired)
        revoked.add_metric(lv, t.revoked)
        timed_out.add_metric(lv, t.timed_out)
        wait.add_metric(lv, _cumulative(t.wait_buckets), t.wait_sum_s)
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


class Aggregates:
    """The series of one namespace, with limits grouped by ``metrics_group`` (one definition of
    which aggregate a name belongs to, in broker/keys.py).

    An aggregate's gauges are the sums over its members now. Its counters must never go down
    although members are deleted (a run's limits go when its executor shuts down), so it carries
    the last figures read of every member that has gone: counter = carried + sum over the members
    listed now. A member listed but unreadable this time counts with its last figures. The
    carried totals live in this object (one daemon process): a restart starts them at 0 again,
    which Prometheus treats as any counter reset (``rate``/``increase`` handle it). Increments a
    member made after the last read and before its deletion are not counted."""

    def __init__(self) -> None:
        self.last: dict[str, tuple[str, Totals]] = {}  # member -> (aggregate, figures last read)
        self.carried: dict[str, Totals] = {}  # aggregate -> figures of members that have gone

    def rows(
        self, stats: Sequence[LimitStats], complete: bool, per_member: int = 0
    ) -> list[Series]:
        """The series for `stats` (every limit listed now). `complete`: the listing succeeded, so
        a member not in it has gone (otherwise nothing is carried and nothing forgotten).
        `per_member` > 0: also series of their own for that many members of each aggregate,
        the most recently created first."""
        out: list[Series] = []
        groups: dict[str, Series] = {}
        members: dict[str, list[LimitStats]] = {}
        now: dict[str, tuple[str, Totals]] = {}
        for st in stats:
            group = metrics_group(st.name)
            if group is None:
                out.append(Series.of(st.name, st))
                continue
            members.setdefault(group, []).append(st)
            row = Series.of(group, st)
            prev = self.last.get(st.name)
            if st.snapshot is not None:
                now[st.name] = (group, row.totals)
                if prev is not None:  # a member whose counters went down was reset: keep them
                    lost = prev[1].lost_in(row.totals)
                    if lost != Totals():
                        self._carry(group, lost)
            elif prev is not None and not st.missing:
                now[st.name] = prev  # unreadable now: it counts with what it last showed
                row = replace(row, totals=prev[1])
            groups[group] = groups[group].join(row) if group in groups else row
        if complete:
            for name, (group, totals) in self.last.items():
                if name not in now:
                    self._carry(group, totals)
            self.last = now
        else:
            self.last.update(now)
        for group, carried in self.carried.items():
            base = Series(group, carried, slots=0.0)  # no live member: 0 slots, 0 in use
            groups[group] = base.join(groups[group]) if group in groups else base
        for group in sorted(groups):
            out.append(groups[group])
            if per_member > 0:
                chosen = sorted(members.get(group, []), key=_created, reverse=True)[:per_member]
                out.extend(Series.of(st.name, st) for st in chosen)
        return out

    def _carry(self, group: str, totals: Totals) -> None:
        self.carried[group] = self.carried.get(group, Totals()).plus(totals)


def _created(st: LimitStats) -> int:
    return st.snapshot.config.created_ms if st.snapshot is not None else 0


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
        self._cached: tuple[float, list[LimitStats], list[Series], bool] | None = None
        # >0: also series for up to this many keys of each template and runs of each tag
        self.per_key = per_key
        self.aggregates = Aggregates()

    def describe(self) -> Iterator[Metric]:
        yield from _families(self.broker.namespace, (), False)

    def collect(self) -> Iterator[Metric]:
        rows, up = self.series()
        yield from _families(self.broker.namespace, rows, up)

    def read(self) -> tuple[list[LimitStats], bool]:
        """(every limit, Redis answered): from Redis, or from a read younger than the cache."""
        c = self._fresh()
        return c[1], c[3]

    def series(self) -> tuple[list[Series], bool]:
        """(the series to export, Redis answered), from the same (cached) read."""
        c = self._fresh()
        return c[2], c[3]

    def _fresh(self) -> tuple[float, list[LimitStats], list[Series], bool]:
        with self._lock:
            c = self._cached
            if c is None or time.monotonic() - c[0] >= self.cache_seconds:
                c = (time.monotonic(), *self._read())
                self._cached = c
            return c

    def _read(self) -> tuple[list[LimitStats], list[Series], bool]:
        self.reads += 1
        stats: list[LimitStats] = []
        keys: list[LimitStats] = []  # keys made from templates (opt-in)
        up = complete = False
        try:
            up = self.broker.ping()
            if up:
                stats = read_limits(self.broker, self.sample)
                complete = True
                if self.per_key > 0:  # opt-in: keys made from templates get series of their own
                    for st in stats:
                        if st.snapshot is not None and st.snapshot.config.is_template:
                            for key, _ in self.broker.template_keys(st.name, self.per_key):
                                keys.append(read_limit(self.broker, key, self.sample))
        except BrokerUnavailable:
            up = False
        except SlotkeeperError as exc:  # e.g. the limits set itself is of the wrong type
            log.warning("cannot list limits: %s", exc)
        if not up:
            stats, keys, complete = [], [], False
        rows = self.aggregates.rows(stats, complete, self.per_key)
        rows.extend(Series.of(st.name, st) for st in keys)
        stats = [*stats, *keys]
        if self.problems is not None and up:
            for st in stats:
                self.problems.report(st.name, st.messages())
        return stats, rows, up
