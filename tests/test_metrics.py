"""Metrics scraped over HTTP from a real daemon, parsed with prometheus_client's parser, and
compared with the true state in Redis (and with what the test itself did)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from slotkeeper.broker.client import Broker
from slotkeeper.broker.collector import SlotkeeperCollector, wait_histogram
from slotkeeper.broker.errors import LimitNotFound
from slotkeeper.broker.keys import WAIT_BUCKETS_MS
from slotkeeper.broker.readmodel import read_limit, wait_quantile
from slotkeeper.broker.records import GRANTED, QUEUED, Counters
from slotkeeper.limiter import Limiter
from tests.support.redisproc import RedisProc
from tests.test_daemon import DaemonProc, daemons, metric, wait_for

__all__ = ["daemons"]  # the fixture, re-exported for pytest

LIMIT_METRICS = (
    "slotkeeper_limit_slots",
    "slotkeeper_limit_slots_in_use",
    "slotkeeper_limit_leases",
    "slotkeeper_limit_waiters",
    "slotkeeper_limit_enabled",
    "slotkeeper_limit_problems",
)
COUNTERS = (
    "slotkeeper_acquired_total",
    "slotkeeper_released_total",
    "slotkeeper_expired_total",
    "slotkeeper_revoked_total",
    "slotkeeper_timed_out_total",
)


def test_metrics_match_true_state(
    redis_server: RedisProc, namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    lim = Limiter(redis_server.url, namespace, ttl=5)
    b.create_limit("gpu", 4, ttl=30, description="gpus")
    b.create_limit("off", 2, enabled=False)
    b.create_limit("one", 1)
    # gpu: two live leases using 3 slots; one released; one revoked
    held = [lim.acquire("gpu", occupy=2), lim.acquire("gpu")]
    lim.acquire("gpu").release()
    victim = lim.acquire("gpu")
    assert b.revoke(victim.id)
    # off (disabled): admits beyond its slots, still counted
    off = [lim.acquire("off") for _ in range(3)]
    # one: a holder, two queued tickets, one ticket cancelled as timed out
    b.acquire(["one"], "h1", ttl_ms=60_000, wait=False)
    for t in ("w1", "w2", "w3"):
        assert b.acquire(["one"], t, ttl_ms=60_000, wait=True).status == QUEUED
    b.cancel(["one"], "w3", timed_out=True)

    d = daemons(redis_server.url, namespace, "--interval", "0.2")
    s = d.scrape()
    ns = namespace

    def m(name: str, limit: str) -> float | None:
        return metric(s, name, namespace=ns, limit=limit)

    # what the test did
    assert (
        m("slotkeeper_limit_slots", "gpu"),
        m("slotkeeper_limit_slots_in_use", "gpu"),
        m("slotkeeper_limit_leases", "gpu"),
    ) == (4, 3, 2)
    assert (
        m("slotkeeper_acquired_total", "gpu"),
        m("slotkeeper_released_total", "gpu"),
        m("slotkeeper_revoked_total", "gpu"),
    ) == (4, 1, 1)
    assert m("slotkeeper_limit_enabled", "off") == 0 and m("slotkeeper_limit_enabled", "gpu") == 1
    assert (
        m("slotkeeper_limit_slots_in_use", "off") == 3 and m("slotkeeper_limit_leases", "off") == 3
    )
    assert m("slotkeeper_limit_waiters", "one") == 2
    assert m("slotkeeper_timed_out_total", "one") == 1
    assert m("slotkeeper_limit_problems", "gpu") == 0
    assert metric(s, "slotkeeper_redis_up", namespace=ns) == 1
    # and the true state, limit by limit
    for name in ("gpu", "off", "one"):
        snap = b.snapshot(name)
        c = snap.counters
        assert m("slotkeeper_limit_slots", name) == snap.config.slots
        assert m("slotkeeper_limit_slots_in_use", name) == snap.used
        assert m("slotkeeper_limit_leases", name) == len(snap.holders)
        assert m("slotkeeper_limit_waiters", name) == snap.n_waiters
        assert (
            m("slotkeeper_acquired_total", name),
            m("slotkeeper_released_total", name),
            m("slotkeeper_expired_total", name),
            m("slotkeeper_revoked_total", name),
            m("slotkeeper_timed_out_total", name),
        ) == (c.acquired, c.released, c.expired, c.revoked, c.timed_out)
        assert m("slotkeeper_wait_seconds_count", name) == c.acquired
        assert m("slotkeeper_wait_seconds_sum", name) == pytest.approx(c.wait_sum_s)
    for x in (*held, *off):
        x.release()


def test_wait_histogram_is_cumulative_and_places_waits(
    redis_server: RedisProc, namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    lim = Limiter(redis_server.url, namespace, ttl=5)
    b.create_limit("q", 1)
    first = lim.acquire("q")  # waits ~0
    got: list[float] = []

    def waiter() -> None:
        t = time.monotonic()
        lease = lim.acquire("q")
        got.append(time.monotonic() - t)
        lease.release()

    th = threading.Thread(target=waiter)
    th.start()
    wait_for(lambda: b.snapshot("q").n_waiters == 1, what="queued")
    time.sleep(0.6)  # the waiter waits at least this long (server-side wait >= 0.5 s)
    first.release()
    th.join(30)
    assert got and got[0] >= 0.5
    d = daemons(redis_server.url, namespace)
    s = d.scrape()
    bucket = {
        le: metric(s, "slotkeeper_wait_seconds_bucket", namespace=namespace, limit="q", le=le)
        for le in [repr(x / 1000) for x in WAIT_BUCKETS_MS] + ["+Inf"]
    }
    values = list(bucket.values())
    assert all(v is not None for v in values)
    assert values == sorted(values)  # cumulative
    assert bucket["+Inf"] == 2
    assert bucket["0.25"] == 1  # the long wait is not in a bucket below 0.5 s
    assert metric(s, "slotkeeper_wait_seconds_sum", namespace=namespace, limit="q") >= 0.5


def test_problems_and_unreadable_limits_do_not_break_the_scrape(
    redis_server: RedisProc, namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    r = redis_server.client()
    b.create_limit("fine", 3)
    b.create_limit("badslots", 1)
    r.hset(b.keys.limit("badslots")[0], "slots", "many")
    b.create_limit("badcounter", 1)
    r.hset(b.keys.limit("badcounter")[0], "c_acquired", "x")
    b.create_limit("wrongtype", 1)
    r.set(b.keys.limit("wrongtype")[2], "not a zset")
    d = daemons(redis_server.url, namespace, "--interval", "0.2")
    s = d.scrape()

    def problems(lim: str) -> float | None:
        return metric(s, "slotkeeper_limit_problems", namespace=namespace, limit=lim)

    assert problems("fine") == 0
    assert problems("badslots") == 1 and problems("badcounter") == 1
    assert problems("wrongtype") == 1
    assert metric(s, "slotkeeper_limit_slots", namespace=namespace, limit="fine") == 3
    # an unreadable limit exports only its problem count
    assert metric(s, "slotkeeper_limit_slots", namespace=namespace, limit="wrongtype") is None
    assert d.stop() == 0


def test_leases_counted_beyond_the_sample(redis_server: RedisProc, namespace: str) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("many", 1000)
    for i in range(20):
        b.acquire(["many"], f"a{i}", ttl_ms=60_000, wait=False)
    for i in range(5):
        b.acquire(["many"], f"b{i}", occupy=3, ttl_ms=60_000, wait=False)
    for sample in (1, 7, 1000):
        st = read_limit(b, "many", sample=sample)
        assert st.snapshot is not None
        assert (st.leases, st.snapshot.used) == (25, 35)


def test_collector_describe_and_registry(redis_server: RedisProc, namespace: str) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("x", 2)
    col = SlotkeeperCollector(b)
    names = {f.name for f in col.describe()}
    for n in (*LIMIT_METRICS, "slotkeeper_wait_seconds", "slotkeeper_redis_up"):
        assert n in names
    for n in COUNTERS:  # counters are described without the _total suffix
        assert n.removesuffix("_total") in names
    reg = CollectorRegistry()
    reg.register(col)
    from prometheus_client import generate_latest

    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(reg).decode())}
    assert fams["slotkeeper_acquired"].type == "counter"
    assert fams["slotkeeper_wait_seconds"].type == "histogram"
    assert fams["slotkeeper_limit_slots"].type == "gauge"


def test_wait_quantile_and_histogram_helpers() -> None:
    n = len(WAIT_BUCKETS_MS) + 1
    empty = Counters(wait_buckets=(0,) * n)
    assert wait_quantile(empty, 0.95) is None
    # 100 waits: 90 in (0, 1 ms], 10 in (100, 250] ms
    buckets = [0] * n
    buckets[0], buckets[6] = 90, 10
    c = Counters(wait_buckets=tuple(buckets))
    assert wait_quantile(c, 0.5) == pytest.approx(0.001 * 50 / 90)
    p95 = wait_quantile(c, 0.95)
    assert p95 is not None and 0.1 < p95 <= 0.25
    h = wait_histogram(c)
    assert h[0] == ("0.001", 90.0) and h[-1] == ("+Inf", 100.0)
    assert [v for _, v in h] == sorted(v for _, v in h)


def test_two_daemons_export_the_same_figures(
    redis_server: RedisProc, namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    """Every daemon exports the same cluster-wide figures."""
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("shared", 2)
    for i in range(2):
        assert b.acquire(["shared"], f"s{i}", ttl_ms=60_000, wait=False).status == GRANTED
    d1 = daemons(redis_server.url, namespace)
    d2 = daemons(redis_server.url, namespace)
    s1, s2 = d1.scrape(), d2.scrape()
    for name in (*LIMIT_METRICS, *COUNTERS):
        v1 = metric(s1, name, namespace=namespace, limit="shared")
        assert v1 is not None and v1 == metric(s2, name, namespace=namespace, limit="shared")


def test_run_scoped_limits_aggregate_per_tag_across_runs(
    redis_server: RedisProc, namespace: str, daemons: Callable[..., DaemonProc]
) -> None:
    """Two executor runs one after the other: one series per tag (``run-*:TAG``), whatever the
    number of runs; gauges and counters equal the sums read from Redis; counters never go down
    when a run's limits are deleted."""
    from concurrent.futures import ThreadPoolExecutor

    from slotkeeper import ThrottledExecutor, tagged

    b = Broker.from_url(redis_server.url, namespace)
    lim = Limiter(redis_server.url, namespace, ttl=5)
    b.create_limit("plain", 1)  # a limit of its own: a series of its own, as before
    d = daemons(redis_server.url, namespace, "--interval", "0.2", "--scrape-cache", "0")
    ns = namespace
    io, cpu = "run-*:io", "run-*:cpu"
    release = threading.Event()

    @tagged("io")
    def io_task() -> None:
        release.wait(30)

    @tagged("cpu")
    def cpu_task() -> None:
        pass

    def run_labels(s: dict[tuple[str, tuple[tuple[str, str], ...]], float]) -> set[str]:
        return {dict(k[1]).get("limit", "") for k in s} - {"", "plain"}

    totals: list[dict[str, float]] = []
    keys_after: list[set[tuple[str, tuple[tuple[str, str], ...]]]] = []
    for run in range(2):
        release.clear()
        ex = ThrottledExecutor(ThreadPoolExecutor(4), throttle={"io": 1, "cpu": 2}, limiter=lim)
        name = ex.limits["io"]
        assert name.startswith("run-") and name != io
        for _ in range(3):
            ex.submit(cpu_task).result(10)
        first, second = ex.submit(io_task), ex.submit(io_task)  # one holds io, one waits
        wait_for(lambda n=name: b.snapshot(n).used == 1 and b.snapshot(n).n_waiters == 1)
        s = d.scrape()
        assert run_labels(s) == {io, cpu}  # never a series of one run
        snap = b.snapshot(name)
        carried = totals[-1] if totals else {}
        # gauges: the live run's figures in Redis (the earlier run is gone)
        assert metric(s, "slotkeeper_limit_slots", namespace=ns, limit=io) == snap.config.slots
        assert metric(s, "slotkeeper_limit_slots_in_use", namespace=ns, limit=io) == snap.used
        assert metric(s, "slotkeeper_limit_leases", namespace=ns, limit=io) == 1
        assert metric(s, "slotkeeper_limit_waiters", namespace=ns, limit=io) == snap.n_waiters
        # counters: the earlier runs' totals plus this run's, as Redis has them
        cpu_snap = b.snapshot(ex.limits["cpu"])
        assert metric(s, "slotkeeper_acquired_total", namespace=ns, limit=cpu) == (
            carried.get("cpu_acquired", 0) + cpu_snap.counters.acquired
        )
        assert metric(s, "slotkeeper_acquired_total", namespace=ns, limit=io) == (
            carried.get("io_acquired", 0) + snap.counters.acquired
        )
        release.set()
        first.result(10)
        second.result(10)
        s = d.scrape()  # the run's final figures, seen before its limits go
        final = {
            "io_acquired": metric(s, "slotkeeper_acquired_total", namespace=ns, limit=io) or 0,
            "io_released": metric(s, "slotkeeper_released_total", namespace=ns, limit=io) or 0,
            "cpu_acquired": metric(s, "slotkeeper_acquired_total", namespace=ns, limit=cpu) or 0,
        }
        assert final == {"io_acquired": 2.0 * (run + 1), "io_released": 2.0 * (run + 1),
                         "cpu_acquired": 3.0 * (run + 1)}
        ex.shutdown()
        with pytest.raises(LimitNotFound):
            b.snapshot(name)  # the run's limits are deleted
        s = d.scrape()
        after = {
            "io_acquired": metric(s, "slotkeeper_acquired_total", namespace=ns, limit=io) or 0,
            "io_released": metric(s, "slotkeeper_released_total", namespace=ns, limit=io) or 0,
            "cpu_acquired": metric(s, "slotkeeper_acquired_total", namespace=ns, limit=cpu) or 0,
        }
        assert after == final  # counters do not go down when the run's limits are deleted
        assert metric(s, "slotkeeper_limit_slots_in_use", namespace=ns, limit=io) == 0
        assert metric(s, "slotkeeper_limit_slots", namespace=ns, limit=io) == 0  # no live run
        assert metric(s, "slotkeeper_limit_enabled", namespace=ns, limit=io) is None
        bucket = ("slotkeeper_wait_seconds_count", (("limit", io), ("namespace", ns)))
        assert s[bucket] == 2.0 * (run + 1)
        totals.append(final)
        keys_after.append({k for k in s if dict(k[1]).get("limit")})
    assert keys_after[0] == keys_after[1]  # the series do not grow with the number of runs


