"""Core semantics across real processes: safety under contention (independent stamp check), crashes
(SIGKILL, SIGSTOP), timeouts racing grants, fork and spawn."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from slotkeeper import Limiter, configure, limit
from tests.support.redisproc import RedisProc
from tests.support.stamps import max_concurrency, per_name


def spawn(mode: str, args: dict[str, Any]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "tests.support.workers", mode, json.dumps(args)])


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def wait_for(pred: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError("condition not reached")


def run_contenders(redis_server: RedisProc, ns: str, tmp: Path, n: int, **kw: Any) -> list[dict]:  # type: ignore[type-arg]
    procs = []
    for i in range(n):
        args = {"url": redis_server.url, "ns": ns, "seed": i, "out": str(tmp / f"s{i}.json"), **kw}
        procs.append(spawn("contend", args))
    for p in procs:
        assert p.wait(300) == 0
    stamps: list[dict] = []  # type: ignore[type-arg]
    for i in range(n):
        stamps.extend(json.loads((tmp / f"s{i}.json").read_text()))
    return stamps


def test_safety_8_processes_2_slots(redis_server: RedisProc, namespace: str, tmp_path: Path) -> None:
    lim = Limiter(redis_server.url, namespace)
    lim.create("hot", 2)
    stamps = run_contenders(redis_server, namespace, tmp_path, 8, names=["hot"], iterations=300,
                            max_hold=0.002)
    assert len(stamps) == 2400 and all(s["ok"] for s in stamps)
    assert max_concurrency(per_name(stamps, "hot")) <= 2
    assert max_concurrency(per_name(stamps, "hot")) == 2  # the limit was actually exercised
    snap = lim.broker.snapshot("hot")
    assert snap.used == 0 and snap.n_waiters == 0
    assert snap.counters.acquired == snap.counters.released == 2400


def test_safety_multi_limit_overlapping(redis_server: RedisProc, namespace: str,
                                        tmp_path: Path) -> None:
    lim = Limiter(redis_server.url, namespace)
    slots = {"a": 2, "b": 3, "c": 2}
    for name, n in slots.items():
        lim.create(name, n)
    stamps = run_contenders(redis_server, namespace, tmp_path, 8, names=list(slots),
                            iterations=200, multi=True, max_occupy=2, max_hold=0.002)
    assert len(stamps) == 1600
    for name, n in slots.items():
        assert max_concurrency(per_name(stamps, name)) <= n, name
        assert lim.broker.snapshot(name).used == 0


def test_timeouts_racing_grants_never_leak(redis_server: RedisProc, namespace: str,
                                           tmp_path: Path) -> None:
    lim = Limiter(redis_server.url, namespace)
    lim.create("race", 1)
    lim.create("race2", 2)
    stamps = run_contenders(redis_server, namespace, tmp_path, 6, names=["race", "race2"],
                            iterations=600, multi=True, max_occupy=1, max_hold=0.001,
                            timeout_range=[0.0005, 0.004])
    assert max_concurrency(per_name(stamps, "race")) <= 1
    for name in ("race", "race2"):
        snap = lim.broker.snapshot(name)
        assert snap.used == 0 and snap.n_waiters == 0, name  # nothing leaked, no stale ticket
        c = snap.counters
        assert c.acquired == c.released
    assert lim.broker.snapshot("race").counters.timed_out > 0  # the race was exercised
    lim.acquire("race", "race2", occupy=1, timeout=0).release()


def test_sigkilled_holder_slot_granted_within_ttl_without_daemon(
        redis_server: RedisProc, namespace: str, tmp_path: Path) -> None:
    lim = Limiter(redis_server.url, namespace)
    lim.create("crash", 1)
    hold_out, wait_out = tmp_path / "h.jsonl", tmp_path / "w.jsonl"
    holder = spawn("hold", {"url": redis_server.url, "ns": namespace, "names": ["crash"],
                            "ttl": 2, "out": str(hold_out)})
    wait_for(lambda: read_events(hold_out))
    waiter = spawn("wait_one", {"url": redis_server.url, "ns": namespace, "names": ["crash"],
                                "out": str(wait_out)})
    try:
        wait_for(lambda: lim.broker.snapshot("crash").n_waiters == 1)
        first = lim.broker.snapshot("crash").holders[0]
        # past the instant its first TTL ran out (Redis's clock): only renewals kept it, and nothing
        # is granted while it lives
        wait_for(lambda: lim.broker.server_time_ms() > first.acquired_ms + 2000 + 200)
        snap = lim.broker.snapshot("crash")
        assert [h.lease_id for h in snap.holders] == [first.lease_id] and snap.n_waiters == 1
        assert snap.holders[0].renewed_ms > first.acquired_ms  # positive: the holder did renew
        assert not [e for e in read_events(wait_out) if e["event"] == "granted"]
        killed_at = time.monotonic_ns()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        assert waiter.wait(30) == 0
    finally:  # a failed check leaves no holder or waiter process behind
        for p in (holder, waiter):
            if p.poll() is None:
                p.kill()
                p.wait()
    granted = [e for e in read_events(wait_out) if e["event"] == "granted"][0]
    delay = (granted["t"] - killed_at) / 1e9
    assert delay <= 2 + 1, f"slot came back after {delay:.2f} s (ttl 2 s)"
    assert lim.broker.snapshot("crash").counters.expired == 1


def test_sigstopped_holder_learns_lease_lost(redis_server: RedisProc, namespace: str,
                                             tmp_path: Path) -> None:
    lim = Limiter(redis_server.url, namespace)
    lim.create("pause", 1)
    out = tmp_path / "h.jsonl"
    holder = spawn("hold", {"url": redis_server.url, "ns": namespace, "names": ["pause"],
                            "ttl": 1, "hold": 3, "out": str(out)})
    wait_for(lambda: read_events(out))
    holder.send_signal(signal.SIGSTOP)
    try:
        other = lim.acquire("pause", timeout=20)  # granted once the frozen holder's ttl passes
    finally:
        holder.send_signal(signal.SIGCONT)
    assert holder.wait(30) == 0
    ev = {e["event"]: e for e in read_events(out)}
    assert ev["woke"]["lost"] is True  # on SIGCONT the heartbeat reported the lease lost
    assert ev["released"]["ok"] is False  # its late release frees nothing...
    snap = lim.broker.snapshot("pause")
    assert snap.used == 1 and snap.holders[0].lease_id == other.id  # ...of someone else's
    assert other.token > ev["acquired"]["token"]
    other.release()


def _child_release(lease: Any, q: Any) -> None:
    q.put((lease.release(), lease.renew()))


def _child_holds(lim: Limiter, q: Any) -> None:
    """In a forked child: hold a lease of its own past its TTL (the child's heartbeat runs)."""
    lease = lim.acquire("forky-child")
    q.put("holding")
    time.sleep(2.5)
    q.put("kept" if not lease.lost else "lost")
    lease.release()


def test_forked_child_never_renews_or_releases_parent_leases(
        redis_server: RedisProc, namespace: str) -> None:
    lim = Limiter(redis_server.url, namespace, ttl=1)
    lim.create("forky", 2)
    lease = lim.acquire("forky")
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child_release, args=(lease, q))
    p.start()
    assert q.get(timeout=30) == (False, False)
    p.join(30)
    assert lim.broker.snapshot("forky").used == 1  # the child's release freed nothing
    # the parent keeps renewing past several TTLs
    time.sleep(2.5)
    assert not lease.lost and lease.renew()
    # and if the parent stops renewing, the lease expires: a forked child that uses the SDK
    # (its own heartbeat renewing its own lease meanwhile) never renews the parent's
    lim.create("forky-child", 1)
    lim.runtime.drop_lease(lease)
    q2 = ctx.Queue()
    child = ctx.Process(target=_child_holds, args=(lim, q2))
    child.start()
    assert q2.get(timeout=30) == "holding"
    time.sleep(1.5)
    assert lim.broker.snapshot("forky").used == 0  # the parent's lease expired
    assert lim.broker.snapshot("forky-child").used == 1  # positive control: the child renews
    assert q2.get(timeout=30) == "kept"
    child.join(30)


