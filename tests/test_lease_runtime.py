"""Leases the holder can trust: loss judged per lease, on the holder's own clock, never delayed by
a slow callback, and the runtime's threads and connections closed on request."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis

from slotkeeper import Lease, Limiter, limit
from slotkeeper.broker import protocol as P
from slotkeeper.broker.client import Broker
from slotkeeper.broker.codes import Status
from slotkeeper.runtime import live_runtimes
from tests.support.redisproc import RedisProc


def wait_until(pred: object, timeout: float = 20.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_idle_process_then_outage_keeps_its_lease(namespace: str) -> None:
    """Idle longer than a TTL, then a lease held through a short Redis outage (restart from
    AOF): the lease survives — its loss is judged from its own renewals, not a stale process-wide
    time — and it is released normally."""
    with RedisProc(aof=True, args=["--appendfsync", "always"]) as r:
        lim = Limiter(r.url, namespace, ttl=1.0)
        lim.create("idle", 1)
        with limit("idle", limiter=lim):
            pass
        time.sleep(1.5)  # idle longer than a TTL: no heartbeat round trip in between
        lease = lim.acquire("idle", ttl=6.0)
        time.sleep(0.3)
        r.stop(signal.SIGKILL)
        time.sleep(1.5)
        r.start()
        # the heartbeat renews it again once Redis is back
        before = Broker.from_url(r.url, namespace).lease_record(lease.id)
        assert before is not None
        assert wait_until(lambda: (Broker.from_url(r.url, namespace).lease_record(lease.id)
                                   or before).renewed_ms > before.renewed_ms, timeout=10)
        assert not lease.lost
        assert lease.release() is True


def test_a_slow_on_lost_does_not_cost_other_leases(namespace: str) -> None:
    with RedisProc() as r:
        lim = Limiter(r.url, namespace, ttl=1.5)
        lim.create("a", 1)
        lim.create("b", 1)
        started = threading.Event()
        finish = threading.Event()

        def slow(_lease: Lease) -> None:
            started.set()
            finish.wait(30)  # a callback that takes its time

        a = lim.acquire("a", on_lost=slow)
        b = lim.acquire("b")
        try:
            assert lim.broker.revoke(a.id)
            assert wait_until(started.is_set, timeout=10)  # positive control: a was noticed
            observer = Broker.from_url(r.url, namespace)
            first = observer.lease_record(b.id)
            assert first is not None
            time.sleep(3 * 1.5)  # three TTLs with the callback still sleeping
            later = observer.lease_record(b.id)
            assert later is not None and later.renewed_ms > first.renewed_ms
            assert observer.snapshot("b").used == 1
            assert not b.lost
        finally:
            finish.set()
        assert b.release() is True


def test_frozen_redis_holder_knows_by_itself(namespace: str) -> None:
    """Redis frozen: nothing can be asked, yet the holder reports the lease lost no later than
    TTL + 0.5 s after the freeze (its last renewal was sent before it), and on_lost fires."""
    ttl = 1.5
    with RedisProc() as r:
        lim = Limiter(r.url, namespace, ttl=ttl)
        lim.create("fz", 1)
        told = threading.Event()
        lease = lim.acquire("fz", on_lost=lambda _l: told.set())
        time.sleep(0.5)
        r.pause()
        frozen_at = time.monotonic()
        try:
            assert wait_until(lambda: lease.lost, timeout=ttl + 3)
            lost_after = time.monotonic() - frozen_at
            assert told.wait(1.0)
            print(f"lost noticed {lost_after:.3f} s after the freeze (ttl {ttl} s)")
            assert lost_after <= ttl + 0.5
        finally:
            r.resume()
        # safety as Redis sees it: once it answers, the lease has expired there too
        assert wait_until(lambda: Limiter(r.url, namespace).broker.snapshot("fz").used == 0,
                          timeout=5)
        assert lease.release() is False


def test_slotkeeper_run_stops_its_command_when_redis_freezes(namespace: str,
                                                            tmp_path: Path) -> None:
    ttl = 1.5
    pidfile = tmp_path / "pid"
    with RedisProc() as r:
        Limiter(r.url, namespace).create("job", 1)
        env = {**os.environ, "SLOTKEEPER_URL": r.url, "SLOTKEEPER_NAMESPACE": namespace}
        run = subprocess.Popen(
            [sys.executable, "-m", "slotkeeper.cli", "run", "job", "--ttl", str(ttl),
             "--kill-after", "1", "--", "sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), 20)
            child = int(pidfile.read_text())
            time.sleep(0.5)
            r.pause()
            frozen_at = time.monotonic()

            def gone() -> bool:
                try:
                    os.kill(child, 0)
                except ProcessLookupError:
                    return True
                return False

            try:
                assert wait_until(gone, timeout=ttl + 5)
                stopped_after = time.monotonic() - frozen_at
            finally:
                r.resume()
            print(f"command stopped {stopped_after:.3f} s after the freeze (ttl {ttl} s)")
            assert stopped_after <= ttl + 0.5 + 0.2  # + the supervisor's 50 ms tick and reaping
            _, err = run.communicate(timeout=30)
            assert b"lease was lost" in err
        finally:
            if run.poll() is None:
                run.kill()


def test_close_joins_threads_and_forgets_the_runtime(namespace: str) -> None:
    with RedisProc() as r:
        lim = Limiter(r.url, namespace, ttl=2)
        lim.create("c", 1)
        lease = lim.acquire("c", timeout=1)
        rt = lim.runtime
        assert rt in live_runtimes()
        lim.close()
        assert rt.closed and rt not in live_runtimes()
        assert lease.released  # what it held was given back
        assert Limiter(r.url, namespace).broker.snapshot("c").used == 0
        names = {t.name for t in threading.enumerate()}
        assert not any(n.endswith(f"-{namespace}") for n in names), names
        # using it again reconnects with a fresh runtime
        with limit("c", limiter=lim, timeout=1):
            assert lim.runtime is not rt
        lim.close()


def test_many_closed_limiters_do_not_accumulate_runtimes(namespace: str) -> None:
    with RedisProc() as r:
        Limiter(r.url, namespace).create("m", 1)
        before = len(live_runtimes())
        for i in range(20):
            lim = Limiter(r.url, f"{namespace}-{i}")
            lim.broker.ping()
            lim.close()
        assert len(live_runtimes()) == before


def test_heartbeat_renews_others_when_one_lease_is_damaged(namespace: str) -> None:
    """One lease's record names a limit whose keys the heartbeat was not given (as if damaged):
    the others are renewed and only that one is reported as failed."""
    with RedisProc() as r:
        lim = Limiter(r.url, namespace, ttl=3)
        for n in ("h1", "h2", "h3"):
            lim.create(n, 1)
        leases = [lim.acquire(n) for n in ("h1", "h2", "h3")]
        broker = Broker.from_url(r.url, namespace)
        # h2's record claims a second limit: the heartbeat below passes only h2's own keys
        import msgpack

        raw = r.client().hget(broker.keys.leases, leases[1].id)
        assert isinstance(raw, bytes)
        rec = msgpack.unpackb(raw, raw=False)
        rec["n"] = ["h2", "elsewhere"]
        r.client().hset(broker.keys.leases, leases[1].id, msgpack.packb(rec))
        res = broker.heartbeat([(x.id, x.names, 3000) for x in leases], [])
        assert res.failed_leases == [leases[1].id]
        assert res.lost_leases == []
        for x in (leases[0], leases[2]):
            h = broker.lease_record(x.id)
            assert h is not None and h.renewed_ms >= res.now_ms


def test_retried_release_that_finds_the_lease_gone_reports_it_lost(namespace: str) -> None:
    from tests.support.proxy import TcpProxy

    with RedisProc() as r, TcpProxy("127.0.0.1", r.port) as proxy:
        lim = Limiter(proxy.url, namespace, ttl=5)
        lim.create("rr", 1)
        lim.acquire("rr").release()  # the release script is loaded: the cut request will run
        lease = lim.acquire("rr")
        proxy.cut_reply(b"release", 1)  # it runs on Redis; the reply is lost; the retry: LOST
        assert lease.release() is False
        assert lease.lost
        assert Limiter(r.url, namespace).broker.snapshot("rr").used == 0


@pytest.mark.parametrize("n", [2500])
def test_reset_revokes_every_lease_in_batches(namespace: str, n: int) -> None:
    with RedisProc() as r:
        broker = Broker.from_url(r.url, namespace)
        broker.create_limit("many", n)
        from slotkeeper.broker import protocol as P

        for i in range(n):
            res = broker.run(P.acquire(broker.keys, ["many"], f"l{i}", wait=False,
                                       default_ttl_ms=60_000))
            assert res.status == 1
        assert broker.reset("many") == n  # more than one batch of 1000
        assert broker.snapshot("many").used == 0


def test_watchdog_notices_a_shorter_lease_taken_after_a_longer_one(namespace: str) -> None:
    """The watchdog is woken only when a new lease runs out before it would look anyway: a short
    lease taken while a long one is held is still declared lost on its own clock (Redis frozen),
    long before the watchdog's sleep for the long lease would end."""
    with RedisProc() as r:
        lim = Limiter(r.url, namespace, ttl=30)
        lim.create("long", 1)
        lim.create("short", 1)
        long_lease = lim.acquire("long")
        time.sleep(0.2)  # the watchdog now sleeps until the long lease's instant (capped: 10 s)
        short = lim.acquire("short", ttl=1.0)
        r.pause()
        frozen_at = time.monotonic()
        try:
            assert wait_until(lambda: short.lost, timeout=8)
            print(f"short lease lost {time.monotonic() - frozen_at:.3f} s after the freeze")
            assert not long_lease.lost
        finally:
            r.resume()
        long_lease.release()


