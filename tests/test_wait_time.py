"""The wait-time sum is kept in microseconds from Redis' clock, so sub-millisecond waits count
(the mean wait, sum / count, is right), and sums written in whole ms by earlier versions still
count; the daemon's registry also exports its own process_*/python_* metrics."""

from __future__ import annotations

import time

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from slotkeeper.broker.client import Broker
from slotkeeper.broker.collector import SlotkeeperCollector
from slotkeeper.broker.daemon import Daemon
from slotkeeper.broker.records import GRANTED, QUEUED
from tests.support.redisproc import RedisProc

GRANTS = 20


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    text = generate_latest(registry).decode()
    return {
        s.name + str(sorted(s.labels.items())): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_wait_sum_counts_sub_millisecond_waits(redis_server: RedisProc, namespace: str) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("x", 1)
    assert b.acquire(["x"], "h0", ttl_ms=30_000).status == GRANTED
    observed = 0.0  # client-side bound of every wait: queue call sent .. release call returned
    for i in range(GRANTS):
        t0 = time.monotonic()
        assert b.acquire(["x"], f"h{i + 1}", ttl_ms=30_000).status == QUEUED
        assert b.release(["x"], f"h{i}")  # grants h{i+1} inside the same script
        observed += time.monotonic() - t0
    raw = redis_server.client().hgetall(b.keys.limit("x")[0])
    wait_us = int(raw[b"w_sum_us"])
    assert b"w_sum" not in raw  # no longer written
    c = b.snapshot("x").counters
    assert c.wait_sum_s == wait_us / 1e6
    # every wait lies inside its client-side interval: 0 < sum <= observed (Redis' clock vs the
    # client's; a sub-ms wait used to count 0 and most of these waits are sub-ms here)
    assert 0 < c.wait_sum_s <= observed + 0.001 * GRANTS
    assert sum(c.wait_buckets) == GRANTS + 1
    reg = CollectorRegistry()
    reg.register(SlotkeeperCollector(b))
    labels = str(sorted({"namespace": namespace, "limit": "x"}.items()))
    assert scrape(reg)["slotkeeper_wait_seconds_sum" + labels] == c.wait_sum_s
    b.release(["x"], f"h{GRANTS}")


def test_wait_sum_written_in_ms_by_earlier_versions_still_counts(
    redis_server: RedisProc, namespace: str
) -> None:
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("x", 1)
    redis_server.client().hset(b.keys.limit("x")[0], mapping={"w_sum": 7, "w_sum_us": 2500})
    assert b.snapshot("x").counters.wait_sum_s == 0.007 + 0.0025


def test_daemon_exports_its_process_and_python_metrics(
    redis_server: RedisProc, namespace: str
) -> None:
    d = Daemon(Broker.from_url(redis_server.url, namespace))
    names = {f.name for f in text_string_to_metric_families(generate_latest(d.registry()).decode())}
    assert {
        "process_resident_memory_bytes",
        "process_cpu_seconds",
        "process_open_fds",
        "python_info",
        "python_gc_collections",
    } <= names
