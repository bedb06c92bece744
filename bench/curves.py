"""The curves: how slotkeeper behaves as one dimension grows.

- C1: 1, 2, 4, ... client processes on one limit of 8 slots (throughput, utilisation, Jain).
- C2: 10 -> 10,000 waiters queued on one limit: the cost of a release that grants the next one.
- C3: 10 -> 100,000 limits in a namespace: ``ls`` (one read per limit), a metrics scrape and a
  daemon pass — the total grows linearly, the longest single call stays bounded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import redis

from slotkeeper.bench.stats import summary_ms
from slotkeeper.bench.workloads import w2_contended
from slotkeeper.broker import protocol as P
from slotkeeper.broker import records as R
from slotkeeper.broker.client import Broker
from slotkeeper.broker.keys import Keys
from slotkeeper.broker.scripts import source
from slotkeeper.naming import host_name, worker_name

PIPE = 1000
TICKET_TTL_MS = 3_600_000

# -- C1 ------------------------------------------------------------------------------------------


def c1_processes(
    url: str,
    ns: str,
    procs: list[int],
    hold_ms: float,
    duration_s: float,
    slots: int = 8,
    tick: Callable[[str], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """W2's loop (acquire, hold ``hold_ms``, release) with ``n`` processes for each n."""
    out = []
    for n in procs:
        r = w2_contended("slotkeeper", url, f"{ns}-{n}", hold_ms, duration_s, n, slots)
        row = {
            k: r[k]
            for k in (
                "processes",
                "slots",
                "hold_ms",
                "cycles_per_s",
                "utilisation",
                "jain",
                "max_holders_seen",
            )
        }
        # fewer processes than slots cannot fill the limit: utilisation of what they could use
        row["utilisation_reachable"] = round(r["utilisation"] * slots / min(n, slots), 4)
        out.append(row)
        tick(f"C1 {n} processes")
    return out


# -- C2 ------------------------------------------------------------------------------------------


class _Queue:
    """Plants queued tickets on one limit (pipelined acquire scripts, each reply checked)."""

    def __init__(self, url: str, ns: str, name: str) -> None:
        self.client = redis.Redis.from_url(url)
        self.keys = Keys(ns)
        self.name = name
        self.meta = R.pack_meta(host_name(), os.getpid(), worker_name(), "")
        self.script = self.client.register_script(source("acquire"))
        self.channel = self.keys.wake_channel("c2bench")
        self.n = 0

    def plant(self, count: int) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        ids = []
        for _ in range(count):
            self.n += 1
            tid = f"c2-{self.n:09d}"
            ids.append(tid)
            op = P.acquire(
                self.keys,
                [self.name],
                tid,
                ttl_ms=TICKET_TTL_MS,
                default_ttl_ms=TICKET_TTL_MS,
                wait=True,
                channel=self.channel,
                meta=self.meta,
            )
            self.script(keys=list(op.keys), args=list(op.args), client=pipe)
            if len(pipe) >= PIPE:
                self._check(pipe.execute())
        if len(pipe):
            self._check(pipe.execute())
        return ids

    @staticmethod
    def _check(replies: list[Any]) -> None:
        bad = sum(1 for r in replies if int(r[0]) not in (R.QUEUED, R.GRANTED))
        if bad:
            raise RuntimeError(f"C2: {bad} planted tickets were neither queued nor granted")


def c2_waiters(
    url: str, ns: str, levels: list[int], samples: int, tick: Callable[[str], None] = lambda _: None
) -> list[dict[str, Any]]:
    """A limit of 1 slot with ``n`` queued tickets; each sample releases the lease holding the
    slot, which grants the head of the queue (one script call: release + grant pass); one ticket
    is queued at the back after each, so the queue stays at ``n``."""
    out = []
    for n in sorted(levels):
        keys = Keys(f"{ns}-{n}")
        broker = Broker.from_url(url, keys.namespace)
        broker.update_limit("c2", slots=1, create=True)
        q = _Queue(url, keys.namespace, "c2")
        order = q.plant(n + 1)  # the first one is granted at once: it holds the slot
        lat = []
        for i in range(samples):
            t0 = time.perf_counter_ns()
            ok = broker.release(["c2"], order[i])
            lat.append(time.perf_counter_ns() - t0)
            if not ok:
                raise RuntimeError("C2: the granted ticket's lease was not held")
            order += q.plant(1)
        snap = broker.snapshot("c2", max_items=0)
        out.append({"waiters": n, "queued_after": snap.n_waiters, "release_grant": summary_ms(lat)})
        # (no reset: revoking would grant and revoke every queued ticket in turn; each level has
        # a namespace of its own, deleted with the run's keys)
        q.client.close()
        broker.close()
        tick(f"C2 {n} waiters")
    return out