def test_heartbeat_renews_many_leases_in_bounded_batches(namespace: str) -> None:
    """A process holding 250 leases renews them all, in round trips of at most HEARTBEAT_BATCH
    leases each (so no single heartbeat script blocks Redis for long)."""
    from slotkeeper.runtime import HEARTBEAT_BATCH

    with RedisProc() as r:
        lim = Limiter(r.url, namespace, ttl=1.5)
        lim.create("many", 1000)
        leases = [lim.acquire("many") for _ in range(250)]
        rt = lim.runtime
        sizes: list[int] = []
        real = rt.broker.heartbeat

        def spy(held: list[object], waiting: list[object], **kw: object) -> object:
            sizes.append(len(held) + len(waiting))
            return real(held, waiting, **kw)  # type: ignore[arg-type]

        rt.broker.heartbeat = spy  # type: ignore[method-assign]
        time.sleep(2.5)  # > TTL: only renewals keep them
        assert not [x for x in leases if x.lost]
        assert sizes and max(sizes) <= HEARTBEAT_BATCH and sum(sizes) >= 250, sizes
        snap = lim.broker.snapshot("many")
        assert snap.used == 250
        for x in leases:
            assert x.release() is True


# forking a process that runs threads is the point here (Python >= 3.12 warns about it)
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded, use of fork:DeprecationWarning")
def test_lease_ids_differ_in_a_forked_child() -> None:
    """Lease ids are a per-process random prefix and a counter: a forked child draws its own
    prefix, so it never repeats its parent's ids."""
    from slotkeeper.runtime import request_id

    parent = {request_id() for _ in range(3)}
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.write(wfd, " ".join(request_id() for _ in range(3)).encode())
        os._exit(0)
    os.close(wfd)
    child = set(os.read(rfd, 1000).decode().split())
    os.waitpid(pid, 0)
    assert len(child) == 3 and not child & parent
    assert len({x[:12] for x in child}) == 1 and not {x[:12] for x in child} & {
        x[:12] for x in parent}


