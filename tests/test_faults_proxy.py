"""A TCP proxy between the clients and Redis drops, delays and cuts connections, including right
after a script ran but before its reply came back. Every script is idempotent on a client-made id,
so a re-sent call never grants twice, never releases twice, and no slot leaks."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from slotkeeper import AcquireTimeout, LeaseLost, Limiter, limit
from slotkeeper.broker import protocol as P
from tests.support.chaos import Pool
from tests.support.observer import check, read_stamps
from tests.support.proxy import TcpProxy
from tests.support.redisproc import RedisProc


@pytest.fixture
def proxy(redis_server: RedisProc) -> Iterator[TcpProxy]:
    with TcpProxy("127.0.0.1", redis_server.port) as p:
        yield p


@pytest.fixture
def plim(proxy: TcpProxy, namespace: str) -> Limiter:
    lim = Limiter(proxy.url, namespace, ttl=2)
    lim.create("warm", 1)
    with limit("warm", limiter=lim, timeout=1):  # scripts loaded, listener subscribed
        pass
    return lim


def test_lost_acquire_reply_does_not_grant_twice(proxy: TcpProxy, plim: Limiter) -> None:
    plim.create("cut-acq", 1)
    proxy.cut_reply(b"cut-acq")  # the script runs on Redis; the client never hears back
    lease = plim.acquire("cut-acq", timeout=0)
    assert proxy.cut_replies == 1 and proxy.pending_rules() == 0
    snap = plim.broker.snapshot("cut-acq")
    assert [h.lease_id for h in snap.holders] == [lease.id]  # the retry found the same lease
    assert snap.counters.acquired == 1 and snap.used == 1
    assert lease.release()
    assert plim.broker.snapshot("cut-acq").counters.released == 1


def test_lost_acquire_request_is_resent(proxy: TcpProxy, plim: Limiter) -> None:
    plim.create("cut-req", 1)
    proxy.cut_request(b"cut-req")  # never reaches Redis
    with limit("cut-req", limiter=plim, timeout=0) as lease:
        assert proxy.cut_requests == 1
        assert plim.broker.snapshot("cut-req").counters.acquired == 1
        assert lease.renew()


def test_lost_release_reply_reports_the_lease_lost(proxy: TcpProxy, plim: Limiter) -> None:
    """The release ran but its reply was lost; the retry finds the lease gone. The holder cannot
    tell that from an expiry, so it says lost (never wrongly 'held until now')."""
    plim.create("cut-rel", 1)
    lease = plim.acquire("cut-rel")
    proxy.cut_reply(lease.id.encode())  # the next script naming this lease: the release
    assert lease.release() is False and lease.lost
    assert proxy.cut_replies == 1
    c = plim.broker.snapshot("cut-rel").counters
    assert (c.acquired, c.released, c.expired) == (1, 1, 0)


def test_lost_heartbeat_reply_keeps_the_lease(proxy: TcpProxy, plim: Limiter) -> None:
    plim.create("cut-hb", 1)
    with limit("cut-hb", limiter=plim) as lease:
        proxy.cut_reply(lease.id.encode(), count=2)  # two heartbeats in a row lose their reply
        assert lease.renew()
        assert lease.renew()
        assert proxy.cut_replies == 2 and not lease.lost


def test_lost_waiting_replies_grant_once(proxy: TcpProxy, plim: Limiter) -> None:
    """Enqueue, cancel-on-timeout and grant-on-release replies lost: one lease, no leak."""
    plim.create("cut-wait", 1)
    holder = plim.acquire("cut-wait")
    proxy.cut_reply(b"cut-wait", count=1)  # the enqueueing acquire
    with pytest.raises(AcquireTimeout):
        plim.acquire("cut-wait", timeout=0.3)
    proxy.cut_reply(b"cut-wait", count=3)  # enqueue + whatever follows: re-asks, cancel...
    got: list[str] = []

    def waiter() -> None:
        with limit("cut-wait", limiter=plim, timeout=10) as lease:
            got.append(lease.id)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)
    assert holder.release()
    t.join(30)
    assert len(got) == 1
    snap = plim.broker.snapshot("cut-wait")
    c = snap.counters
    assert snap.used == 0 and snap.n_waiters == 0
    assert (c.acquired, c.released, c.expired, c.timed_out) == (2, 2, 0, 1)


def test_drops_delays_and_cuts_under_load(
    redis_server: RedisProc, proxy: TcpProxy, namespace: str, tmp_path: Path
) -> None:
    limits = {"px": 2, "py": 1, "pz": 3}
    lim = Limiter(redis_server.url, namespace, ttl=3)  # direct: the test's own view
    for name, slots in limits.items():
        lim.create(name, slots)
    # how scripts travel here: FCALL (the function library, Redis >= 7) or EVALSHA (6.2)
    script_call = b"FCALL" if lim.broker.transport.path == "functions" else b"EVALSHA"
    pool = Pool(
        tmp_path / "run",
        4,
        {
            "ns": namespace,
            "ttl": 3,
            "limits": limits,
            "max_names": 2,
            "max_occupy": 2,
            "timeouts": [None, 0, 0.1, 0.5],
            "hold": [0.0, 0.05],
            "cancel_p": 0.15,
            "idle": 0.01,
            # a dropped request or reply is noticed after 1 s, not redis-py's default 5 s
        },
        urls=[proxy.url + "?socket_timeout=1"],
    )
    rnd = random.Random()
    actions: dict[str, int] = {}
    try:
        pool.start()
        start = time.monotonic()
        # at least 10 s of chaos, and until the workers got through 60 acquisitions
        while time.monotonic() - start < 10 or (
            pool.count("S") < 60 and time.monotonic() - start < 60
        ):
            time.sleep(rnd.uniform(0.05, 0.25))
            if proxy.pending_rules() > 1:
                continue
            action = rnd.choice(["cut_reply", "cut_request", "cut_all", "drop", "delay"])
            actions[action] = actions.get(action, 0) + 1
            if action == "cut_reply":
                proxy.cut_reply(script_call)
            elif action == "cut_request":
                proxy.cut_request(script_call)
            elif action == "cut_all":
                proxy.cut_all()
            elif action == "drop":  # swallow everything both ways for a moment
                proxy.blackhole = True
                time.sleep(rnd.uniform(0.1, 0.4))
                proxy.blackhole = False
            else:
                proxy.delay = 0.02
                time.sleep(rnd.uniform(0.2, 0.5))
                proxy.delay = 0.0
            assert not pool.dead(), "a worker crashed"
        forced, failed = pool.stop()
    finally:
        pool.close()
    rep = check(pool.dir, limits)
    print(
        "proxy actions:",
        actions,
        "replies cut:",
        proxy.cut_replies,
        "requests cut:",
        proxy.cut_requests,
        "connections:",
        proxy.accepted,
    )
    print("observer:", rep.summary())
    assert failed == [] and forced == 0
    assert rep.violations == []
    # cuts and drops never cost a holder its lease while it holds it (a release whose reply
    # was cut reports "lost" at the release: the holder cannot tell it from an expiry)
    assert rep.counts["L"] == 0
    assert rep.counts["S"] > 50 and proxy.cut_replies > 0 and proxy.cut_requests > 0
    for name in limits:  # no slot leaked; each grant either released or (bounded) expired
        snap = lim.broker.snapshot(name)
        c = snap.counters
        print(name, "acquired", c.acquired, "released", c.released, "expired", c.expired)
        assert snap.used == 0 and snap.n_holder_entries == 0, name
        # Nobody was killed or paused: every grant is released by its holder, or -- when the
        # holder never saw it, or its release could not get through -- given back by the
        # holder's background withdrawal; an ask that reached Redis after its own withdrawal
        # (on another connection), or a re-sent ask's late first copy, is refused; a release
        # slowed past the TTL keeps its lease renewed until it is through. So nothing expires.
        assert c.acquired == c.released + c.expired, (name, c)
        assert c.expired == 0, expired_story(lim, name, c)
    # and Redis itself holds nothing of any of them: no lease or ticket record, holder or queue
    # entry is left, whether its id was stamped by a worker (it held) or never seen by one
    stamped = {row[3] for row in read_stamps(pool.dir) if row[0] == "S"}
    r = lim.broker.redis
    k = lim.broker.keys
    left = {x.decode() for x in r.hkeys(k.leases)} | {x.decode() for x in r.hkeys(k.tickets)}
    left |= {x.decode() for x in r.zrange(k.fixed()[3], 0, -1)}
    for name in limits:
        left |= {x.decode() for x in r.zrange(k.limit(name)[1], 0, -1)}
        left |= {x.decode() for x in r.zrange(k.limit(name)[2], 0, -1)}
    assert not left, (
        f"left in Redis: {sorted(left & stamped)} stamped by workers, "
        f"{sorted(left - stamped)} never seen by one"
    )


def expired_story(lim: Limiter, name: str, counters: Any) -> str:
    """What the events stream says of every lease of ``name`` that expired: each of its events,
    oldest first (which worker asked, when it was granted, and what came after)."""
    events = lim.broker.run(P.events_range(lim.broker.keys, count=100_000))
    expired = {e.lease_id for e in events if e.kind == "expire" and name in e.names}
    story = [f"{e.time_ms} {e.kind} {e.lease_id} pid={e.pid} {e.detail}"
             for e in reversed(events) if e.lease_id in expired]
    return f"{name}: {counters}; events of the expired lease(s):\n" + "\n".join(story)


def test_late_grant_notification_never_admits_a_second_holder(
    redis_server: RedisProc, proxy: TcpProxy, namespace: str
) -> None:
    """A waiter cut off from Redis (its traffic held back, as by a long GC pause or a stalled
    link) is granted a slot; that lease expires unrenewed and someone else takes the slot. When
    the waiter's traffic flows again, the late grant notification must not let its body run while
    the other holder still holds the only slot (a re-ask never restarts an id under its old name)."""
    direct = Limiter(redis_server.url, namespace, ttl=2)
    cut_off = Limiter(proxy.url, namespace, ttl=2)
    direct.create("late", 1)
    holder = direct.acquire("late")
    seen: dict[str, Any] = {}

    def waiter() -> None:
        try:
            with limit("late", limiter=cut_off, timeout=20) as lease:
                seen["enter"] = time.monotonic()
                seen["token"] = lease.token
                time.sleep(0.3)
            seen["outcome"] = "ok"
        except LeaseLost:
            seen["outcome"] = "lost"

    t = threading.Thread(target=waiter)
    t.start()
    deadline = time.monotonic() + 10
    while direct.broker.snapshot("late").n_waiters == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    proxy.paused = True  # from here the waiter's requests and notifications are held back
    assert holder.release()  # grants the waiter; the notification waits in the proxy
    time.sleep(2.3)  # that lease expires: nobody renews it
    second = direct.acquire("late", timeout=5)
    proxy.paused = False  # the stale traffic arrives
    time.sleep(0.1)
    second_end = time.monotonic()
    assert second.release()
    t.join(30)
    # either the waiter was told its (stale) lease was lost, or it ran only after `second` left,
    # under a newer fencing token
    if seen["outcome"] == "ok":
        assert seen["enter"] >= second_end and seen["token"] > second.token, seen
    snap = direct.broker.snapshot("late")
    assert snap.used == 0 and snap.n_waiters == 0