# -- C3 ------------------------------------------------------------------------------------------


def _create_limits(url: str, ns: str, start: int, count: int) -> None:
    client = redis.Redis.from_url(url)
    keys = Keys(ns)
    script = client.register_script(source("limit_config"))
    pipe = client.pipeline(transaction=False)
    for i in range(start, start + count):
        name = f"c3-{i:06d}"
        op = P.limit_config(keys, name, "create", P.config_args(4, 0, True, "", name=name))
        script(keys=list(op.keys), args=list(op.args), client=pipe)
        if len(pipe) >= PIPE:
            pipe.execute()
    if len(pipe):
        pipe.execute()
    client.close()


class _CallTimer:
    """Times every round trip of a broker's transport (to find the longest single call of a
    whole operation)."""

    def __init__(self, broker: Broker) -> None:
        self.calls_ns: list[int] = []
        run = broker.transport.run

        def timed_run(op: P.Op[Any], deadline: float | None = None, retry: bool = True) -> Any:
            t0 = time.perf_counter_ns()
            try:
                return run(op, deadline, retry)
            finally:
                self.calls_ns.append(time.perf_counter_ns() - t0)

        broker.transport.run = timed_run  # type: ignore[method-assign]

    def measure(self, fn: Callable[[], Any], client: redis.Redis | None = None) -> dict[str, Any]:
        """Total time and the longest round trip as the client saw it (which includes its own
        pauses, e.g. a garbage collection over 100,000 snapshots); with ``client``, also the
        longest command inside Redis (SLOWLOG: 1 ms and up are logged while this runs)."""
        after = -1
        if client is not None:
            last = client.slowlog_get(1)
            after = int(last[0]["id"]) if last else -1
        self.calls_ns = []
        t0 = time.perf_counter()
        fn()
        total = time.perf_counter() - t0
        calls = self.calls_ns
        out: dict[str, Any] = {
            "total_s": round(total, 3),
            "calls": len(calls),
            "longest_call_ms": round(max(calls) / 1e6, 3) if calls else 0.0,
        }
        if client is not None:
            slow = [int(e["duration"]) for e in client.slowlog_get(10_000) if int(e["id"]) > after]
            out["longest_in_redis_ms"] = round(max(slow) / 1000, 3) if slow else "< 1"
        return out


def c3_limits(
    url: str, ns: str, levels: list[int], tick: Callable[[str], None] = lambda _: None
) -> list[dict[str, Any]]:
    """For each level (limits in the namespace): time ``ls`` (read every limit), one metrics
    scrape and one daemon pass."""
    from prometheus_client import generate_latest

    from slotkeeper.broker.daemon import Daemon
    from slotkeeper.broker.readmodel import ReadModel

    broker = Broker.from_url(url, ns)
    timer = _CallTimer(broker)
    client = redis.Redis.from_url(url)
    saved: list[tuple[str, str]] = []
    try:  # log every command of 1 ms or more while measuring; the settings are put back after
        for name, value in (("slowlog-log-slower-than", "1000"), ("slowlog-max-len", "10000")):
            before = str(client.config_get(name)[name])
            client.config_set(name, value)
            saved.append((name, before))
        slowlog: redis.Redis | None = client
    except redis.RedisError:  # CONFIG refused (not our server): client-side times only
        slowlog = None
    daemon = Daemon(broker, scrape_cache=0)  # every scrape reads Redis (what is measured)
    registry = daemon.registry()
    have = 0
    out = []
    try:
        for n in sorted(levels):
            _create_limits(url, ns, have, n - have)
            have = n
            row: dict[str, Any] = {"limits": n}
            row["ls"] = timer.measure(lambda: ReadModel(broker).limits(), slowlog)  # `ls` reads
            row["scrape"] = timer.measure(lambda: generate_latest(registry), slowlog)
            row["daemon_pass"] = timer.measure(daemon.run_pass, slowlog)
            for k in ("ls", "scrape", "daemon_pass"):
                row[k]["us_per_limit"] = round(row[k]["total_s"] * 1e6 / n, 1)
            out.append(row)
            tick(f"C3 {n} limits")
    finally:
        for name, value in reversed(saved):
            client.config_set(name, value)
        client.close()
        broker.close()
    return out
