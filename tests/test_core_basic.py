"""Core semantics on one process: timeouts, unknown limits, occupy, disabled limits, names,
templates, counters, keys, decorator/async forms, idempotency."""

from __future__ import annotations

import asyncio
import pickle
import threading
import time
import warnings

import pytest

from slotkeeper import (
    AcquireTimeout,
    InvalidArgument,
    InvalidName,
    InvalidType,
    LeaseLost,
    Limiter,
    LimitExists,
    LimitNotFound,
    OccupyExceedsLimit,
    SlotkeeperError,
    limit,
    limited,
)
from slotkeeper.broker import records as R
from tests.support.push import PATIENCE, push_only
from tests.support.redisproc import RedisProc


def wait_queued(limiter: Limiter, name: str, n: int = 1) -> None:
    """Until ``n`` tickets wait on ``name`` (a definite state in Redis, not a guessed delay)."""
    deadline = time.monotonic() + 20
    while limiter.broker.snapshot(name).n_waiters < n:
        assert time.monotonic() < deadline, f"no waiter queued on {name}"
        time.sleep(0.01)


def test_acquire_release_and_lease_fields(limiter: Limiter) -> None:
    limiter.create("db", 2)
    lease = limiter.acquire("db")
    assert lease.names == ("db",) and lease.occupy == 1 and not lease.lost
    now_ms = limiter.broker.server_time_ms()
    assert abs(lease.expires_at * 1000 - (now_ms + 5000)) < 2000
    assert limiter.broker.snapshot("db").used == 1
    assert lease.release() is True
    assert limiter.broker.snapshot("db").used == 0
    assert lease.release() is True  # idempotent


def test_timeouts(limiter: Limiter) -> None:
    limiter.create("one", 1)
    held = limiter.acquire("one")
    with pytest.raises(AcquireTimeout) as ei:
        limiter.acquire("one", timeout=0)
    assert isinstance(ei.value, TimeoutError) and isinstance(ei.value, SlotkeeperError)
    t = time.monotonic()
    with pytest.raises(AcquireTimeout):
        limiter.acquire("one", timeout=0.3)
    assert time.monotonic() - t >= 0.3
    snap = limiter.broker.snapshot("one")
    assert snap.n_waiters == 0 and snap.counters.timed_out == 1
    # timeout=None waits until the holder releases
    got: list[float] = []

    def waiter() -> None:
        with limit("one", limiter=limiter):
            got.append(time.monotonic())

    th = threading.Thread(target=waiter)
    th.start()
    wait_queued(limiter, "one")  # refused while the slot is held: its ticket waits
    assert limiter.broker.snapshot("one").used == 1 and not got
    held.release()
    th.join(20)
    assert got


def test_unknown_limit_messages_and_options(limiter: Limiter) -> None:
    with pytest.raises(LimitNotFound) as ei:
        limiter.acquire("nope")
    assert "slotkeeper" in str(ei.value) and "create nope --slots" in str(ei.value)
    lease = limiter.acquire("auto", default_slots=3)
    assert limiter.broker.snapshot("auto").config.slots == 3
    lease.release()
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        with limit("ghost", strict=False, limiter=limiter) as lz:
            assert not lz.throttled
    assert any("unthrottled" in str(x.message) for x in w)
    assert "ghost" not in limiter.broker.list_limits()


def test_occupy_exceeds_fails_at_once(limiter: Limiter) -> None:
    limiter.create("small", 2)
    t = time.monotonic()
    with pytest.raises(OccupyExceedsLimit):
        limiter.acquire("small", occupy=3)  # timeout=None, yet it must not wait
    assert time.monotonic() - t < 5


def test_disabled_limit_admits_everyone_and_counts(limiter: Limiter) -> None:
    limiter.create("off", 1, enabled=False)
    leases = [limiter.acquire("off", timeout=0) for _ in range(5)]
    snap = limiter.broker.snapshot("off")
    assert snap.used == 5 and snap.counters.acquired == 5 and not snap.config.enabled
    for x in leases:
        x.release()


def test_enabling_and_raising_slots_grants_waiters(limiter: Limiter) -> None:
    limiter.create("gate", 0)
    with pytest.raises(OccupyExceedsLimit):
        limiter.acquire("gate", timeout=0)
    limiter.set("gate", slots=1)
    a = limiter.acquire("gate")
    done = threading.Event()

    def waiter() -> None:
        limiter.acquire("gate").release()
        done.set()

    th = threading.Thread(target=waiter)
    th.start()
    wait_queued(limiter, "gate")
    assert not done.is_set()
    acquired = limiter.broker.snapshot("gate").counters.acquired
    limiter.set("gate", slots=2)  # raising slots grants the head ticket in the same script
    snap = limiter.broker.snapshot("gate")  # granted by the time set() returned
    assert snap.n_waiters == 0 and snap.counters.acquired == acquired + 1
    assert done.wait(10)
    a.release()
    th.join()


