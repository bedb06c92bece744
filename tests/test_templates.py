"""Templates (per-key limits made on first use), --total across keys, idle removal, and
backpressure (--max-waiters / QueueFull)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from slotkeeper import (
    AcquireTimeout,
    InvalidArgument,
    InvalidName,
    Limiter,
    LimitNotFound,
    OccupyExceedsLimit,
    QueueFull,
    SlotkeeperError,
)
from slotkeeper.broker.client import Broker
from slotkeeper.broker.codes import Status
from slotkeeper.broker.readmodel import ReadModel
from tests.support.redisproc import RedisProc
from tests.support.stamps import max_concurrency, per_name


def wait_for(pred: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def test_key_made_from_template_on_first_use(limiter: Limiter) -> None:
    b = limiter.broker
    b.create_limit("tenant:*", 2, rate="100/s")
    a1 = limiter.acquire("tenant:acme")
    a2 = limiter.acquire("tenant:acme")
    with pytest.raises(AcquireTimeout):
        limiter.acquire("tenant:acme", timeout=0)
    other = limiter.acquire("tenant:globex")  # its own key, its own slots
    snap = b.snapshot("tenant:acme")
    assert snap.config.template == "tenant:*" and snap.config.slots == 2 and snap.used == 2
    assert str(snap.config.rate) == "100/s" and snap.rate_in_window == 2
    assert "tenant:acme" not in b.list_limits() and "tenant:*" in b.list_limits()
    tpl = b.snapshot("tenant:*")
    assert tpl.n_keys == 2 and tpl.used == 3  # aggregate over its keys
    assert tpl.counters.acquired == 3 and snap.counters.acquired == 2
    assert tpl.counters.units == 3 and snap.counters.units == 2  # rate units, aggregated
    with pytest.raises(OccupyExceedsLimit):
        limiter.acquire("tenant:new", occupy=3)
    with pytest.raises(LimitNotFound):
        limiter.acquire("nottenant", timeout=0)
    for lease in (a1, a2, other):
        lease.release()


def test_longest_prefix_wins_and_own_limit_overrides(limiter: Limiter) -> None:
    b = limiter.broker
    b.create_limit("t:*", 1)
    b.create_limit("t:vip:*", 3)
    b.create_limit("t:special", 5)
    held = [limiter.acquire("t:vip:x") for _ in range(3)]
    with pytest.raises(AcquireTimeout):
        limiter.acquire("t:vip:x", timeout=0)
    assert b.snapshot("t:vip:x").config.template == "t:vip:*"
    limiter.acquire("t:plain").release()
    assert b.snapshot("t:plain").config.template == "t:*"
    held += [limiter.acquire("t:special") for _ in range(5)]
    assert b.snapshot("t:special").config.template == ""
    for lease in held:
        lease.release()


def test_changing_template_changes_every_key(limiter: Limiter) -> None:
    b = limiter.broker
    b.create_limit("u:*", 1)
    first = limiter.acquire("u:1")
    with pytest.raises(AcquireTimeout):
        limiter.acquire("u:1", timeout=0)
    b.update_limit("u:*", slots=2)
    second = limiter.acquire("u:1", timeout=0)  # the existing key follows the template
    assert b.snapshot("u:1").config.slots == 2
    b.update_limit("u:*", enabled=False)
    limiter.acquire("u:1", timeout=0).release()  # disabled: admits everyone
    first.release()
    second.release()


def test_template_made_elsewhere_is_seen_at_once(redis_server: RedisProc, namespace: str) -> None:
    lim = Limiter(redis_server.url, namespace)
    lim.broker.templates()  # cache: no templates yet
    Broker.from_url(redis_server.url, namespace).create_limit("late:*", 1)
    lim.acquire("late:x", timeout=0).release()  # NOT_FOUND refreshes the cached list once


def test_template_names_are_validated(limiter: Limiter) -> None:
    b = limiter.broker
    with pytest.raises(InvalidName):
        b.create_limit("a*b", 1)
    with pytest.raises(InvalidName):
        b.create_limit("*", 1)
    with pytest.raises(InvalidArgument):
        b.create_limit("plain", 1, total=3)  # --total on a non-template
    b.create_limit("v:*", 1)
    with pytest.raises(InvalidArgument):
        limiter.acquire("v:*")  # a template is not acquired itself
    with pytest.raises(SlotkeeperError):
        b.create_limit("neither", None)  # neither slots nor a rate
    assert b.list_limits() == ["v:*"]


def test_total_caps_the_sum_over_keys(limiter: Limiter) -> None:
    b = limiter.broker
    b.create_limit("job:*", 2, total=3)
    held = [limiter.acquire("job:a"), limiter.acquire("job:a"), limiter.acquire("job:b")]
    with pytest.raises(AcquireTimeout):
        limiter.acquire("job:c", timeout=0)
    got: list[str] = []
    t = threading.Thread(target=lambda: got.append(limiter.acquire("job:c").id))
    t.start()
    wait_for(lambda: b.snapshot("job:*").n_waiters == 1)
    held[0].release()  # a slot of job:a frees the total: job:c is granted at once
    t.join(10)
    assert got and b.snapshot("job:c").used == 1
    with pytest.raises(OccupyExceedsLimit):
        limiter.acquire("job:z", occupy=3)  # more than a key's slots


def test_waiters_of_one_key_do_not_block_other_keys(limiter: Limiter) -> None:
    b = limiter.broker
    b.create_limit("k:*", 1, total=10)
    held = limiter.acquire("k:busy")
    t = threading.Thread(target=lambda: limiter.acquire("k:busy", timeout=3))
    t.start()
    wait_for(lambda: b.snapshot("k:busy").n_waiters == 1)
    # k:busy's waiter is blocked by its key, not by the total: other keys pass
    for i in range(5):
        limiter.acquire(f"k:other{i}", timeout=0).release()
    held.release()
    t.join(10)


def test_total_from_several_processes(redis_server: RedisProc, namespace: str,
                                      tmp_path: Path) -> None:
    lim = Limiter(redis_server.url, namespace)
    lim.broker.create_limit("w:*", 2, total=3)
    names = ["w:a", "w:b", "w:c", "w:d"]
    procs = [
        subprocess.Popen([sys.executable, "-m", "tests.support.rate_workers", "template_contend",
                          json.dumps({"url": redis_server.url, "ns": namespace, "names": names,
                                      "seed": i, "iterations": 80, "out": str(tmp_path / f"{i}")})])
        for i in range(6)
    ]
    for p in procs:
        assert p.wait(300) == 0
    stamps: list[dict[str, Any]] = []
    for i in range(6):
        stamps += json.loads((tmp_path / f"{i}").read_text())
    assert len(stamps) == 480
    everything = [(s["t0"], s["t1"], 1) for s in stamps]
    assert max_concurrency(everything) <= 3
    assert max_concurrency(everything) == 3  # the total was actually reached
    for n in names:
        assert max_concurrency(per_name(stamps, n)) <= 2


def test_idle_keys_go_away(limiter: Limiter) -> None:
    b = limiter.broker
    # 3 s: the 21 acquires below (each may also reap idle keys lazily) finish well before any
    # of their keys is idle, so the count before reap_idle is exact
    b.create_limit("idle:*", 1, rate="5/s", idle_ttl="3s")
    pattern = b.keys.pattern()
    baseline = sorted(k for k in b.redis.scan_iter(pattern))
    for i in range(20):
        limiter.acquire(f"idle:{i}").release()
    held = limiter.acquire("idle:busy")
    assert b.snapshot("idle:*").n_keys == 21
    assert b.reap_idle("idle:*") == 0  # nothing idle long enough yet
    removed = 0
    deadline = time.monotonic() + 20
    while removed < 20 and time.monotonic() < deadline:
        time.sleep(0.2)
        removed += b.reap_idle("idle:*")
    assert removed == 20
    assert b.snapshot("idle:*").n_keys == 1  # the held key stays
    assert b.snapshot("idle:busy").used == 1
    held.release()
    deadline = time.monotonic() + 20
    while b.reap_idle("idle:*") == 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    after = sorted(k for k in b.redis.scan_iter(pattern))
    # back to the template's own keys (its config, aggregated counters)
    extra = set(after) - set(baseline)
    assert all(b"idle:*" in k or b":leases" in k or b":fence" in k for k in extra), extra
    with pytest.raises(LimitNotFound):
        b.snapshot("idle:3")
    gone = [e for e in ReadModel(b).events(limit="idle:3") if e.kind == "limit"]
    assert [e.detail for e in gone] == ["idle key removed (template idle:*)"]  # audit event
    limiter.acquire("idle:3").release()  # made again on next use


def test_template_with_keys_is_not_deleted(limiter: Limiter) -> None:
    b = limiter.broker
    b.create_limit("del:*", 1)
    limiter.acquire("del:a").release()
    with pytest.raises(SlotkeeperError):
        b.delete_limit("del:*")


def test_queue_full_at_once(limiter: Limiter) -> None:
    b = limiter.broker
    b.create_limit("q", 1, max_waiters=1)
    held = limiter.acquire("q")
    t = threading.Thread(target=lambda: limiter.acquire("q", timeout=5).release())
    t.start()
    wait_for(lambda: b.snapshot("q").n_waiters == 1)
    with pytest.raises(QueueFull) as ei:
        limiter.acquire("q")  # timeout=None: would wait forever, fails at once instead
    assert ei.value.name == "q" and ei.value.max_waiters == 1
    with pytest.raises(QueueFull):
        limiter.acquire("q", timeout=30)
    with pytest.raises(AcquireTimeout):
        limiter.acquire("q", timeout=0)  # try-once never waits, so never QueueFull
    assert b.snapshot("q").counters.rejected == 2
    held.release()
    t.join(10)


def test_queue_full_on_template_keys(limiter: Limiter) -> None:
    b = limiter.broker
    b.create_limit("mw:*", 1, max_waiters=0)
    held = limiter.acquire("mw:a")
    with pytest.raises(QueueFull):
        limiter.acquire("mw:a")
    assert b.snapshot("mw:*").counters.rejected == 1
    held.release()


def test_daemon_pass_removes_idle_keys(limiter: Limiter) -> None:
    from slotkeeper.broker.daemon import Daemon

    b = limiter.broker
    b.create_limit("d:*", 1, idle_ttl="1s")
    for i in range(5):
        limiter.acquire(f"d:{i}").release()
    daemon = Daemon(b, audit_every=0)
    deadline = time.monotonic() + 20
    while daemon.reaped < 5 and time.monotonic() < deadline:
        daemon.run_pass()
        time.sleep(0.2)
    assert daemon.reaped == 5 and b.template_keys("d:*") == []


def test_daemon_grants_waiters_of_template_keys(limiter: Limiter) -> None:
    """A key's waiter granted by the daemon's pass (here: after the template's slots were raised),
    not only by its own re-ask."""
    from slotkeeper.broker.daemon import Daemon

    b = limiter.broker
    b.create_limit("g:*", 1)
    held = limiter.acquire("g:a")
    waiter = Broker.from_url(limiter.url, limiter.namespace)
    res = waiter.acquire(["g:a"], "wait-" + str(time.time_ns()), channel="")
    assert res.status == Status.QUEUED  # and nobody will ask again for it
    b.update_limit("g:*", slots=2)
    assert b.snapshot("g:a").used == 1
    Daemon(b, audit_every=0).run_pass()
    assert b.snapshot("g:a").used == 2 and b.snapshot("g:a").n_waiters == 0
    held.release()


def test_metrics_aggregate_template_keys_unless_asked(limiter: Limiter) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from slotkeeper.broker.collector import SlotkeeperCollector

    b = limiter.broker
    b.create_limit("m:*", 2, rate="50/s", total=10)
    held = [limiter.acquire(f"m:{i}") for i in range(5)]

    def scrape(per_key: int) -> str:
        reg = CollectorRegistry()
        reg.register(SlotkeeperCollector(b, per_key=per_key))
        return generate_latest(reg).decode()

    text = scrape(0)
    assert 'limit="m:*"' in text and 'limit="m:1"' not in text  # bounded cardinality
    ns = limiter.namespace
    assert f'slotkeeper_limit_slots_in_use{{limit="m:*",namespace="{ns}"}} 5.0' in text
    assert f'slotkeeper_limit_slots{{limit="m:*",namespace="{ns}"}} 10.0' in text  # the --total
    assert f'slotkeeper_rate_units_total{{limit="m:*",namespace="{ns}"}} 5.0' in text
    per_key = scrape(3)
    assert sum(f'slotkeeper_limit_slots_in_use{{limit="m:{i}"' in per_key for i in range(5)) == 3
    for lease in held:
        lease.release()


LAZY_REAP = 2  # lua/_lib.lua: idle keys one acquire of a template's key removes, at most


def wait_all_idle(b: Broker, template: str, idle_ms: int) -> None:
    """Until every key of `template` was last active more than `idle_ms` ago (server clock)."""

    def idle() -> bool:
        last = max(ms for _, ms in b.template_keys(template))
        return b.server_time_ms() - last > idle_ms + 50

    wait_for(idle)


def test_acquires_remove_idle_keys_without_a_daemon(limiter: Limiter) -> None:
    b = limiter.broker  # no daemon, no reap_idle call: only the acquires below
    b.create_limit("lz:*", 1, idle_ttl="1s")
    for k in "abcdef":
        limiter.acquire(f"lz:{k}").release()
    assert len(b.template_keys("lz:*")) == 6
    wait_all_idle(b, "lz:*", 1000)
    limiter.acquire("lz:next").release()  # removes the LAZY_REAP least recently active, no more
    assert {k for k, _ in b.template_keys("lz:*")} == {"lz:c", "lz:d", "lz:e", "lz:f", "lz:next"}
    with pytest.raises(LimitNotFound):
        b.snapshot("lz:a")
    assert b.redis.exists(*b.keys.limit("lz:a")[:4]) == 0  # config, holders, queue, rate: gone
    assert [e.detail for e in ReadModel(b).events(limit="lz:b") if e.kind == "limit"] == [
        "idle key removed (template lz:*)"
    ]
    wait_all_idle(b, "lz:*", 1000)
    # lz:c is idle and the oldest, but the acquire names it: never a candidate of its own call
    limiter.acquire("lz:c").release()
    assert {k for k, _ in b.template_keys("lz:*")} == {"lz:c", "lz:e", "lz:f", "lz:next"}
    assert b.snapshot("lz:c").config.template == "lz:*"
    limiter.acquire("lz:c").release()
    limiter.acquire("lz:c").release()
    assert {k for k, _ in b.template_keys("lz:*")} == {"lz:c"}
    limiter.acquire("lz:a").release()  # made again on next use
    assert b.snapshot("lz:a").config.template == "lz:*"


def test_lazy_reap_never_removes_a_key_in_use(limiter: Limiter) -> None:
    b = limiter.broker
    b.create_limit("lw:*", 1, total=1, idle_ttl="1s")
    b.create_limit("lr:*", 1, rate="1/min", idle_ttl="1s")
    limiter.acquire("lw:idle").release()  # positive control: idle and empty
    held = limiter.acquire("lw:held")  # a live holder
    granted = threading.Event()

    def waiter() -> None:  # a waiter and nothing else: blocked by the template's --total
        lease = limiter.acquire("lw:wait", timeout=60)
        granted.set()
        lease.release()

    t = threading.Thread(target=waiter, daemon=True)
    t.start()
    try:
        check_keys_in_use_stay(b, limiter)
    finally:
        held.release()
    assert granted.wait(30)
    t.join(10)


def check_keys_in_use_stay(b: Broker, limiter: Limiter) -> None:
    wait_for(lambda: "lw:wait" in {k for k, _ in b.template_keys("lw:*")})
    wait_for(lambda: b.snapshot("lw:wait").n_waiters == 1)
    assert b.snapshot("lw:wait").used == 0
    limiter.acquire("lr:rate").release()  # a rate unit in its window (1 min), no holder
    wait_all_idle(b, "lw:*", 1000)
    wait_all_idle(b, "lr:*", 1000)
    for i in range(3):  # more calls than needed to remove every idle key of each template
        with pytest.raises(AcquireTimeout):
            limiter.acquire(f"lw:x{i}", timeout=0)  # --total is full; the call still reaps
        limiter.acquire(f"lr:x{i}").release()
    keys = {k for k, _ in b.template_keys("lw:*")}
    assert "lw:idle" not in keys  # the control went: these acquires do reap
    assert {"lw:held", "lw:wait"} <= keys
    assert b.snapshot("lw:held").used == 1
    assert b.snapshot("lw:wait").n_waiters == 1
    assert "lr:rate" in {k for k, _ in b.template_keys("lr:*")}
    assert b.snapshot("lr:rate").rate_in_window == 1
    # once the window is shorter than its batch's age, the same key goes (positive control)
    b.update_limit("lr:*", rate="1/s")
    wait_all_idle(b, "lr:*", 1000)
    limiter.acquire("lr:y").release()
    limiter.acquire("lr:z").release()
    assert "lr:rate" not in {k for k, _ in b.template_keys("lr:*")}
