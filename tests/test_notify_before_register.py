"""A grant can be published (by another process's release) before this process has read the QUEUED
reply of the same ticket and registered it: the notification must wait for the registration, not
be dropped (it used to cost the waiter a whole fallback period)."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor

from slotkeeper import Limiter, limit
from slotkeeper.runtime import EARLY_MAX, Waiting


def test_notification_before_registration_is_delivered(limiter: Limiter) -> None:
    rt = limiter.runtime
    w = Waiting("early-ticket", ("db",), 5000)
    rt._dispatch(b"early-ticket g 7 123456 5000")  # arrives first
    rt._dispatch(b"early-ticket r")  # a later retry hint does not hide the grant
    rt.add_waiting(w)
    try:
        assert w.wait(0) == "g 7 123456 5000"
    finally:
        rt.drop_waiting(w)


def test_unclaimed_early_notifications_stay_bounded(limiter: Limiter) -> None:
    rt = limiter.runtime
    for i in range(EARLY_MAX + 50):
        rt._dispatch(f"nobody-{i} r".encode())
    assert len(rt._early) <= EARLY_MAX
    w = Waiting("late", ("db",), 5000)
    rt.add_waiting(w)
    rt.drop_waiting(w)
    assert w.wait(0) is None  # nothing was waiting for it


def _pingpong(url: str, namespace: str, rounds: int) -> list[str | None]:
    """Zero-length holds on a 1-slot limit; returns every wake-up that was not a pushed grant."""
    import slotkeeper.limiter
    import slotkeeper.runtime

    # no fallback check and no heartbeat within the test: only pushed grants can wake a waiter
    slotkeeper.limiter.FALLBACK_CHECK = 3600.0
    slotkeeper.runtime.MAX_INTERVAL = 3600.0
    not_pushed: list[str | None] = []
    plain_wait = Waiting.wait

    def wait(self: Waiting, timeout: float) -> str | None:
        msg = plain_wait(self, timeout)
        if not (msg or "").startswith("g"):
            not_pushed.append(msg)
        return msg

    Waiting.wait = wait  # type: ignore[method-assign]
    lim = Limiter(url, namespace, ttl=600)
    # steady state: subscribed before the first wait (a first subscription nudges every waiter
    # once to re-check, which is not a pushed grant)
    lim.runtime.ensure_listener(5.0)
    cm = limit("pingpong", timeout=20, limiter=lim)
    for _ in range(rounds):
        with cm:
            pass
    return not_pushed


def test_zero_hold_contention_is_woken_by_push_only(limiter: Limiter) -> None:
    """Three processes take one slot with zero-length holds, so grants are often published before
    the waiter has read its own QUEUED reply. Every waiter must be woken by its pushed grant; a
    dropped one would surface as a wake-up without a grant (the 20 s acquire timeout firing)."""
    limiter.create("pingpong", 1)
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(3, mp_context=ctx) as pool:
        futs = [pool.submit(_pingpong, limiter.url, limiter.namespace, 150) for _ in range(3)]
        assert [f.result(timeout=240) for f in futs] == [[], [], []]
    assert limiter.broker.snapshot("pingpong").counters.acquired == 450