def test_lowering_slots_does_not_evict(limiter: Limiter) -> None:
    limiter.create("shrink", 3)
    held = [limiter.acquire("shrink") for _ in range(3)]
    limiter.set("shrink", slots=1)
    assert all(not x.lost for x in held)
    assert limiter.broker.snapshot("shrink").used == 3
    held[0].release()
    held[1].release()
    with pytest.raises(AcquireTimeout):
        limiter.acquire("shrink", timeout=0)  # 1 in use, 1 slot: still full
    held[2].release()
    limiter.acquire("shrink", timeout=0).release()


@pytest.mark.parametrize("bad", ["", " lead", "trail ", "x" * 201, "tab\tname", "nl\n", "{oops}"])
def test_bad_names_rejected_without_writing(limiter: Limiter, bad: str) -> None:
    r = limiter.broker.redis
    before = r.dbsize()
    with pytest.raises(InvalidName) as ei:
        limiter.acquire(bad)
    assert isinstance(ei.value, ValueError)
    with pytest.raises(InvalidName):
        limiter.create(bad, 1)
    with pytest.raises(InvalidName):
        limit(bad)
    assert r.dbsize() == before


@pytest.mark.parametrize(
    ("kwargs", "exc"),
    [
        ({"occupy": 0}, InvalidArgument),
        ({"occupy": -1}, InvalidArgument),
        ({"occupy": 1.5}, InvalidType),
        ({"occupy": True}, InvalidType),
        ({"timeout": -1}, InvalidArgument),
        ({"timeout": "5"}, InvalidType),
        ({"timeout": float("nan")}, InvalidArgument),
        ({"priority": 10**6}, InvalidArgument),
        ({"ttl": 0}, InvalidArgument),
    ],
)
def test_bad_arguments(limiter: Limiter, kwargs: dict[str, object], exc: type[Exception]) -> None:
    limiter.create("args", 1)
    r = limiter.broker.redis
    before = r.dbsize()
    with pytest.raises(exc):
        limiter.acquire("args", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(exc):
        limit("args", **kwargs)  # type: ignore[arg-type]
    assert r.dbsize() == before
    assert limiter.broker.snapshot("args").used == 0


def test_bad_slots_and_types(limiter: Limiter) -> None:
    with pytest.raises(InvalidArgument):
        limiter.create("neg", -1)
    with pytest.raises(InvalidType):
        limiter.create("typ", "2")  # type: ignore[arg-type]
    with pytest.raises(InvalidType):
        limiter.acquire(3)  # type: ignore[arg-type]
    assert limiter.broker.list_limits() == []
    limiter.create("dup", 1)
    with pytest.raises(LimitExists):
        limiter.create("dup", 2)


def test_names_with_spaces_and_unicode(limiter: Limiter) -> None:
    for name in ("group A", "gpu:gpu-1", "naïve ☃", "a" * 200):
        limiter.create(name, 1)
        with limit(name, limiter=limiter):
            assert limiter.broker.snapshot(name).used == 1


def test_worker_templates(limiter: Limiter, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    limiter.create("gpu:w7", 1)
    limiter.create("gpu:envw", 1)
    limiter.create(f"h:{socket.gethostname()}", 1)
    explicit = Limiter(limiter.url, limiter.namespace, worker="w7")
    with limit("gpu:{worker}", limiter=explicit) as lease:
        assert lease.names == ("gpu:w7",)
    monkeypatch.setenv("SLOTKEEPER_WORKER", "envw")
    with limit("gpu:{worker}", limiter=limiter) as lease:
        assert lease.names == ("gpu:envw",)
    with limit("h:{host}", limiter=limiter) as lease:
        assert lease.names == (f"h:{socket.gethostname()}",)


def test_multi_limit_all_or_nothing(limiter: Limiter) -> None:
    limiter.create("a", 2)
    limiter.create("b", 2)
    other = limiter.acquire("b", occupy=1)
    with pytest.raises(AcquireTimeout):
        limiter.acquire("a", "b", occupy=2, timeout=0)
    assert limiter.broker.snapshot("a").used == 0  # nothing partially held
    other.release()
    lease = limiter.acquire("a", "b", occupy=2, timeout=0)
    assert limiter.broker.snapshot("a").used == 2 and limiter.broker.snapshot("b").used == 2
    lease.release()
    with pytest.raises(InvalidArgument):
        limiter.acquire("a", "a")


def test_opposite_order_multi_limit_no_deadlock(limiter: Limiter) -> None:
    limiter.create("x", 1)
    limiter.create("y", 1)
    counts = [0, 0]

    def worker(i: int, names: tuple[str, str]) -> None:
        for _ in range(100):
            with limit(*names, limiter=limiter, timeout=30):
                counts[i] += 1

    ts = [threading.Thread(target=worker, args=(0, ("x", "y"))),
          threading.Thread(target=worker, args=(1, ("y", "x")))]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    assert counts == [100, 100]


def test_counters_kept_in_redis(limiter: Limiter) -> None:
    limiter.create("c", 1)
    a = limiter.acquire("c")
    with pytest.raises(AcquireTimeout):
        limiter.acquire("c", timeout=0.1)
    a.release()
    b = limiter.acquire("c")
    assert limiter.broker.revoke(b.id)
    c = limiter.acquire("c", ttl=0.2)
    limiter.runtime.drop_lease(c)  # stop renewing: it will expire
    time.sleep(0.4)
    limiter.acquire("c").release()  # lazy reclaim purges the expired lease
    snap = limiter.broker.snapshot("c")
    cnt = snap.counters
    assert (cnt.acquired, cnt.released, cnt.revoked, cnt.timed_out, cnt.expired) == (4, 2, 1, 1, 1)
    assert sum(cnt.wait_buckets) == cnt.acquired
    # another process/daemon reading the same Redis sees the same figures
    other = Limiter(limiter.url, limiter.namespace)
    assert other.broker.snapshot("c").counters == cnt


def test_idempotent_acquire_on_client_id(limiter: Limiter) -> None:
    limiter.create("idem", 1)
    b = limiter.broker
    r1 = b.acquire(["idem"], "fixedid1", channel="ch")
    r2 = b.acquire(["idem"], "fixedid1", channel="ch")  # a re-sent call after a lost reply
    assert r1.status == r2.status == R.GRANTED and r1.token == r2.token
    assert b.snapshot("idem").used == 1
    assert b.release(["idem"], "fixedid1") is True
    assert b.release(["idem"], "fixedid1") is False


def test_fencing_tokens_increase(limiter: Limiter) -> None:
    limiter.create("fence", 1)
    tokens = []
    for _ in range(5):
        with limit("fence", limiter=limiter) as lease:
            tokens.append(lease.token)
    assert tokens == sorted(tokens) and len(set(tokens)) == 5


def test_every_key_carries_the_namespace_hash_tag(limiter: Limiter) -> None:
    limiter.create("k1", 1)
    limiter.create("k2", 1)
    a = limiter.acquire("k1", "k2")
    t = threading.Thread(target=lambda: limiter.acquire("k1", timeout=30).release())
    t.start()
    wait_queued(limiter, "k1")  # its ticket's keys exist too
    keys = [k.decode() for k in limiter.broker.redis.scan_iter(match="*")]
    mine = [k for k in keys if limiter.namespace in k]
    assert mine and all(k.startswith(f"sk:{{{limiter.namespace}}}:") for k in mine)
    a.release()
    t.join()


def test_decorator_async_and_pickle(limiter: Limiter) -> None:
    limiter.create("deco", 1)

    @limited("deco", limiter=limiter)
    def f(x: int) -> int:
        assert limiter.broker.snapshot("deco").used == 1
        return x * 2

    assert f(21) == 42

    async def main() -> int:
        async with limit("deco", limiter=limiter) as lease:
            assert lease.names == ("deco",)

        @limited("deco", limiter=limiter)
        async def g() -> int:
            return 7

        results = await asyncio.gather(*(g() for _ in range(5)))
        return sum(results)

    assert asyncio.run(main()) == 35
    lim2 = pickle.loads(pickle.dumps(limit("deco", occupy=1, limiter=limiter)))
    with lim2:
        pass
    assert b"Redis" not in pickle.dumps(limiter)
    assert limiter.broker.snapshot("deco").used == 0


def test_async_waiter_is_woken(limiter: Limiter, monkeypatch: pytest.MonkeyPatch) -> None:
    """Waiting tasks are woken on their loop by the pushed grant (every poll is pushed out far
    beyond the patience: tests/support/push.py)."""
    push_only(monkeypatch, limiter)
    limiter.create("aw", 1)

    async def main() -> list[str]:
        order: list[str] = []

        async def job(tag: str) -> None:
            async with limit("aw", limiter=limiter):
                order.append(tag + "+")
                await asyncio.sleep(0.05)
                order.append(tag + "-")

        await asyncio.wait_for(asyncio.gather(job("a"), job("b"), job("c")), PATIENCE)
        return order

    order = asyncio.run(main())
    # never two inside at once: every + is immediately followed by its own -
    assert all(order[i][0] == order[i + 1][0] for i in range(0, len(order), 2))


def test_revoked_lease_is_lost_and_raises(limiter: Limiter) -> None:
    limiter.create("rv", 1)
    seen = []
    with pytest.raises(LeaseLost):
        with limit("rv", limiter=limiter, ttl=0.3, on_lost=seen.append) as lease:
            assert limiter.broker.revoke(lease.id)
            deadline = time.monotonic() + 10
            while not lease.lost and time.monotonic() < deadline:
                time.sleep(0.02)
            assert lease.lost
    deadline = time.monotonic() + 5  # on_lost runs on a thread of its own
    while not seen and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen and seen[0] is lease
    # renew never resurrects it
    assert lease.renew() is False
    assert limiter.broker.snapshot("rv").used == 0


def test_raise_on_lost_false_only_logs(limiter: Limiter) -> None:
    limiter.create("rv2", 1)
    with limit("rv2", limiter=limiter, raise_on_lost=False) as lease:
        limiter.broker.revoke(lease.id)
        assert lease.renew() is False
    assert lease.lost


def test_expired_lease_reclaimed_lazily_without_daemon(limiter: Limiter) -> None:
    limiter.create("lazy", 1)
    lease = limiter.acquire("lazy", ttl=0.2)
    limiter.runtime.drop_lease(lease)  # simulate a frozen holder: no more renewals
    time.sleep(0.35)
    other = limiter.acquire("lazy", timeout=0)  # the acquire script itself purges the expired lease
    assert other.token > lease.token
    other.release()
    assert lease.release() is False  # a late release frees nothing


def test_reclaim_is_bounded(redis_server: RedisProc, namespace: str) -> None:
    lim = Limiter(redis_server.url, namespace)
    b = lim.broker
    lim.create("bulk", 10_000)
    for i in range(2000):
        b.acquire(["bulk"], f"lease{i}", ttl_ms=100, wait=False)
    time.sleep(0.2)
    r = b.reclaim("bulk", batch=100)
    assert r.expired <= 100  # one call never does more than its batch
    b.reclaim_all("bulk", batch=100)
    # acquires purged some lazily, the reclaim calls the rest: each expired lease counted once
    assert b.snapshot("bulk").counters.expired == 2000
    assert b.redis.zcard(b.keys.limit("bulk")[1]) == 0
    b.reclaim_all(None, batch=500)
    assert b.redis.hlen(b.keys.leases) == 0


def test_server_clock_only(limiter: Limiter, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client whose wall clock is a day off still gets correct expiries: Redis is the clock."""
    limiter.create("clock", 1)
    real_ms = limiter.broker.server_time_ms()
    monkeypatch.setattr(time, "time", lambda: 1e9)  # 2001
    lease = limiter.acquire("clock", ttl=2)
    assert abs(lease.expires_at * 1000 - (real_ms + 2000)) < 3000
    assert lease.renew()
    assert abs(lease.expires_at * 1000 - (real_ms + 2000)) < 3000
    lease.release()


def test_holders_are_stored_records_not_counts(limiter: Limiter) -> None:
    import os
    import socket

    import msgpack

    limiter.create("rec", 3)
    w = Limiter(limiter.url, limiter.namespace, worker="w-9")
    lease = w.acquire("rec", occupy=2, label="job-42")
    snap = limiter.broker.snapshot("rec")
    assert snap.used == 2 and len(snap.holders) == 1
    h = snap.holders[0]
    assert (h.lease_id, h.occupy, h.names, h.token) == (lease.id, 2, ["rec"], lease.token)
    assert (h.host, h.pid, h.worker, h.label) == (socket.gethostname(), os.getpid(), "w-9", "job-42")
    assert h.acquired_ms <= h.renewed_ms < h.expires_ms
    raw = limiter.broker.redis.hget(limiter.broker.keys.leases, lease.id)
    assert isinstance(msgpack.unpackb(raw), dict)  # msgpack, never pickle
    # usage is derived from the records: deleting the record's holder entries frees the slots
    lease.release()
    assert limiter.broker.snapshot("rec").used == 0


def test_shared_limit_object_across_many_tasks_leaves_nothing_behind(limiter: Limiter) -> None:
    limiter.create("many", 3)
    guard = limit("many", limiter=limiter)

    async def job() -> None:
        async with guard:
            await asyncio.sleep(0)

    async def main() -> None:
        await asyncio.gather(*(job() for _ in range(50)))

    asyncio.run(main())
    assert vars(guard._local) == {}  # no per-task stacks left behind
    assert limiter.broker.snapshot("many").used == 0
