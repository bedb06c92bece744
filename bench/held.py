"""W5 through the SDK: one process holds many leases itself (renewed by its own heartbeat thread)
and acquires on top of them. Measures the acquire latency at each level and the Redis CPU its
heartbeats cost per held lease per second (INFO commandstats over a quiet window), and the longest
heartbeat script call (SLOWLOG, on a private Redis), which batching keeps short."""

from __future__ import annotations

import time
from typing import Any

import redis

from slotkeeper.bench.scale import BIG, slowlog_max_us
from slotkeeper.bench.stats import script_calls, summary_ms
from slotkeeper.lease import Lease

HELD_TTL = 6.0  # s: a heartbeat every 2 s, so the window below sees a few
WINDOW = 4.5  # s of quiet in which only heartbeats run


def _evalsha_stats(client: redis.Redis) -> tuple[int, int]:
    return script_calls(client.info("commandstats"))


def held_by_one(
    url: str, ns: str, levels: list[int], samples: int, private: bool
) -> dict[str, Any]:
    """Run in a fresh process: for each level, hold that many leases through the SDK, then time
    ``samples`` acquire/release cycles on another limit and watch the heartbeats for WINDOW s."""
    from slotkeeper import Limiter

    lim = Limiter(url, ns, ttl=HELD_TTL)
    lim.set("held", slots=BIG, create=True)
    lim.set("probe", slots=BIG, create=True)
    client = redis.Redis.from_url(url)
    held: list[Lease] = []
    rows: list[dict[str, Any]] = []
    for level in sorted(levels):
        while len(held) < level:
            held.append(lim.acquire("held"))
        for _ in range(20):
            lim.acquire("probe").release()
        lat = []
        for _ in range(samples):
            t0 = time.perf_counter_ns()
            lease = lim.acquire("probe")
            lat.append(time.perf_counter_ns() - t0)
            lease.release()
        threshold = None
        if private:
            threshold = client.config_get("slowlog-log-slower-than")["slowlog-log-slower-than"]
            client.config_set("slowlog-log-slower-than", 0)
        last = client.slowlog_get(1)
        after_id = int(last[0]["id"]) if last else -1
        calls0, usec0 = _evalsha_stats(client)
        time.sleep(WINDOW)
        calls1, usec1 = _evalsha_stats(client)
        slow_us, _ = slowlog_max_us(client, after_id)
        if private and threshold is not None:
            client.config_set("slowlog-log-slower-than", threshold)
        usec, calls = usec1 - usec0, calls1 - calls0
        rows.append(
            {
                "held_leases": level,
                "acquire": summary_ms(lat),
                "heartbeat_calls": calls,
                "heartbeat_redis_us_per_lease_s": round(usec / (level * WINDOW), 3),
                "heartbeat_us_per_call": round(usec / calls, 1) if calls else 0.0,
                "longest_heartbeat_ms": round(slow_us / 1000, 3) if private else None,
                "lost": sum(1 for x in held if x.lost),
            }
        )
    for x in held:
        x.release()
    lim.close()
    client.close()
    return {"ttl_s": HELD_TTL, "window_s": WINDOW, "levels": rows}