@pytest.mark.parametrize("aio", [False, True])
def test_a_release_that_takes_longer_than_the_ttl_keeps_its_lease(
    redis_server: RedisProc, namespace: str, monkeypatch: pytest.MonkeyPatch, aio: bool
) -> None:
    """A release slowed past the lease's TTL (a slow, lossy network) still finds its lease: the
    lease stays renewed until its release is through, so it is released, never counted as
    expired (sync and asyncio alike). A heartbeat that meets the lease gone just after its
    release went through does not call it lost."""
    lim = Limiter(redis_server.url, namespace, ttl=1.0)
    lim.create("slowrel", 1)
    rt = lim.runtime
    slow = 2.0  # the release reaches Redis two TTLs after it was asked for
    if not aio:
        lease = lim.acquire("slowrel")
        run = rt.broker.transport._execute

        def slowed(op: P.Op[Any]) -> Any:
            if op.script != "release":
                return run(op)
            time.sleep(slow)
            reply = run(op)
            rt.beat()  # a renewal round meets the lease gone before the release returns
            return reply

        monkeypatch.setattr(rt.broker.transport, "_execute", slowed)
        held = lease.release()
    else:
        async def scenario() -> bool:
            lease = await lim.acquire_async("slowrel")
            t = rt.async_broker().transport
            arun = t._execute

            async def slowed_async(op: P.Op[Any]) -> Any:
                if op.script != "release":
                    return await arun(op)
                await asyncio.sleep(slow)
                reply = await arun(op)
                rt.beat()  # a renewal round meets the lease gone before the release returns
                return reply

            monkeypatch.setattr(t, "_execute", slowed_async)
            return await lease.release_async()

        held = asyncio.run(scenario())
    assert held is True
    c = Broker.from_url(redis_server.url, namespace).snapshot("slowrel").counters
    assert (c.acquired, c.released, c.expired) == (1, 1, 0)


