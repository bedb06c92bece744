"""Rate and template workloads (R1..R3, T1): numbers to print, never to assert.

R1 accuracy: P processes hammer one ``--rate N/s`` limit for D s: units granted, the most grants
   any 1 s window of the workers' own stamps holds, and proven violations (N+1 grants whose
   [asked, granted] intervals all fit in less than one window).
R2 spread: waiters on a ``--rate N/s --spread`` limit: how late after its due time each grant was
   made (server clock, from the window's grant times) and Redis commands per grant (no polling).
R3 cost: uncontended acquire+release cycles/s on slots+rate vs slots only (same run).
T1 templates: K distinct keys of one template, each acquired once: first-use acquire p50 vs a plain
   acquire p50; Redis memory before, after, and after the keys' idle-ttl (keys reaped).
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time
import uuid
from typing import Any

import redis

from slotkeeper.bench.stats import script_calls, summary_ms
from slotkeeper.limiter import Limiter

RATE_WORKLOADS = ("R1", "R2", "R3", "T1")
SPAWN = mp.get_context("spawn")


def _hammer(url: str, ns: str, name: str, seconds: float, start_at: float, q: Any) -> None:
    lim = Limiter(url, ns)
    while time.time() < start_at:
        time.sleep(0.001)
    end = time.monotonic() + seconds
    stamps: list[tuple[int, int]] = []
    while True:
        left = end - time.monotonic()
        if left <= 0:
            break
        t0 = time.monotonic_ns()
        try:
            lim.rate_limit(name, timeout=left)
        except Exception:
            break
        stamps.append((t0, time.monotonic_ns()))
    q.put(stamps)


def r1_accuracy(url: str, ns: str, procs: int, rate: int, seconds: float) -> dict[str, Any]:
    lim = Limiter(url, ns)
    lim.broker.create_limit("r1", rate=f"{rate}/s")
    q = SPAWN.Queue()
    start_at = time.time() + 2.0  # every worker starts at once, after its imports
    ps = [
        SPAWN.Process(target=_hammer, args=(url, ns, "r1", seconds, start_at, q))
        for _ in range(procs)
    ]
    for p in ps:
        p.start()
    stamps: list[tuple[int, int]] = []
    for _ in ps:
        stamps += q.get(timeout=seconds + 120)
    for p in ps:
        p.join(30)
    stamps.sort(key=lambda g: g[1])
    period = 1_000_000_000
    violations = sum(
        1
        for i in range(len(stamps) - rate)
        if max(g[1] for g in stamps[i : i + rate + 1]) - min(g[0] for g in stamps[i : i + rate + 1])
        < period
    )
    most, j = 0, 0
    for i in range(len(stamps)):  # most grants seen (t1) within any 1 s window
        while stamps[i][1] - stamps[j][1] >= period:
            j += 1
        most = max(most, i - j + 1)
    return {
        "procs": procs,
        "rate_per_s": rate,
        "seconds": seconds,
        "granted": len(stamps),
        "expected_max": rate * (int(seconds) + 1),
        "most_in_1s_window_client_stamps": most,
        "proven_violations": violations,
        "broker_units": lim.broker.snapshot("r1").counters.units,
    }


def _commands(client: redis.Redis) -> tuple[int, int]:
    """(commands sent by clients: script calls and plain commands, all commands incl. those run
    inside scripts)."""
    scripts, _ = script_calls(client.info("commandstats"))
    return scripts, int(client.info("stats")["total_commands_processed"])


def _spread_waiter(url: str, ns: str, name: str, n: int, q: Any) -> None:
    lim = Limiter(url, ns)
    for _ in range(n):
        lim.rate_limit(name)
    q.put(n)


def r2_spread(url: str, ns: str, rate: int, grants: int, waiters: int) -> dict[str, Any]:
    lim = Limiter(url, ns)
    b = lim.broker
    # N/s spread is one unit every 1000/N ms; N*60/min spread is the same spacing with a window
    # long enough to keep every grant time of the run for the analysis below
    b.create_limit("r2", rate=f"{rate * 60}/min", spread=True)
    client = redis.Redis.from_url(url)
    q = SPAWN.Queue()
    per = grants // waiters
    c0 = _commands(client)
    ps = [
        SPAWN.Process(target=_spread_waiter, args=(url, ns, "r2", per, q)) for _ in range(waiters)
    ]
    for p in ps:
        p.start()
    for _ in ps:
        q.get(timeout=grants / rate + 120)
    for p in ps:
        p.join(30)
    c1 = _commands(client)
    pairs: Any = client.zrange(b.keys.limit("r2")[3], 0, -1, withscores=True)
    times = sorted(float(pair[1]) for pair in pairs)
    interval = 1000.0 / rate
    # with waiters always queued, grant k is due one interval after grant k-1
    late = [max(0.0, t - (prev + interval)) for prev, t in zip(times, times[1:], strict=False)]
    client.close()
    return {
        "rate_per_s": rate,
        "grants": len(times),
        "waiters": waiters,
        "lateness_after_due_ms": {
            "p50": round(statistics.median(late), 3) if late else None,
            "p99": round(sorted(late)[int(0.99 * (len(late) - 1))], 3) if late else None,
            "max": round(max(late), 3) if late else None,
        },
        "script_calls_per_grant": round((c1[0] - c0[0]) / max(1, len(times)), 2),
        "redis_commands_per_grant": round((c1[1] - c0[1]) / max(1, len(times)), 2),
        "note": f"spread {rate * 60}/min: one unit every {interval:g} ms, as {rate}/s spread",
    }


def _cycles(lim: Limiter, name: str, n: int) -> float:
    for _ in range(50):
        lim.acquire(name).release()
    t0 = time.perf_counter()
    for _ in range(n):
        lim.acquire(name).release()
    return n / (time.perf_counter() - t0)


def r3_cost(url: str, ns: str, cycles: int, repeats: int) -> dict[str, Any]:
    lim = Limiter(url, ns)
    lim.broker.create_limit("slots", 1_000_000)
    lim.broker.create_limit("slots_rate", 1_000_000, rate="1000000000/s")
    a, b = [], []
    for _ in range(repeats):  # interleaved, so machine noise hits both alike
        a.append(_cycles(lim, "slots", cycles))
        b.append(_cycles(lim, "slots_rate", cycles))
    sa, sb = statistics.median(a), statistics.median(b)
    return {
        "cycles": cycles,
        "repeats": repeats,
        "slots_only_cycles_per_s": round(sa, 1),
        "slots_rate_cycles_per_s": round(sb, 1),
        "cost_ratio": round(sa / sb, 3),
    }


def t1_templates(url: str, ns: str, keys: int) -> dict[str, Any]:
    lim = Limiter(url, ns)
    b = lim.broker
    client = redis.Redis.from_url(url)
    b.create_limit("plain", 1_000_000)
    b.create_limit("t:*", 2, idle_ttl="1s")
    for _ in range(50):
        lim.acquire("plain").release()
    lim.acquire("t:warm").release()
    time.sleep(1.5)
    b.reap_idle("t:*")

    def memory() -> int:
        """Redis memory less the audit-event stream (capped, it grows with any traffic)."""
        events = client.memory_usage(b.keys.events) or 0
        return int(client.info("memory")["used_memory"]) - int(events)

    mem0 = memory()
    plain, first = [], []
    for i in range(keys):
        t0 = time.perf_counter_ns()
        lease = lim.acquire("plain")
        plain.append(time.perf_counter_ns() - t0)
        lease.release()
        t0 = time.perf_counter_ns()
        lease = lim.acquire(f"t:{i}")
        first.append(time.perf_counter_ns() - t0)
        lease.release()
    mem1 = memory()
    left_after_use = int(client.zcard(b.keys.template_keys("t:*")))  # the rest went lazily
    time.sleep(1.2)
    reaped = 0
    deadline = time.monotonic() + 60
    while client.zcard(b.keys.template_keys("t:*")) and time.monotonic() < deadline:
        reaped += b.reap_idle("t:*", 500)
    mem2 = memory()
    client.close()
    p_plain, p_first = summary_ms(plain), summary_ms(first)
    return {
        "keys": keys,
        "plain_acquire": p_plain,
        "first_use_acquire": p_first,
        "first_use_p50_ratio": round(p_first["p50_ms"] / p_plain["p50_ms"], 3),
        "memory_bytes": {
            "before": mem0,
            "after_use": mem1,
            "after_idle_ttl": mem2,
            "per_key_while_live": round((mem1 - mem0) / max(1, left_after_use), 1),
        },
        "reaped": reaped,  # by the daemon's pass after the idle-ttl
        "reaped_lazily": keys - left_after_use,  # by later acquires of the template's keys
        "left": int(client.zcard(b.keys.template_keys("t:*"))),
    }


def run_rates(url: str, workloads: tuple[str, ...], quick: bool) -> dict[str, Any]:
    run = uuid.uuid4().hex[:8]
    out: dict[str, Any] = {}
    if "R1" in workloads:
        out["R1"] = r1_accuracy(
            url, f"skbench-{run}-r1", 4 if quick else 8, 50, 3.0 if quick else 20.0
        )
    if "R2" in workloads:
        out["R2"] = r2_spread(url, f"skbench-{run}-r2", 100, 100 if quick else 1000, 4)
    if "R3" in workloads:
        out["R3"] = r3_cost(url, f"skbench-{run}-r3", 300 if quick else 3000, 1 if quick else 3)
    if "T1" in workloads:
        out["T1"] = t1_templates(url, f"skbench-{run}-t1", 500 if quick else 10_000)
    return out


def render_rates(res: dict[str, Any]) -> str:
    lines = ["", "rates and templates (R1-R3, T1)"]
    if "R1" in res:
        r = res["R1"]
        lines.append(
            f"  R1 accuracy: {r['procs']} procs x {r['seconds']:g} s at {r['rate_per_s']}/s: "
            f"{r['granted']} granted (at most {r['expected_max']}), most in any 1 s window "
            f"(client stamps) {r['most_in_1s_window_client_stamps']}, proven violations "
            f"{r['proven_violations']}"
        )
    if "R2" in res:
        r = res["R2"]
        lat = r["lateness_after_due_ms"]
        lines.append(
            f"  R2 spread {r['rate_per_s']}/s: grant after due p50 {lat['p50']} ms, p99 "
            f"{lat['p99']} ms, max {lat['max']} ms; {r['script_calls_per_grant']} script "
            f"calls ({r['redis_commands_per_grant']} Redis commands, counting those inside "
            "scripts) per grant"
        )
    if "R3" in res:
        r = res["R3"]
        lines.append(
            f"  R3 cost: slots only {r['slots_only_cycles_per_s']} cycles/s, slots+rate "
            f"{r['slots_rate_cycles_per_s']} cycles/s: ratio {r['cost_ratio']} (target <= 1.15)"
        )
    if "T1" in res:
        r = res["T1"]
        m = r["memory_bytes"]
        lines.append(
            f"  T1 templates: {r['keys']} keys, first-use acquire p50 "
            f"{r['first_use_acquire']['p50_ms']} ms vs plain "
            f"{r['plain_acquire']['p50_ms']} ms: ratio "
            f"{r['first_use_p50_ratio']} (target <= 1.5); memory {m['before']} -> "
            f"{m['after_use']} -> {m['after_idle_ttl']} B after idle-ttl "
            f"({r['reaped_lazily']} reaped lazily by later acquires, {r['reaped']} by a daemon "
            f"pass, {r['left']} left; memory without the capped event stream)"
        )
    return "\n".join(lines)