def test_concurrent_runs_sum_and_per_key_series_are_opt_in(
    redis_server: RedisProc, namespace: str
) -> None:
    from prometheus_client import generate_latest

    from slotkeeper.throttle import ThrottlePlan

    b = Broker.from_url(redis_server.url, namespace)
    lim = Limiter(redis_server.url, namespace, ttl=5)
    plans = [ThrottlePlan({"io": n}, limiter=lim) for n in (2, 3)]
    for p in plans:
        p.setup()
        time.sleep(0.01)  # created in different milliseconds: "most recent" is the second
    names = [p.limits["io"] for p in plans]
    held = [lim.acquire(names[0]), lim.acquire(names[1], occupy=2)]
    lim.acquire(names[1]).release()

    def scrape(per_key: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        reg = CollectorRegistry()
        reg.register(SlotkeeperCollector(b, cache_seconds=0, per_key=per_key))
        return {
            (smp.name, tuple(sorted(smp.labels.items()))): smp.value
            for fam in text_string_to_metric_families(generate_latest(reg).decode())
            for smp in fam.samples
        }

    s = scrape(0)
    ns, agg = namespace, "run-*:io"
    assert {dict(k[1]).get("limit") for k in s} - {None} == {agg}
    assert metric(s, "slotkeeper_limit_slots", namespace=ns, limit=agg) == 5  # 2 + 3
    assert metric(s, "slotkeeper_limit_slots_in_use", namespace=ns, limit=agg) == 3  # 1 + 2
    assert metric(s, "slotkeeper_limit_leases", namespace=ns, limit=agg) == 2
    assert metric(s, "slotkeeper_acquired_total", namespace=ns, limit=agg) == 3
    assert metric(s, "slotkeeper_released_total", namespace=ns, limit=agg) == 1
    s = scrape(1)  # opt-in: also the most recently created run's own series
    labels = {dict(k[1]).get("limit") for k in s} - {None}
    assert labels == {agg, names[1]}
    assert metric(s, "slotkeeper_limit_slots_in_use", namespace=ns, limit=names[1]) == 2
    for lease in held:
        lease.release()
    for p in plans:
        p.cleanup()