def test_background_withdrawals_never_delay_renewals(
    redis_server: RedisProc, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deferred withdrawal that waits on a slow Redis (here: 3 s per try, three TTLs) runs on
    its own thread: the leases of the process go on being renewed meanwhile."""
    lim = Limiter(redis_server.url, namespace, ttl=1.0)
    lim.create("bw", 1)
    rt = lim.runtime
    lease = lim.acquire("bw")
    run = rt.broker.transport._execute
    tried = threading.Event()

    def hung_withdrawal(op: P.Op[Any]) -> Any:
        if op.script == "cancel":
            tried.set()
            time.sleep(3.0)
        return run(op)

    monkeypatch.setattr(rt.broker.transport, "_execute", hung_withdrawal)
    rt.defer_withdrawal(["bw"], "gone-ticket", 1000)
    assert tried.wait(10)  # the withdrawal is under way, and hangs
    time.sleep(3.5)
    assert not lease.lost
    assert lease.release() is True
    c = Broker.from_url(redis_server.url, namespace).snapshot("bw").counters
    assert c.expired == 0


def test_a_deferred_withdrawal_outlives_a_late_grant(
    redis_server: RedisProc, namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ticket whose withdrawal had to be deferred (Redis unreachable) can still be granted just
    before it would have expired: that lease lives one more TTL, and the withdrawer is still
    trying then, so it gives the lease back instead of leaving it held by nobody."""
    b = Broker.from_url(redis_server.url, namespace)
    b.create_limit("lg", 1)
    assert b.acquire(["lg"], "H", ttl_ms=60_000, wait=False).status == Status.GRANTED
    assert b.acquire(["lg"], "W", ttl_ms=3000, wait=True).status == Status.QUEUED
    t0 = time.monotonic()
    rt = Limiter(redis_server.url, namespace).runtime
    run = rt.broker.transport._execute

    def unreachable_for_a_while(op: P.Op[Any]) -> Any:
        if op.script == "cancel" and time.monotonic() < t0 + 4.3:  # past one TTL + 1 s
            raise redis.ConnectionError("unreachable")
        return run(op)

    monkeypatch.setattr(rt.broker.transport, "_execute", unreachable_for_a_while)
    rt.defer_withdrawal(["lg"], "W", 3000)
    time.sleep(max(0.0, t0 + 2.0 - time.monotonic()))
    assert b.release(["lg"], "H")  # W is granted now, a second before its ticket would expire
    assert b.lease_record("W") is not None
    assert wait_until(lambda: b.lease_record("W") is None, timeout=20)
    c = b.snapshot("lg").counters
    assert (c.acquired, c.released, c.expired) == (2, 2, 0)
