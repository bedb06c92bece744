"""W5 scale: acquire latency and Redis memory as live leases grow, and the time to reclaim many
expired leases in bounded script calls.

Live leases are planted in bulk (pipelined calls of slotkeeper's own acquire script, each reply
checked to be a grant; for the reference, its own acquire script): they stand for holders in
other processes. The acquire latency is then measured through the public SDK on top of them.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from typing import Any

import redis

from slotkeeper.bench.impls import make_impl
from slotkeeper.bench.reference import ACQUIRE_LUA
from slotkeeper.bench.stats import is_script_call, summary_ms
from slotkeeper.broker import protocol as P
from slotkeeper.broker import records as R
from slotkeeper.broker.client import Broker
from slotkeeper.broker.keys import Keys
from slotkeeper.broker.scripts import source
from slotkeeper.naming import host_name, worker_name

LIMITS = 100
BIG = 1_000_000_000
PIPE = 1000


def _limit_names() -> list[str]:
    return [f"scale-{i:03d}" for i in range(LIMITS)]


class _Planter:
    """Plants live leases (pipelined) for slotkeeper or the reference."""

    def __init__(self, spec: str, url: str, ns: str) -> None:
        self.spec = spec
        self.client = redis.Redis.from_url(url)
        self.keys = Keys(ns)
        self.ns = ns
        self.meta = R.pack_meta(host_name(), os.getpid(), worker_name(), "")
        lua = source("acquire") if spec == "slotkeeper" else ACQUIRE_LUA
        self.script = self.client.register_script(lua)

    def plant(self, names: list[str], start: int, count: int, ttl_ms: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        bad = 0
        for i in range(start, start + count):
            name = names[i % len(names)]
            lid = f"{i:08x}{os.urandom(4).hex()}"
            if self.spec == "slotkeeper":
                op = P.acquire(
                    self.keys,
                    [name],
                    lid,
                    ttl_ms=ttl_ms,
                    default_ttl_ms=ttl_ms,
                    wait=False,
                    meta=self.meta,
                )  # the one definition of its arguments
                self.script(keys=list(op.keys), args=list(op.args), client=pipe)
            else:
                self.script(
                    keys=[f"skref:{{{self.ns}}}:{name}"], args=[lid, BIG, ttl_ms], client=pipe
                )
            if len(pipe) >= PIPE or i == start + count - 1:
                for reply in pipe.execute():
                    first = reply[0] if isinstance(reply, list) else reply
                    bad += int(first) != 1
        if bad:
            raise RuntimeError(f"W5: {bad} planted {self.spec} leases were not granted")

    def close(self) -> None:
        self.client.close()


def _used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


class _TimedBroker(Broker):
    """A Broker that times each reclaim script call (reclaim_all calls reclaim per batch)."""

    calls_ns: list[int]

    def reclaim(self, name: str | None, batch: int = 500) -> R.ReclaimResult:
        t0 = time.perf_counter_ns()
        try:
            return super().reclaim(name, batch)
        finally:
            self.calls_ns.append(time.perf_counter_ns() - t0)


def _acquire_p50(spec: str, url: str, ns: str, names: list[str], samples: int) -> dict[str, Any]:
    impl = make_impl(spec, url, ns)
    rnd = random.Random(7)
    holds = {n: impl.hold(n) for n in names}
    for n in names[:5]:
        with holds[n]:
            pass
    lat = []
    for _ in range(samples):
        cm = holds[names[rnd.randrange(len(names))]]
        t0 = time.perf_counter_ns()
        cm.__enter__()
        lat.append(time.perf_counter_ns() - t0)
        cm.__exit__(None, None, None)
    impl.close()
    return summary_ms(lat)


def _scale_levels(
    spec: str, url: str, ns: str, levels: list[int], samples: int, tick: Callable[[str], None]
) -> list[dict[str, Any]]:
    names = _limit_names()
    impl = make_impl(spec, url, ns)
    for n in names:
        impl.create(n, BIG)
    impl.close()
    planter = _Planter(spec, url, ns)
    _acquire_p50(spec, url, ns, names, 20)  # scripts loaded, hashes created
    base = _used_memory(planter.client)
    out = []
    live = 0
    for level in sorted(levels):
        planter.plant(names, live, level - live, 3_600_000)
        live = level
        mem = _used_memory(planter.client) - base
        row = {
            "live_leases": level,
            "memory_bytes": mem,
            "bytes_per_lease": round(mem / level, 1),
            "acquire": _acquire_p50(spec, url, ns, names, samples),
        }
        out.append(row)
        tick(f"W5 {spec} {level} leases")
    planter.close()
    return out


def _command(entry: dict[str, Any]) -> str:
    cmd = entry.get("command", b"")
    return cmd.decode("utf-8", "replace") if isinstance(cmd, bytes) else str(cmd)


def slowlog_max_us(client: redis.Redis, after_id: int) -> tuple[float, int]:
    """Longest script call (us) and how many the SLOWLOG has after entry ``after_id``."""
    entries = client.slowlog_get(100_000)
    durations = [
        int(e["duration"])
        for e in entries
        if int(e["id"]) > after_id and is_script_call(_command(e))
    ]
    return (max(durations) if durations else 0.0), len(durations)


def reclaim(url: str, ns: str, leases: int, private: bool, batch: int = 500) -> dict[str, Any]:
    """Plant ``leases`` short-lived leases over 100 limits, let them expire, then reclaim them
    with Broker.reclaim_all per limit (and once namespace-wide for records); time every call."""
    names = _limit_names()
    broker = _TimedBroker.from_url(url, ns)
    assert isinstance(broker, _TimedBroker)
    broker.calls_ns = []
    for n in names:
        broker.update_limit(n, slots=BIG, create=True)
    planter = _Planter("slotkeeper", url, ns)
    ttl_ms = 4000 + leases // 10  # longer than planting takes (~20k leases/s pipelined; slower
    # on a loaded machine: records that expire while planting are collected before the count)
    t0 = time.monotonic()
    planter.plant(names, 0, leases, ttl_ms)
    plant_s = time.monotonic() - t0
    client = planter.client
    planted = int(client.hlen(broker.keys.leases))
    time.sleep(max(0.0, ttl_ms / 1000 - plant_s) + 0.05)
    while any(
        int(client.zcount(broker.keys.limit(n)[1], f"({broker.server_time_ms()}", "+inf")) > 0
        for n in names
    ):
        time.sleep(0.05)
    threshold = None
    if private:
        threshold = client.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]
        client.config_set("slowlog-log-slower-than", 0)
    last = client.slowlog_get(1)
    after_id = int(last[0]["id"]) if last else -1
    t0 = time.perf_counter()
    expired = 0
    for n in names:
        expired += broker.reclaim_all(n, batch)
    broker.reclaim_all(None, batch)
    total_s = time.perf_counter() - t0
    slow_us, slow_n = slowlog_max_us(client, after_id)
    if private and threshold is not None:
        client.config_set("slowlog-log-slower-than", threshold)
    left_records = int(client.hlen(broker.keys.leases))
    left_holders = sum(int(client.zcard(broker.keys.limit(n)[1])) for n in names)
    counted = sum(broker.snapshot(n, max_items=0).counters.expired for n in names)
    calls = broker.calls_ns
    planter.close()
    broker.close()
    return {
        "leases": leases,
        "planted_records": planted,
        "plant_s": round(plant_s, 2),
        "reclaimed_holder_entries": expired,
        "expired_counted": counted,
        "left_records": left_records,
        "left_holder_entries": left_holders,
        "total_s": round(total_s, 3),
        "calls": len(calls),
        "longest_call_ms": round(max(calls) / 1e6, 3) if calls else 0.0,
        "call": summary_ms(calls),
        "slowlog_longest_evalsha_ms": round(slow_us / 1000, 3),
        "slowlog_entries": slow_n,
        "slowlog_threshold_us": 0 if private else "server's own",
    }


def w5_scale(
    spec: str, url: str, ns: str, levels: list[int], samples: int, tick: Callable[[str], None]
) -> dict[str, Any]:
    return {"levels": _scale_levels(spec, url, ns, levels, samples, tick)}