def _spawned_task(q: Any) -> None:
    with limit("spawned") as lease:
        q.put((os.getpid(), lease.names))


def test_config_reaches_spawned_children(redis_server: RedisProc, namespace: str) -> None:
    lim = configure(redis_server.url, namespace)
    lim.create("spawned", 1)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_spawned_task, args=(q,))
    p.start()
    pid, names = q.get(timeout=60)
    p.join(60)
    assert pid != os.getpid() and tuple(names) == ("spawned",)
    assert lim.broker.snapshot("spawned").counters.acquired == 1


def test_one_heartbeat_thread_renews_all_leases(redis_server: RedisProc, namespace: str) -> None:
    import threading

    lim = Limiter(redis_server.url, namespace, ttl=0.6)
    for i in range(20):
        lim.create(f"hb{i}", 1)
    leases = [lim.acquire(f"hb{i}") for i in range(20)]
    calls = []
    orig = lim.broker.heartbeat

    def counting(*a: Any, **k: Any) -> Any:
        calls.append(len(a[0]))
        return orig(*a, **k)

    lim.broker.heartbeat = counting  # type: ignore[method-assign]
    time.sleep(2.0)  # > 3 TTLs
    lim.broker.heartbeat = orig  # type: ignore[method-assign]
    assert all(not x.lost for x in leases)
    names = [t.name for t in threading.enumerate() if t.name.startswith("slotkeeper-heartbeat")]
    assert names.count(f"slotkeeper-heartbeat-{namespace}") == 1
    assert calls and max(calls) == 20  # all 20 leases renewed in one round trip
    for x in leases:
        assert x.release()
