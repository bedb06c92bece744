"""The workloads W1..W4 and the floor; W5 lives in :mod:`slotkeeper.bench.scale`.

Every multi-process workload spawns fresh interpreters (``spawn``): no inherited connections or
threads, the way separate programs meet on one Redis. Cross-process stamps use
``time.monotonic_ns()`` (CLOCK_MONOTONIC: one clock for every process of a Linux machine).
Stamps: *acquired* right after ``__enter__`` returned, *released* right before ``__exit__`` is
called, so a stamped interval lies inside the interval the broker considered the slot held; the
independent safety check is the largest overlap of all processes' intervals.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import random
import signal
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event
from typing import Any

import redis

from slotkeeper.bench.impls import make_impl
from slotkeeper.bench.scale import w5_scale
from slotkeeper.bench.stats import busy_time, jain, max_overlap, summary_ms

SPAWN = mp.get_context("spawn")
now_ns = time.monotonic_ns

__all__ = [
    "floor",
    "in_child",
    "w1_uncontended",
    "w2_contended",
    "w3_handoff",
    "w4_crash",
    "w5_scale",
]


def in_child(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run ``fn(*args)`` in a fresh spawned interpreter and return its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=SPAWN) as pool:
        return pool.submit(fn, *args).result()


# -- the floor -----------------------------------------------------------------------------------


def floor(url: str, n: int) -> dict[str, Any]:
    """Raw redis-py round trips: PING and EVALSHA of a script that only returns 1."""
    client = redis.Redis.from_url(url)
    noop = client.register_script("return 1")
    noop()
    out: dict[str, Any] = {}
    for what, call in (("ping", client.ping), ("evalsha", noop)):
        for _ in range(50):
            call()
        lat = []
        t_start = now_ns()
        for _ in range(n):
            t0 = now_ns()
            call()
            lat.append(now_ns() - t0)
        elapsed = (now_ns() - t_start) / 1e9
        out[what] = {"ops_per_s": round(n / elapsed, 1), **summary_ms(lat)}
    # an acquire/release cycle is two script round trips
    out["two_call_cycles_per_s"] = round(out["evalsha"]["ops_per_s"] / 2, 1)
    client.close()
    return out


def script_floor(url: str, ns: str, cycles: int) -> dict[str, Any]:
    """slotkeeper's own acquire and release scripts, built beforehand and sent through the
    transport with no SDK around them: the most cycles/s the scripts allow a client (W1's floor:
    what they cost in Redis, plus the round trips)."""
    from slotkeeper.broker import protocol as P
    from slotkeeper.broker.client import Broker

    b = Broker.from_url(url, ns)
    b.create_limit("floor", 1_000_000)
    run = b.transport._execute
    ops = [
        (
            P.acquire(b.keys, ["floor"], f"fl-{i}", channel="c"),
            P.release(b.keys, ["floor"], f"fl-{i}"),
        )
        for i in range(cycles + 200)
    ]
    for acq, rel in ops[:200]:  # warm up (and decide FCALL or EVALSHA)
        run(acq)
        run(rel)
    cpu_start = time.process_time()
    t_start = now_ns()
    for acq, rel in ops[200:]:
        run(acq)
        run(rel)
    elapsed = (now_ns() - t_start) / 1e9
    cpu = time.process_time() - cpu_start
    b.close()
    return {
        "cycles_per_s": round(cycles / elapsed, 1),
        "client_cpu_us_per_cycle": round(cpu / cycles * 1e6, 1),
    }


# -- W1 uncontended ------------------------------------------------------------------------------


def w1_uncontended(
    spec: str, url: str, ns: str, cycles: int, slots: int = 100, warmup: int = 200
) -> dict[str, Any]:
    """One process, a limit of ``slots``, ``cycles`` back-to-back acquire/release cycles."""
    impl = make_impl(spec, url, ns)
    name = "w1"
    impl.create(name, slots)
    cm = impl.hold(name)
    for _ in range(min(warmup, cycles)):  # warm up: connections, scripts, threads
        with cm:
            pass
    acq, rel, cyc = [], [], []
    cpu_start = time.process_time()  # every thread of this process: the client's whole cost
    t_start = now_ns()
    for _ in range(cycles):
        t0 = now_ns()
        cm.__enter__()
        t1 = now_ns()
        cm.__exit__(None, None, None)
        t2 = now_ns()
        acq.append(t1 - t0)
        rel.append(t2 - t1)
        cyc.append(t2 - t0)
    elapsed = (now_ns() - t_start) / 1e9
    cpu = time.process_time() - cpu_start
    impl.close()
    return {
        "cycles": cycles,
        "cycles_per_s": round(cycles / elapsed, 1),
        "client_cpu_us_per_cycle": round(cpu / cycles * 1e6, 1),
        "acquire": summary_ms(acq),
        "release": summary_ms(rel),
        "cycle": summary_ms(cyc),
    }


# -- W2 contended --------------------------------------------------------------------------------


def _w2_child(
    spec: str,
    url: str,
    ns: str,
    name: str,
    hold_s: float,
    duration_s: float,
    start_at: Any,
    out: Any,
) -> None:
    impl = make_impl(spec, url, ns)
    cm = impl.hold(name)
    with cm:  # warm up
        pass
    out.put(("ready", os.getpid(), None))
    while start_at.value == 0:
        time.sleep(0.001)
    start = int(start_at.value)
    end = start + int(duration_s * 1e9)
    while now_ns() < start:
        time.sleep(0.0005)
    stamps: list[tuple[int, int]] = []
    while now_ns() < end:
        cm.__enter__()
        a = now_ns()
        if hold_s > 0:
            time.sleep(hold_s)
        r = now_ns()
        cm.__exit__(None, None, None)
        stamps.append((a, r))
    out.put(("done", os.getpid(), stamps))
    impl.close()


def _collect(out: Any, children: list[Any], kind: str, timeout: float) -> list[Any]:
    """One ``kind`` message per child; fails early when a child died."""
    got: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(got) < len(children):
        try:
            k, _, payload = out.get(timeout=0.5)
        except queue.Empty:
            dead = [c.exitcode for c in children if c.exitcode not in (None, 0)]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"W2: a child failed (exit codes {dead}) or hung") from None
            continue
        if k == kind:
            got.append(payload)
    return got


def w2_contended(
    spec: str, url: str, ns: str, hold_ms: float, duration_s: float, procs: int = 4, slots: int = 2
) -> dict[str, Any]:
    """``procs`` processes loop acquire/hold/release on a limit of ``slots`` for ``duration_s``."""
    name = f"w2-{hold_ms:g}ms"
    impl = make_impl(spec, url, ns)
    impl.create(name, slots)
    start_at = SPAWN.Value("q", 0)
    out = SPAWN.Queue()
    children = [
        SPAWN.Process(
            target=_w2_child,
            daemon=True,
            args=(spec, url, ns, name, hold_ms / 1000.0, duration_s, start_at, out),
        )
        for _ in range(procs)
    ]
    for c in children:
        c.start()
    try:
        _collect(out, children, "ready", 120)
        start = now_ns() + 20_000_000
        start_at.value = start
        end = start + int(duration_s * 1e9)
        results = _collect(out, children, "done", duration_s + 120)
    finally:
        for c in children:
            c.join(10)
            if c.is_alive():
                c.kill()
    impl.close()
    intervals = [iv for st in results for iv in st]
    counts = [sum(1 for a, _ in st if a < end) for st in results]
    return {
        "processes": procs,
        "slots": slots,
        "hold_ms": hold_ms,
        "duration_s": duration_s,
        "cycles": sum(counts),
        "cycles_per_s": round(sum(counts) / duration_s, 1),
        "per_process": counts,
        "utilisation": round(busy_time(intervals, start, end) / (slots * (end - start)), 4),
        "jain": round(jain(counts), 4),
        "max_holders_seen": max_overlap(intervals),
    }


# -- W3 handoff ----------------------------------------------------------------------------------


def _w3_waiter(spec: str, url: str, ns: str, name: str, conn: Connection) -> None:
    impl = make_impl(spec, url, ns)
    cm = impl.hold(name)
    conn.send("ready")
    while True:
        msg = conn.recv()
        if msg == "stop":
            break
        conn.send("waiting")
        cm.__enter__()
        got = now_ns()
        cm.__exit__(None, None, None)
        conn.send(got)
    impl.close()


def w3_handoff(spec: str, url: str, ns: str, rounds: int, settle_s: float = 0.05) -> dict[str, Any]:
    """slots=1: this process holds; a waiter in another process queues and sits idle for
    ``settle_s`` (cold: its threads asleep); we release and time until the waiter holds (release
    stamp taken right before the release call)."""
    name = "w3"
    impl = make_impl(spec, url, ns)
    impl.create(name, 1)
    cm = impl.hold(name)
    with cm:  # warm up
        pass
    mine, theirs = SPAWN.Pipe()
    child = SPAWN.Process(target=_w3_waiter, args=(spec, url, ns, name, theirs), daemon=True)
    child.start()
    lat: list[int] = []
    try:
        if not mine.poll(120):
            raise RuntimeError("W3 waiter process did not start")
        mine.recv()
        for _ in range(rounds):
            cm.__enter__()
            mine.send("go")
            mine.recv()  # the waiter is about to call acquire
            time.sleep(settle_s)  # ... has joined the queue by now, and gone idle
            t0 = now_ns()
            cm.__exit__(None, None, None)
            if not mine.poll(60):
                raise RuntimeError("W3 waiter was not granted within 60 s")
            lat.append(int(mine.recv()) - t0)
        mine.send("stop")
    finally:
        child.join(10)
        if child.is_alive():
            child.kill()
        impl.close()
    return {"rounds": rounds, "idle_ms": settle_s * 1000, **summary_ms(lat)}


# -- W4 crash ------------------------------------------------------------------------------------


def _w4_holder(spec: str, url: str, ns: str, name: str, ttl: float, conn: Connection) -> None:
    impl = make_impl(spec, url, ns)
    impl.hold(name, ttl).__enter__()
    conn.send("held")
    time.sleep(3600)  # until SIGKILLed


def _w4_waiter(
    spec: str, url: str, ns: str, name: str, ttl: float, go: Event, conn: Connection
) -> None:
    impl = make_impl(spec, url, ns)
    cm = impl.hold(name, ttl)
    go.wait()
    cm.__enter__()
    conn.send(now_ns())
    cm.__exit__(None, None, None)
    impl.close()


def w4_crash(spec: str, url: str, ns: str, ttl: float, run: int) -> dict[str, Any]:
    """A holder (lease ttl ``ttl``) is SIGKILLed while another process waits: how long until the
    waiter holds, against the TTL the dead lease had left (read from Redis just before the kill)."""
    name = f"w4-{run}"
    impl = make_impl(spec, url, ns)
    impl.create(name, 1)
    h_mine, h_theirs = SPAWN.Pipe()
    w_mine, w_theirs = SPAWN.Pipe()
    go = SPAWN.Event()
    holder = SPAWN.Process(
        target=_w4_holder, args=(spec, url, ns, name, ttl, h_theirs), daemon=True
    )
    waiter = SPAWN.Process(
        target=_w4_waiter, args=(spec, url, ns, name, ttl, go, w_theirs), daemon=True
    )
    holder.start()
    waiter.start()
    try:
        if not h_mine.poll(120):
            raise RuntimeError("W4 holder did not acquire")
        h_mine.recv()
        go.set()
        # kill at a random point of the renewal cycle (seeded: reproducible)
        time.sleep(random.Random(run).uniform(0.3, 0.3 + ttl / 2))
        remaining = impl.remaining_ms(name)
        t_kill = now_ns()
        assert holder.pid is not None
        os.kill(holder.pid, signal.SIGKILL)
        if not w_mine.poll(ttl + 60):
            raise RuntimeError("W4 waiter was never granted the dead holder's slot")
        elapsed_ms = (int(w_mine.recv()) - t_kill) / 1e6
    finally:
        for p in (holder, waiter):
            p.join(5)
            if p.is_alive():
                p.kill()
        impl.close()
    rem = float(remaining) if remaining is not None else float("nan")
    return {
        "ttl_s": ttl,
        "remaining_ttl_ms": rem,
        "kill_to_grant_ms": round(elapsed_ms, 2),
        "beyond_remaining_ttl_ms": round(elapsed_ms - rem, 2),
    }
