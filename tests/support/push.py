"""Push-promise tests: only a pushed notification may wake a waiter within PATIENCE.

A waiter also wakes without any push in three ways, each of which could do a push's job:
the fallback re-check (``slotkeeper.limiter.FALLBACK_CHECK``, 1 s: it asks again and is
granted), the slow-wait log line (``Limiter.slow_wait``, 10 s: it re-asks after logging), and
the heartbeat, which reports a ticket that became a lease while its notification was missed
(every third of the shortest TTL, capped by ``slotkeeper.runtime.MAX_INTERVAL``, 10 s).
``push_only`` pushes all three out to ten times the patience, so a test that waits at most
PATIENCE for a wake-up fails when the push is missing instead of being rescued by a poll."""

from __future__ import annotations

import threading
import time

import pytest

import slotkeeper.limiter as limiter_mod
import slotkeeper.runtime as runtime_mod
from slotkeeper import Limiter

PATIENCE = 15.0  # s a pushed promise may take here (a loaded 2-core machine)
POLL = 10 * PATIENCE  # s before anything but a push wakes a waiter
LONG_TTL = 3 * POLL  # s: a lease or ticket this long is renewed (and checked) every POLL s


def push_only(monkeypatch: pytest.MonkeyPatch, *limiters: Limiter) -> None:
    """Fallback re-check, slow-wait wake-up and heartbeat all pushed out to POLL for these
    limiters (their default TTL becomes LONG_TTL: pass no shorter ``ttl=`` to their acquires)."""
    monkeypatch.setattr(limiter_mod, "FALLBACK_CHECK", POLL)
    monkeypatch.setattr(runtime_mod, "MAX_INTERVAL", POLL)
    for lim in limiters:
        lim.slow_wait = 0.0
        lim.ttl = LONG_TTL


def check_pushed_grant(lim: Limiter, name: str) -> None:
    """Under ``push_only``: a waiter on ``name`` (a 1-slot limit, free) is woken by the release
    of the slot's holder within PATIENCE, which only the pushed grant can do."""
    holder = lim.acquire(name)
    got = threading.Event()

    def waiter() -> None:
        lim.acquire(name, timeout=POLL).release()
        got.set()

    t = threading.Thread(target=waiter, daemon=True)  # a missed push leaves it to the poll
    t.start()
    deadline = time.monotonic() + 20
    while lim.broker.snapshot(name).n_waiters == 0:
        assert time.monotonic() < deadline, "the waiter never queued"
        time.sleep(0.02)
    assert holder.release()
    assert got.wait(PATIENCE), f"the waiter on {name} was not woken by the pushed grant"
    t.join(PATIENCE)
