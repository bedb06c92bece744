"""Fair, push-woken waiting: FIFO among equal priority, priority order, big requests not starved,
grants pushed (not found by polling), dead waiters' tickets expire."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from slotkeeper import Limiter, limit
from slotkeeper.broker import records as R
from tests.support.push import PATIENCE, push_only


def wait_until(pred: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.01)
    raise AssertionError("condition not reached")


def enqueue_in_order(lim: Limiter, name: str, specs: list[dict[str, Any]],
                     order: list[str]) -> list[threading.Thread]:
    """Start one waiter per spec, each only after the previous one is queued (known arrival order)."""
    threads = []
    for i, spec in enumerate(specs):
        tag = spec.pop("tag")

        def run(tag: str = tag, spec: dict[str, Any] = spec) -> None:
            with limit(name, limiter=lim, **spec):
                order.append(tag)
                time.sleep(0.01)

        t = threading.Thread(target=run)
        t.start()
        threads.append(t)
        wait_until(lambda i=i: lim.broker.snapshot(name).n_waiters == i + 1)
    return threads


def test_fifo_among_equal_priority(limiter: Limiter) -> None:
    limiter.create("fifo", 1)
    gate = limiter.acquire("fifo")
    order: list[str] = []
    threads = enqueue_in_order(limiter, "fifo", [{"tag": f"w{i}"} for i in range(8)], order)
    gate.release()
    for t in threads:
        t.join(30)
    assert order == [f"w{i}" for i in range(8)]


def test_priority_respected(limiter: Limiter) -> None:
    limiter.create("prio", 1)
    gate = limiter.acquire("prio")
    order: list[str] = []
    specs = [{"tag": "low", "priority": -5}, {"tag": "mid1", "priority": 0},
             {"tag": "high", "priority": 10}, {"tag": "mid2", "priority": 0}]
    threads = enqueue_in_order(limiter, "prio", specs, order)
    gate.release()
    for t in threads:
        t.join(30)
    assert order == ["high", "mid1", "mid2", "low"]


def test_big_request_not_starved_by_stream_of_small(limiter: Limiter) -> None:
    limiter.create("big", 3)
    stop = threading.Event()
    small_done = [0]

    def small_stream() -> None:
        while not stop.is_set():
            with limit("big", limiter=limiter):
                time.sleep(0.005)
            small_done[0] += 1

    smalls = [threading.Thread(target=small_stream) for _ in range(4)]
    for t in smalls:
        t.start()
    wait_until(lambda: small_done[0] > 20)
    got_big = threading.Event()

    def big() -> None:
        with limit("big", occupy=3, limiter=limiter):
            assert limiter.broker.snapshot("big").used == 3
            got_big.set()

    tb = threading.Thread(target=big)
    tb.start()
    assert got_big.wait(30), "occupy=3 starved by occupy=1 requests"
    stop.set()
    for t in [tb, *smalls]:
        t.join(30)
    assert limiter.broker.snapshot("big").used == 0


def test_grants_are_pushed_not_polled(limiter: Limiter, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the fallback check, the slow-wait re-ask and the heartbeat pushed out to 10x the
    patience, a waiter is still granted right after release."""
    push_only(monkeypatch, limiter)
    limiter.create("push", 1)
    holder = limiter.acquire("push")
    got = threading.Event()
    t = threading.Thread(target=lambda: (limiter.acquire("push").release(), got.set()),
                         daemon=True)  # a missed push leaves it waiting for the poll
    t.start()
    wait_until(lambda: limiter.broker.snapshot("push").n_waiters == 1)
    holder.release()
    assert got.wait(PATIENCE), "waiter not woken by the release (only a poll was left)"
    t.join()


def test_cross_limit_waiter_woken_by_release_of_other_limit(
        limiter: Limiter, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ticket on (a, b) is at the head of a's queue; a release that only passed a's keys tells its
    process to re-ask (it cannot grant b's slots without b's keys) — still no polling."""
    push_only(monkeypatch, limiter)
    limiter.create("a", 1)
    limiter.create("b", 1)
    ha = limiter.acquire("a")
    got = threading.Event()
    t = threading.Thread(target=lambda: (limiter.acquire("a", "b").release(), got.set()),
                         daemon=True)  # a missed push leaves it waiting for the poll
    t.start()
    wait_until(lambda: limiter.broker.snapshot("a").n_waiters == 1)
    ha.release()
    assert got.wait(PATIENCE)
    t.join()


def test_dead_waiter_ticket_expires(limiter: Limiter) -> None:
    limiter.create("dead", 1)
    b = limiter.broker
    holder = limiter.acquire("dead")
    r = b.acquire(["dead"], "ghostticket", ttl_ms=200, channel="nobody-listens")
    assert r.status == R.QUEUED
    time.sleep(0.4)  # nobody renews it
    holder.release()  # the grant pass skips (and drops) the expired ticket
    snap = b.snapshot("dead")
    assert snap.n_waiters == 0 and snap.used == 0
    assert b.acquire(["dead"], "ghostticket").status == R.GRANTED  # id reusable: old ticket gone


def test_cancel_returns_lease_if_granted_meanwhile(limiter: Limiter) -> None:
    limiter.create("cx", 1)
    b = limiter.broker
    h = limiter.acquire("cx")
    assert b.acquire(["cx"], "tk1", channel="c").status == R.QUEUED
    h.release()  # grants tk1 in the release script
    res = b.cancel(["cx"], "tk1", timed_out=True)
    assert res.status == R.GRANTED  # the caller owns it now and must release it
    assert b.release(["cx"], "tk1")
    assert b.snapshot("cx").used == 0


def test_cancelled_async_waiter_withdraws_its_ticket(limiter: Limiter) -> None:
    import asyncio

    limiter.create("acx", 1)
    holder = limiter.acquire("acx")

    async def main() -> None:
        task = asyncio.create_task(limiter.acquire_async("acx"))
        for _ in range(500):
            await asyncio.sleep(0.01)
            if limiter.broker.snapshot("acx").n_waiters == 1:
                break
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass

    asyncio.run(main())
    assert limiter.broker.snapshot("acx").n_waiters == 0  # withdrawn at once, not by TTL
    holder.release()
    assert limiter.broker.snapshot("acx").used == 0
